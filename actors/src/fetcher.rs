//! The Fetcher actor: runs a source's jobs. It plans the window, requests pages, follows next
//! links, turns rows into events, hands each page to the sinks, and commits the checkpoint.
//!
//! The order for each page is fixed and is the delivery guarantee:
//! fetch → parse → deliver to every sink → every sink acknowledges → write checkpoint and job
//! record (one sled transaction) → `flush_async().await` → deliver the next page.
//! A crash anywhere before the flush completes means the page is fetched again on restart
//! (a duplicate, never a loss); a crash after it means the page is not fetched again.
//!
//! The next pages' requests overlap this page's delivery and commit ([`SourceSpec::prefetch`],
//! default [`PREFETCH_PAGES`]): a task follows the next links ahead, up to that many pages, and
//! their rows wait, unseen by any sink and by the identity index, until the page before them is
//! committed. Ahead, a page's request goes out as soon as the link to it is read off the end of
//! the page before, while that page is parsed on the blocking pool (`fetch_ahead`).
//!
//! Each body is kept in the cursor's spool ([`Spool`]) as soon as it arrives, before the request
//! for the page after it goes out, and removed once its page is committed; a run that resumes
//! after a crash takes the pages it finds there instead of requesting them. So a crash delivers
//! at most one page twice (the one being committed) and requests at most one page twice (the
//! one whose request was outstanding). Re-read slices bypass the spool ([`PageUse`]).
//!
//! The thread that parses a page also makes it ready ([`make_ready`]: events, pipeline hooks,
//! NDJSON for the sinks that take it), so that its rows never cross threads; only a source with
//! an identity index (re-reading) has its pages made ready in order, after the page before is
//! committed.
//!
//! [`SourceSpec::prefetch`]: crate::spec::SourceSpec::prefetch

use crate::auth::{AuthHeader, AuthToken, GetAuthHeader, InvalidateToken};
use crate::dialect::{self, Api, Page};
use crate::event::{Batch, Event, EventMeta, Ndjson};
use crate::http::{self, HttpError};
use crate::link_guard::LinkGuard;
use crate::retry::Failure;
use crate::sink::Deliver;
use crate::spec::SourceSpec;
use crate::window::{self, SliceTask};
use actix::prelude::*;
use chrono::{DateTime, Utc};
use msgtrace_storage::{
    Checkpoint, Commit, InFlight, JobKind, JobRecord, JobState, SeenEntry, Spool, Store, TaskRecord,
};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tracing::{debug, info, warn, Instrument};

/// What a Fetcher needs to run jobs.
pub struct FetcherEnv {
    /// The source.
    pub spec: SourceSpec,
    /// The state directory.
    pub store: Store,
    /// Where tokens come from.
    pub auth: Addr<AuthToken>,
    /// The sinks that take this source's events.
    pub sinks: Vec<Recipient<Deliver>>,
    /// Told when a job ends.
    pub supervisor: Recipient<JobFinished>,
    /// Called after each page commit (instrumentation and fault injection).
    pub page_hook: Option<crate::supervisor::PageHook>,
    /// The tenant's request budget.
    pub quota: Option<crate::quota::SharedGate>,
    /// Pipeline hooks applied to each page's events before the sinks.
    pub hooks: Vec<crate::hook::Hook>,
    /// The engine-wide budget of rows between fetch and commit ([`ROWS_IN_FLIGHT`], shared by
    /// every fetcher): a page takes `page_size` of it before its request and gives it back once
    /// it is committed, so that a thousand sources due at once do not hold a thousand parsed
    /// pages in memory while the sinks work through them.
    pub rows_in_flight: RowBudget,
    /// What the source's sinks read of a batch.
    pub reads: Reads,
}

/// What the sinks of a source read of a batch ([`SinkInput`](crate::sink::SinkInput)): whether
/// the events must be kept, and whether the page is encoded as NDJSON for them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reads {
    /// Some sink reads the events.
    pub events: bool,
    /// Some sink reads NDJSON.
    pub ndjson: bool,
}

/// Pages a source fetches ahead of the one being delivered and committed, by default. A page
/// holds its place until it is taken for delivery, through its parse and [`make_ready`] (events,
/// hooks, NDJSON); with two places the API waited for them (Reporting pages: 0.52 to 0.62 × the
/// raw fetch with two, 0.70 to 0.77 with three, in alternating benchmark runs). Pages waiting
/// ahead are encoded, their rows freed, so three take less memory than two parsed pages did.
pub const PREFETCH_PAGES: usize = 3;

/// Rows that may be between fetch and commit in one engine, all sources together (parsed rows
/// take about 1 KiB each in memory: about 50 MiB). A page larger than the budget takes all of it.
pub const ROWS_IN_FLIGHT: usize = 50_000;

/// The engine-wide budget of rows between fetch and commit (see [`FetcherEnv::rows_in_flight`]).
#[derive(Clone)]
pub struct RowBudget {
    rows: Arc<tokio::sync::Semaphore>,
    total: u32,
}

impl RowBudget {
    /// A budget of `rows` rows (at least 1).
    pub fn new(rows: usize) -> RowBudget {
        let total = rows.clamp(
            1,
            tokio::sync::Semaphore::MAX_PERMITS.min(u32::MAX as usize),
        );
        RowBudget {
            rows: Arc::new(tokio::sync::Semaphore::new(total)),
            total: total as u32,
        }
    }

    /// Takes one page's share: `page_size` rows, or the whole budget for a larger page (which
    /// then runs alone). Given back when the permit is dropped.
    async fn take(&self, page_size: u32) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.rows
            .clone()
            .acquire_many_owned(page_size.min(self.total))
            .await
            .ok()
    }
}

/// Start a job now.
#[derive(Message)]
#[rtype(result = "RunReply")]
pub struct RunJob {
    /// Why it runs.
    pub kind: JobKind,
    /// A one-shot range with its own checkpoint instead of the continuous cursor.
    pub backfill: Option<Backfill>,
    /// `job_timeout`: cancel the job (state saved) after this long.
    pub timeout: Option<Duration>,
}

/// A backfill: a fixed past range collected once, resumable, leaving the source's continuous
/// cursor alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backfill {
    /// Range start (inclusive).
    pub start: DateTime<Utc>,
    /// Range end (exclusive).
    pub end: DateTime<Utc>,
}

impl Backfill {
    /// The checkpoint name of this range for `source`: running the same backfill again resumes
    /// it (or finds it complete).
    pub fn cursor_name(&self, source: &str) -> String {
        format!(
            "backfill/{source}/{}-{}",
            self.start.timestamp(),
            self.end.timestamp()
        )
    }
}

