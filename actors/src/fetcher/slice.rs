//! One slice of a job: its pages in order, each delivered and committed before the next is
//! taken, next links followed (or abandoned and the slice re-queried).

use super::*;

/// Re-queries of one slice allowed in one job before it fails.
pub(super) const MAX_REQUERIES: u32 = 3;

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
    let mut link = task.next_link.clone();
    let mut slice_pages = task.pages;
    let mut slice_rows = task.rows;
    let mut track = match &task.resume {
        Some(f) => Progress {
            query_end: f.query_end,
            oldest: f.oldest,
            oldest_ids: f.oldest_ids.clone(),
            skip: if f.query_end.is_some() {
                f.oldest_ids.clone()
            } else {
                Vec::new()
            },
            requeries: f.requeries,
        },
        None => Progress::default(),
    };
    let mut requeries_now = 0;
    // The pages after this one, fetched ahead while it is delivered and committed (aborted if
    // dropped).
    let mut prefetched: Option<Prefetch> = None;
    // What this query's next links may do (each followed once, pages bounded).
    let mut guard: Option<LinkGuard> = None;
    loop {
        if *cancel.borrow() {
            return Err(Stop::Cancelled(None));
        }
        let is_next_link = link.is_some();
        let url = match &link {
            Some(l) => l.clone(),
            None => spec
                .api
                .first_page_url(
                    &spec.url,
                    task.start,
                    track
                        .query_end
                        .unwrap_or_else(|| window::inclusive_end(task.end)),
                    spec.page_size,
                )
                .to_string(),
        };
        match &mut guard {
            Some(g) if !is_next_link => g.restart(&url),
            Some(_) => {}
            None => guard = Some(LinkGuard::new(spec.link_limits, &url)),
        }
        // What this page becomes; made on the parse thread unless it must be made in order.
        let plan = PagePlan::new(env, task, &track);
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
            Err(Stop::Rejected(e)) if is_next_link && requeries_now < MAX_REQUERIES => {
                // A next link that keeps failing (a poisoned $skiptoken, "Invalid starting
                // recipient address", a link to another host) is abandoned.
                requeries_now += 1;
                requery(env, &mut track, job, i, task, &e);
                link = None;
                prefetched = None;
                continue;
            }
            Err(Stop::Rejected(e)) => return Err(Stop::Failed(e)),
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
        if let Some((t, ids)) = ready.oldest {
            for id in ids {
                track.delivered(t, id);
            }
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
        slice_pages += 1;
        slice_rows += n;
        // A next link this query had already, or one past its bounds, is poisoned like a link
        // that keeps failing: abandoned, and the rest of the slice re-queried (recorded in the
        // checkpoint with this page, so that a restart re-queries too).
        let mut next = ready.next_link.map(|u| u.to_string());
        let mut abandoned = false;
        if let (Some(n), Some(g)) = (&next, &mut guard) {
            if let Err(why) = g.follow(ready.parsed, n) {
                requeries_now += 1;
                requery(env, &mut track, job, i, task, &why.to_string());
                next = None;
                abandoned = true;
                prefetched = None;
            }
        }
        match &next {
            _ if task.reread => {}
            None if abandoned => {
                cp.in_flight = Some(InFlight {
                    job_id: job.id.clone(),
                    slice_start: task.start,
                    slice_end: task.end,
                    next_link: None,
                    pages: slice_pages,
                    rows: slice_rows,
                    query_end: track.query_end,
                    oldest: track.oldest,
                    oldest_ids: track.oldest_ids.clone(),
                    requeries: track.requeries,
                });
            }
            None => {
                cp.cursor = Some(task.end);
                cp.in_flight = None;
            }
            Some(next) => {
                cp.in_flight = Some(InFlight {
                    job_id: job.id.clone(),
                    slice_start: task.start,
                    slice_end: task.end,
                    next_link: Some(next.clone()),
                    pages: slice_pages,
                    rows: slice_rows,
                    query_end: track.query_end,
                    oldest: track.oldest,
                    oldest_ids: track.oldest_ids.clone(),
                    requeries: track.requeries,
                });
            }
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
        t.pages = slice_pages;
        t.rows = slice_rows;
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
            page = slice_pages,
            rows = n,
            dropped,
            last = next.is_none(),
            "page committed"
        );
        if let Some(spool) = &spool {
            forget(&env.shared, spool, &url);
        }
        crate::telemetry::page_committed(&spec.id, n);
        if let Some(hook) = &env.page_hook {
            hook(&spec.id, job.pages, job.rows);
        }
        match next {
            None if abandoned && requeries_now > MAX_REQUERIES => {
                return Err(Stop::Failed(format!(
                    "next links abandoned {requeries_now} times in this slice; the next run re-queries it"
                )))
            }
            None if abandoned => link = None,
            None => return Ok(()),
            Some(n) => link = Some(n),
        }
    }
}

/// Abandons a query's next link (`why` it is poisoned) and sets `track` to re-query the slice:
/// rows come newest first, so every row newer than the oldest one delivered is already out;
/// the re-query asks up to that instant (inclusive) and skips the rows delivered at exactly it.
pub(super) fn requery(
    env: &FetcherEnv,
    track: &mut Progress,
    job: &mut JobRecord,
    i: usize,
    task: &SliceTask,
    why: &str,
) {
    track.requeries += 1;
    job.tasks[i].requeries += 1;
    track.query_end = Some(
        track
            .oldest
            .unwrap_or_else(|| window::inclusive_end(task.end)),
    );
    track.skip = track.oldest_ids.clone();
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

/// What a slice has delivered so far, for re-queries.
#[derive(Default)]
pub(super) struct Progress {
    pub(super) query_end: Option<DateTime<Utc>>,
    pub(super) oldest: Option<DateTime<Utc>>,
    pub(super) oldest_ids: Vec<(String, String)>,
    /// Identities to drop (delivered before a re-query, at the re-query's end instant).
    pub(super) skip: Vec<(String, String)>,
    pub(super) requeries: u32,
}

impl Progress {
    pub(super) fn delivered(&mut self, t: DateTime<Utc>, id: (String, String)) {
        match self.oldest {
            Some(o) if t > o => {}
            Some(o) if t == o => self.oldest_ids.push(id),
            _ => {
                self.oldest = Some(t);
                self.oldest_ids.clear();
                self.oldest_ids.push(id);
            }
        }
    }
}
