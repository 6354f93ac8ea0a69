//! One slice of a job: its pages in order, each delivered and committed before the next is
//! taken, next links followed (or abandoned and the slice re-queried).

use super::*;

#[allow(clippy::too_many_arguments)]
pub(super) async fn collect_slice(
    env: &Rc<FetcherEnv>,
    cursor_name: &str,
    job: &mut JobRecord,
    i: usize,
    task: &SliceTask,
    cp: &mut Checkpoint,
    spool: &Arc<Spool>,
    cancel: &watch::Receiver<bool>,
    deadline: Option<Instant>,
    hold: bool,
) -> Result<(), Stop> {
    let spec = &env.spec;
    // A re-read asks again for pages it had before, to find rows that arrived late: its pages
    // are neither kept nor taken from the spool.
    let spool = (!task.reread).then(|| spool.clone());
    let mut run = SliceRun::new(
        task,
        Query {
            api: spec.api,
            base: spec.url.clone(),
            page_size: spec.page_size,
            limits: spec.link_limits,
        },
    );
    // The pages after this one, fetched ahead while it is delivered and committed (aborted if
    // dropped).
    let mut prefetched: Option<Prefetch> = None;
    loop {
        if *cancel.borrow() {
            return Err(Stop::Cancelled(None));
        }
        let Request { url, is_next_link } = run.request();
        // What this page becomes; made on the parse thread unless it must be made in order.
        let plan = PagePlan::new(env, task, run.progress());
        let ahead = PageUse {
            plan: plan.index.is_none().then(|| plan.clone()),
            spool: spool.clone(),
        };
        let fetch = async {
            if let Some(p) = prefetched.as_mut() {
                if let Some(f) = p.take(&url).await {
                    return f;
                }
                prefetched = None;
            }
            let env = env.clone();
            fetch_page(
                env,
                url.clone(),
                is_next_link,
                cancel.clone(),
                None,
                ahead.clone(),
            )
            .await
        };
        let fetched = match deadline {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, fetch).await {
                    Ok(r) => r,
                    Err(_) => {
                        return Err(Stop::Cancelled(Some(
                            "job_timeout reached; the page in flight was abandoned and the next run resumes it".into(),
                        )))
                    }
                }
            }
            None => fetch.await,
        };
        job.retries += fetched.retries;
        job.tasks[i].retries += fetched.retries;
        job.throttled += fetched.throttled;
        // `_slot` is this page's share of the rows-in-flight budget, held until it is committed.
        let (parsed, _slot) = match fetched.page {
            Ok(p) => p,
            Err(Stop::Rejected(e)) => {
                // A next link that keeps failing (a poisoned $skiptoken, "Invalid starting
                // recipient address", a link to another host) is abandoned.
                run.link_failed(is_next_link, &e).map_err(Stop::Failed)?;
                abandoned(env, job, i, run.progress(), &e);
                prefetched = None;
                continue;
            }
            Err(other) => return Err(other),
        };
        // Before this page is made ready (when it is not yet): the next request goes out first.
        if let (true, Some(next)) = (
            spec.prefetch > 0 && prefetched.is_none(),
            parsed.next_link(),
        ) {
            prefetched = Some(Prefetch::start(
                env,
                next.to_string(),
                cancel,
                spec.prefetch,
                ahead,
            ));
        }
        let ready = match parsed {
            Parsed::Ready(ready) => ready?,
            Parsed::Rows(page) => {
                make_ready_off_thread(&env.shared, plan, page, strip_query(&url)).await?
            }
        };
        let (dropped, seen) = (ready.dropped, ready.seen);
        if ready.broken > 0 {
            warn!(
                broken = ready.broken,
                "rows without a readable time or identity, or with bytes that were not UTF-8, delivered flagged __isBroken (their _time is the run's time)"
            );
            crate::telemetry::broken_rows(&spec.id, ready.broken);
        }
        if ready.skipped > 0 {
            debug!(
                skipped = ready.skipped,
                "rows delivered before the re-query skipped"
            );
        }
        if ready.known > 0 || ready.updates > 0 {
            debug!(
                known = ready.known,
                updates = ready.updates,
                "rows already delivered skipped; status changes emitted as updates"
            );
        }
        job.known += ready.known;
        job.updates += ready.updates;
        let n = ready.rows;
        if let Some(batch) = ready.batch {
            let hold = hold.then_some(Hold {
                cancel,
                deadline,
                ahead: &mut prefetched,
            });
            let refused = deliver(env, batch, hold).await?;
            if let Some(e) = refused {
                job.errors.push(format!(
                    "a sink refused a page for a while (the page was held and delivered again): {e}"
                ));
            }
        }
        // A next link this query had already, or one past its bounds, is poisoned like a link
        // that keeps failing: abandoned, and the rest of the slice re-queried (recorded in the
        // checkpoint with this page, so that a restart re-queries too).
        let next = ready.next_link.map(|u| u.to_string());
        let (step, mark) = run.delivered(&job.id, ready.parsed, n, ready.oldest, next);
        if let Step::Requery(why) = &step {
            abandoned(env, job, i, run.progress(), why);
            prefetched = None;
        }
        match mark {
            Mark::Unchanged => {}
            Mark::Cursor(end) => {
                cp.cursor = Some(end);
                cp.in_flight = None;
            }
            Mark::InFlight(f) => cp.in_flight = Some(f),
        }
        if !task.reread {
            cp.pages_total += 1;
            cp.rows_total += n;
            cp.updated_at = Utc::now();
        }
        job.pages += 1;
        job.rows += n;
        job.dropped += dropped;
        let t = &mut job.tasks[i];
        (t.pages, t.rows) = run.totals();
        t.dropped += dropped;
        env.store
            .commit(
                Commit {
                    source: &spec.id,
                    checkpoint: (!task.reread).then_some((cursor_name, &*cp)),
                    job: Some(job),
                    seen: &seen,
                },
                spec.durable,
            )
            .await
            .map_err(|e| Stop::Failed(format!("could not save the checkpoint: {e}")))?;
        debug!(
            page = run.totals().0,
            rows = n,
            dropped,
            last = step == Step::Done,
            "page committed"
        );
        if let Some(spool) = &spool {
            forget(&env.shared, spool, &url);
        }
        crate::telemetry::page_committed(&spec.id, n);
        if let Some(hook) = &env.page_hook {
            hook(&spec.id, job.pages, job.rows);
        }
        match step {
            Step::Done => return Ok(()),
            Step::Requery(_) => run.may_go_on().map_err(Stop::Failed)?,
            Step::Next(_) => {}
        }
    }
}

/// A next link was abandoned (`why`) and the slice is re-queried: said in the log, the job
/// record and the metrics.
fn abandoned(env: &FetcherEnv, job: &mut JobRecord, i: usize, track: &Progress, why: &str) {
    job.tasks[i].requeries += 1;
    warn!(
        error = %why,
        requery_end = ?track.query_end,
        "next link abandoned; re-querying the rest of the slice, rows already delivered are skipped"
    );
    crate::telemetry::poisoned_link(&env.spec.id);
    job.errors.push(format!(
        "next link abandoned and the slice re-queried: {why}"
    ));
}