/// Answer to [`RunJob`].
#[derive(Debug, Clone, PartialEq, Eq, MessageResponse)]
pub enum RunReply {
    /// The job started with this id.
    Started(String),
    /// A job of this source is still running: the request was skipped.
    AlreadyRunning,
}

/// Stop after the page in flight (shutdown).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Cancel;

/// Sent to the supervisor when a job ends, whatever the outcome.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct JobFinished {
    /// The source.
    pub source: String,
    /// The outcome.
    pub summary: JobSummary,
}

/// A job's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobSummary {
    /// The job id.
    pub job_id: String,
    /// How it ended.
    pub state: JobState,
    /// Pages delivered.
    pub pages: u64,
    /// Events delivered.
    pub rows: u64,
    /// Rows dropped by the time filter.
    pub dropped: u64,
    /// The error that ended it.
    pub error: Option<String>,
    /// The window the job covered (start inclusive, end exclusive), when it had one.
    pub window: Option<(DateTime<Utc>, DateTime<Utc>)>,
}

/// The Fetcher actor (one per source).
pub struct Fetcher {
    env: Rc<FetcherEnv>,
    cancel: Option<watch::Sender<bool>>,
}

impl Fetcher {
    /// A fetcher for one source.
    pub fn new(env: FetcherEnv) -> Fetcher {
        Fetcher {
            env: Rc::new(env),
            cancel: None,
        }
    }
}

impl Actor for Fetcher {
    type Context = Context<Self>;
}

impl Handler<RunJob> for Fetcher {
    type Result = RunReply;

    fn handle(&mut self, msg: RunJob, ctx: &mut Context<Self>) -> RunReply {
        if self.cancel.is_some() {
            return RunReply::AlreadyRunning;
        }
        let (tx, rx) = watch::channel(false);
        self.cancel = Some(tx);
        let now = Utc::now();
        let job_id = format!("{}-{}", self.env.spec.id, now.format("%Y%m%dT%H%M%S%.3fZ"));
        let deadline = msg.timeout.map(|t| Instant::now() + t);
        let span = tracing::info_span!("job", source = %self.env.spec.id, job = %job_id);
        let fut = collect(
            self.env.clone(),
            job_id.clone(),
            msg.kind,
            msg.backfill,
            rx,
            deadline,
        )
        .instrument(span);
        ctx.spawn(fut.into_actor(self).map(|summary, act, _| {
            act.cancel = None;
            act.env.supervisor.do_send(JobFinished {
                source: act.env.spec.id.clone(),
                summary,
            });
        }));
        RunReply::Started(job_id)
    }
}

impl Handler<Cancel> for Fetcher {
    type Result = ();

    fn handle(&mut self, _: Cancel, _: &mut Context<Self>) {
        if let Some(tx) = &self.cancel {
            let _ = tx.send(true);
        }
    }
}

/// Runs one job to its end. Never panics on bad input; every failure ends up in the summary and
/// the job record, and the checkpoint never moves past an undelivered page.
pub async fn collect(
    env: Rc<FetcherEnv>,
    job_id: String,
    kind: JobKind,
    backfill: Option<Backfill>,
    cancel: watch::Receiver<bool>,
    deadline: Option<Instant>,
) -> JobSummary {
    let spec = &env.spec;
    let now = Utc::now();
    let mut job = JobRecord::new(&spec.id, &job_id, kind, now);
    // A backfill has its own cursor and a fixed range; a continuous run uses the source's.
    let (cursor_name, window) = match &backfill {
        Some(b) => (
            b.cursor_name(&spec.id),
            crate::spec::WindowSpec {
                start: crate::time::TimeExpr::epoch(b.start),
                end: crate::time::TimeExpr::epoch(b.end),
                max_slice: spec.window.max_slice,
                reread: None,
            },
        ),
        None => (spec.id.clone(), spec.window.clone()),
    };
    let mut cp = match env.store.checkpoint(&cursor_name) {
        Ok(c) => c.unwrap_or(Checkpoint {
            cursor: None,
            in_flight: None,
            pages_total: 0,
            rows_total: 0,
            updated_at: now,
            origin: None,
        }),
        Err(e) => return end_job(&env, job, JobState::Failed, Some(e.to_string())).await,
    };
    let plan = window::plan(&window, Some(&cp), now, Some(spec.api.retention()));
    if let Some((g0, g1)) = plan.gap {
        warn!(
            gap_start = %g0,
            gap_end = %g1,
            "the window starts before the oldest data the API keeps; this span cannot be collected and is recorded as a gap"
        );
        job.gaps.push((g0, g1));
        job.errors.push(format!(
            "gap: {g0} .. {g1} is older than the API keeps ({} days) and was skipped",
            spec.api.retention().num_days()
        ));
    }
    let tasks = plan.tasks;
    if let (Some(b), Some((g0, g1)), true) = (&backfill, plan.gap, tasks.is_empty()) {
        // Nothing of the range can be had: a backfill that says it succeeded would be a lie.
        let e = format!(
            "the backfill range {} .. {} is older than the API keeps ({} days): nothing can be collected (the span {g0} .. {g1} is lost); choose a start within the last {} days",
            b.start,
            b.end,
            spec.api.retention().num_days(),
            spec.api.retention().num_days()
        );
        return end_job(&env, job, JobState::Failed, Some(e)).await;
    }
    if cp.origin.is_none() {
        cp.origin = tasks.first().map(|t| t.start);
    }
    // The job's window is the new data it collects; re-read slices (older spans) are tasks only.
    let mut new_data = tasks.iter().filter(|t| !t.reread);
    job.window_start = new_data.next().map(|t| t.start);
    job.window_end = tasks.iter().rev().find(|t| !t.reread).map(|t| t.end);
    job.tasks = tasks
        .iter()
        .map(|t| TaskRecord {
            start: t.start,
            end: t.end,
            state: JobState::Pending,
            pages: t.pages,
            rows: t.rows,
            dropped: 0,
            retries: 0,
            requeries: t.resume.as_ref().map_or(0, |f| f.requeries),
            reschedules: 0,
            error: None,
        })
        .collect();
    if let Err(e) = env.store.put_job(&job) {
        return end_job(&env, job, JobState::Failed, Some(e.to_string())).await;
    }
    if tasks.is_empty() {
        debug!("nothing due: the window is empty");
    } else {
        info!(
            slices = tasks.len(),
            start = %tasks[0].start,
            end = %tasks[tasks.len() - 1].end,
            "collecting"
        );
    }
    // Pages fetched but not committed are kept here; a run that resumes this cursor after a
    // crash takes them from here instead of requesting them again.
    let spool = Arc::new(env.store.spool(&cursor_name));
    {
        let spool = spool.clone();
        match spool_io(move || spool.sweep(msgtrace_storage::spool::KEEP_FOR)).await {
            Some(Ok(0)) | None => {}
            Some(Ok(n)) => debug!(removed = n, "stale pages removed from the spool"),
            Some(Err(e)) => warn!(error = %e, "could not sweep the spool"),
        }
    }
    let env = &env;
    for (i, first_try) in tasks.iter().enumerate() {
        job.tasks[i].state = JobState::Running;
        let mut task = first_try.clone();
        let mut reschedules = 0;
        let outcome = loop {
            match collect_slice(
                env,
                &cursor_name,
                &mut job,
                i,
                &task,
                &mut cp,
                &spool,
                &cancel,
                deadline,
                kind == JobKind::Scheduled,
            )
            .instrument(tracing::info_span!(
                "slice",
                start = %task.start,
                end = %task.end,
                reread = task.reread
            ))
            .await
            {
                // A task that failed with a non-fatal error is run again (from its last
                // committed page) up to `task_reschedule_limit` times.
                Err(Stop::Failed(e) | Stop::Rejected(e))
                    if reschedules < spec.reschedule_limit.unwrap_or(0) =>
                {
                    reschedules += 1;
                    job.tasks[i].reschedules += 1;
                    let delay = spec.retry.initial * 2;
                    warn!(error = %e, attempt = reschedules, delay_ms = delay.as_millis() as u64, "task failed; rescheduling it");
                    job.errors.push(format!("task rescheduled after: {e}"));
                    let mut c = cancel.clone();
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = c.wait_for(|v| *v) => break Err(Stop::Cancelled(None)),
                    }
                    task = resume_task(first_try, &cp);
                }
                other => break other,
            }
        };
        match outcome {
            Ok(()) => {
                job.tasks[i].state = JobState::Succeeded;
                info!(
                    slice_start = %task.start,
                    slice_end = %task.end,
                    pages = job.tasks[i].pages,
                    rows = job.tasks[i].rows,
                    reread = task.reread,
                    "slice complete"
                );
            }
            Err(Stop::Cancelled(why)) => {
                job.tasks[i].state = JobState::Cancelled;
                return end_job(env, job, JobState::Cancelled, why).await;
            }
            Err(Stop::Failed(e) | Stop::Rejected(e) | Stop::Fatal(e)) => {
                warn!(error = %e, "job failed; the next run resumes from the last delivered page");
                job.tasks[i].state = JobState::Failed;
                job.tasks[i].error = Some(e.clone());
                return end_job(env, job, JobState::Failed, Some(e)).await;
            }
        }
    }
    if let (Some(span), Some(cursor)) = (window.reread, cp.cursor) {
        // Entries older than the next re-read's start are never looked up again.
        match env
            .store
            .expire_seen(&spec.id, cursor - span - chrono::Duration::hours(1))
        {
            Ok(0) => {}
            Ok(n) => debug!(
                expired = n,
                "identity index entries past the re-read span removed"
            ),
            Err(e) => warn!(error = %e, "could not expire identity index entries"),
        }
    }
    // Everything is committed: whatever is left in the spool (pages of a re-query's abandoned
    // links, of a slice planned differently) is never asked for again.
    let cleared = {
        let spool = spool.clone();
        spool_io(move || spool.clear()).await
    };
    if let Some(Err(e)) = cleared {
        warn!(error = %e, dir = %spool.dir().display(), "could not empty the spool");
    }
    end_job(env, job, JobState::Succeeded, None).await
}

