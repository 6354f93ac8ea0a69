//! One slice of a job: its pages in order, each delivered and committed before the next is
//! taken, next links followed (or abandoned and the slice re-queried). The decisions are
//! [`SliceRun`]'s; this drives it: fetch, deliver, commit.

use super::*;

/// Collects slice `i` of the job (`task`), page by page, each committed before the next (or
/// with the pages after it, in a commit group). When the slice stops early (a failure, a
/// cancellation), the pages of its group that were delivered are committed first: only the page
/// that failed is delivered again.
pub(super) async fn collect_slice(
    run: &mut JobRun,
    i: usize,
    task: &SliceTask,
) -> Result<(), Stop> {
    let spec = &run.env.spec;
    let mut slice = SliceRun::new(
        task,
        Query {
            api: spec.api,
            base: spec.url.clone(),
            page_size: spec.page_size,
            limits: spec.link_limits,
        },
    );
    if let Some(started) = slice.starting(&run.job.id) {
        mark_started(run, started).await?;
    }
    // Pages delivered and not yet committed (their next page was already in).
    let mut group = Group::default();
    let outcome = pages(run, (i, task), &mut slice, &mut group).await;
    // The last commit's flush, if it still runs behind: the slice is over when it is done.
    let flushed = settle_flushing(run).await;
    if outcome.is_err() && group.len() > 0 {
        if let Err(e) = commit(run, i, task, std::mem::take(&mut group)).await {
            warn!(error = %e, "the pages delivered before the slice stopped could not be committed; they are delivered again");
        }
    }
    outcome?;
    Ok(flushed?)
}

