//! The API request budget (Graph: 100 requests per 5 minutes per tenant), shared by every source
//! and job of a tenant, so that steady-state collection never trips a 429.
//!
//! A sliding-window log: a request may go when fewer than the limit were sent in the last `per`.
//! A request holds its place from the moment it is let through until its answer comes, and its
//! place frees `per` after that answer: the server counted it at its arrival, which is before the
//! answer, so the next request can go at that exact moment with no margin, however long the
//! request waited between the gate and the wire or travelled. The limit is the budget, lowered
//! while other applications of the tenant spend part of it ([`crate::aimd`]).
//!
//! Two priorities: the summary collection's requests ([`acquire`]) and, below them, the
//! per-recipient detail requests ([`acquire_low`]), which use what the collection leaves. A
//! low-priority request is let through only while no collection of the tenant is under way
//! ([`TenantGate::collecting`]: a job between its first and last page) and none of its requests
//! waits for a place, and then never into the last [`QuotaGate::reserve_places`] places of the
//! span, which stay for the next collection's first requests. So a collection never waits for a
//! detail request, except for places details took before it started (at most the limit less
//! the reserve), which free within one span.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::aimd::{Change, Reason, ShareControl};

/// A budget of `requests` per `per`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotaSpec {
    /// Requests allowed in any span of `per`.
    pub requests: u32,
    /// The span.
    pub per: Duration,
}

/// A request let through by [`QuotaGate::reserve`], holding its place until its answer.
#[derive(Debug, PartialEq, Eq)]
pub struct Ticket {
    id: u64,
    admitted: Instant,
}

/// Why a low-priority request is not let through now ([`QuotaGate::reserve_low`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deferred {
    /// A collection is under way or one of its requests waits: ask again once it is over.
    Yield,
    /// Ask again after this long (the budget is spent down to its reserve, or blocked).
    Wait(Duration),
}

/// The log of one tenant's recent requests.
#[derive(Debug)]
pub struct QuotaGate {
    spec: QuotaSpec,
    /// When the answers of the requests of the last span came, oldest first.
    answered: VecDeque<Instant>,
    /// Requests let through and not answered yet.
    in_flight: Vec<Ticket>,
    next_id: u64,
    blocked_until: Option<Instant>,
    waited: Duration,
    share: ShareControl,
    /// Requests of normal priority waiting for a place.
    waiting: u32,
    /// Collections under way on the tenant.
    collecting: u32,
}

impl QuotaGate {
    /// An empty gate.
    pub fn new(spec: QuotaSpec) -> QuotaGate {
        QuotaGate {
            spec,
            answered: VecDeque::new(),
            in_flight: Vec::new(),
            next_id: 0,
            blocked_until: None,
            waited: Duration::ZERO,
            share: ShareControl::new(spec.requests, spec.per),
            waiting: 0,
            collecting: 0,
        }
    }

    /// Lets a request through at `now` (`Ok`), or tells how long to wait before asking again.
    pub fn reserve(&mut self, now: Instant) -> Result<Ticket, Duration> {
        self.reserve_keeping(now, 0)
    }

    /// Lets a low-priority request through at `now`: only while no collection is under way and
    /// no normal request waits ([`Deferred::Yield`]), and only into a place above the reserve
    /// ([`Deferred::Wait`] until one frees).
    pub fn reserve_low(&mut self, now: Instant) -> Result<Ticket, Deferred> {
        if self.collecting > 0 || self.waiting > 0 {
            return Err(Deferred::Yield);
        }
        let keep = self.reserve_places();
        self.reserve_keeping(now, keep).map_err(Deferred::Wait)
    }

    /// Places of each span that low-priority requests leave free: a tenth of the limit (at
    /// least one, and never all of it).
    pub fn reserve_places(&self) -> u32 {
        let limit = self.share.limit();
        (limit / 10).max(1).min(limit.saturating_sub(1))
    }

    /// A normal request waits for a place (until [`QuotaGate::end_wait`]).
    pub fn begin_wait(&mut self) {
        self.waiting += 1;
    }