enum Stop {
    Cancelled(Option<String>),
    Failed(String),
    /// The API refused the request itself (400, 404, 410) or its body was unusable, after retries.
    Rejected(String),
    /// Retrying cannot help (credentials or permissions refused): not rescheduled.
    Fatal(String),
}

async fn end_job(
    env: &FetcherEnv,
    mut job: JobRecord,
    state: JobState,
    error: Option<String>,
) -> JobSummary {
    if let Some(e) = &error {
        job.errors.push(e.clone());
    }
    job.finish(state, Utc::now());
    crate::telemetry::job_ended(&env.spec.id, state);
    let mut error = error;
    let saved = match env.store.put_job(&job) {
        Ok(()) => env.store.flush().await,
        Err(e) => Err(e),
    };
    if let Err(e) = saved {
        warn!(error = %e, "could not save the job record");
        error.get_or_insert_with(|| e.to_string());
    }
    info!(state = ?state, pages = job.pages, rows = job.rows, dropped = job.dropped, "job finished");
    JobSummary {
        job_id: job.id,
        state,
        pages: job.pages,
        rows: job.rows,
        dropped: job.dropped,
        error,
        window: job.window_start.zip(job.window_end),
    }
}

/// The task to run again after a failure: from its last committed page when it has one.
fn resume_task(task: &SliceTask, cp: &Checkpoint) -> SliceTask {
    match &cp.in_flight {
        Some(f) if !task.reread && f.slice_start == task.start && f.slice_end == task.end => {
            SliceTask::resume(f)
        }
        _ => task.clone(),
    }
}

/// Re-queries of one slice allowed in one job before it fails.
const MAX_REQUERIES: u32 = 3;