/// The slice's pages: fetched (or taken from those fetched ahead), made ready, settled.
async fn pages(
    run: &mut JobRun,
    (i, task): (usize, &SliceTask),
    slice: &mut SliceRun,
    group: &mut Group,
) -> Result<(), Stop> {
    let env = run.env.clone();
    let spec = &env.spec;
    // A re-read asks again for pages it had before, to find rows that arrived late: its pages
    // are neither kept nor taken from the spool.
    let spool = (!task.reread).then(|| run.spool.clone());
    // The pages after this one, fetched ahead while it is delivered and committed (aborted if
    // dropped).
    let mut prefetched: Option<Prefetch> = None;
    loop {
        if *run.cancel.borrow() {
            return Err(Stop::Cancelled(None));
        }
        let Request { url, is_next_link } = slice.request();
        // What this page becomes; made on the parse thread unless it must be made in order.
        let plan = PagePlan::new(&env, task, slice.progress());
        let ahead = PageUse {
            fetch: Fetch::Summary,
            plan: plan.index.is_none().then(|| plan.clone()),
            spool: spool.clone(),
        };
        let fetched = next_page(run, &mut prefetched, &url, is_next_link, ahead.clone()).await?;
        // `_slot` is this page's share of the rows-in-flight budget, held until it is settled
        // (committed, or delivered into a commit group).
        let Some((parsed, _slot)) = take(run, i, slice, is_next_link, fetched)? else {
            prefetched = None;
            continue;
        };
        // Before this page is made ready (when it is not yet): the next request goes out first.
        if let (true, Some(next)) = (
            spec.prefetch > 0 && prefetched.is_none(),
            parsed.next_link(),
        ) {
            prefetched = Some(Prefetch::start(
                &env,
                next.to_string(),
                &run.cancel,
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
        tracing::trace!("page ready to deliver");
        let step = settle(run, (i, task), slice, (&url, ready), &mut prefetched, group).await?;
        match step {
            Step::Done => return Ok(()),
            Step::Requery(_) => slice.may_go_on()?,
            Step::Next(_) => {}
        }
    }
}

/// A page made ready, settled: noted in the job, its step decided (a poisoned next link
/// abandons the query), handed to the sinks, and committed with what it adds to the checkpoint,
/// or left to be committed with the pages after it when the next one is already in
/// ([`super::group`]).
async fn settle(
    run: &mut JobRun,
    (i, task): (usize, &SliceTask),
    slice: &mut SliceRun,
    (url, ready): (&str, Ready),
    prefetched: &mut Option<Prefetch>,
    group: &mut Group,
) -> Result<Step, Stop> {
    let env = run.env.clone();
    note(&env.spec, &mut run.job, &ready);
    let n = ready.rows;
    // A next link this query had already, or one past its bounds, is poisoned like a link
    // that keeps failing: abandoned, and the rest of the slice re-queried (recorded in the
    // checkpoint with this page, so that a restart re-queries too).
    let next = ready.next_link.map(|u| u.to_string());
    let (step, mark) = slice.delivered(&run.job.id, ready.parsed, n, ready.oldest, next);
    let defer = defer_commit(
        matches!(step, Step::Next(_)),
        (group.len(), env.spec.commit_group),
        || prefetched.as_mut().is_some_and(Prefetch::next_is_ready),
    );
    let mut delivered = None;
    if let Some(mut batch) = ready.batch {
        batch.page = Some(Arc::new(PageKey {
            cursor: run.cursor_name.clone(),
            url: url.to_owned(),
            reread: task.reread,
        }));
        batch.sync = !defer;
        let positions = hand_over(run, batch, prefetched).await?;
        tracing::trace!(synced = !defer, "page delivered");
        delivered = Some((!defer, positions));
    }
    if let Step::Requery(why) = &step {
        abandoned(&env, &mut run.job, i, slice.progress(), why);
        *prefetched = None;
    }
    let adds = PageAdds {
        rows: n,
        dropped: ready.dropped,
        seen: ready.seen,
        details: ready.details,
    };
    group.add(url, adds, (mark, slice.totals()), delivered);
    if !defer {
        commit(run, i, task, std::mem::take(group)).await?;
    }
    Ok(step)
}

/// The page fetched, counted in the job; `None` when its request was refused for good and the
/// slice goes on with a re-query (a next link that keeps failing: a poisoned `$skiptoken`,
/// "Invalid starting recipient address", a link to another host).
fn take(
    run: &mut JobRun,
    i: usize,
    slice: &mut SliceRun,
    is_next_link: bool,
    fetched: Fetched,
) -> Result<Option<Got>, Stop> {
    run.job.retries += fetched.retries;
    run.job.tasks[i].retries += fetched.retries;
    run.job.throttled += fetched.throttled;
    match fetched.page {
        Ok(got) => Ok(Some(got)),
        Err(Stop::Failed(e)) if e.kind() == Kind::Rejected => {
            if !slice.link_failed(is_next_link) {
                return Err(Stop::Failed(e));
            }
            abandoned(&run.env, &mut run.job, i, slice.progress(), &e);
            Ok(None)
        }
        Err(other) => Err(other),
    }
}

/// Delivers a page's batch to the sinks; a scheduled job holds it while a sink refuses it
/// (dropping the pages fetched ahead), and the refusal is recorded in the job. Returns where
/// the sinks' files stood after it.
async fn hand_over(
    run: &mut JobRun,
    batch: Batch,
    prefetched: &mut Option<Prefetch>,
) -> Result<Vec<SinkPosition>, Stop> {
    let hold = run.hold.then_some(Hold {
        cancel: &run.cancel,
        deadline: run.deadline,
        ahead: prefetched,
    });
    let delivered = deliver(&run.env, batch, hold).await?;
    if let Some(e) = delivered.refusal {
        run.job.errors.push(format!(
            "a sink refused a page for a while (the page was held and delivered again): {e}"
        ));
    }
    Ok(delivered.positions)
}

/// After a page's commit: its body leaves the spool, the metrics and the page hook hear of it
/// (with the job's pages and rows up to this page).
pub(super) fn committed(
    env: &FetcherEnv,
    spool: Option<&Arc<Spool>>,
    url: &str,
    rows: u64,
    (job_pages, job_rows): (u64, u64),
) {
    if let Some(spool) = spool {
        forget(&env.shared, spool, url);
    }
    crate::telemetry::page_committed(&env.spec.id, rows);
    if let Some(hook) = &env.page_hook {
        hook(&env.spec.id, job_pages, job_rows);
    }
}

/// The page at `url`: the one fetched ahead when it is that page, or fetched now; within the
/// job's `job_timeout`.
async fn next_page(
    run: &JobRun,
    prefetched: &mut Option<Prefetch>,
    url: &str,
    is_next_link: bool,
    page_use: PageUse,
) -> Result<Fetched, Stop> {
    let fetch = async {
        if let Some(p) = prefetched.as_mut() {
            if let Some(f) = p.take(url).await {
                return f;
            }
            *prefetched = None;
        }
        fetch_page(
            run.env.clone(),
            url.to_owned(),
            is_next_link,
            run.cancel.clone(),
            None,
            page_use,
        )
        .await
    };
    match run.deadline {
        Some(d) => tokio::time::timeout(d.saturating_duration_since(Instant::now()), fetch)
            .await
            .map_err(|_| Stop::Cancelled(Some(CancelReason::Timeout))),
        None => Ok(fetch.await),
    }
}

/// Says what a page made ready held besides its events (logs, metrics, the job's counters).
fn note(spec: &crate::spec::SourceSpec, job: &mut JobRecord, ready: &Ready) {
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
}

/// Commits a group of delivered pages (often one): what the sinks were given unsynced made
/// durable first, then the checkpoint's new marks (unless the slice is a re-read), the job's
/// record, the identity index's entries and the details backlog's, in one transaction, durable
/// as configured; then the spool, the metrics and the page hook hear of each page, and the
/// details worker is woken when the backlog grew.
async fn commit(
    run: &mut JobRun,
    i: usize,
    task: &SliceTask,
    group: Group,
) -> Result<(), FetchError> {
    settle_flushing(run).await?;
    if group.unsynced {
        flush_sinks(&run.env).await?;
    }
    let (pages, rows) = (group.len() as u64, group.rows());
    let cp = &mut run.cp;
    for mark in &group.marks {
        match mark {
            Mark::Unchanged => {}
            Mark::Cursor(end) => {
                cp.cursor = Some(*end);
                cp.in_flight = None;
            }
            Mark::InFlight(f) => cp.in_flight = Some(f.clone()),
        }
    }
    if !task.reread {
        cp.pages_total += pages;
        cp.rows_total += rows;
        cp.updated_at = Utc::now();
    }
    let job = &mut run.job;
    job.pages += pages;
    job.rows += rows;
    let job_totals = (job.pages, job.rows);
    job.dropped += group.dropped;
    let t = &mut job.tasks[i];
    (t.pages, t.rows) = group.totals;
    t.dropped += group.dropped;
    let behind = flush_behind(&run.env);
    persist(run, !task.reread, Some(&group), !behind).await?;
    debug!(page = group.totals.0, pages, rows, behind, "page committed");
    let then = Announce {
        before: (job_totals.0 - pages, job_totals.1 - rows),
        spool: (!task.reread).then(|| run.spool.clone()),
        details: !group.details.is_empty(),
        pages: group.pages,
    };
    if behind {
        run.flushing = Some(Flushing::start(&run.env.store, then));
    } else {
        then.announce(&run.env);
    }
    Ok(())
}

/// Records in the checkpoint that the slice is under way, before its first page
/// ([`SliceRun::starting`]).
async fn mark_started(run: &mut JobRun, started: InFlight) -> Result<(), FetchError> {
    settle_flushing(run).await?;
    run.cp.in_flight = Some(started);
    persist(run, true, None, true).await
}

/// Writes the job's checkpoint (unless `checkpoint` is false: a re-read leaves it alone) and,
/// for a committed `group`, the job record and the group's index and backlog entries: with
/// `[cluster]` the checkpoint first to etcd, fenced by the job's claim, then everything to the
/// state directory in one transaction, durable as configured (and waited for when `flush`).
async fn persist(
    run: &JobRun,
    checkpoint: bool,
    group: Option<&Group>,
    flush: bool,
) -> Result<(), FetchError> {
    let spec = &run.env.spec;
    if let (true, Some(cluster), Some(claim)) = (checkpoint, &run.env.cluster, &run.claim) {
        cluster
            .commit(claim, &run.cursor_name, &run.cp)
            .await
            .map_err(FetchError::Fenced)?;
    }
    run.env
        .store
        .commit(
            Commit {
                source: &spec.id,
                checkpoint: checkpoint.then_some((run.cursor_name.as_str(), &run.cp)),
                job: group.map(|_| &run.job),
                seen: group.map_or(&[], |g| &g.seen),
                details: group.map_or(&[], |g| &g.details),
                positions: group.map_or(&[], |g| &g.positions),
            },
            spec.durable && flush,
        )
        .await
        .map_err(FetchError::Checkpoint)
}

/// A next link was abandoned (`why`) and the slice is re-queried: said in the log, the job
/// record and the metrics.
fn abandoned(
    env: &FetcherEnv,
    job: &mut JobRecord,
    i: usize,
    track: &Progress,
    why: &dyn std::fmt::Display,
) {
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
