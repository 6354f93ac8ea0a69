//! A job: plans its window, runs its slices in order (rescheduling a failed one), and ends
//! with its record saved.

use super::*;

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
        match env
            .shared
            .spool_io(move || spool.sweep(msgtrace_storage::spool::KEEP_FOR))
            .await
        {
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
                    // A fixed wait: twice the retry policy's first delay.
                    let delay = crate::retry::Backoff {
                        initial: spec.retry.initial * 2,
                        multiplier: 1.0,
                        max: spec.retry.initial * 2,
                    }
                    .delay(reschedules);
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
        env.shared.spool_io(move || spool.clear()).await
    };
    if let Some(Err(e)) = cleared {
        warn!(error = %e, dir = %spool.dir().display(), "could not empty the spool");
    }
    end_job(env, job, JobState::Succeeded, None).await
}

pub(super) enum Stop {
    Cancelled(Option<String>),
    Failed(String),
    /// The API refused the request itself (400, 404, 410) or its body was unusable, after retries.
    Rejected(String),
    /// Retrying cannot help (credentials or permissions refused): not rescheduled.
    Fatal(String),
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
