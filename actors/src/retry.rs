//! When and how long to wait before retrying a failed request (Cribl's retry settings).

use std::time::Duration;

/// The longest `Retry-After` that is honoured; longer ones are ignored (Cribl's rule).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(20);

/// The retry algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryKind {
    /// `initial × multiplier^n`.
    Backoff,
    /// `initial` every time.
    Static,
    /// Never retry.
    Disabled,
}

/// The retry policy of a source.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Algorithm.
    pub kind: RetryKind,
    /// First delay.
    pub initial: Duration,
    /// Retries at most (0 = none).
    pub limit: u32,
    /// Base of the exponential backoff.
    pub multiplier: f64,
    /// HTTP status codes that are retried.
    pub codes: Vec<u16>,
    /// Honour `Retry-After` up to [`MAX_RETRY_AFTER`].
    pub honor_retry_after: bool,
    /// Retry a connection that timed out.
    pub retry_connect_timeout: bool,
    /// Retry a connection reset by the peer.
    pub retry_connect_reset: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            kind: RetryKind::Backoff,
            initial: Duration::from_millis(1000),
            limit: 5,
            multiplier: 2.0,
            codes: vec![429, 503],
            honor_retry_after: true,
            retry_connect_timeout: true,
            retry_connect_reset: true,
        }
    }
}

/// What happened to one attempt.
#[derive(Clone, Debug, PartialEq)]
pub enum Failure {
    /// The server answered with this status (and maybe a `Retry-After` delay).
    Status {
        /// HTTP status.
        code: u16,
        /// Parsed `Retry-After`.
        retry_after: Option<Duration>,
    },
    /// The connection or the request timed out.
    Timeout,
    /// The connection was refused or reset, or the body was cut short.
    Connection,
    /// The body could not be used (not JSON, wrong shape, too large).
    BadBody,
}

/// The decision for one failure.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// Wait this long, then retry.
    pub delay: Duration,
    /// The delay came from `Retry-After`.
    pub from_retry_after: bool,
}

impl RetryPolicy {
    /// Whether to retry after `failure` when `retries_done` retries were made already, and after
    /// how long. `None` = give up.
    pub fn decide(&self, failure: &Failure, retries_done: u32) -> Option<Decision> {
        self.decide_honoring(failure, retries_done, MAX_RETRY_AFTER)
    }

    /// [`RetryPolicy::decide`], honouring a `Retry-After` up to `max_retry_after` instead of
    /// [`MAX_RETRY_AFTER`] (a receiver whose documented `Retry-After` may be longer); a longer
    /// one is ignored as there.
    pub fn decide_honoring(
        &self,
        failure: &Failure,
        retries_done: u32,
        max_retry_after: Duration,
    ) -> Option<Decision> {
        if self.kind == RetryKind::Disabled || retries_done >= self.limit {
            return None;
        }
        let retryable = match failure {
            Failure::Status { code, .. } => !(200..300).contains(code) && self.codes.contains(code),
            Failure::Timeout => self.retry_connect_timeout,
            Failure::Connection => self.retry_connect_reset,
            Failure::BadBody => true,
        };
        if !retryable {
            return None;
        }
        if let Failure::Status {
            retry_after: Some(after),
            ..
        } = failure
        {
            if self.honor_retry_after && *after <= max_retry_after {
                return Some(Decision {
                    delay: *after,
                    from_retry_after: true,
                });
            }
        }
        let delay = match self.kind {
            RetryKind::Static => self.initial,
            _ => self.backoff().delay(retries_done),
        };
        Some(Decision {
            delay,
            from_retry_after: false,
        })
    }

    /// The policy's exponential backoff (`initial × multiplier^n`, at most an hour).
    pub fn backoff(&self) -> Backoff {
        Backoff {
            initial: self.initial,
            multiplier: self.multiplier,
            max: Duration::from_secs(3600),
        }
    }
}

/// Tries of a next link that answers 400 beyond the retry policy's, before it is abandoned: a
/// next link answered 400 may be a transient state of the server.
pub const NEXT_LINK_400_RETRIES: u32 = 2;

/// Their waits: 0.5 s, then 1 s.
const NEXT_LINK_400_BACKOFF: Backoff =
    Backoff::doubling(Duration::from_millis(500), Duration::from_secs(1));

/// Longest wait between two deliveries of a page held while a sink refuses it.
pub const HOLD_MAX_DELAY: Duration = Duration::from_secs(60);

/// The verdict on a failed request ([`RetryPolicy::judge`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Judgement {
    /// Retry after this; `None`: give up (what then is the failure's kind).
    pub retry: Option<Decision>,
    /// A 429: every source of the tenant holds back this long, not only the one that was
    /// answered, and for the same wait as the page (one rule for both).
    pub tenant_hold: Option<Duration>,
}