    /// A normal request that waited has its place, or gave up; `true` when none waits now.
    pub fn end_wait(&mut self) -> bool {
        self.waiting = self.waiting.saturating_sub(1);
        self.waiting == 0
    }

    /// A collection of the tenant starts (until [`QuotaGate::end_collecting`]).
    pub fn begin_collecting(&mut self) {
        self.collecting += 1;
    }

    /// A collection ended; `true` when none is under way now.
    pub fn end_collecting(&mut self) -> bool {
        self.collecting = self.collecting.saturating_sub(1);
        self.collecting == 0
    }

    /// [`QuotaGate::reserve`] leaving `keep` places of the limit free.
    fn reserve_keeping(&mut self, now: Instant, keep: u32) -> Result<Ticket, Duration> {
        if let Some(until) = self.blocked_until {
            if until > now {
                return Err(until - now);
            }
            self.blocked_until = None;
        }
        let used = self.used(now);
        let limit = self.share.limit().saturating_sub(keep);
        if used < limit {
            self.next_id += 1;
            self.in_flight.push(Ticket {
                id: self.next_id,
                admitted: now,
            });
            return Ok(Ticket {
                id: self.next_id,
                admitted: now,
            });
        }
        if keep == 0 {
            self.share.pressed(now);
        }
        // The place that frees first: the (used - limit + 1)-th oldest answer, `per` after it.
        // When the places are all held by requests in flight, none frees before `per` from now
        // (an answer comes at `now` at the earliest): asking again then is not late.
        let k = (used - limit) as usize;
        let free_at = match self.answered.get(k) {
            Some(t) => *t + self.spec.per,
            None => now + self.spec.per,
        };
        Err(free_at
            .saturating_duration_since(now)
            .max(Duration::from_millis(1)))
    }

    /// The answer of `ticket`'s request came at `now` (or it failed without one): its place frees
    /// `per` after `now`.
    pub fn answered(&mut self, ticket: Ticket, now: Instant) {
        self.in_flight.retain(|t| t.id != ticket.id);
        let at = self.answered.partition_point(|t| *t <= now);
        self.answered.insert(at, now);
    }

    /// `ticket`'s request was answered 429 at `now`: every 429 is one the gate did not predict
    /// (it lets no more through than the limit), so somebody else spends the budget, and the
    /// engine's limit goes down (unless this 429 belongs to an overshoot already answered).
    pub fn throttled(&mut self, ticket: Ticket, now: Instant) -> Option<Change> {
        let ours = self.used(now);
        let admitted = ticket.admitted;
        self.answered(ticket, now);
        self.share.throttled(admitted, ours, now)
    }

    /// Raises the limit at `now` when the time has come ([`ShareControl::tick`]).
    pub fn tick(&mut self, now: Instant) -> Option<Change> {
        self.share.tick(now)
    }

    /// The API said "too many requests": send nothing before `until`.
    pub fn block_until(&mut self, until: Instant) {
        self.blocked_until = Some(self.blocked_until.map_or(until, |b| b.max(until)));
    }

    /// Requests left in the current span at `now`.
    pub fn remaining(&self, now: Instant) -> u32 {
        let answered = self
            .answered
            .iter()
            .filter(|t| now.saturating_duration_since(**t) < self.spec.per)
            .count();
        let used = (answered + self.in_flight.len()) as u32;
        self.share.limit().saturating_sub(used)
    }

    /// Requests the engine may send per span now: the budget, or less while other applications
    /// of the tenant spend part of it.
    pub fn limit(&self) -> u32 {
        self.share.limit()
    }

    /// Total time callers waited for a slot.
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// Requests in flight or answered in the last span at `now` (older answers forgotten).
    fn used(&mut self, now: Instant) -> u32 {
        while self
            .answered
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= self.spec.per)
        {
            self.answered.pop_front();
        }
        (self.answered.len() + self.in_flight.len()) as u32
    }
}

/// The gate of one tenant, shared by its sources, with the key that names it in logs and metrics.
#[derive(Debug)]
pub struct TenantGate {
    /// [`crate::spec::SourceSpec::quota_key`]: the API host and the tenant.
    pub key: String,
    gate: Mutex<QuotaGate>,
    /// Woken when no collection is under way and no normal request waits any more: the
    /// low-priority requests that yielded ask again.
    yielded: tokio::sync::Notify,
}

