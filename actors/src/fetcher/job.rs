//! A job: plans its window, runs its slices in order (rescheduling a failed one), and ends
//! with its record saved.

use super::*;
use crate::dialect::details::DetailsMode;

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
    let job = JobRecord::new(&spec.id, &job_id, kind, now);
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
    // Detail requests of the tenant wait while its summary is collected.
    let collecting = env.quota.as_ref().map(|gate| gate.collecting());
    // With `[cluster]`: the claim every commit of this job is made under, taken before the
    // checkpoint of record is read.
    let claim = match env.cluster.as_ref().map(|c| c.claim(&spec.id)).transpose() {
        Ok(claim) => claim,
        Err(e) => return end_job(&env, job, JobState::Failed, Some(e.to_string())).await,
    };
    let cp = match load_checkpoint(&env, &cursor_name).await {
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
    resume_sinks(&env);
    // Pages fetched but not committed are kept here; a run that resumes this cursor after a
    // crash takes them from here instead of requesting them again.
    let spool = Arc::new(env.store.spool(&cursor_name));
    let mut run = JobRun {
        env: env.clone(),
        cursor_name,
        job,
        cp,
        spool,
        cancel,
        deadline,
        hold: kind == JobKind::Scheduled,
        claim,
        flushing: None,
    };
    let tasks = match run.plan(&window, backfill.as_ref(), now) {
        Ok(tasks) => tasks,
        Err(e) => return end_job(&env, run.job, JobState::Failed, Some(e.to_string())).await,
    };
    run.sweep_spool().await;
    for (i, first_try) in tasks.iter().enumerate() {
        if let Some((state, error)) = run.task(i, first_try).await {
            return end_job(&env, run.job, state, error).await;
        }
    }
    drop(collecting);
    run.tidy(&window).await;
    // Under `msgtrace run` the fetcher's detail worker drains the backlog beside the jobs; a
    // run that ends (`--once`, a backfill) drains it before it ends.
    if kind != JobKind::Scheduled && spec.details != DetailsMode::None {
        if let Some((state, error)) = run.drain_details().await {
            return end_job(&env, run.job, state, Some(error)).await;
        }
    }
    end_job(&env, run.job, JobState::Succeeded, None).await
}