#[allow(clippy::too_many_arguments)]
async fn collect_slice(
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
            Parsed::Rows(page) => make_ready_off_thread(plan, page, strip_query(&url)).await?,
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
            forget(spool, &url);
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
fn requery(
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
struct Progress {
    query_end: Option<DateTime<Utc>>,
    oldest: Option<DateTime<Utc>>,
    oldest_ids: Vec<(String, String)>,
    /// Identities to drop (delivered before a re-query, at the re-query's end instant).
    skip: Vec<(String, String)>,
    requeries: u32,
}

impl Progress {
    fn delivered(&mut self, t: DateTime<Utc>, id: (String, String)) {
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

/// A page fetched (or not) and what it took, for the job record.
struct Fetched {
    /// The parsed page and its share of the rows-in-flight budget.
    page: Result<(Parsed, tokio::sync::OwnedSemaphorePermit), Stop>,
    /// Requests retried.
    retries: u64,
    /// 429 answers.
    throttled: u64,
}

/// The pages after the one being delivered, fetched ahead by their own task (on the fetcher's
/// thread) while the pages before them are delivered and committed: up to `depth` of them,
/// following the next links in order, handed over in that order. Dropping it aborts the task
/// (a failed delivery, a cancelled job, a re-query).
struct Prefetch {
    pages: tokio::sync::mpsc::UnboundedReceiver<Ahead>,
    task: tokio::task::JoinHandle<()>,
}

/// A page fetched ahead: its URL, the page, and its place among the `depth` allowed.
type Ahead = (String, Fetched, tokio::sync::OwnedSemaphorePermit);

impl Prefetch {
    fn start(
        env: &Rc<FetcherEnv>,
        url: String,
        cancel: &watch::Receiver<bool>,
        depth: usize,
        page_use: PageUse,
    ) -> Prefetch {
        let (tx, pages) = tokio::sync::mpsc::unbounded_channel();
        let places = Arc::new(tokio::sync::Semaphore::new(depth.max(1)));
        let fetch = fetch_ahead(env.clone(), url, cancel.clone(), places, tx, page_use)
            .instrument(tracing::Span::current());
        Prefetch {
            pages,
            task: tokio::task::spawn_local(fetch),
        }
    }

    /// The next page fetched ahead, when it is `url` (it always is: both sides follow the same
    /// next links; `None` otherwise, and the caller fetches it itself).
    async fn take(&mut self, url: &str) -> Option<Fetched> {
        match self.pages.recv().await {
            // Its place is given back: the task may fetch one more.
            Some((u, fetched, _place)) => (u == url).then_some(fetched),
            None => {
                // A panic in the task is the fetcher's panic, as without the prefetch.
                if let Err(e) = (&mut self.task).await {
                    if e.is_panic() {
                        std::panic::resume_unwind(e.into_panic());
                    }
                }
                None
            }
        }
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The task of a [`Prefetch`]: fetches `url` and the pages its next links lead to, each once it
/// has a place, until the last page or the first failure (handed over like a page).
///
/// A page's next link is read off the end (or the start) of its body ([`Api::peek_next_link`])
/// as soon as the body is in, and when a place is free the next page is requested at once, by
/// its own task, while this one is still being parsed: the service prepares the next page while
/// this one is parsed, instead of after. The guess is checked against the parsed page's link; a wrong one
/// (only a row field *named* like the key, after the real link, can cause one) is aborted and the
/// right one fetched: at most one request wasted, never a row.
async fn fetch_ahead(
    env: Rc<FetcherEnv>,
    url: String,
    cancel: watch::Receiver<bool>,
    places: Arc<tokio::sync::Semaphore>,
    pages: tokio::sync::mpsc::UnboundedSender<Ahead>,
    page_use: PageUse,
) {
    let Ok(place) = places.clone().acquire_owned().await else {
        return;
    };
    let mut current = Started::spawn(&env, url, &cancel, &places, place, &page_use);
    loop {
        let (fetched, successor) = match (&mut current.task.0).await {
            Ok(done) => done,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => return,
        };
        let next = match &fetched.page {
            Ok((parsed, _)) => parsed.next_link().map(|u| u.to_string()),
            Err(_) => None,
        };
        let Started { url, place, .. } = current;
        if pages.send((url, fetched, place)).is_err() {
            return;
        }
        let Some(next) = next else {
            return;
        };
        current = match successor {
            Some(s) if s.url == next => s,
            guessed => {
                if let Some(wrong) = &guessed {
                    warn!(
                        guessed = %strip_query(&wrong.url),
                        "the next link read off the end of a page was not the page's own; fetching the right one"
                    );
                }
                drop(guessed);
                let Ok(place) = places.clone().acquire_owned().await else {
                    return;
                };
                Started::spawn(&env, next, &cancel, &places, place, &page_use)
            }
        };
    }
}

/// A page being fetched ahead by its own task, holding its place among the pages ahead. The
/// task ends with the page and, when it started one, the page after it. Dropping it aborts the
/// task and so, in turn, the page after it.
struct Started {
    url: String,
    place: tokio::sync::OwnedSemaphorePermit,
    task: AbortOnDrop<(Fetched, Option<Started>)>,
}

/// A task aborted when its handle is dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Started {
    fn spawn(
        env: &Rc<FetcherEnv>,
        url: String,
        cancel: &watch::Receiver<bool>,
        places: &Arc<tokio::sync::Semaphore>,
        place: tokio::sync::OwnedSemaphorePermit,
        page_use: &PageUse,
    ) -> Started {
        let fetch: futures_util::future::LocalBoxFuture<'static, _> = Box::pin(
            fetch_and_start_next(
                env.clone(),
                url.clone(),
                cancel.clone(),
                places.clone(),
                page_use.clone(),
            )
            .instrument(tracing::Span::current()),
        );
        Started {
            url,
            place,
            task: AbortOnDrop(tokio::task::spawn_local(fetch)),
        }
    }
}

/// Fetches `url`, and starts the page after it as soon as its body is in (when a place is free).
async fn fetch_and_start_next(
    env: Rc<FetcherEnv>,
    url: String,
    cancel: watch::Receiver<bool>,
    places: Arc<tokio::sync::Semaphore>,
    page_use: PageUse,
) -> (Fetched, Option<Started>) {
    let mut next: Option<Started> = None;
    let fetched = {
        let mut start_next = |body: &[u8], request_url: &url::Url| {
            // A body given again (the page was retried) replaces the one before.
            next = None;
            let Some(link) = env.spec.api.peek_next_link(body, request_url) else {
                return;
            };
            if let Ok(place) = places.clone().try_acquire_owned() {
                next = Some(Started::spawn(
                    &env,
                    link.to_string(),
                    &cancel,
                    &places,
                    place,
                    &page_use,
                ));
            }
        };
        fetch_page(
            env.clone(),
            url,
            true,
            cancel.clone(),
            Some(&mut start_next),
            page_use.clone(),
        )
        .await
    };
    if fetched.page.is_err() {
        next = None;
    }
    (fetched, next)
}

/// Called with each 200 body (or the spool's) before it is parsed, and the URL it came from;
/// called again with an empty body when that body does not parse.
type OnBody<'a> = &'a mut dyn FnMut(&[u8], &url::Url);

/// What becomes of a fetched page's body besides its rows.
#[derive(Clone)]
struct PageUse {
    /// With a plan, the thread that parses the page also makes it ready for the sinks
    /// ([`make_ready`]).
    plan: Option<Arc<PagePlan>>,
    /// With a spool, the body is taken from it when it is there (kept before a crash), and
    /// otherwise kept in it as soon as it arrives, before anything else is done with it: before
    /// the request for the page after it goes out (`on_body`). So at any moment only the page
    /// whose request is outstanding is lost to a kill.
    spool: Option<Arc<Spool>>,
}

/// Fetches and parses one page, with retries, token refresh on 401, and cancellation (see
/// [`PageUse`] for what else becomes of it).
async fn fetch_page(
    env: Rc<FetcherEnv>,
    url: String,
    is_next_link: bool,
    cancel: watch::Receiver<bool>,
    on_body: Option<OnBody<'_>>,
    page_use: PageUse,
) -> Fetched {
    let mut retries: u32 = 0;
    let mut throttled = 0;
    let page = fetch_with_retries(
        &env,
        &url,
        is_next_link,
        &cancel,
        (&mut retries, &mut throttled),
        on_body,
        page_use,
    )
    .await;
    Fetched {
        page,
        retries: u64::from(retries),
        throttled,
    }
}

async fn fetch_with_retries(
    env: &FetcherEnv,
    url: &str,
    is_next_link: bool,
    cancel: &watch::Receiver<bool>,
    (retries, throttled): (&mut u32, &mut u64),
    mut on_body: Option<OnBody<'_>>,
    page_use: PageUse,
) -> Result<(Parsed, tokio::sync::OwnedSemaphorePermit), Stop> {
    let spec = &env.spec;
    let request_url = url::Url::parse(url)
        .map_err(|e| Stop::Failed(format!("next link `{url}` is not a valid URL: {e}")))?;
    let PageUse { plan, spool } = page_use;
    let kept = match &spool {
        Some(s) => spooled(s, url).await,
        None => None,
    };
    if let Some(body) = kept {
        let slot = env
            .rows_in_flight
            .take(spec.page_size)
            .await
            .ok_or_else(|| Stop::Failed("the engine is stopping".into()))?;
        if let Some(f) = on_body.as_mut() {
            f(&body, &request_url);
        }
        match parse_off_thread(
            spec.api,
            spec.page_size as usize,
            body,
            &request_url,
            url,
            plan.clone(),
        )
        .await
        {
            None => return Err(Stop::Failed("the engine is stopping".into())),
            Some(Ok(page)) => {
                debug!("page taken from the spool (fetched before a restart), not requested");
                return Ok((page, slot));
            }
            Some(Err(e)) => {
                warn!(error = %e, "a page kept in the spool does not parse; requesting it again");
                if let Some(s) = &spool {
                    forget(s, url);
                }
                if let Some(f) = on_body.as_mut() {
                    f(b"", &request_url);
                }
            }
        }
    }
    let mut reauthenticated = false;
    loop {
        // The budget first: a long wait must not age the token taken for this request.
        if let Some(gate) = &env.quota {
            let waited = crate::quota::acquire(gate).await;
            let left = gate
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remaining(Instant::now());
            crate::telemetry::quota_remaining(&spec.id, left);
            if !waited.is_zero() {
                debug!(
                    waited_ms = waited.as_millis() as u64,
                    "waited for the API request budget"
                );
            }
        }
        // Then this page's share of the rows-in-flight budget (before the token, for the same
        // reason); given back after its commit, or before a retry's wait.
        let slot = env
            .rows_in_flight
            .take(spec.page_size)
            .await
            .ok_or_else(|| Stop::Failed("the engine is stopping".into()))?;
        let header = match env.auth.send(GetAuthHeader(spec.auth.clone())).await {
            Ok(Ok(h)) => h,
            Ok(Err(e @ crate::token::AuthError::Rejected(_))) => {
                return Err(Stop::Fatal(e.to_string()))
            }
            Ok(Err(e)) => return Err(Stop::Failed(e.to_string())),
            Err(e) => return Err(Stop::Failed(format!("token actor unavailable: {e}"))),
        };
        let (failure, message) = match http::get(
            url,
            Some(header.0.expose()),
            spec.request_timeout,
            spec.max_body_bytes,
            spec.proxy.as_ref(),
        )
        .await
        {
            Ok(resp) if resp.status == 200 => {
                crate::telemetry::response_bytes(&spec.id, resp.body.len());
                if let Some(s) = &spool {
                    keep(s, url, resp.body.clone()).await;
                }
                if let Some(f) = on_body.as_mut() {
                    f(&resp.body, &request_url);
                }
                let parse = parse_off_thread(
                    spec.api,
                    spec.page_size as usize,
                    resp.body,
                    &request_url,
                    url,
                    plan.clone(),
                );
                match parse.await {
                    None => return Err(Stop::Failed("the engine is stopping".into())),
                    Some(Ok(page)) => return Ok((page, slot)),
                    Some(Err(e)) => {
                        // Neither the body nor a page started from a link read off it stays:
                        // an empty body is no link, and drops the page started.
                        if let Some(s) = &spool {
                            forget(s, url);
                        }
                        if let Some(f) = on_body.as_mut() {
                            f(b"", &request_url);
                        }
                        (Failure::BadBody, format!("{}: {e}", strip_query(url)))
                    }
                }
            }
            Ok(resp) if resp.status == 401 && !reauthenticated => {
                if let Some(token) = spec.auth.token_spec() {
                    reauthenticated = true;
                    info!("API answered 401: fetching a new token and retrying the page");
                    env.auth.do_send(InvalidateToken {
                        spec: token.clone(),
                        refused: AuthHeader(header.0.clone()),
                    });
                    continue;
                }
                (
                    Failure::Status {
                        code: 401,
                        retry_after: resp.retry_after,
                    },
                    explain_status(spec.api, 401, &resp.body, url),
                )
            }
            Ok(resp) => {
                if resp.status == 429 {
                    *throttled += 1;
                    crate::telemetry::throttled(&spec.id);
                }
                (
                    Failure::Status {
                        code: resp.status,
                        retry_after: resp.retry_after,
                    },
                    explain_status(spec.api, resp.status, &resp.body, url),
                )
            }
            Err(HttpError::Timeout(t)) => (
                Failure::Timeout,
                format!(
                    "{}: request timed out after {t:?} (request_timeout_secs)",
                    strip_query(url)
                ),
            ),
            Err(HttpError::TooLarge(n)) => (
                Failure::BadBody,
                format!(
                    "{}: response body larger than {n} bytes; lower page_size",
                    strip_query(url)
                ),
            ),
            Err(HttpError::Connection(e)) => {
                (Failure::Connection, format!("{}: {e}", strip_query(url)))
            }
            Err(HttpError::Request(e)) => return Err(Stop::Failed(e)),
        };
        // Not while waiting to retry.
        drop(slot);
        let decision = spec.retry.decide(&failure, *retries).or_else(|| {
            // A next link answered 400 may be a transient server state: two more tries.
            (is_next_link
                && matches!(failure, Failure::Status { code: 400, .. })
                && *retries < NEXT_LINK_400_RETRIES)
                .then(|| crate::retry::Decision {
                    delay: Duration::from_millis(500 << *retries),
                    from_retry_after: false,
                })
        });
        if let Failure::Status {
            code: 429,
            retry_after,
        } = failure
        {
            // Every source of this tenant holds back, not only this one, and for the wait this
            // page takes: one rule for the page and the tenant (`RetryPolicy::decide`).
            let hold = decision
                .as_ref()
                .map(|d| d.delay)
                .or(retry_after.map(|a| a.min(crate::retry::MAX_RETRY_AFTER)));
            if let (Some(gate), Some(hold)) = (&env.quota, hold) {
                gate.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .block_until(Instant::now() + hold);
            }
        }
        match decision {
            None => {
                return Err(match failure {
                    Failure::Status {
                        code: 400 | 404 | 410,
                        ..
                    }
                    | Failure::BadBody => Stop::Rejected(message),
                    Failure::Status {
                        code: 401 | 403, ..
                    } => Stop::Fatal(message),
                    _ => Stop::Failed(message),
                })
            }
            Some(d) => {
                *retries += 1;
                crate::telemetry::retried(&spec.id);
                let announced = match failure {
                    Failure::Status {
                        retry_after: Some(a),
                        ..
                    } => Some(a),
                    _ => None,
                };
                match announced {
                    _ if d.from_retry_after => {
                        warn!(attempt = *retries, delay_ms = d.delay.as_millis() as u64, error = %message, "honouring Retry-After")
                    }
                    Some(a) if spec.retry.honor_retry_after => warn!(
                        attempt = *retries,
                        retry_after_secs = a.as_secs(),
                        delay_ms = d.delay.as_millis() as u64,
                        error = %message,
                        "Retry-After is longer than {} s: ignored; retrying after the retry policy's delay",
                        crate::retry::MAX_RETRY_AFTER.as_secs()
                    ),
                    _ => {
                        warn!(attempt = *retries, delay_ms = d.delay.as_millis() as u64, error = %message, "retrying page")
                    }
                }
                let mut c = cancel.clone();
                tokio::select! {
                    _ = tokio::time::sleep(d.delay) => {}
                    _ = c.wait_for(|v| *v) => return Err(Stop::Cancelled(None)),
                }
            }
        }
    }
}

/// The body the spool kept for `url`, if it has a usable one (read on the blocking pool: the
/// fetcher's thread is every source's).
async fn spooled(spool: &Arc<Spool>, url: &str) -> Option<bytes::Bytes> {
    let (spool, owned) = (spool.clone(), url.to_owned());
    match spool_io(move || spool.get(&owned)).await {
        Some(Ok(body)) => body.map(bytes::Bytes::from),
        Some(Err(why)) => {
            warn!(%why, url = strip_query(url), "a page kept in the spool cannot be used; requesting it again");
            None
        }
        None => None,
    }
}

/// Keeps a page's body in the spool, on the blocking pool; done when it is kept. A failure (a
/// full disk) is a warning, at most one a minute: the page is only requested again after a
/// crash.
async fn keep(spool: &Arc<Spool>, url: &str, body: bytes::Bytes) {
    let (spool, url) = (spool.clone(), url.to_owned());
    if let Some(Err(e)) = spool_io(move || spool.put(&url, &body)).await {
        spool_failed("keep a page in", &e);
    }
}

/// Removes a committed (or unusable) page from the spool, on the blocking pool, without
/// waiting: nothing asks for it again.
fn forget(spool: &Arc<Spool>, url: &str) {
    let (spool, url) = (spool.clone(), url.to_owned());
    drop(tokio::task::spawn_local(async move {
        if let Some(Err(e)) = spool_io(move || spool.remove(&url)).await {
            spool_failed("remove a page from", &e);
        }
    }));
}

/// Runs spool I/O on the blocking pool, a few at a time however many sources there are (a
/// thousand sources due at once would otherwise start hundreds of threads); `None` when the
/// runtime is shutting down or the work panicked (the spool is a cache: nothing is lost).
async fn spool_io<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    static SPOOL_IO: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);
    let _turn = SPOOL_IO.acquire().await.ok();
    tokio::task::spawn_blocking(work).await.ok()
}

/// A spool failure: warned at most once a minute (a full disk fails every page), else debug.
fn spool_failed(what: &str, e: &dyn std::fmt::Display) {
    static LAST_WARNED: std::sync::Mutex<Option<Instant>> = std::sync::Mutex::new(None);
    let mut last = LAST_WARNED.lock().unwrap_or_else(|p| p.into_inner());
    if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
        *last = Some(Instant::now());
        warn!(error = %e, "could not {what} the spool (said at most once a minute); after a crash, the pages it misses are requested again");
    } else {
        debug!(error = %e, "could not {what} the spool");
    }
}

/// Parses a page on a thread of the blocking pool, so that the fetcher's thread goes on with
/// requests (the next page's above all) and deliveries meanwhile; with a `plan`, the same thread
/// then makes the page ready for the sinks while its rows are in that core's cache, and the rows
/// never reach the fetcher's thread. `None` when the engine is stopping.
async fn parse_off_thread(
    api: Api,
    max_rows: usize,
    body: bytes::Bytes,
    request_url: &url::Url,
    url: &str,
    plan: Option<Arc<PagePlan>>,
) -> Option<Result<Parsed, dialect::DialectError>> {
    let request_url = request_url.clone();
    let source: Arc<str> = Arc::from(strip_query(url));
    off_thread(move || {
        let page = api.parse_page_of_at_most(&body, &request_url, max_rows)?;
        crate::buffers::give_bytes(body);
        Ok(match plan {
            Some(plan) => Parsed::Ready(make_ready(&plan, page, source)),
            None => Parsed::Rows(page),
        })
    })
    .await
}

/// Makes a parsed page ready on a thread of the blocking pool (pages that must be made in order:
/// see [`PagePlan::index`]).
async fn make_ready_off_thread(plan: Arc<PagePlan>, page: Page, url: &str) -> Result<Ready, Stop> {
    let source: Arc<str> = Arc::from(url);
    off_thread(move || make_ready(&plan, page, source))
        .await
        .unwrap_or_else(|| Err(Stop::Failed("the engine is stopping".into())))
}

/// Runs `work` on a thread of the blocking pool; `None` when the runtime is shutting down. At
/// most one such task per core runs at once, however many sources fetch.
async fn off_thread<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    static PARSERS: std::sync::LazyLock<tokio::sync::Semaphore> = std::sync::LazyLock::new(|| {
        tokio::sync::Semaphore::new(std::thread::available_parallelism().map_or(2, |n| n.get()))
    });
    // Never closed, so always a permit.
    let _parser = PARSERS.acquire().await.ok();
    match tokio::task::spawn_blocking(work).await {
        Ok(done) => Some(done),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // The runtime is shutting down.
        Err(_) => None,
    }
}