impl TenantGate {
    /// A fresh gate for `key`, its limit exported at once.
    pub fn new(key: &str, spec: QuotaSpec) -> TenantGate {
        crate::telemetry::quota_limit(key, spec.requests);
        crate::telemetry::quota_unpredicted(key, 0);
        TenantGate {
            key: key.to_owned(),
            gate: Mutex::new(QuotaGate::new(spec)),
            yielded: tokio::sync::Notify::new(),
        }
    }

    /// A collection of the tenant is under way until the guard is dropped: low-priority
    /// requests wait for it ([`acquire_low`]).
    pub fn collecting(self: &Arc<Self>) -> Collecting {
        self.lock().begin_collecting();
        Collecting(self.clone())
    }

    /// The gate itself.
    pub fn lock(&self) -> MutexGuard<'_, QuotaGate> {
        self.gate.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Logs a change of the engine's limit (one line per change) and exports it.
    fn changed(&self, change: Change) {
        let Change { from, to, reason } = change;
        crate::telemetry::quota_limit(&self.key, to);
        match reason {
            Reason::Throttled { ours } => warn!(
                tenant = %self.key,
                from,
                to,
                ours,
                "429 that the engine's own count did not predict (another application of the tenant spends its budget): lowered the engine's request limit"
            ),
            Reason::Recovered => info!(
                tenant = %self.key,
                from,
                to,
                "no 429 for a span: raised the engine's request limit"
            ),
            Reason::Probe => info!(
                tenant = %self.key,
                from,
                to,
                "no 429 for a while: raised the engine's request limit past where the last 429 came"
            ),
        }
    }
}

/// A gate shared by the sources of one tenant.
pub type SharedGate = Arc<TenantGate>;

/// A collection under way ([`TenantGate::collecting`]); it ends when dropped.
#[derive(Debug)]
pub struct Collecting(SharedGate);

impl Drop for Collecting {
    fn drop(&mut self) {
        if self.0.lock().end_collecting() {
            self.0.yielded.notify_waiters();
        }
    }
}

/// A normal request waiting for a place; it stops waiting when dropped (let through, or
/// abandoned with its future).
struct Waiting<'a>(&'a TenantGate);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.0.lock().end_wait() {
            self.0.yielded.notify_waiters();
        }
    }
}

/// A request's place in its tenant's budget: freed when it is dropped (the answer came, or the
/// request failed or was abandoned), or by [`Permit::throttled`].
#[derive(Debug)]
pub struct Permit {
    gate: SharedGate,
    ticket: Option<Ticket>,
    /// How long the request waited for its place.
    pub waited: Duration,
}

impl Permit {
    /// The request was answered 429: its place frees now, the engine's limit is lowered (logged
    /// and exported) unless this 429 belongs to an overshoot already answered.
    pub fn throttled(mut self) {
        let Some(ticket) = self.ticket.take() else {
            return;
        };
        crate::telemetry::quota_unpredicted(&self.gate.key, 1);
        let change = self.gate.lock().throttled(ticket, Instant::now());
        if let Some(change) = change {
            self.gate.changed(change);
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            self.gate.lock().answered(ticket, Instant::now());
        }
    }
}

/// Waits for a place in the budget; hold the permit until the request's answer has come.
/// While it waits, low-priority requests yield to it.
pub async fn acquire(gate: &SharedGate) -> Permit {
    let mut total = Duration::ZERO;
    let mut waiting: Option<Waiting<'_>> = None;
    loop {
        let (outcome, change) = {
            let mut g = gate.lock();
            let now = Instant::now();
            let change = g.tick(now);
            let outcome = g.reserve(now);
            if outcome.is_ok() {
                g.waited += total;
            } else if waiting.is_none() {
                g.begin_wait();
            }
            (outcome, change)
        };
        if let Some(change) = change {
            gate.changed(change);
        }
        match outcome {
            Ok(ticket) => {
                drop(waiting);
                return Permit {
                    gate: gate.clone(),
                    ticket: Some(ticket),
                    waited: total,
                };
            }
            Err(d) => {
                waiting.get_or_insert(Waiting(gate));
                total += d;
                tokio::time::sleep(d).await;
            }
        }
    }
}