/// Why a job could not start collecting (it fails, saying so in one line).
#[derive(Debug, thiserror::Error)]
enum StartError {
    /// The state directory could not be read or written.
    #[error(transparent)]
    Store(#[from] msgtrace_storage::StorageError),
    /// `[cluster]`: the checkpoint of record could not be read from etcd.
    #[error(transparent)]
    Record(#[from] crate::cluster::record::RecordError),
    /// A backfill whose whole range is older than the API keeps.
    #[error("the backfill range {start} .. {end} is older than the API keeps ({days} days): nothing can be collected (the span {gap_start} .. {gap_end} is lost); choose a start within the last {days} days")]
    BackfillTooOld {
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        days: i64,
        gap_start: DateTime<Utc>,
        gap_end: DateTime<Utc>,
    },
}

/// The checkpoint a job starts from: with `[cluster]` the checkpoint of record in etcd (the
/// last one any instance committed), else (or when etcd has none yet) the local one.
async fn load_checkpoint(env: &FetcherEnv, cursor: &str) -> Result<Option<Checkpoint>, StartError> {
    let local = env.store.checkpoint(cursor)?;
    let Some(cluster) = &env.cluster else {
        return Ok(local);
    };
    Ok(cluster.load(cursor).await?.or(local))
}

/// A job under way: what its slices read and change.
pub(super) struct JobRun {
    pub(super) env: Rc<FetcherEnv>,
    /// The checkpoint's name (the source id, or a backfill's).
    pub(super) cursor_name: String,
    /// The job's record, saved with every page.
    pub(super) job: JobRecord,
    /// The checkpoint, committed with every page.
    pub(super) cp: Checkpoint,
    /// Pages fetched and not yet committed.
    pub(super) spool: Arc<Spool>,
    pub(super) cancel: watch::Receiver<bool>,
    /// `job_timeout`.
    pub(super) deadline: Option<Instant>,
    /// A sink that refuses a page holds it (scheduled jobs) instead of failing the job.
    pub(super) hold: bool,
    /// `[cluster]`: the claim of the source this job commits under (taken at its start).
    pub(super) claim: Option<crate::cluster::fence::Claim>,
    /// The last commit, when its flush runs behind the next page's delivery ([`Flushing`]).
    pub(super) flushing: Option<Flushing>,
}

impl JobRun {
    /// Plans the job's slices (recording a gap older than the API keeps) and saves its record.
    /// `Err` when nothing can be collected.
    fn plan(
        &mut self,
        window: &crate::spec::WindowSpec,
        backfill: Option<&Backfill>,
        now: DateTime<Utc>,
    ) -> Result<Vec<SliceTask>, StartError> {
        let spec = &self.env.spec;
        let retention = spec.api.retention();
        let plan = window::plan(window, Some(&self.cp), now, Some(retention));
        let days = retention.num_days();
        if let Some((g0, g1)) = plan.gap {
            warn!(
                gap_start = %g0,
                gap_end = %g1,
                "the window starts before the oldest data the API keeps; this span cannot be collected and is recorded as a gap"
            );
            self.job.gaps.push((g0, g1));
            self.job.errors.push(format!(
                "gap: {g0} .. {g1} is older than the API keeps ({days} days) and was skipped"
            ));
        }
        let tasks = plan.tasks;
        if let (Some(b), Some((g0, g1)), true) = (backfill, plan.gap, tasks.is_empty()) {
            // Nothing of the range can be had: a backfill that says it succeeded would be a lie.
            return Err(StartError::BackfillTooOld {
                start: b.start,
                end: b.end,
                days,
                gap_start: g0,
                gap_end: g1,
            });
        }
        if self.cp.origin.is_none() {
            self.cp.origin = tasks.first().map(|t| t.start);
        }
        record_tasks(&mut self.job, &tasks);
        self.env.store.put_job(&self.job)?;
        match (tasks.first(), tasks.last()) {
            (Some(first), Some(last)) => info!(
                slices = tasks.len(),
                start = %first.start,
                end = %last.end,
                "collecting"
            ),
            _ => debug!("nothing due: the window is empty"),
        }
        Ok(tasks)
    }

    /// Removes pages kept in the spool for longer than a resume would want them.
    async fn sweep_spool(&self) {
        let spool = self.spool.clone();
        match self
            .env
            .shared
            .spool_io(move || spool.sweep(msgtrace_storage::spool::KEEP_FOR))
            .await
        {
            Some(Ok(0)) | None => {}
            Some(Ok(n)) => debug!(removed = n, "stale pages removed from the spool"),
            Some(Err(e)) => warn!(error = %e, "could not sweep the spool"),
        }
    }

    /// Runs task `i` to its end, rescheduling it after a failure that may pass (from its last
    /// committed page, up to `task_reschedule_limit` times). `Some` when the job ends with it.
    async fn task(
        &mut self,
        i: usize,
        first_try: &SliceTask,
    ) -> Option<(JobState, Option<String>)> {
        self.job.tasks[i].state = JobState::Running;
        let mut task = first_try.clone();
        let mut reschedules = 0;
        let outcome = loop {
            let span = tracing::info_span!(
                "slice",
                start = %task.start,
                end = %task.end,
                reread = task.reread
            );
            match collect_slice(self, i, &task).instrument(span).await {
                Err(Stop::Failed(e))
                    if e.kind() != Kind::Fatal
                        && reschedules < self.env.spec.reschedule_limit.unwrap_or(0) =>
                {
                    reschedules += 1;
                    if let Err(stop) = self.reschedule(i, reschedules, &e).await {
                        break Err(stop);
                    }
                    task = resume_task(first_try, &self.cp);
                }
                other => break other,
            }
        };
        let record = &mut self.job.tasks[i];
        match outcome {
            Ok(()) => {
                record.state = JobState::Succeeded;
                info!(
                    slice_start = %task.start,
                    slice_end = %task.end,
                    pages = record.pages,
                    rows = record.rows,
                    reread = task.reread,
                    "slice complete"
                );
                None
            }
            Err(Stop::Cancelled(why)) => {
                record.state = JobState::Cancelled;
                Some((JobState::Cancelled, why.map(|w| w.to_string())))
            }
            Err(Stop::Failed(e)) => {
                let e = e.to_string();
                warn!(error = %e, "job failed; the next run resumes from the last delivered page");
                record.state = JobState::Failed;
                record.error = Some(e.clone());
                Some((JobState::Failed, Some(e)))
            }
        }
    }

    /// Fetches the details of the rows in the backlog, within the job's `job_timeout`; `Some`
    /// when the job ends without them (the rows stay in the backlog for the next run).
    async fn drain_details(&mut self) -> Option<(JobState, String)> {
        let delivery = super::details::Delivery {
            hold: self.hold,
            deadline: self.deadline,
        };
        let drained = super::details::drain(&self.env, &self.cancel, delivery);
        let outcome = match self.deadline {
            Some(d) => tokio::time::timeout(d.saturating_duration_since(Instant::now()), drained)
                .await
                .unwrap_or(Err(Stop::Cancelled(Some(CancelReason::Timeout)))),
            None => drained.await,
        };
        match outcome {
            Ok(d) => {
                if d.rows + d.given_up > 0 {
                    info!(
                        rows = d.rows,
                        events = d.events,
                        known = d.known,
                        given_up = d.given_up,
                        "details fetched"
                    );
                }
                self.job.detail_rows += d.rows;
                self.job.detail_events += d.events;
                None
            }
            Err(Stop::Cancelled(why)) => Some((
                JobState::Cancelled,
                why.map_or_else(
                    || "cancelled while fetching details; the next run fetches the rest".to_owned(),
                    |w| format!("{w} (while fetching details; the next run fetches the rest)"),
                ),
            )),
            Err(Stop::Failed(e)) => {
                let e = format!("details: {e}; the rows stay in the backlog and the next run asks for them again");
                warn!(error = %e, "fetching details failed");
                Some((JobState::Failed, e))
            }
        }
    }

    /// Waits before task `i` runs again after `e` (cancellation ends the wait).
    async fn reschedule(&mut self, i: usize, attempt: u32, e: &FetchError) -> Result<(), Stop> {
        self.job.tasks[i].reschedules += 1;
        let delay = self.env.spec.retry.reschedule_delay();
        warn!(error = %e, attempt, delay_ms = delay.as_millis() as u64, "task failed; rescheduling it");
        self.job.errors.push(format!("task rescheduled after: {e}"));
        let mut c = self.cancel.clone();
        tokio::select! {
            _ = tokio::time::sleep(delay) => Ok(()),
            _ = c.wait_for(|v| *v) => Err(Stop::Cancelled(None)),
        }
    }

    /// After the last slice: the identity index's entries past the re-read span expire, and
    /// the spool is emptied (everything is committed: what is left there, pages of a re-query's
    /// abandoned links or of a slice planned differently, is never asked for again).
    async fn tidy(&self, window: &crate::spec::WindowSpec) {
        let env = &self.env;
        if let (Some(span), Some(cursor)) = (window.reread, self.cp.cursor) {
            match env
                .store
                .expire_seen(&env.spec.id, cursor - span - chrono::Duration::hours(1))
            {
                Ok(0) => {}
                Ok(n) => debug!(
                    expired = n,
                    "identity index entries past the re-read span removed"
                ),
                Err(e) => warn!(error = %e, "could not expire identity index entries"),
            }
        }
        // The identities of the detail records delivered are needed while a re-read may
        // enqueue their rows again.
        if let (true, Some(cursor)) = (env.spec.details != DetailsMode::None, self.cp.cursor) {
            let span = window.reread.unwrap_or_else(chrono::Duration::zero);
            let before = cursor - span - chrono::Duration::hours(1);
            match env.store.expire_details(&env.spec.id, before) {
                Ok(0) => {}
                Ok(n) => debug!(
                    expired = n,
                    "detail record identities past the re-read span removed"
                ),
                Err(e) => warn!(error = %e, "could not expire detail record identities"),
            }
        }
        let spool = self.spool.clone();
        if let Some(Err(e)) = env.shared.spool_io(move || spool.clear()).await {
            warn!(error = %e, dir = %self.spool.dir().display(), "could not empty the spool");
        }
    }
}

/// The job's window (the new data it collects: re-read slices, older spans, are tasks only)
/// and a pending record per task.
fn record_tasks(job: &mut JobRecord, tasks: &[SliceTask]) {
    job.window_start = tasks.iter().find(|t| !t.reread).map(|t| t.start);
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
}

pub(super) async fn end_job(
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
pub(super) fn resume_task(task: &SliceTask, cp: &Checkpoint) -> SliceTask {
    match &cp.in_flight {
        Some(f) if !task.reread && f.slice_start == task.start && f.slice_end == task.end => {
            SliceTask::resume(f)
        }
        _ => task.clone(),
    }
}