/// Tries of a next link that answers 400 before it is abandoned (beyond the retry policy).
const NEXT_LINK_400_RETRIES: u32 = 2;

fn strip_query(url: &str) -> &str {
    url.split('?').next().unwrap_or(url)
}

/// One line for a non-200 answer: what happened, where, and what to do.
pub fn explain_status(api: Api, status: u16, body: &[u8], url: &str) -> String {
    let summary = dialect::error_summary(body);
    let hint = if status == 401 && summary.contains("Service principal-less Authentication failed")
    {
        " (the tenant has no service principal for Microsoft's message trace app 8bd644d1-64a1-4d4b-ae52-2e0cbf64e373: create it, e.g. `New-MgServicePrincipal -AppId 8bd644d1-64a1-4d4b-ae52-2e0cbf64e373`, and allow a few hours for provisioning)"
    } else if status == 401 && api == Api::Reporting {
        " (the app needs the Office 365 Exchange Online application permission ReportingWebService.Read.All with admin consent, and its service principal an Entra role such as Global Reader or Exchange Administrator)"
    } else if status == 401 {
        " (the app needs the Graph application permission ExchangeMessageTrace.Read.All with admin consent)"
    } else if status == 403 {
        " (the app is authenticated but not allowed to read message trace: check the API permission, admin consent and role)"
    } else if status == 429 {
        " (throttled: Graph allows 100 requests per 5 minutes per tenant)"
    } else {
        ""
    };
    format!("HTTP {status} from {}: {summary}{hint}", strip_query(url))
}

