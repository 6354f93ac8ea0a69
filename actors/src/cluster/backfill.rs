//! Backfills handed to the owner of their source: `msgtrace backfill` with `[cluster]` writes
//! a request into etcd, and the instance that holds the source's claim runs it, under the
//! source's one fetcher and the tenant's one request budget (docs/scaling.md).
//!
//! A request is the key `<prefix>/backfills/<source>/<start>-<end>` (epoch seconds, the
//! backfill's cursor name under the prefix) holding a versioned record ([`Request`]). It is
//! created only when absent ([`ask`]): asking twice for one range finds the first request, so
//! the range runs once; a request that failed is queued again when asked for again. The owner
//! takes a request ([`update`] to `running`) and records its end (`succeeded`, `failed`), each
//! write fenced by the claim of the source (the claim's compares, [`super::fence`]) and by the
//! request's last revision: an instance whose claim has ended writes nothing, and two writers
//! never both take one request. A request whose instance died is left `running` by it; the next
//! owner of the source takes it again and resumes it from the backfill's checkpoint of record.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::etcd::{Compare, Etcd, EtcdError, Kv, Op, Txn};
use super::fence::{self, Claim};
use crate::fetcher::{Backfill, JobSummary};
use msgtrace_storage::JobState;

/// Where a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Asked for; no instance has taken it yet.
    Queued,
    /// Taken by the owner of the source (`by`); it runs, or waits for the job running now.
    Running,
    /// Every slice of the range was delivered.
    Succeeded,
    /// The backfill failed (`error`); asking again queues it again.
    Failed,
}

impl State {
    /// Whether the request is over (nothing more happens unless it is asked for again).
    pub fn is_final(self) -> bool {
        matches!(self, State::Succeeded | State::Failed)
    }
}

/// A backfill asked for, as etcd holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// The source.
    pub source: String,
    /// Range start, epoch seconds (inclusive).
    pub start: i64,
    /// Range end, epoch seconds (exclusive).
    pub end: i64,
    /// Who asked (the command's instance name and host).
    pub asked_by: String,
    /// When it was asked for (again, after a failure).
    pub asked_at: DateTime<Utc>,
    /// Where it is.
    pub state: State,
    /// The instance that took it (`running`, and at its end).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// Why it failed (`failed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Pages and rows its last job delivered (at its end).
    #[serde(default)]
    pub pages: u64,
    /// See `pages`.
    #[serde(default)]
    pub rows: u64,
    /// Its last change.
    pub updated_at: DateTime<Utc>,
}

/// The value of a request key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "version")]
enum Record {
    #[serde(rename = "1")]
    V1(Request),
}

/// A request read, with what a write over it compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Its key.
    pub key: Vec<u8>,
    /// The request.
    pub request: Request,
    /// The key's revision when read ([`Compare::ModRevision`]).
    pub revision: i64,
}

/// How a job of a request ended, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Delivered.
    Succeeded {
        /// Pages its job delivered.
        pages: u64,
        /// Rows its job delivered.
        rows: u64,
    },
    /// Failed, with the job's error.
    Failed {
        /// The one-line error.
        error: String,
        /// Pages delivered before it.
        pages: u64,
        /// Rows delivered before it.
        rows: u64,
    },
}

impl Outcome {
    /// What a job's summary records: `None` for a job that did not end on its own (cancelled
    /// by a shutdown, a timeout or the source moving away; not run): the request stays where it
    /// is, for this instance or the next owner to run again from its checkpoint.
    pub fn of(summary: Option<&JobSummary>) -> Option<Outcome> {
        let s = summary?;
        match s.state {
            JobState::Succeeded => Some(Outcome::Succeeded {
                pages: s.pages,
                rows: s.rows,
            }),
            JobState::Failed => Some(Outcome::Failed {
                error: s
                    .error
                    .clone()
                    .unwrap_or_else(|| "the backfill failed".to_owned()),
                pages: s.pages,
                rows: s.rows,
            }),
            _ => None,
        }
    }
}

