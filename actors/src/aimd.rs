//! How much of a tenant's request budget the engine lets itself use when other applications of the
//! same tenant spend part of it (Graph's 100 requests per 5 minutes are per tenant, not per app).
//!
//! The engine never sends more than its own budget allows ([`crate::quota::QuotaGate`]), so a 429
//! is always one its own count did not predict: somebody else spent the rest. Then the limit is
//! halved (multiplicative decrease), and it grows back by one request per span in which the gate
//! was full (additive increase). Growing back stops one below the limit that met the wall; going
//! past it again is a probe, made at most once per [`PROBE_EVERY`] (or per span, if longer),
//! since a probe that finds the wall again costs one 429; each probe that passes doubles the next
//! one's step, so the full budget comes back quickly once the other application is gone.
//!
//! Plain logic with the time passed in: unit-tested without clocks.

use std::time::{Duration, Instant};

/// The shortest time between two probes above the limit that last met a 429.
pub const PROBE_EVERY: Duration = Duration::from_secs(60);

/// Why the limit changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// A 429 the engine's own count did not predict, with this many of its own requests in the
    /// span.
    Throttled {
        /// The engine's requests in the span (in flight or answered), the refused one included.
        ours: u32,
    },
    /// A span with the gate full and no 429: one more request per span, up to just below the
    /// limit that last met a 429.
    Recovered,
    /// Above the limit that last met a 429, after a quiet [`PROBE_EVERY`].
    Probe,
}

/// A change of the limit, to be logged and exported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Change {
    /// The limit before.
    pub from: u32,
    /// The limit after.
    pub to: u32,
    /// Why.
    pub reason: Reason,
}

/// The engine's limit within one tenant's budget.
#[derive(Debug, Clone)]
pub struct ShareControl {
    budget: u32,
    limit: u32,
    span: Duration,
    /// The limit at which the last 429 came; growing back stops one below it.
    wall: Option<u32>,
    /// The next probe's step above the limit.
    step: u32,
    /// When the limit last changed (the start of the quiet time an increase needs).
    since: Option<Instant>,
    /// When it was last lowered: a 429 of a request admitted before that belongs to the same
    /// overshoot and lowers nothing more.
    lowered: Option<Instant>,
    /// Whether the gate was full (a request had to wait for the limit) since the last change:
    /// without demand there is nothing to learn, and the limit stays.
    pressed: bool,
}

impl ShareControl {
    /// The whole `budget` per `span` at first.
    pub fn new(budget: u32, span: Duration) -> ShareControl {
        let budget = budget.max(1);
        ShareControl {
            budget,
            limit: budget,
            span,
            wall: None,
            step: 1,
            since: None,
            lowered: None,
            pressed: false,
        }
    }

    /// Requests the engine may send per span now.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// The gate was full at `now`: a request waits for the limit.
    pub fn pressed(&mut self, now: Instant) {
        self.pressed = true;
        self.since.get_or_insert(now);
    }

    /// A request admitted at `admitted` was answered 429 at `now`, with `ours` of the engine's
    /// requests in the span (the refused one included).
    pub fn throttled(&mut self, admitted: Instant, ours: u32, now: Instant) -> Option<Change> {
        if self.lowered.is_some_and(|at| admitted < at) {
            return None;
        }
        let from = self.limit;
        let wall = from.min(ours.max(1));
        self.wall = Some(wall);
        self.step = 1;
        self.limit = (wall / 2).max(1);
        self.lowered = Some(now);
        self.since = Some(now);
        self.pressed = false;
        Some(Change {
            from,
            to: self.limit,
            reason: Reason::Throttled { ours },
        })
    }