impl RetryPolicy {
    /// The one rule for a page's failed request: whether and when it is retried (the policy's
    /// [`RetryPolicy::decide`], plus [`NEXT_LINK_400_RETRIES`] for a next link answered 400),
    /// and how long the tenant's budget holds back after a 429.
    pub fn judge(&self, failure: &Failure, retries_done: u32, is_next_link: bool) -> Judgement {
        let retry = self.decide(failure, retries_done).or_else(|| {
            (is_next_link
                && matches!(failure, Failure::Status { code: 400, .. })
                && retries_done < NEXT_LINK_400_RETRIES)
                .then(|| Decision {
                    delay: NEXT_LINK_400_BACKOFF.delay(retries_done),
                    from_retry_after: false,
                })
        });
        let tenant_hold = match failure {
            Failure::Status {
                code: 429,
                retry_after,
            } => retry
                .as_ref()
                .map(|d| d.delay)
                .or(retry_after.map(|a| a.min(MAX_RETRY_AFTER))),
            _ => None,
        };
        Judgement { retry, tenant_hold }
    }

    /// The wait before a failed task is run again (`task_reschedule_limit`): twice the first
    /// delay, every time.
    pub fn reschedule_delay(&self) -> Duration {
        self.initial * 2
    }

    /// The wait before a held page is given again to the sinks that refused it (`attempt` from
    /// 0): from the first delay (at least 0.1 s), doubling up to [`HOLD_MAX_DELAY`].
    pub fn hold_delay(&self, attempt: u32) -> Duration {
        Backoff::doubling(self.initial.max(Duration::from_millis(100)), HOLD_MAX_DELAY)
            .delay(attempt)
    }
}

/// Exponential backoff on its own, for waits that are not a request's retries (a held page, a
/// rescheduled task, a token request): `initial × multiplier^attempt`, at most `max`. The one
/// place where delays are computed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    /// The first delay (attempt 0).
    pub initial: Duration,
    /// Each delay is this many times the one before (at least 1).
    pub multiplier: f64,
    /// The longest delay.
    pub max: Duration,
}

impl Backoff {
    /// A backoff from `initial`, doubling, at most `max`.
    pub const fn doubling(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            multiplier: 2.0,
            max,
        }
    }

    /// The wait before attempt `attempt + 1` (0 = the first wait).
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = self.multiplier.max(1.0).powi(attempt.min(60) as i32);
        let nanos = (self.initial.as_nanos() as f64 * factor).min(self.max.as_nanos() as f64);
        Duration::from_nanos(nanos.round() as u64)
    }
}