/// Why a request could not be read or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// etcd did not answer, or refused.
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    /// The value is not a request this release reads.
    #[error("the backfill request `{key}` in etcd does not decode ({why}); a newer release wrote it, or another program: remove the key (etcdctl del '{key}') and ask again")]
    Undecodable {
        /// The key.
        key: String,
        /// What was wrong.
        why: String,
    },
}

/// The keys of every request under `prefix` start with this.
pub fn requests_prefix(prefix: &str) -> Vec<u8> {
    format!("{prefix}/backfills/").into_bytes()
}

/// The key of the request of `backfill` of `source` under `prefix`.
pub fn request_key(prefix: &str, source: &str, backfill: &Backfill) -> Vec<u8> {
    format!(
        "{prefix}/backfills/{source}/{}-{}",
        backfill.start.timestamp(),
        backfill.end.timestamp()
    )
    .into_bytes()
}

impl Request {
    /// A new request of `backfill` of `source`, asked by `asked_by` at `now`.
    pub fn new(source: &str, backfill: &Backfill, asked_by: &str, now: DateTime<Utc>) -> Request {
        let (start, end) = (backfill.start.timestamp(), backfill.end.timestamp());
        Request::queued(source, start, end, asked_by, now)
    }

    /// A queued request of `source` from `start` to `end` (epoch seconds).
    fn queued(source: &str, start: i64, end: i64, asked_by: &str, now: DateTime<Utc>) -> Request {
        Request {
            source: source.to_owned(),
            start,
            end,
            asked_by: asked_by.to_owned(),
            asked_at: now,
            state: State::Queued,
            by: None,
            error: None,
            pages: 0,
            rows: 0,
            updated_at: now,
        }
    }

    /// The range (a decoded request's is valid: [`decode`] checks it).
    pub fn backfill(&self) -> Option<Backfill> {
        let start = DateTime::from_timestamp(self.start, 0)?;
        let end = DateTime::from_timestamp(self.end, 0)?;
        (start < end).then_some(Backfill { start, end })
    }

    /// The request taken by instance `by` at `now`.
    pub fn taken(&self, by: &str, now: DateTime<Utc>) -> Request {
        Request {
            state: State::Running,
            by: Some(by.to_owned()),
            error: None,
            updated_at: now,
            ..self.clone()
        }
    }

    /// The request ended with `outcome` at `now`.
    pub fn ended(&self, outcome: &Outcome, now: DateTime<Utc>) -> Request {
        let (state, error, pages, rows) = match outcome {
            Outcome::Succeeded { pages, rows } => (State::Succeeded, None, *pages, *rows),
            Outcome::Failed { error, pages, rows } => {
                (State::Failed, Some(error.clone()), *pages, *rows)
            }
        };
        Request {
            state,
            error,
            pages,
            rows,
            updated_at: now,
            ..self.clone()
        }
    }

    /// The request asked for again (after it failed) by `asked_by` at `now`.
    fn requeued(&self, asked_by: &str, now: DateTime<Utc>) -> Request {
        Request::queued(&self.source, self.start, self.end, asked_by, now)
    }

    /// Where it is, in words: `queued`, `running on c-1`, `succeeded on c-1 (3 pages, 12 rows
    /// in its last job)`, `failed on c-1: ...`.
    pub fn describe(&self) -> String {
        let on = self
            .by
            .as_deref()
            .map(|b| format!(" on {b}"))
            .unwrap_or_default();
        match self.state {
            State::Queued => "queued".to_owned(),
            State::Running => format!("running{on}"),
            State::Succeeded => format!(
                "succeeded{on} ({} pages, {} rows in its last job)",
                self.pages, self.rows
            ),
            State::Failed => format!(
                "failed{on}: {}",
                self.error.as_deref().unwrap_or("no error recorded")
            ),
        }
    }
}

/// The bytes of a request key's value.
pub fn encode(request: &Request) -> Vec<u8> {
    serde_json::to_vec(&Record::V1(request.clone())).unwrap_or_default()
}