/// How a page's rows become what its sinks read: fixed for a run of pages (it changes only at a
/// re-query, which drops the pages fetched ahead), so that the thread that parses a page can
/// make it ready too ([`make_ready`]).
struct PagePlan {
    api: Api,
    /// The source id.
    input_id: Arc<str>,
    /// The source's static fields.
    fields: serde_json::Map<String, serde_json::Value>,
    /// The slice, for the time filter; `None` when the filter is off.
    filter: Option<(DateTime<Utc>, DateTime<Utc>)>,
    /// The end instant of a re-query, and the rows delivered at it before the re-query: skipped.
    query_end: Option<DateTime<Utc>>,
    skip: Vec<(String, String)>,
    hooks: Vec<crate::hook::Hook>,
    reads: Reads,
    /// The identity index (the source re-reads its windows) and the source id: each page is
    /// checked against the index as committed by the pages before it, so such pages are made
    /// ready in order, after the page before them is committed, never ahead.
    index: Option<(Store, String)>,
}

impl PagePlan {
    fn new(env: &FetcherEnv, task: &SliceTask, track: &Progress) -> Arc<PagePlan> {
        let spec = &env.spec;
        Arc::new(PagePlan {
            api: spec.api,
            input_id: Arc::from(spec.id.as_str()),
            fields: spec.fields.clone(),
            filter: (!spec.disable_time_filter).then_some((task.start, task.end)),
            query_end: track.query_end,
            skip: track.skip.clone(),
            hooks: env.hooks.clone(),
            reads: env.reads,
            index: spec
                .window
                .reread
                .is_some()
                .then(|| (env.store.clone(), spec.id.clone())),
        })
    }
}

