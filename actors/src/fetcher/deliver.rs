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

/// Hands one page's events to every sink and waits for all of them.
///
/// A sink that fails (after its own retries) fails the page, unless `hold` is given (scheduled
/// jobs, that is `msgtrace run`): then the page is held and given again, after a backoff from
/// the source's `retry.initial_interval_ms` doubling up to 60 s, to the sinks that failed only
/// (the others already have it), until they take it. Meanwhile nothing is fetched beyond the
/// pages fetched ahead, and the checkpoint stays before the page: backpressure with bounded
/// memory, and delivery resumes as soon as the sink is back instead of at the next scheduled
/// run. Returns the first refusal when there was one.
pub(super) async fn deliver(
    env: &FetcherEnv,
    batch: Batch,
    mut hold: Option<Hold<'_>>,
) -> Result<Option<FetchError>, Stop> {
    let mut pending: Vec<&Addr<SinkActor>> = env.sinks.iter().collect();
    let mut first_refusal = None;
    let mut attempt: u32 = 0;
    loop {
        let sends = pending.iter().map(|s| s.send(Deliver(batch.clone())));
        let results = futures_util::future::join_all(sends).await;
        let mut refused = None;
        let mut failed = Vec::new();
        for (sink, r) in pending.iter().zip(results) {
            let e = match r {
                Ok(Ok(())) => continue,
                Ok(Err(e)) => FetchError::Sink(e),
                Err(e) => FetchError::SinkGone(e),
            };
            refused.get_or_insert(e);
            failed.push(*sink);
        }
        let Some(e) = refused else {
            if first_refusal.is_some() {
                info!(
                    attempts = attempt + 1,
                    "the held page was delivered; collection goes on"
                );
            }
            return Ok(first_refusal);
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
        first_refusal.get_or_insert(e);
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
