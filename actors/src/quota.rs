//! The API request budget (Graph: 100 requests per 5 minutes per tenant), shared by every source
//! and job of a tenant, so that steady-state collection never trips a 429.
//!
//! A sliding-window log: a request may go when fewer than `requests` were sent in the last `per`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A budget of `requests` per `per`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotaSpec {
    /// Requests allowed in any span of `per`.
    pub requests: u32,
    /// The span.
    pub per: Duration,
}

impl QuotaSpec {
    /// The span the gate enforces: `per` + 2 % + 500 ms (Graph's 300 s becomes 306.5 s).
    pub fn effective_span(&self) -> Duration {
        self.per + self.per / 50 + Duration::from_millis(500)
    }
}

/// The log of one tenant's recent requests.
#[derive(Debug)]
pub struct QuotaGate {
    spec: QuotaSpec,
    sent: VecDeque<Instant>,
    blocked_until: Option<Instant>,
    waited: Duration,
}

impl QuotaGate {
    /// An empty gate.
    pub fn new(spec: QuotaSpec) -> QuotaGate {
        QuotaGate {
            spec: QuotaSpec {
                requests: spec.requests,
                per: spec.effective_span(),
            },
            sent: VecDeque::new(),
            blocked_until: None,
            waited: Duration::ZERO,
        }
    }

    /// Takes a slot at `now` and returns `None`, or returns how long to wait before asking again.
    pub fn reserve(&mut self, now: Instant) -> Option<Duration> {
        if let Some(until) = self.blocked_until {
            if until > now {
                return Some(until - now);
            }
            self.blocked_until = None;
        }
        while self
            .sent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.spec.per)
        {
            self.sent.pop_front();
        }
        if (self.sent.len() as u32) < self.spec.requests.max(1) {
            self.sent.push_back(now);
            None
        } else {
            let oldest = *self.sent.front().expect("non-empty when full");
            Some(
                (oldest + self.spec.per)
                    .saturating_duration_since(now)
                    .max(Duration::from_millis(1)),
            )
        }
    }

    /// The API said "too many requests": send nothing before `until`.
    pub fn block_until(&mut self, until: Instant) {
        self.blocked_until = Some(self.blocked_until.map_or(until, |b| b.max(until)));
    }

    /// Requests left in the current span at `now`.
    pub fn remaining(&self, now: Instant) -> u32 {
        let used = self
            .sent
            .iter()
            .filter(|t| now.duration_since(**t) < self.spec.per)
            .count() as u32;
        self.spec.requests.saturating_sub(used)
    }

    /// Total time callers waited for a slot.
    pub fn waited(&self) -> Duration {
        self.waited
    }
}

/// A gate shared by the sources of one tenant.
pub type SharedGate = Arc<Mutex<QuotaGate>>;

/// Waits for a slot. Returns how long it waited.
pub async fn acquire(gate: &SharedGate) -> Duration {
    let mut total = Duration::ZERO;
    loop {
        let wait = {
            let mut g = gate.lock().unwrap_or_else(|p| p.into_inner());
            let w = g.reserve(Instant::now());
            if w.is_none() {
                g.waited += total;
            }
            w
        };
        match wait {
            None => return total,
            Some(d) => {
                total += d;
                tokio::time::sleep(d).await;
            }
        }
    }
}

/// One gate per tenant key; sources with the same key share it (the first one's budget wins).
#[derive(Default)]
pub struct QuotaRegistry {
    gates: HashMap<String, SharedGate>,
}

impl QuotaRegistry {
    /// The gate for `key`, created with `spec` if new.
    pub fn gate(&mut self, key: &str, spec: QuotaSpec) -> SharedGate {
        self.gates
            .entry(key.to_owned())
            .or_insert_with(|| Arc::new(Mutex::new(QuotaGate::new(spec))))
            .clone()
    }

    /// Requests left at `now` in the budget of `key`; `None` when no source uses it.
    pub fn remaining(&self, key: &str, now: Instant) -> Option<u32> {
        let gate = self.gates.get(key)?;
        let remaining = gate
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remaining(now);
        Some(remaining)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sliding_window_allows_exactly_the_budget() {
        let spec = QuotaSpec {
            requests: 3,
            per: Duration::from_secs(10),
        };
        let span = spec.effective_span();
        assert_eq!(span, Duration::from_millis(10_700));
        let mut g = QuotaGate::new(spec);
        let t0 = Instant::now();
        assert_eq!(g.reserve(t0), None);
        assert_eq!(g.reserve(t0 + Duration::from_secs(1)), None);
        assert_eq!(g.reserve(t0 + Duration::from_secs(2)), None);
        assert_eq!(g.remaining(t0 + Duration::from_secs(2)), 0);
        assert_eq!(
            g.reserve(t0 + Duration::from_secs(3)),
            Some(span - Duration::from_secs(3))
        );
        assert_eq!(g.reserve(t0 + span), None, "the first slot expired");
        assert!(g.reserve(t0 + span).is_some());
    }

    #[test]
    fn never_more_than_the_budget_in_any_window() {
        let spec = QuotaSpec {
            requests: 5,
            per: Duration::from_millis(100),
        };
        let mut g = QuotaGate::new(spec);
        let t0 = Instant::now();
        let mut granted: Vec<Instant> = Vec::new();
        let mut t = t0;
        while granted.len() < 50 {
            match g.reserve(t) {
                None => granted.push(t),
                Some(w) => t += w,
            }
        }
        for (i, a) in granted.iter().enumerate() {
            let in_window = granted[i..]
                .iter()
                .take_while(|b| b.duration_since(*a) < spec.per)
                .count();
            assert!(in_window <= 5);
        }
    }

    #[test]
    fn the_registry_tells_what_is_left_of_a_tenants_budget() {
        let spec = QuotaSpec {
            requests: 3,
            per: Duration::from_secs(10),
        };
        let mut registry = QuotaRegistry::default();
        let t0 = Instant::now();
        assert_eq!(registry.remaining("tenant", t0), None);
        let gate = registry.gate("tenant", spec);
        assert_eq!(registry.remaining("tenant", t0), Some(3));
        assert_eq!(gate.lock().unwrap().reserve(t0), None);
        assert_eq!(registry.remaining("tenant", t0), Some(2));
    }

    #[test]
    fn blocking_after_a_429() {
        let mut g = QuotaGate::new(QuotaSpec {
            requests: 100,
            per: Duration::from_secs(300),
        });
        let t0 = Instant::now();
        g.block_until(t0 + Duration::from_secs(30));
        assert_eq!(g.reserve(t0), Some(Duration::from_secs(30)));
        assert_eq!(g.reserve(t0 + Duration::from_secs(30)), None);
    }
}