/// Waits for a place left by the tenant's collections ([`QuotaGate::reserve_low`]): while a
/// collection is under way or one of its requests waits, and for a place above the reserve.
pub async fn acquire_low(gate: &SharedGate) -> Permit {
    let mut total = Duration::ZERO;
    loop {
        // Registered before the gate is read, so that a wake between the two is not missed.
        let yielded = gate.yielded.notified();
        tokio::pin!(yielded);
        yielded.as_mut().enable();
        let (outcome, change) = {
            let mut g = gate.lock();
            let now = Instant::now();
            let change = g.tick(now);
            let outcome = g.reserve_low(now);
            if outcome.is_ok() {
                g.waited += total;
            }
            (outcome, change)
        };
        if let Some(change) = change {
            gate.changed(change);
        }
        match outcome {
            Ok(ticket) => {
                return Permit {
                    gate: gate.clone(),
                    ticket: Some(ticket),
                    waited: total,
                }
            }
            Err(Deferred::Yield) => {
                let since = Instant::now();
                yielded.await;
                total += since.elapsed();
            }
            Err(Deferred::Wait(d)) => {
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
            .or_insert_with(|| Arc::new(TenantGate::new(key, spec)))
            .clone()
    }

    /// Requests left at `now` in the budget of `key`; `None` when no source uses it.
    pub fn remaining(&self, key: &str, now: Instant) -> Option<u32> {
        Some(self.gates.get(key)?.lock().remaining(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn spec(requests: u32, per_ms: u64) -> QuotaSpec {
        QuotaSpec {
            requests,
            per: ms(per_ms),
        }
    }

    /// Asks at `t` until let through, moving `t` by each wait, as [`acquire`] does; the ticket
    /// and when it went.
    fn wait_for_place(g: &mut QuotaGate, mut t: Instant) -> (Ticket, Instant) {
        loop {
            g.tick(t);
            match g.reserve(t) {
                Ok(ticket) => return (ticket, t),
                Err(w) => t += w,
            }
        }
    }

    #[test]
    fn a_place_frees_exactly_per_after_its_answer_with_no_margin() {
        let mut g = QuotaGate::new(spec(3, 10_000));
        let t0 = Instant::now();
        for _ in 0..3 {
            let ticket = g.reserve(t0).expect("room");
            g.answered(ticket, t0 + ms(100));
        }
        assert_eq!(g.remaining(t0 + ms(200)), 0);
        assert_eq!(g.reserve(t0 + ms(1_000)), Err(ms(9_100)));
        assert!(
            g.reserve(t0 + ms(10_100)).is_ok(),
            "the first place is free"
        );
        assert!(g.reserve(t0 + ms(10_100)).is_ok());
        assert!(g.reserve(t0 + ms(10_100)).is_ok());
        assert!(g.reserve(t0 + ms(10_100)).is_err());
    }

    #[test]
    fn a_request_keeps_its_place_until_its_answer_however_long_it_takes() {
        // Let through, then waiting for a token for 30 s before it goes out: the server counts it
        // only then, so its place cannot free 10 s after the gate let it through.
        let mut g = QuotaGate::new(spec(1, 10_000));
        let t0 = Instant::now();
        let slow = g.reserve(t0).expect("room");
        assert_eq!(g.reserve(t0 + ms(10_000)), Err(ms(10_000)));
        g.answered(slow, t0 + ms(30_000));
        assert_eq!(g.reserve(t0 + ms(30_000)), Err(ms(10_000)));
        assert!(g.reserve(t0 + ms(40_000)).is_ok());
    }

    #[test]
    fn a_collection_bound_by_the_budget_takes_the_ideal_time() {
        // 60 requests one after the other (each needs the last one's next link), 20 ms each,
        // under 10 per 5 s: the budget allows the 60th at 25 s.
        let mut g = QuotaGate::new(spec(10, 5_000));
        let t0 = Instant::now();
        let mut t = t0;
        let mut last_start = t0;
        for _ in 0..60 {
            let (ticket, went) = wait_for_place(&mut g, t);
            last_start = went;
            t = went + ms(20);
            g.answered(ticket, t);
        }
        let took = last_start - t0;
        // The ideal 25 s, and each span's wait starts at an answer, 20 ms after its request.
        assert!(took >= ms(25_000), "{took:?}");
        assert!(took <= ms(25_000 + 5 * 20 + 9 * 20), "{took:?}");
    }

    /// A server's sliding window counting arrivals (the simulator's rule), and another
    /// application spending `other` requests of `budget` per `per` evenly.
    struct Server {
        budget: usize,
        per: Duration,
        log: VecDeque<Instant>,
        other_every: Option<Duration>,
        other_next: Instant,
    }

    impl Server {
        fn new(budget: usize, per: Duration, other: u32, t0: Instant) -> Server {
            Server {
                budget,
                per,
                log: VecDeque::new(),
                other_every: (other > 0).then(|| per / other),
                other_next: t0,
            }
        }

        fn admit(&mut self, at: Instant) -> bool {
            while self
                .log
                .front()
                .is_some_and(|t| at.duration_since(*t) >= self.per)
            {
                self.log.pop_front();
            }
            let ok = self.log.len() < self.budget;
            if ok {
                self.log.push_back(at);
            }
            ok
        }

        /// Our request arrives at `at`: the other application's first; `Err(retry after)`.
        fn arrive(&mut self, at: Instant) -> Result<(), Duration> {
            if let Some(every) = self.other_every {
                while self.other_next <= at {
                    let t = self.other_next;
                    self.admit(t);
                    self.other_next += every;
                }
            }
            if self.admit(at) {
                Ok(())
            } else {
                let oldest = *self.log.front().expect("full");
                let wait = self.per.saturating_sub(at.duration_since(oldest));
                Err(Duration::from_secs(
                    wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
                ))
            }
        }
    }

    /// One source's collection of `requests` pages under `gate`, against `server`, with the
    /// `n`-th request travelling `out(n)` and its answer `back`; the times of its 429s, and how
    /// long it took.
    fn collect(
        g: &mut QuotaGate,
        server: &mut Server,
        requests: usize,
        (out, back): (impl Fn(u64) -> Duration, Duration),
        t0: Instant,
    ) -> (Vec<Duration>, Duration) {
        let mut t = t0;
        let mut throttled = vec![];
        let mut done = 0;
        let mut n = 0;
        while done < requests {
            let (ticket, went) = wait_for_place(g, t);
            n += 1;
            let arrival = went + out(n);
            t = arrival + back;
            match server.arrive(arrival) {
                Ok(()) => {
                    g.answered(ticket, t);
                    done += 1;
                }
                Err(retry) => {
                    throttled.push(t - t0);
                    g.throttled(ticket, t);
                    g.block_until(t + retry);
                }
            }
        }
        (throttled, t - t0)
    }

    #[test]
    fn never_more_than_the_budget_at_the_server_whatever_the_latency() {
        let mut g = QuotaGate::new(spec(5, 1_000));
        let t0 = Instant::now();
        let mut server = Server::new(5, ms(1_000), 0, t0);
        // Ways out of 1 to 600 ms (a request waits for a token, a connection, the rows-in-flight
        // budget) and a fast way back: a gate that counted from the moment it let a request
        // through would see places free that the server still counts.
        let out = |n: u64| ms(1 + (n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) % 600);
        let (throttled, _) = collect(&mut g, &mut server, 500, (out, ms(1)), t0);
        assert_eq!(throttled, [] as [Duration; 0]);
    }

    #[test]
    fn with_another_app_spending_half_the_budget_at_most_one_429_a_minute_after_the_first() {
        let t0 = Instant::now();
        let mut g = QuotaGate::new(spec(10, 5_000));
        let mut server = Server::new(10, ms(5_000), 5, t0);
        // Half the budget for 30 minutes: 1800 requests.
        let (throttled, took) = collect(&mut g, &mut server, 1_800, (|_| ms(10), ms(10)), t0);
        let minutes = took.as_secs() / 60;
        let after_first = throttled.iter().filter(|t| t.as_secs() >= 60).count() as u64;
        assert!(
            after_first <= minutes.saturating_sub(1),
            "{after_first} 429s after the first minute in {took:?}: {throttled:?}"
        );
        // And it used what the other application left: at least 80 % of its half.
        assert!(took <= Duration::from_secs(30 * 60 * 100 / 80), "{took:?}");
        assert!(g.limit() < 10);
    }

    #[test]
    fn once_the_other_app_stops_the_whole_budget_comes_back() {
        let t0 = Instant::now();
        let mut g = QuotaGate::new(spec(10, 5_000));
        let mut busy = Server::new(10, ms(5_000), 5, t0);
        let (_, took) = collect(&mut g, &mut busy, 100, (|_| ms(10), ms(10)), t0);
        assert!(g.limit() <= 6, "{}", g.limit());
        let later = t0 + took;
        let mut alone = Server::new(10, ms(5_000), 0, later);
        collect(&mut g, &mut alone, 600, (|_| ms(10), ms(10)), later);
        assert_eq!(g.limit(), 10);
    }

    #[test]
    fn the_registry_tells_what_is_left_of_a_tenants_budget() {
        let mut registry = QuotaRegistry::default();
        let t0 = Instant::now();
        assert_eq!(registry.remaining("tenant", t0), None);
        let gate = registry.gate("tenant", spec(3, 10_000));
        assert_eq!(registry.remaining("tenant", t0), Some(3));
        let ticket = gate.lock().reserve(t0).expect("room");
        assert_eq!(registry.remaining("tenant", t0), Some(2), "in flight");
        gate.lock().answered(ticket, t0);
        assert_eq!(registry.remaining("tenant", t0), Some(2));
    }

    #[test]
    fn blocking_after_a_429() {
        let mut g = QuotaGate::new(spec(100, 300_000));
        let t0 = Instant::now();
        g.block_until(t0 + ms(30_000));
        assert_eq!(g.reserve(t0), Err(ms(30_000)));
        assert!(g.reserve(t0 + ms(30_000)).is_ok());
    }

    #[test]
    fn a_low_request_takes_only_what_is_left_above_the_reserve() {
        let mut g = QuotaGate::new(spec(20, 10_000));
        assert_eq!(g.reserve_places(), 2);
        let t0 = Instant::now();
        let mut held: Vec<Ticket> = (0..16).map(|_| g.reserve(t0).expect("room")).collect();
        held.push(g.reserve_low(t0).expect("17 of 20 used, 2 kept"));
        held.push(g.reserve_low(t0).expect("18 of 20 used, 2 kept"));
        assert_eq!(
            g.reserve_low(t0),
            Err(Deferred::Wait(ms(10_000))),
            "the reserve"
        );
        // The reserve is the collection's: its requests still go.
        held.push(g.reserve(t0).expect("19"));
        held.push(g.reserve(t0).expect("20"));
        assert!(g.reserve(t0).is_err());
        // Once the oldest answers' places free, low requests go again, above the reserve.
        for t in held.drain(..4) {
            g.answered(t, t0);
        }
        assert_eq!(g.reserve_low(t0), Err(Deferred::Wait(ms(10_000))));
        let t1 = t0 + ms(10_000);
        assert!(g.reserve_low(t1).is_ok(), "17 of 20");
        assert!(g.reserve_low(t1).is_ok(), "18 of 20");
        assert!(matches!(g.reserve_low(t1), Err(Deferred::Wait(_))));
    }

    #[test]
    fn a_low_request_yields_while_a_collection_runs_or_one_of_its_requests_waits() {
        let mut g = QuotaGate::new(spec(100, 10_000));
        let t0 = Instant::now();
        g.begin_collecting();
        g.begin_collecting();
        assert_eq!(g.reserve_low(t0), Err(Deferred::Yield));
        assert!(g.reserve(t0).is_ok(), "the collection's requests go");
        assert!(!g.end_collecting(), "one is still under way");
        assert_eq!(g.reserve_low(t0), Err(Deferred::Yield));
        assert!(g.end_collecting());
        assert!(g.reserve_low(t0).is_ok());
        g.begin_wait();
        assert_eq!(g.reserve_low(t0), Err(Deferred::Yield));
        assert!(g.end_wait());
        assert!(g.reserve_low(t0).is_ok());
        // A budget of one place: the reserve never takes it all.
        let mut one = QuotaGate::new(spec(1, 10_000));
        assert_eq!(one.reserve_places(), 0);
        assert!(one.reserve_low(t0).is_ok());
    }

    #[test]
    fn low_requests_refused_at_the_reserve_do_not_raise_a_lowered_limit() {
        // After a 429 the limit grows back only while the collection asks for more than it: a
        // detail request that waits for a place above the reserve is no reason to probe.
        let lowered = || {
            let mut g = QuotaGate::new(spec(10, 1_000));
            let t0 = Instant::now();
            let mut tickets: Vec<Ticket> = (0..6).map(|_| g.reserve(t0).expect("room")).collect();
            let refused = tickets.pop().expect("six");
            tickets.into_iter().for_each(|t| g.answered(t, t0));
            g.throttled(refused, t0).expect("lowered");
            assert_eq!(g.limit(), 3);
            (g, t0 + ms(2_000))
        };
        // Each second for ten spans, requests fill the limit and one more is refused.
        let fill = |g: &mut QuotaGate, t: Instant, low: bool| {
            for _ in 0..4 {
                let taken = if low {
                    g.reserve_low(t).map_err(|_| ())
                } else {
                    g.reserve(t).map_err(|_| ())
                };
                if let Ok(ticket) = taken {
                    g.answered(ticket, t);
                }
            }
        };
        for low in [false, true] {
            let (mut g, t1) = lowered();
            for s in 0..10 {
                let t = t1 + ms(1_000 * s);
                g.tick(t);
                fill(&mut g, t, low);
            }
            assert_eq!(g.limit() > 3, !low, "low {low}: limit {}", g.limit());
        }
    }

    #[tokio::test]
    async fn acquire_low_waits_for_the_collection_and_goes_when_it_ends() {
        let gate: SharedGate = Arc::new(TenantGate::new("t", spec(100, 10_000)));
        let collecting = gate.collecting();
        let low = tokio::spawn({
            let gate = gate.clone();
            async move { acquire_low(&gate).await.waited }
        });
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        assert!(!low.is_finished(), "yields while the collection runs");
        let normal = acquire(&gate).await;
        assert_eq!(normal.waited, Duration::ZERO);
        drop(collecting);
        let waited = tokio::time::timeout(Duration::from_secs(10), low)
            .await
            .expect("goes once the collection ended")
            .unwrap();
        assert!(waited > Duration::ZERO);
        assert_eq!(gate.lock().remaining(Instant::now()), 98);
    }

    #[tokio::test]
    async fn a_normal_request_that_waits_holds_low_requests_back_until_it_goes() {
        let gate: SharedGate = Arc::new(TenantGate::new("t", spec(2, 300)));
        let a = acquire(&gate).await;
        let b = acquire(&gate).await;
        // The third waits for a place (300 ms after an answer): low requests yield meanwhile.
        let third = tokio::spawn({
            let gate = gate.clone();
            async move { acquire(&gate).await.waited }
        });
        drop((a, b));
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            gate.lock().reserve_low(Instant::now()),
            Err(Deferred::Yield)
        );
        let waited = third.await.unwrap();
        assert!(waited > Duration::ZERO);
        assert_ne!(
            gate.lock().reserve_low(Instant::now()),
            Err(Deferred::Yield),
            "no normal request waits any more"
        );
    }

    #[test]
    fn a_429_lowers_what_the_gate_lets_through() {
        let mut g = QuotaGate::new(spec(10, 5_000));
        let t0 = Instant::now();
        let mut tickets: Vec<Ticket> = (0..6).map(|_| g.reserve(t0).expect("room")).collect();
        let refused = tickets.pop().expect("six");
        for t in tickets {
            g.answered(t, t0);
        }
        let change = g.throttled(refused, t0).expect("lowered");
        assert_eq!((change.from, change.to), (10, 3));
        assert_eq!(g.limit(), 3);
        assert!(g.reserve(t0).is_err(), "6 in the span, 3 allowed");
    }
}