/// A request key read: its record, which must name the source and range its key does.
pub fn decode(kv: &Kv) -> Result<Found, RequestError> {
    let key = String::from_utf8_lossy(&kv.key).into_owned();
    let bad = |why: String| RequestError::Undecodable {
        key: key.clone(),
        why,
    };
    let Record::V1(request) = serde_json::from_slice(&kv.value).map_err(|e| bad(e.to_string()))?;
    let range = request
        .backfill()
        .ok_or_else(|| bad(format!("empty range {}-{}", request.start, request.end)))?;
    let suffix = format!(
        "/backfills/{}/{}-{}",
        request.source, request.start, request.end
    );
    if !key.ends_with(&suffix) {
        return Err(bad(format!(
            "it names {} from {} to {}, not what its key does",
            request.source, range.start, range.end
        )));
    }
    Ok(Found {
        key: kv.key.clone(),
        request,
        revision: kv.mod_revision,
    })
}

/// What [`ask`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Asked {
    /// The request was written: nobody had asked for the range before.
    New(Found),
    /// The range was asked for already and has not failed: this is that request.
    Existing(Found),
    /// The range had failed: it is queued again.
    Requeued(Found),
}

impl Asked {
    /// The request as it is now.
    pub fn found(&self) -> &Found {
        match self {
            Asked::New(f) | Asked::Existing(f) | Asked::Requeued(f) => f,
        }
    }
}

/// Asks for `request`: written when its key is absent, the existing request found otherwise
/// (queued again if it had failed).
pub async fn ask(etcd: &Etcd, prefix: &str, request: &Request) -> Result<Asked, RequestError> {
    let backfill = request
        .backfill()
        .ok_or_else(|| RequestError::Undecodable {
            key: String::from_utf8_lossy(&requests_prefix(prefix)).into_owned(),
            why: "an empty range".to_owned(),
        })?;
    let key = request_key(prefix, &request.source, &backfill);
    // A few attempts: between the failed create and the read, the key may go (deleted by
    // hand) or change (requeued by another asker).
    let mut last = None;
    for _ in 0..3 {
        let txn = Txn {
            compare: vec![Compare::CreateRevision(key.clone(), 0)],
            success: vec![
                Op::Put {
                    key: key.clone(),
                    value: encode(request),
                    lease: 0,
                },
                Op::Get(key.clone()),
            ],
            failure: vec![Op::Get(key.clone())],
        };
        let outcome = etcd.txn(&txn).await?;
        let Some(found) = first(&outcome.ranges, &key) else {
            continue;
        };
        let found = decode(found)?;
        if outcome.succeeded {
            return Ok(Asked::New(found));
        }
        if found.request.state != State::Failed {
            return Ok(Asked::Existing(found));
        }
        let again = found.request.requeued(&request.asked_by, request.asked_at);
        if let Some(written) = write(etcd, &found, &again, vec![]).await? {
            return Ok(Asked::Requeued(written));
        }
        last = Some(found);
    }
    match last {
        Some(found) => Ok(Asked::Existing(found)),
        None => Err(RequestError::Etcd(EtcdError::Garbage {
            endpoint: "(any)".to_owned(),
            path: "/v3/kv/txn".to_owned(),
            detail: "a transaction that wrote a key and then did not find it".to_owned(),
        })),
    }
}

/// The request at `key`, if there is one.
pub async fn get(etcd: &Etcd, key: &[u8]) -> Result<Option<Found>, RequestError> {
    etcd.get(key).await?.as_ref().map(decode).transpose()
}

/// Every request under `prefix`, in key order; one that does not decode is its error, in its
/// place, for the caller to report (once) and pass over.
pub async fn list(
    etcd: &Etcd,
    prefix: &str,
) -> Result<Vec<Result<Found, RequestError>>, EtcdError> {
    Ok(etcd
        .get_prefix(&requests_prefix(prefix))
        .await?
        .iter()
        .map(decode)
        .collect())
}

/// Writes `next` over `found`, while `claim` (of the request's source) holds and nobody has
/// written the request since it was read: the request as written, or `None` when refused.
pub async fn update(
    etcd: &Etcd,
    prefix: &str,
    claim: &Claim,
    found: &Found,
    next: &Request,
) -> Result<Option<Found>, RequestError> {
    debug_assert_eq!(claim.source, found.request.source);
    let owner = fence::owner_key(prefix, &claim.source);
    write(etcd, found, next, fence::claim_holds(&owner, claim)).await
}

