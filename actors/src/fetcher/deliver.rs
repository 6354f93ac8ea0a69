//! Delivery of one page to every sink of its source, held while a sink refuses it.

use super::*;

/// How a scheduled job rides out a sink that refuses a page: until the job is cancelled or
/// reaches its `job_timeout`.
pub(super) struct Hold<'a> {
    pub(super) cancel: &'a watch::Receiver<bool>,
    pub(super) deadline: Option<Instant>,
    /// The pages fetched ahead: dropped (aborted) once a sink refuses, so that a long outage
    /// holds one page per source, not four, of memory and of the engine-wide rows-in-flight
    /// budget that sources feeding other sinks need. They are fetched again once it is over.
    pub(super) ahead: &'a mut Option<Prefetch>,
}

/// A page every sink took.
#[derive(Default)]
pub(super) struct Delivered {
    /// Where the files of the sinks that give one stood after it ([`Sink::position`]), for the
    /// commit.
    ///
    /// [`Sink::position`]: crate::sink::Sink::position
    pub(super) positions: Vec<SinkPosition>,
    /// The first refusal, when a sink refused it for a while (it was held, then taken).
    pub(super) refusal: Option<FetchError>,
}

/// Hands one page's events to every sink and waits for all of them.
///
/// A sink that fails (after its own retries) fails the page, unless `hold` is given (scheduled
/// jobs, that is `msgtrace run`): then the page is held and given again, after a backoff from
/// the source's `retry.initial_interval_ms` doubling up to 60 s, to the sinks that failed only
/// (the others already have it), until they take it. Meanwhile nothing is fetched beyond the
/// pages fetched ahead, and the checkpoint stays before the page: backpressure with bounded
/// memory, and delivery resumes as soon as the sink is back instead of at the next scheduled
/// run.
pub(super) async fn deliver(
    env: &FetcherEnv,
    batch: Batch,
    mut hold: Option<Hold<'_>>,
) -> Result<Delivered, Stop> {
    let mut pending: Vec<&Addr<SinkActor>> = env.sinks.iter().collect();
    let mut delivered = Delivered::default();
    let mut attempt: u32 = 0;
    loop {
        let sends = pending.iter().map(|s| s.send(Deliver(batch.clone())));
        let results = futures_util::future::join_all(sends).await;
        let mut refused = None;
        let mut failed = Vec::new();
        for (sink, r) in pending.iter().zip(results) {
            let e = match r {
                Ok(Ok(position)) => {
                    delivered.positions.extend(position);
                    continue;
                }
                Ok(Err(e)) => FetchError::Sink(e),
                Err(e) => FetchError::SinkGone(e),
            };
            refused.get_or_insert(e);
            failed.push(*sink);
        }
        let Some(e) = refused else {
            if delivered.refusal.is_some() {
                info!(
                    attempts = attempt + 1,
                    "the held page was delivered; collection goes on"
                );
            }
            return Ok(delivered);
        };
        let Some(hold) = &mut hold else {
            return Err(Stop::Failed(e));
        };
        if *hold.cancel.borrow() {
            return Err(Stop::Cancelled(Some(CancelReason::ShutdownWhileHeld(e))));
        }
        *hold.ahead = None;
        let delay = env.spec.retry.hold_delay(attempt);
        warn!(
            error = %e,
            attempt = attempt + 1,
            delay_ms = delay.as_millis() as u64,
            "a sink did not take the page: holding it (the checkpoint stays before it) and giving it again to the sinks that failed"
        );
        crate::telemetry::page_held(&env.spec.id);
        delivered.refusal.get_or_insert(e);
        if hold.deadline.is_some_and(|d| Instant::now() + delay >= d) {
            return Err(Stop::Cancelled(Some(CancelReason::TimeoutWhileHeld)));
        }
        let mut c = hold.cancel.clone();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = c.wait_for(|v| *v) => return Err(Stop::Cancelled(None)),
        }
        pending = failed;
        attempt += 1;
    }
}

/// Tells every sink, before the job's first page, how far the commits say its files hold rows
/// ([`crate::sink::Sink::resume`]), so that a page the last job delivered and did not commit
/// (a fetcher that panicked, a commit that failed) is not written twice when it comes again.
/// Not with `[cluster]`, whose checkpoint of record is etcd's. Sent without waiting, ahead of
/// the job's first delivery in the sink's mailbox.
pub(super) fn resume_sinks(env: &FetcherEnv) {
    if env.cluster.is_some() {
        return;
    }
    let positions = match env.store.positions() {
        Ok(p) if p.is_empty() => return,
        Ok(p) => Arc::new(p),
        Err(e) => {
            warn!(error = %e, "the sinks' committed positions cannot be read; a page delivered and not committed before may be written twice");
            return;
        }
    };
    for sink in &env.sinks {
        sink.do_send(Resume(positions.clone()));
    }
}
