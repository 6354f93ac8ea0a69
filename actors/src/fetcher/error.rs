//! Why a page, a slice or a job stopped, as types: [`FetchError`] (a failure, and its
//! [`Kind`]: what can still help) and [`CancelReason`] (a job stopped on purpose). Which failure
//! becomes which outcome (retry, re-query, reschedule, fail for good) is decided in one place
//! from these: [`crate::retry::RetryPolicy::judge`] for a request, [`FetchError::kind`] after it.

use crate::dialect::DialectError;
use crate::http::HttpError;
use crate::retry::Failure;
use crate::sink::SinkError;
use crate::token::AuthError;
use msgtrace_storage::StorageError;

/// What can still help after a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The API refused the request itself (400, 404, 410) or its body was unusable, after
    /// retries: a next link is abandoned and the slice re-queried; otherwise the task is
    /// rescheduled.
    Rejected,
    /// Anything else that may pass: the task is rescheduled (`task_reschedule_limit`) and the
    /// next run resumes it.
    Failed,
    /// Retrying cannot help (credentials or permissions refused): not rescheduled.
    Fatal,
}

/// A failure of a page's request, its delivery or its commit.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The engine is shutting down: a wait for one of its shared resources ended.
    #[error("the engine is stopping")]
    Stopping,
    /// A next link that is not a URL.
    #[error("next link `{url}` is not a valid URL: {source}")]
    BadLink {
        /// The link as the API wrote it.
        url: String,
        /// Why it does not parse.
        source: url::ParseError,
    },
    /// No token could be had.
    #[error(transparent)]
    Token(#[from] AuthError),
    /// The token actor is gone.
    #[error("token actor unavailable: {0}")]
    TokenActor(actix::MailboxError),
    /// The request could not be made at all (a URL awc refuses).
    #[error(transparent)]
    Request(HttpError),
    /// The API's answer after the retry policy gave up: what failed, and the explanation the
    /// dialect gives of it (the URL without its query, the status and what to do).
    #[error("{message}")]
    Api {
        /// The last attempt's failure.
        failure: Failure,
        /// What it means, for the log and the job record.
        message: String,
    },
    /// A sink refused the page (after its own retries).
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// A sink's actor is gone.
    #[error("a sink is not running ({0})")]
    SinkGone(actix::MailboxError),
    /// A pipeline hook panicked.
    #[error(transparent)]
    Hook(#[from] crate::hook::HookPanicked),
    /// The identity index could not be read.
    #[error("reading the identity index failed: {0}")]
    IdentityIndex(StorageError),
    /// The checkpoint could not be committed.
    #[error("could not save the checkpoint: {0}")]
    Checkpoint(StorageError),
    /// The checkpoint of record (`[cluster]`) could not be written: the claim has ended, or
    /// etcd did not answer. Nothing was committed.
    #[error(transparent)]
    Fenced(crate::cluster::fence::FenceError),
    /// The details backlog could not be read or written.
    #[error("reading or writing the details backlog failed: {0}")]
    Details(StorageError),
    /// Next links were abandoned more often than a slice's run allows.
    #[error("next links abandoned {0} times in this slice; the next run re-queries it")]
    TooManyRequeries(u32),
}

impl FetchError {
    /// What can still help.
    pub fn kind(&self) -> Kind {
        match self {
            FetchError::Api {
                failure:
                    Failure::Status {
                        code: 400 | 404 | 410,
                        ..
                    }
                    | Failure::BadBody,
                ..
            } => Kind::Rejected,
            FetchError::Api {
                failure: Failure::Status {
                    code: 401 | 403, ..
                },
                ..
            }
            | FetchError::Token(AuthError::Rejected(_)) => Kind::Fatal,
            // The job's claim has ended: no task of this job can commit (the next job, under
            // a claim of its own, may).
            FetchError::Fenced(crate::cluster::fence::FenceError::Fenced { .. }) => Kind::Fatal,
            _ => Kind::Failed,
        }
    }

    /// A body that does not parse, as the API's failure (so that it is judged like one).
    pub fn bad_body(url: &str, e: &DialectError) -> FetchError {
        FetchError::Api {
            failure: Failure::BadBody,
            message: format!("{url}: {e}"),
        }
    }
}

/// Why a job stopped on purpose (it is resumed by the next run).
#[derive(Debug, thiserror::Error)]
pub enum CancelReason {
    /// `job_timeout` was reached while a page was requested.
    #[error("job_timeout reached; the page in flight was abandoned and the next run resumes it")]
    Timeout,
    /// `job_timeout` was reached while a sink refused a page.
    #[error("job_timeout reached while a sink refused a page; the next run delivers it again")]
    TimeoutWhileHeld,
    /// The engine shut down while a sink refused a page.
    #[error("shut down while a sink refused a page ({0}); the next run delivers it again")]
    ShutdownWhileHeld(FetchError),
}

/// How a slice or a job stopped before its end.
#[derive(Debug)]
pub(super) enum Stop {
    /// Cancelled (shutdown, `job_timeout`), with the reason when there is one to record.
    Cancelled(Option<CancelReason>),
    /// Failed.
    Failed(FetchError),
}

impl From<FetchError> for Stop {
    fn from(e: FetchError) -> Stop {
        Stop::Failed(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(failure: Failure) -> FetchError {
        FetchError::Api {
            failure,
            message: "m".into(),
        }
    }

    fn status(code: u16) -> Failure {
        Failure::Status {
            code,
            retry_after: None,
        }
    }

    #[test]
    fn refusals_of_the_request_are_rejections_credentials_fatal_the_rest_failures() {
        for code in [400, 404, 410] {
            assert_eq!(api(status(code)).kind(), Kind::Rejected, "{code}");
        }
        assert_eq!(api(Failure::BadBody).kind(), Kind::Rejected);
        for code in [401, 403] {
            assert_eq!(api(status(code)).kind(), Kind::Fatal, "{code}");
        }
        assert_eq!(
            FetchError::Token(AuthError::Rejected("bad secret".into())).kind(),
            Kind::Fatal
        );
        assert_eq!(
            FetchError::Token(AuthError::Unavailable("down".into())).kind(),
            Kind::Failed
        );
        for f in [
            status(429),
            status(503),
            status(500),
            Failure::Timeout,
            Failure::Connection,
        ] {
            assert_eq!(api(f.clone()).kind(), Kind::Failed, "{f:?}");
        }
        assert_eq!(FetchError::Stopping.kind(), Kind::Failed);
        assert_eq!(FetchError::TooManyRequeries(4).kind(), Kind::Failed);
    }

    #[test]
    fn messages_read_as_before() {
        assert_eq!(
            FetchError::TooManyRequeries(4).to_string(),
            "next links abandoned 4 times in this slice; the next run re-queries it"
        );
        assert_eq!(
            CancelReason::Timeout.to_string(),
            "job_timeout reached; the page in flight was abandoned and the next run resumes it"
        );
        let e = FetchError::bad_body(
            "https://h/p",
            &DialectError::NoTraceRows {
                rows: 1,
                fields: ["id", "r", "t"],
            },
        );
        assert!(e.to_string().starts_with("https://h/p: "), "{e}");
        assert_eq!(e.kind(), Kind::Rejected);
    }
}