/// Writes `next` over `found` when `guard` and `found`'s revision hold.
async fn write(
    etcd: &Etcd,
    found: &Found,
    next: &Request,
    mut guard: Vec<Compare>,
) -> Result<Option<Found>, RequestError> {
    guard.push(Compare::ModRevision(found.key.clone(), found.revision));
    let txn = Txn {
        compare: guard,
        success: vec![
            Op::Put {
                key: found.key.clone(),
                value: encode(next),
                lease: 0,
            },
            Op::Get(found.key.clone()),
        ],
        failure: vec![],
    };
    let outcome = etcd.txn(&txn).await?;
    if !outcome.succeeded {
        return Ok(None);
    }
    first(&outcome.ranges, &found.key).map(decode).transpose()
}

fn first<'a>(ranges: &'a [Vec<Kv>], key: &[u8]) -> Option<&'a Kv> {
    ranges
        .first()
        .and_then(|kvs| kvs.iter().find(|kv| kv.key == key))
}

/// The requests this instance should take now: not over, of a source it may start
/// (`may_run`), one per source, and none of a source that runs one here already (`here`: the
/// request keys running here, with their source), oldest asked first.
pub fn to_run<'a>(
    requests: &'a [Found],
    may_run: impl Fn(&str) -> bool,
    here: &BTreeMap<Vec<u8>, String>,
) -> Vec<&'a Found> {
    let mut by_source: BTreeMap<&str, &Found> = BTreeMap::new();
    for f in requests {
        let r = &f.request;
        if r.state.is_final()
            || here.contains_key(&f.key)
            || here.values().any(|s| *s == r.source)
            || !may_run(&r.source)
        {
            continue;
        }
        let earlier = by_source
            .get(r.source.as_str())
            .is_some_and(|o| (o.request.asked_at, &o.key) <= (r.asked_at, &f.key));
        if !earlier {
            by_source.insert(&r.source, f);
        }
    }
    by_source.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).unwrap()
    }

    fn range(start: i64, end: i64) -> Backfill {
        Backfill {
            start: at(start),
            end: at(end),
        }
    }

    fn kv(key: &str, value: Vec<u8>, rev: i64) -> Kv {
        Kv {
            key: key.as_bytes().to_vec(),
            value,
            create_revision: 1,
            mod_revision: rev,
            lease: 0,
        }
    }

    fn found(source: &str, start: i64, state: State, asked_at: i64) -> Found {
        let mut request = Request::new(source, &range(start, start + 60), "cli", at(asked_at));
        request.state = state;
        Found {
            key: request_key("/p", source, &range(start, start + 60)),
            request,
            revision: 1,
        }
    }

    #[test]
    fn the_key_is_the_backfills_cursor_under_the_prefix() {
        let b = range(100, 200);
        assert_eq!(
            String::from_utf8(request_key("/msgtrace", "contoso", &b)).unwrap(),
            format!("/msgtrace/{}", b.cursor_name("contoso")).replace("/backfill/", "/backfills/")
        );
        assert!(request_key("/p", "s", &b).starts_with(&requests_prefix("/p")));
    }

    #[test]
    fn a_request_round_trips_as_a_versioned_record() {
        let r = Request::new("contoso", &range(100, 200), "cli@host", at(300));
        let bytes = encode(&r);
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(
            text.starts_with(r#"{"version":"1","source":"contoso""#),
            "{text}"
        );
        assert!(text.contains(r#""state":"queued""#), "{text}");
        let f = decode(&kv("/p/backfills/contoso/100-200", bytes, 9)).unwrap();
        assert_eq!(f.request, r);
        assert_eq!(f.revision, 9);
        assert_eq!(f.request.backfill(), Some(range(100, 200)));
    }

    #[test]
    fn a_value_that_is_not_a_request_of_its_key_is_a_one_line_error() {
        let good = encode(&Request::new("contoso", &range(100, 200), "cli", at(1)));
        for (key, value) in [
            ("/p/backfills/contoso/100-200", b"junk".to_vec()),
            (
                "/p/backfills/contoso/100-200",
                br#"{"version":"2","source":"contoso"}"#.to_vec(),
            ),
            ("/p/backfills/fabrikam/100-200", good.clone()),
            ("/p/backfills/contoso/100-300", good),
            (
                "/p/backfills/contoso/200-100",
                encode(&Request {
                    start: 200,
                    end: 100,
                    ..Request::new("contoso", &range(100, 200), "cli", at(1))
                }),
            ),
        ] {
            let e = decode(&kv(key, value, 1)).unwrap_err();
            let text = e.to_string();
            assert_eq!(text.lines().count(), 1, "{text}");
            assert!(text.contains(key), "{text}");
            assert!(text.contains("remove the key"), "{text}");
        }
    }

    #[test]
    fn taking_and_ending_keep_the_ask_and_describe_the_state() {
        let r = Request::new("contoso", &range(100, 200), "cli", at(1));
        assert_eq!(r.describe(), "queued");
        let t = r.taken("c-1", at(2));
        assert_eq!((t.state, t.by.as_deref()), (State::Running, Some("c-1")));
        assert_eq!(t.describe(), "running on c-1");
        let ok = t.ended(&Outcome::Succeeded { pages: 3, rows: 12 }, at(3));
        assert_eq!(
            ok.describe(),
            "succeeded on c-1 (3 pages, 12 rows in its last job)"
        );
        assert_eq!((ok.asked_by.as_str(), ok.asked_at), ("cli", at(1)));
        let bad = t.ended(
            &Outcome::Failed {
                error: "boom".into(),
                pages: 1,
                rows: 2,
            },
            at(3),
        );
        assert_eq!(bad.describe(), "failed on c-1: boom");
        assert!(bad.state.is_final() && ok.state.is_final() && !t.state.is_final());
        let again = bad.requeued("cli-2", at(4));
        assert_eq!(again.state, State::Queued);
        assert_eq!((again.by, again.error, again.rows), (None, None, 0));
    }

    #[test]
    fn only_jobs_that_ended_on_their_own_are_recorded() {
        let summary = |state, error: Option<&str>| JobSummary {
            job_id: "j".into(),
            state,
            pages: 2,
            rows: 5,
            dropped: 0,
            window: None,
            error: error.map(str::to_owned),
        };
        assert_eq!(
            Outcome::of(Some(&summary(JobState::Succeeded, None))),
            Some(Outcome::Succeeded { pages: 2, rows: 5 })
        );
        assert_eq!(
            Outcome::of(Some(&summary(JobState::Failed, Some("HTTP 403")))),
            Some(Outcome::Failed {
                error: "HTTP 403".into(),
                pages: 2,
                rows: 5
            })
        );
        assert_eq!(Outcome::of(Some(&summary(JobState::Cancelled, None))), None);
        assert_eq!(Outcome::of(None), None);
    }

    #[test]
    fn the_owner_takes_one_open_request_per_source_oldest_first() {
        let requests = vec![
            found("a", 100, State::Queued, 5),
            found("a", 200, State::Queued, 3),
            found("b", 100, State::Running, 1),
            found("c", 100, State::Succeeded, 1),
            found("d", 100, State::Failed, 1),
            found("e", 100, State::Queued, 1),
        ];
        let mine = |s: &str| s != "e";
        let keys = |v: Vec<&Found>| -> Vec<(String, i64)> {
            v.iter()
                .map(|f| (f.request.source.clone(), f.request.start))
                .collect()
        };
        // `b` was taken by an instance that died or lost the source: taken again.
        assert_eq!(
            keys(to_run(&requests, mine, &BTreeMap::new())),
            [("a".to_owned(), 200), ("b".to_owned(), 100)]
        );
        // A source running a request here waits for it; a request running here is not taken.
        let here = BTreeMap::from([(requests[1].key.clone(), "a".to_owned())]);
        assert_eq!(
            keys(to_run(&requests, mine, &here)),
            [("b".to_owned(), 100)]
        );
        assert!(to_run(&requests, |_| false, &BTreeMap::new()).is_empty());
    }
}