    /// The limit at `now`: one step up when the quiet time since the last change is over and the
    /// gate was full meanwhile.
    pub fn tick(&mut self, now: Instant) -> Option<Change> {
        if self.limit >= self.budget || !self.pressed {
            return None;
        }
        let since = self.since?;
        // Below the wall: back up one a span. At or past it: a probe, whose step doubles each
        // time one passes (a 429 resets it), so that a budget the others left comes back fast.
        let below_wall = self.wall.is_some_and(|w| self.limit + 1 < w);
        let (quiet, up, reason) = if below_wall {
            (self.span, 1, Reason::Recovered)
        } else {
            (self.span.max(PROBE_EVERY), self.step, Reason::Probe)
        };
        if now.saturating_duration_since(since) < quiet {
            return None;
        }
        if reason == Reason::Probe {
            self.step = self.step.saturating_mul(2);
        }
        let from = self.limit;
        self.limit = (from + up).min(self.budget);
        self.since = Some(now);
        self.pressed = false;
        (self.limit != from).then_some(Change {
            from,
            to: self.limit,
            reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPAN: Duration = Duration::from_secs(5);

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// Ticks once a second from `from` for `n` seconds, the gate full throughout.
    fn run(c: &mut ShareControl, from: Instant, n: u64) -> Vec<Change> {
        (1..=n)
            .filter_map(|s| {
                let now = from + secs(s);
                c.pressed(now);
                c.tick(now)
            })
            .collect()
    }

    #[test]
    fn a_429_halves_the_limit_and_it_grows_back_to_just_below_the_wall() {
        let t0 = Instant::now();
        let mut c = ShareControl::new(10, SPAN);
        let lowered = c.throttled(t0, 6, t0).expect("lowered");
        assert_eq!(
            lowered,
            Change {
                from: 10,
                to: 3,
                reason: Reason::Throttled { ours: 6 }
            }
        );
        let changes = run(&mut c, t0, 30);
        let limits: Vec<u32> = changes.iter().map(|c| c.to).collect();
        assert_eq!(limits, [4, 5], "one a span, then held below the wall of 6");
        assert!(changes.iter().all(|c| c.reason == Reason::Recovered));
        assert_eq!(c.limit(), 5);
    }

    #[test]
    fn past_the_wall_only_a_probe_a_minute_and_passing_probes_double_the_step() {
        let t0 = Instant::now();
        let mut c = ShareControl::new(100, SPAN);
        c.throttled(t0, 8, t0);
        assert_eq!(c.limit(), 4);
        let changes = run(&mut c, t0, 15);
        assert_eq!(c.limit(), 7, "grown back below the wall: {changes:?}");
        let quiet_from = t0 + secs(15);
        // Nothing above the wall before a minute is over.
        assert_eq!(run(&mut c, quiet_from, 59), []);
        let probes = run(&mut c, quiet_from, 60 * 4);
        let steps: Vec<(u32, u32)> = probes.iter().map(|c| (c.from, c.to)).collect();
        assert_eq!(steps, [(7, 8), (8, 10), (10, 14), (14, 22)]);
        assert!(probes.iter().all(|c| c.reason == Reason::Probe));
    }

    #[test]
    fn a_probe_that_meets_the_wall_again_lowers_once_for_every_request_then_in_flight() {
        let t0 = Instant::now();
        let mut c = ShareControl::new(10, SPAN);
        c.throttled(t0, 10, t0);
        assert_eq!(c.limit(), 5);
        // Two requests admitted before the first 429 came back 429 too: the same overshoot.
        assert_eq!(c.throttled(t0 - secs(1), 9, t0 + secs(1)), None);
        assert_eq!(c.limit(), 5);
        // One admitted after it is news: the others spend more now.
        let again = c.throttled(t0 + secs(2), 4, t0 + secs(3)).expect("lowered");
        assert_eq!((again.from, again.to), (5, 2));
    }

    #[test]
    fn without_demand_the_limit_stays_where_it_is() {
        let t0 = Instant::now();
        let mut c = ShareControl::new(10, SPAN);
        c.throttled(t0, 10, t0);
        for s in 1..=600 {
            assert_eq!(c.tick(t0 + secs(s)), None);
        }
        assert_eq!(c.limit(), 5);
        c.pressed(t0 + secs(600));
        assert_eq!(c.tick(t0 + secs(601)).map(|c| c.to), Some(6));
    }

    #[test]
    fn the_limit_never_leaves_one_to_the_budget() {
        let t0 = Instant::now();
        let mut c = ShareControl::new(4, SPAN);
        for i in 0..10 {
            c.throttled(t0 + secs(i), 1, t0 + secs(i));
            assert_eq!(c.limit(), 1);
        }
        run(&mut c, t0 + secs(10), 3600);
        assert_eq!(c.limit(), 4);
    }
}