/// A fetched page: parsed only, or already made ready (with a [`PagePlan`] that allows it).
enum Parsed {
    Rows(Page),
    Ready(Result<Ready, Stop>),
}

impl Parsed {
    fn next_link(&self) -> Option<&url::Url> {
        match self {
            Parsed::Rows(page) => page.next_link.as_ref(),
            Parsed::Ready(Ok(ready)) => ready.next_link.as_ref(),
            Parsed::Ready(Err(_)) => None,
        }
    }
}

/// A row's identity: trace id and recipient.
type Identity = (String, String);

/// A page ready for its sinks: its batch, and what the job record and the checkpoint need.
struct Ready {
    /// What the hooks left of the events, encoded for the sinks; `None` when nothing is left.
    batch: Option<Batch>,
    /// Rows in the page as the API sent them.
    parsed: usize,
    /// Events built (before the hooks).
    rows: u64,
    /// Events flagged `__isBroken`: no readable time or identity, or bytes that were not UTF-8.
    broken: u64,
    /// Rows outside the slice (time filter).
    dropped: u64,
    /// Rows skipped after a re-query (delivered before it).
    skipped: u64,
    /// Rows skipped because the identity index has them with the same status.
    known: u64,
    /// Rows emitted as updates (the identity index has them with another status).
    updates: u64,
    /// Identity index entries for the rows emitted (only when re-reading is on).
    seen: Vec<SeenEntry>,
    /// The oldest instant among the rows emitted, and their identities (for re-queries).
    oldest: Option<(DateTime<Utc>, Vec<Identity>)>,
    /// The page's next link.
    next_link: Option<url::Url>,
}