/// Parses a `Retry-After` value: delay seconds or an HTTP date.
pub fn parse_retry_after(value: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let delta = when.with_timezone(&chrono::Utc) - now;
    Some(delta.to_std().unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16) -> Failure {
        Failure::Status {
            code,
            retry_after: None,
        }
    }

    #[test]
    fn a_next_link_answered_400_gets_two_more_tries_a_first_page_none() {
        let p = RetryPolicy::default();
        let delays: Vec<_> = (0..3)
            .map(|n| {
                p.judge(&status(400), n, true)
                    .retry
                    .map(|d| d.delay.as_millis())
            })
            .collect();
        assert_eq!(delays, vec![Some(500), Some(1000), None]);
        assert_eq!(p.judge(&status(400), 0, false).retry, None);
        assert_eq!(p.judge(&status(400), 0, true).tenant_hold, None);
    }

    #[test]
    fn a_429_holds_the_tenant_for_the_page_s_wait_or_the_capped_retry_after() {
        let p = RetryPolicy::default();
        let after = |secs| Failure::Status {
            code: 429,
            retry_after: Some(Duration::from_secs(secs)),
        };
        // Honoured: the page and the tenant wait what the server said.
        assert_eq!(
            p.judge(&after(7), 0, false).tenant_hold,
            Some(Duration::from_secs(7))
        );
        // Longer than 20 s: ignored by both; the policy's delay instead.
        assert_eq!(
            p.judge(&after(600), 1, false).tenant_hold,
            Some(Duration::from_secs(2))
        );
        // Given up on: the tenant still holds back, at most 20 s.
        let spent = RetryPolicy {
            limit: 0,
            ..RetryPolicy::default()
        };
        let j = spent.judge(&after(600), 0, false);
        assert_eq!(j.retry, None);
        assert_eq!(j.tenant_hold, Some(MAX_RETRY_AFTER));
        assert_eq!(p.judge(&status(503), 0, false).tenant_hold, None);
    }

    #[test]
    fn reschedules_wait_twice_the_first_delay_held_pages_double_to_a_minute() {
        let p = RetryPolicy {
            initial: Duration::from_millis(300),
            ..RetryPolicy::default()
        };
        assert_eq!(p.reschedule_delay(), Duration::from_millis(600));
        let holds: Vec<_> = [0, 1, 2, 20].iter().map(|&n| p.hold_delay(n)).collect();
        assert_eq!(
            holds,
            vec![
                Duration::from_millis(300),
                Duration::from_millis(600),
                Duration::from_millis(1200),
                HOLD_MAX_DELAY
            ]
        );
        let tiny = RetryPolicy {
            initial: Duration::ZERO,
            ..RetryPolicy::default()
        };
        assert_eq!(tiny.hold_delay(0), Duration::from_millis(100));
    }

    #[test]
    fn a_longer_retry_after_is_honoured_only_where_asked_and_within_the_limit() {
        let p = RetryPolicy::default();
        let after = |secs| Failure::Status {
            code: 429,
            retry_after: Some(Duration::from_secs(secs)),
        };
        let wait = |d: Option<Decision>| d.map(|d| (d.delay.as_secs(), d.from_retry_after));
        assert_eq!(wait(p.decide(&after(60), 0)), Some((1, false)));
        let five_min = Duration::from_secs(300);
        assert_eq!(
            wait(p.decide_honoring(&after(60), 0, five_min)),
            Some((60, true))
        );
        assert_eq!(
            wait(p.decide_honoring(&after(301), 1, five_min)),
            Some((2, false))
        );
        assert_eq!(p.decide_honoring(&after(60), p.limit, five_min), None);
    }

    #[test]
    fn backoff_grows_and_stops_at_limit() {
        let p = RetryPolicy::default();
        let delays: Vec<_> = (0..6)
            .map(|n| p.decide(&status(429), n).map(|d| d.delay.as_millis()))
            .collect();
        assert_eq!(
            delays,
            vec![
                Some(1000),
                Some(2000),
                Some(4000),
                Some(8000),
                Some(16000),
                None
            ]
        );
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let b = Backoff::doubling(Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<u128> = (0..6).map(|n| b.delay(n).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(1), "no overflow");
        let flat = Backoff {
            multiplier: 0.5,
            ..b
        };
        assert_eq!(flat.delay(3), Duration::from_millis(100), "never shrinks");
    }

    #[test]
    fn codes_and_kinds() {
        let mut p = RetryPolicy::default();
        assert!(p.decide(&status(500), 0).is_none());
        assert!(p.decide(&status(200), 0).is_none());
        p.codes.push(200);
        assert!(p.decide(&status(200), 0).is_none(), "2xx is never retried");
        p.kind = RetryKind::Static;
        assert_eq!(p.decide(&status(503), 3).unwrap().delay.as_millis(), 1000);
        p.kind = RetryKind::Disabled;
        assert!(p.decide(&status(503), 0).is_none());
        let p = RetryPolicy {
            limit: 0,
            ..RetryPolicy::default()
        };
        assert!(p.decide(&status(503), 0).is_none());
    }

    #[test]
    fn retry_after_honoured_up_to_20s() {
        let p = RetryPolicy::default();
        let f = |s| Failure::Status {
            code: 429,
            retry_after: Some(Duration::from_secs(s)),
        };
        let d = p.decide(&f(7), 0).unwrap();
        assert_eq!((d.delay.as_secs(), d.from_retry_after), (7, true));
        let d = p.decide(&f(60), 0).unwrap();
        assert_eq!((d.delay.as_millis(), d.from_retry_after), (1000, false));
        let p = RetryPolicy {
            honor_retry_after: false,
            ..RetryPolicy::default()
        };
        assert!(!p.decide(&f(7), 0).unwrap().from_retry_after);
    }

    #[test]
    fn connection_failures_follow_switches() {
        let mut p = RetryPolicy::default();
        assert!(p.decide(&Failure::Timeout, 0).is_some());
        assert!(p.decide(&Failure::Connection, 0).is_some());
        p.retry_connect_timeout = false;
        p.retry_connect_reset = false;
        assert!(p.decide(&Failure::Timeout, 0).is_none());
        assert!(p.decide(&Failure::Connection, 0).is_none());
    }

    #[test]
    fn retry_after_parsing() {
        let now = chrono::DateTime::parse_from_rfc3339("2015-10-21T07:28:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        assert_eq!(parse_retry_after("12", now), Some(Duration::from_secs(12)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:05 GMT", now),
            Some(Duration::from_secs(5))
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
