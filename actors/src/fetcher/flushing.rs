//! A commit whose flush runs behind the next page's delivery.
//!
//! A page's durable chain is its sinks' write and `fsync`, then its checkpoint's transaction
//! and flush, and the next page's chain waited for all of it. When every sink of the source
//! replays (msgtrace's `file` sinks: after a restart, a page delivered again that the file holds
//! past its last committed position is not written twice; see [`crate::sink::Sink::position`]
//! and `msgtrace::sinks::replay`), the flush of page N's checkpoint runs while page N + 1 is
//! delivered. A kill during it leaves pages N and N + 1 in the file past the last committed
//! length; their sources deliver them again from the spool, and the sink matches them instead
//! of appending them. The checkpoint is still never durable before its rows are: its
//! transaction is written only after its page's sinks acknowledged, so any flush that covers
//! it started after them.
//!
//! What follows a commit (the spool lets go of the page, the metrics and the page hook hear of
//! it) waits for the flush, and so comes after the next page's delivery; the next commit waits
//! for the flush too.

use super::*;

/// A commit's flush under way, and what is announced once it is done.
pub(super) struct Flushing {
    flush: tokio::task::JoinHandle<Result<(), msgtrace_storage::StorageError>>,
    then: Announce,
}

/// What a commit announces once it is durable (see [`super::slice`]'s `committed`).
pub(super) struct Announce {
    /// Each page's URL and rows.
    pub(super) pages: Vec<(String, u64)>,
    /// The job's pages and rows before the first of them.
    pub(super) before: (u64, u64),
    /// The spool to take the pages from (none for a re-read).
    pub(super) spool: Option<Arc<Spool>>,
    /// The commit added to the details backlog.
    pub(super) details: bool,
}

impl Announce {
    /// Tells the spool, the metrics, the page hook and the details worker.
    pub(super) fn announce(self, env: &FetcherEnv) {
        let mut so_far = self.before;
        for (url, rows) in &self.pages {
            so_far = (so_far.0 + 1, so_far.1 + rows);
            committed(env, self.spool.as_ref(), url, *rows, so_far);
        }
        if self.details {
            crate::telemetry::details_backlog(
                &env.spec.id,
                env.store.details_backlog(&env.spec.id),
            );
            env.details_wake.notify_waiters();
        }
    }
}

impl Flushing {
    /// Starts flushing what `store` holds (a commit's transaction is written) in the background.
    pub(super) fn start(store: &Store, then: Announce) -> Flushing {
        let store = store.clone();
        Flushing {
            flush: tokio::task::spawn_local(async move { store.flush().await }),
            then,
        }
    }

    /// Waits for the flush, then announces the commit.
    pub(super) async fn finish(self, env: &FetcherEnv) -> Result<(), FetchError> {
        match self.flush.await {
            Ok(Ok(())) => {
                self.then.announce(env);
                Ok(())
            }
            Ok(Err(e)) => Err(FetchError::Checkpoint(e)),
            // As if the flush had run inline: its panic goes on, and only a stopping runtime
            // cancels it.
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(FetchError::Stopping),
        }
    }
}

/// Waits for the run's commit still flushing, if there is one.
pub(super) async fn settle_flushing(run: &mut JobRun) -> Result<(), FetchError> {
    match run.flushing.take() {
        Some(f) => f.finish(&run.env).await,
        None => Ok(()),
    }
}

/// Whether a commit's flush may run behind the next page's delivery: durable commits, outside
/// `[cluster]` (whose checkpoint of record is written to etcd first), when every sink of the
/// source replays after a restart ([`FetcherEnv::replays`]).
pub(super) fn flush_behind(env: &FetcherEnv) -> bool {
    env.spec.durable && env.cluster.is_none() && env.replays
}
