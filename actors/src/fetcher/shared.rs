//! What the fetchers of one engine share, and nothing outside it: the budget of rows between
//! fetch and commit, the turns for spool I/O and for parsing, the spool's warn-once clock, and
//! each source's turn at its details backlog.
//! Made once per engine (by the Supervisor) and passed to every fetcher, never held in statics,
//! so that two engines embedded in one process neither wait for each other nor hush each
//! other's warnings.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tracing::{debug, warn};

/// Rows that may be between fetch and commit in one engine, all sources together (parsed rows
/// take about 1 KiB each in memory: about 50 MiB). A page larger than the budget takes all of it.
pub const ROWS_IN_FLIGHT: usize = 50_000;

/// Spool operations of one engine at once: a thousand sources due together would otherwise
/// start hundreds of blocking threads (scale benchmark: 66.6 MiB peak unbounded, 57.7 with 4).
const SPOOL_IO_TURNS: usize = 4;

/// How often a failing spool (a full disk fails every page) is warned about.
const SPOOL_WARN_EVERY: Duration = Duration::from_secs(60);

/// The engine-wide budget of rows between fetch and commit: a page takes `page_size` of it
/// before its request and gives it back once it is committed, so that a thousand sources due at
/// once do not hold a thousand parsed pages in memory while the sinks work through them.
#[derive(Clone)]
pub struct RowBudget {
    rows: Arc<Semaphore>,
    total: u32,
}

impl RowBudget {
    /// A budget of `rows` rows (at least 1).
    pub fn new(rows: usize) -> RowBudget {
        let total = rows.clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
        RowBudget {
            rows: Arc::new(Semaphore::new(total)),
            total: total as u32,
        }
    }

    /// Takes one page's share: `page_size` rows, or the whole budget for a larger page (which
    /// then runs alone). Given back when the permit is dropped.
    pub(super) async fn take(&self, page_size: u32) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.rows
            .clone()
            .acquire_many_owned(page_size.min(self.total))
            .await
            .ok()
    }
}

/// What the fetchers of one engine share (see the module documentation).
#[derive(Clone)]
pub struct Shared {
    /// Rows between fetch and commit, all sources together.
    pub rows_in_flight: RowBudget,
    spool_io: Arc<Semaphore>,
    parsers: Arc<Semaphore>,
    spool_warned: Arc<Mutex<Option<Instant>>>,
    details_turns: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

impl Shared {
    /// The resources of a new engine: `rows_in_flight` rows, one parse at a time per core.
    pub fn new(rows_in_flight: usize) -> Shared {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Shared {
            rows_in_flight: RowBudget::new(rows_in_flight),
            spool_io: Arc::new(Semaphore::new(SPOOL_IO_TURNS)),
            parsers: Arc::new(Semaphore::new(cores)),
            spool_warned: Arc::default(),
            details_turns: Arc::default(),
        }
    }

    /// The turn at `source`'s details backlog: one drain of it at a time, also across the
    /// fetchers a reload replaces (the old one finishes its request while the new one starts).
    pub(super) fn details_turn(&self, source: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut turns = self.details_turns.lock().unwrap_or_else(|p| p.into_inner());
        turns.entry(source.to_owned()).or_default().clone()
    }

    /// Runs spool I/O on the blocking pool, a few at a time however many sources there are;
    /// `None` when the runtime is shutting down or the work panicked (the spool is a cache:
    /// nothing is lost).
    pub(super) async fn spool_io<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let _turn = self.spool_io.acquire().await.ok();
        tokio::task::spawn_blocking(work).await.ok()
    }

    /// Runs `work` (a parse) on a thread of the blocking pool, at most one per core at once
    /// however many sources fetch; `None` when the runtime is shutting down. A panic in `work`
    /// is the caller's.
    pub(super) async fn off_thread<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        // Never closed, so always a permit.
        let _parser = self.parsers.acquire().await.ok();
        match tokio::task::spawn_blocking(work).await {
            Ok(done) => Some(done),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // The runtime is shutting down.
            Err(_) => None,
        }
    }

    /// A spool failure: warned at most once a minute per engine, else debug.
    pub(super) fn spool_failed(&self, what: &str, e: &dyn std::fmt::Display) {
        if self.should_warn(Instant::now()) {
            warn!(error = %e, "could not {what} the spool (said at most once a minute); after a crash, the pages it misses are requested again");
        } else {
            debug!(error = %e, "could not {what} the spool");
        }
    }

    fn should_warn(&self, now: Instant) -> bool {
        let mut last = self.spool_warned.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| now.duration_since(t) >= SPOOL_WARN_EVERY) {
            *last = Some(now);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spool_is_warned_about_once_a_minute_per_engine() {
        let (a, b) = (Shared::new(10), Shared::new(10));
        let t = Instant::now();
        assert!(a.should_warn(t));
        assert!(!a.should_warn(t + Duration::from_secs(59)));
        assert!(a.should_warn(t + SPOOL_WARN_EVERY));
        // Another engine's warning is its own.
        assert!(b.should_warn(t + Duration::from_secs(1)));
        // A clone is the same engine.
        assert!(!a.clone().should_warn(t + SPOOL_WARN_EVERY));
    }

    #[tokio::test]
    async fn engines_take_turns_only_among_their_own_fetchers() {
        let (a, b) = (Shared::new(10), Shared::new(10));
        // Every parse turn of engine a is taken...
        let held: Vec<_> = (0..a.parsers.available_permits())
            .map(|_| a.parsers.clone().try_acquire_owned().unwrap())
            .collect();
        assert_eq!(a.parsers.available_permits(), 0);
        // ...and engine b parses all the same.
        assert_eq!(b.off_thread(|| 7).await, Some(7));
        drop(held);
        assert_eq!(a.off_thread(|| 8).await, Some(8));
        let rows = a.rows_in_flight.take(10).await.unwrap();
        assert!(b.rows_in_flight.take(10).await.is_some());
        drop(rows);
    }

    #[tokio::test]
    async fn a_source_has_one_turn_at_its_details_whatever_fetcher_asks() {
        let shared = Shared::new(10);
        let held = shared.details_turn("a").lock_owned().await;
        assert!(shared.clone().details_turn("a").try_lock().is_err());
        assert!(
            shared.details_turn("b").try_lock().is_ok(),
            "another source's is its own"
        );
        assert!(
            Shared::new(10).details_turn("a").try_lock().is_ok(),
            "another engine's too"
        );
        drop(held);
        assert!(shared.details_turn("a").try_lock().is_ok());
    }
}