/// Turns a parsed page's rows into events (time filter, re-query skips, identity index, `_time`,
/// static fields), runs the pipeline hooks on them, and encodes them for the sinks that take
/// NDJSON; when no sink reads the events themselves, they are freed here, on the thread that
/// allocated them. `source` is the page's URL without query.
fn make_ready(plan: &PagePlan, page: Page, source: Arc<str>) -> Result<Ready, Stop> {
    let api = plan.api;
    let is_last = page.next_link.is_none();
    let now = Utc::now();
    let mut out = Ready {
        batch: None,
        parsed: page.rows.len(),
        rows: 0,
        broken: 0,
        dropped: 0,
        skipped: 0,
        known: 0,
        updates: 0,
        seen: Vec::new(),
        oldest: None,
        next_link: page.next_link,
    };
    let (rows, repaired) = (page.rows, page.repaired);
    let mut events = Vec::with_capacity(rows.len());
    // The oldest rows of the page delivered (indexes into `events`), for re-queries: their
    // identities are copied once, at the end, not for every row (rows come newest first, so
    // nearly every row is the oldest so far when it is seen).
    let mut oldest: Option<(DateTime<Utc>, Vec<usize>)> = None;
    // Each row becomes its event's fields as it is (moved, not copied).
    for mut fields in rows {
        let time = api.row_time(&fields);
        if let (Some(t), Some((start, end))) = (time, plan.filter) {
            if t < start || t >= end {
                out.dropped += 1;
                continue;
            }
        }
        // A re-query asks up to its end: a row after it was delivered before the re-query (a
        // server that ignores the filter sends it again).
        if let (Some(t), Some(end)) = (time, plan.query_end) {
            if t > end {
                out.skipped += 1;
                continue;
            }
        }
        let identity = api.row_identity_ref(&fields);
        let is_broken = time.is_none()
            || identity.is_none()
            || (repaired && fields.values().any(holds_replacement));
        let mut update = false;
        if let (Some(t), Some((trace_id, recipient))) = (time, identity) {
            if !plan.skip.is_empty()
                && Some(t) == plan.query_end
                && plan
                    .skip
                    .iter()
                    .any(|(a, b)| a == trace_id && b == recipient)
            {
                out.skipped += 1;
                continue;
            }
            if let Some((store, source_id)) = &plan.index {
                let status = fields
                    .get(api.status_field())
                    .and_then(|s| s.as_str())
                    .unwrap_or_default()
                    .to_owned();
                let entry = SeenEntry {
                    time: t,
                    trace_id: trace_id.to_owned(),
                    recipient: recipient.to_owned(),
                    status,
                };
                match store
                    .seen_status(source_id, &entry)
                    .map_err(|e| Stop::Failed(format!("reading the identity index failed: {e}")))?
                {
                    Some(prev) if prev.eq_ignore_ascii_case(&entry.status) => {
                        out.known += 1;
                        continue;
                    }
                    Some(_) => update = true,
                    None => {}
                }
                out.seen.push(entry);
            }
            let at = events.len();
            match &mut oldest {
                Some((o, _)) if t > *o => {}
                Some((o, at_oldest)) if t == *o => at_oldest.push(at),
                _ => oldest = Some((t, vec![at])),
            }
        }
        fields.insert("_time".into(), epoch_seconds(time.unwrap_or(now)).into());
        if is_broken {
            out.broken += 1;
            fields.insert("__isBroken".into(), true.into());
        }
        if update {
            out.updates += 1;
            fields.insert("_update".into(), true.into());
        }
        events.push(Event {
            fields,
            meta: EventMeta {
                input_id: plan.input_id.clone(),
                source: source.clone(),
                is_final: false,
                is_broken,
            },
        });
    }
    out.oldest = oldest.map(|(t, at)| {
        let ids = at
            .into_iter()
            .filter_map(|i| api.row_identity(&events[i].fields))
            .collect();
        (t, ids)
    });
    // The static fields last, so that the identities above are the API's, whatever they name.
    if !plan.fields.is_empty() {
        for e in &mut events {
            for (k, v) in &plan.fields {
                e.fields.insert(k.clone(), v.clone());
            }
        }
    }
    if is_last {
        if let Some(e) = events.last_mut() {
            e.meta.is_final = true;
        }
    }
    out.rows = events.len() as u64;
    if events.is_empty() {
        return Ok(out);
    }
    crate::hook::apply(&plan.hooks, &mut events).map_err(Stop::Failed)?;
    if events.is_empty() {
        return Ok(out);
    }
    let encoded = plan.reads.ndjson.then(|| Arc::new(Ndjson::encode(&events)));
    if !plan.reads.events {
        // Freed here, where they were allocated: nothing reads them.
        events = Vec::new();
    }
    out.batch = Some(Batch {
        source: plan.input_id.clone(),
        events: Arc::new(events),
        encoded,
    });
    Ok(out)
}

/// Whether a value holds U+FFFD, the character a byte that was not UTF-8 became.
fn holds_replacement(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::String(s) => s.contains('\u{FFFD}'),
        serde_json::Value::Array(items) => items.iter().any(holds_replacement),
        serde_json::Value::Object(fields) => fields.values().any(holds_replacement),
        _ => false,
    }
}

fn epoch_seconds(t: DateTime<Utc>) -> f64 {
    t.timestamp() as f64 + f64::from(t.timestamp_subsec_micros()) / 1e6
}

/// How a scheduled job rides out a sink that refuses a page: until the job is cancelled or
/// reaches its `job_timeout`.
struct Hold<'a> {
    cancel: &'a watch::Receiver<bool>,
    deadline: Option<Instant>,
    /// The pages fetched ahead: dropped (aborted) once a sink refuses, so that a long outage
    /// holds one page per source, not four, of memory and of the engine-wide rows-in-flight
    /// budget that sources feeding other sinks need. They are fetched again once it is over.
    ahead: &'a mut Option<Prefetch>,
}

/// Longest wait between two deliveries of a held page.
const HOLD_MAX_DELAY: Duration = Duration::from_secs(60);

/// Hands one page's events to every sink and waits for all of them.
///
/// A sink that fails (after its own retries) fails the page, unless `hold` is given (scheduled
/// jobs, that is `msgtrace run`): then the page is held and given again, after a backoff from
/// the source's `retry.initial_interval_ms` doubling up to 60 s, to the sinks that failed only
/// (the others already have it), until they take it. Meanwhile nothing is fetched beyond the
/// pages fetched ahead, and the checkpoint stays before the page: backpressure with bounded
/// memory, and delivery resumes as soon as the sink is back instead of at the next scheduled
/// run. Returns the first refusal when there was one.
async fn deliver(
    env: &FetcherEnv,
    batch: Batch,
    mut hold: Option<Hold<'_>>,
) -> Result<Option<String>, Stop> {
    let mut pending: Vec<&Recipient<Deliver>> = env.sinks.iter().collect();
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
                Ok(Err(e)) => e.to_string(),
                Err(e) => format!("a sink is not running ({e})"),
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
            return Err(Stop::Cancelled(Some(format!(
                "shut down while a sink refused a page ({e}); the next run delivers it again"
            ))));
        }
        *hold.ahead = None;
        let delay = env
            .spec
            .retry
            .initial
            .max(Duration::from_millis(100))
            .saturating_mul(1 << attempt.min(10))
            .min(HOLD_MAX_DELAY);
        warn!(
            error = %e,
            attempt = attempt + 1,
            delay_ms = delay.as_millis() as u64,
            "a sink did not take the page: holding it (the checkpoint stays before it) and giving it again to the sinks that failed"
        );
        crate::telemetry::page_held(&env.spec.id);
        first_refusal.get_or_insert(e);
        if hold.deadline.is_some_and(|d| Instant::now() + delay >= d) {
            return Err(Stop::Cancelled(Some(
                "job_timeout reached while a sink refused a page; the next run delivers it again"
                    .into(),
            )));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explains_service_principal_401() {
        let body = br#"{"error":{"code":"InvalidAuthenticationToken","message":"Service principal-less Authentication failed: blah"}}"#;
        let s = explain_status(
            Api::Graph,
            401,
            body,
            "https://graph.microsoft.com/v1.0/x?$top=1",
        );
        assert!(s.contains("8bd644d1-64a1-4d4b-ae52-2e0cbf64e373"), "{s}");
        assert!(!s.contains("$top"));
        let s = explain_status(
            Api::Reporting,
            401,
            b"<title>401 - Unauthorized</title>",
            "https://r/x",
        );
        assert!(s.contains("ReportingWebService.Read.All"), "{s}");
    }

    #[test]
    fn epoch_has_fractions() {
        let t = DateTime::parse_from_rfc3339("2022-09-05T18:10:13.4907658Z")
            .unwrap()
            .with_timezone(&Utc);
        assert!((epoch_seconds(t) - 1_662_401_413.490_765).abs() < 1e-5);
    }
}
