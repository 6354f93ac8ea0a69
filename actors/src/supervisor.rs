//! The Supervisor actor: starts a Fetcher per source, routes schedule ticks to them, watches them
//! (a panic kills an actix actor for good, so it checks their mailboxes itself and restarts a
//! dead one, which resumes from its checkpoint), and runs the graceful shutdown.

use crate::auth::AuthToken;
use crate::fetcher::{
    Backfill, Cancel, Fetcher, FetcherEnv, JobFinished, JobSummary, RunJob, RunReply,
};
use crate::scheduler::{Due, Scheduler, StopScheduling};
use crate::sink::{Deliver, FlushSink, SinkActor, SinkInput};
use crate::spec::SourceSpec;
use actix::prelude::*;
use msgtrace_storage::{JobKind, JobState, Store};
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use tokio::sync::oneshot;
use tracing::{error, info, warn};

/// How often the supervisor checks that its children are alive.
const WATCH_INTERVAL: Duration = Duration::from_millis(250);
/// A source whose fetcher dies this many times in a row without finishing a job is failed.
const MAX_CONSECUTIVE_RESTARTS: u32 = 5;

/// A sink and the sources that feed it.
pub struct SinkEntry {
    /// The sink's id.
    pub name: String,
    /// The running sink actor.
    pub addr: Addr<SinkActor>,
    /// Source ids whose events it takes.
    pub inputs: Vec<String>,
    /// What it reads of a batch ([`Sink::input`](crate::sink::Sink::input)).
    pub reads: SinkInput,
}

/// A source as the supervisor runs it.
pub struct SourceEntry {
    /// What to collect.
    pub spec: SourceSpec,
    /// `job_timeout`.
    pub job_timeout: Option<Duration>,
}

/// Runs every source once (catch-up included) and answers when all jobs ended.
#[derive(Message)]
#[rtype(result = "RunReport")]
pub struct RunAll {
    /// Recorded as the jobs' kind.
    pub kind: JobKind,
}

/// Runs a backfill of one source and answers when it ended.
#[derive(Message)]
#[rtype(result = "RunReport")]
pub struct RunBackfill {
    /// The source.
    pub source: String,
    /// The range.
    pub backfill: Backfill,
}

/// What a source was asked to run (kept so that a crashed fetcher's job can be re-sent).
#[derive(Clone, Debug)]
pub struct JobRequest {
    /// Why.
    pub kind: JobKind,
    /// A backfill range, or the continuous cursor.
    pub backfill: Option<Backfill>,
}

impl JobRequest {
    fn scheduled() -> JobRequest {
        JobRequest {
            kind: JobKind::Scheduled,
            backfill: None,
        }
    }
}

/// Starts the schedules (continuous mode): every source runs now, then on its schedule.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StartSchedules;

/// Graceful shutdown: stop scheduling, let each fetcher finish its page in flight (abandon it
/// after `grace`), flush sinks and state. Answers when done.
#[derive(Message)]
#[rtype(result = "RunReport")]
pub struct Shutdown {
    /// How long to wait for pages in flight.
    pub grace: Duration,
}

/// Per-source status.
#[derive(Message)]
#[rtype(result = "Vec<SourceStatus>")]
pub struct GetStatus;

/// What a source is doing.
#[derive(Debug, Clone)]
pub struct SourceStatus {
    /// Source id.
    pub source: String,
    /// A job is running.
    pub running: bool,
    /// The last job's outcome.
    pub last: Option<JobSummary>,
    /// Fetcher restarts after a crash.
    pub restarts: u32,
    /// When its schedule fires next; `None` unless the schedules run (`StartSchedules`).
    pub next_due: Option<chrono::DateTime<chrono::Utc>>,
    /// Its tenant's request budget and what is left of it now; `None` without a budget.
    pub quota: Option<QuotaUse>,
}

/// A tenant's request budget as a source sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaUse {
    /// The budget.
    pub spec: crate::quota::QuotaSpec,
    /// Requests left in the current span.
    pub remaining: u32,
}

/// Outcomes of the jobs of a [`RunAll`] or of everything until [`Shutdown`].
#[derive(Debug, Clone, Default)]
pub struct RunReport {
    /// One summary per job, in the order they ended.
    pub jobs: Vec<(String, JobSummary)>,
    /// Fetcher restarts after crashes.
    pub restarts: u32,
}

impl RunReport {
    /// Whether every job succeeded.
    pub fn all_succeeded(&self) -> bool {
        self.jobs
            .iter()
            .all(|(_, s)| s.state == JobState::Succeeded)
    }
}

/// Called after each page commit with (source id, pages and rows of the running job).
/// An instrumentation and fault-injection point for tests and embedders.
pub type PageHook = std::sync::Arc<dyn Fn(&str, u64, u64) + Send + Sync>;

struct Slot {
    entry: SourceEntry,
    fetcher: Addr<Fetcher>,
    running: Option<JobRequest>,
    restarts_in_row: u32,
    restarts: u32,
    last: Option<JobSummary>,
}

/// The Supervisor actor.
pub struct Supervisor {
    store: Store,
    auth: Addr<AuthToken>,
    sinks: Vec<SinkEntry>,
    slots: HashMap<String, Slot>,
    order: Vec<String>,
    scheduler: Option<Addr<Scheduler>>,
    waiting: Vec<(HashSet<String>, oneshot::Sender<RunReport>, RunReport)>,
    shutting_down: bool,
    shutdown_started: bool,
    shutdown_waiters: Vec<oneshot::Sender<RunReport>>,
    report: RunReport,
    page_hook: Option<PageHook>,
    hooks: Vec<crate::hook::Hook>,
    pending_sources: Option<Vec<SourceEntry>>,
    quotas: crate::quota::QuotaRegistry,
    /// What every fetcher of this engine shares (the rows-in-flight budget among it).
    shared: crate::fetcher::Shared,
}

impl Supervisor {
    /// A supervisor for these sources and sinks. Nothing runs until [`RunAll`] or
    /// [`StartSchedules`].
    pub fn new(
        store: Store,
        auth: Addr<AuthToken>,
        sources: Vec<SourceEntry>,
        sinks: Vec<SinkEntry>,
        page_hook: Option<PageHook>,
    ) -> Supervisor {
        let order = sources.iter().map(|s| s.spec.id.clone()).collect();
        Supervisor {
            store,
            auth,
            sinks,
            slots: HashMap::new(),
            order,
            scheduler: None,
            waiting: Vec::new(),
            shutting_down: false,
            shutdown_started: false,
            shutdown_waiters: Vec::new(),
            report: RunReport::default(),
            page_hook,
            hooks: Vec::new(),
            // Fetchers are started in `started`, once the supervisor has an address.
            pending_sources: Some(sources),
            quotas: crate::quota::QuotaRegistry::default(),
            shared: crate::fetcher::Shared::new(crate::fetcher::ROWS_IN_FLIGHT),
        }
    }
}

impl Supervisor {
    /// Pipeline hooks applied, in order, to every source's events before the sinks.
    pub fn with_hooks(mut self, hooks: Vec<crate::hook::Hook>) -> Supervisor {
        self.hooks = hooks;
        self
    }

    /// The engine-wide budget of rows between fetch and commit (default
    /// [`crate::fetcher::ROWS_IN_FLIGHT`]; at least 1).
    pub fn with_rows_in_flight(mut self, rows: usize) -> Supervisor {
        self.shared = crate::fetcher::Shared::new(rows);
        self
    }

    fn spawn_fetcher(&mut self, entry: &SourceEntry, ctx: &mut Context<Self>) -> Addr<Fetcher> {
        let feeds = || {
            self.sinks
                .iter()
                .filter(|s| s.inputs.contains(&entry.spec.id))
        };
        let sinks: Vec<Recipient<Deliver>> = feeds().map(|s| s.addr.clone().recipient()).collect();
        let env = FetcherEnv {
            reads: crate::fetcher::Reads {
                events: feeds().any(|s| s.reads == SinkInput::Events),
                ndjson: feeds().any(|s| s.reads == SinkInput::Ndjson),
            },
            spec: entry.spec.clone(),
            store: self.store.clone(),
            auth: self.auth.clone(),
            sinks,
            supervisor: ctx.address().recipient(),
            page_hook: self.page_hook.clone(),
            hooks: self.hooks.clone(),
            shared: self.shared.clone(),
            quota: entry
                .spec
                .quota
                .map(|q| self.quotas.gate(&entry.spec.quota_key(), q)),
        };
        Fetcher::new(env).start()
    }

    fn run_source(&mut self, source: &str, req: JobRequest, ctx: &mut Context<Self>) {
        let Some(slot) = self.slots.get_mut(source) else {
            return;
        };
        let fetcher = slot.fetcher.clone();
        let timeout = slot.entry.job_timeout;
        let source = source.to_owned();
        slot.running = Some(req.clone());
        let msg = RunJob {
            kind: req.kind,
            backfill: req.backfill.clone(),
            timeout,
        };
        ctx.spawn(async move { fetcher.send(msg).await }.into_actor(self).map(
            move |reply, act, _| match reply {
                Ok(RunReply::Started(job)) => {
                    info!(source = %source, job = %job, "job started")
                }
                Ok(RunReply::AlreadyRunning) => {
                    warn!(source = %source, "previous run still going: this tick is skipped");
                }
                Err(_) => {
                    // The fetcher died before taking the job: the watchdog restarts it and
                    // re-runs the job because `running` is still set.
                    if let Some(s) = act.slots.get_mut(&source) {
                        s.running = Some(req);
                    }
                }
            },
        ));
    }

    fn watch(&mut self, ctx: &mut Context<Self>) {
        let dead: Vec<String> = self
            .slots
            .iter()
            .filter(|(_, s)| !s.fetcher.connected())
            .map(|(k, _)| k.clone())
            .collect();
        for source in dead {
            let (entry_spec, timeout) = {
                let s = &self.slots[&source];
                (s.entry.spec.clone(), s.entry.job_timeout)
            };
            let new = self.spawn_fetcher(
                &SourceEntry {
                    spec: entry_spec,
                    job_timeout: timeout,
                },
                ctx,
            );
            let slot = self.slots.get_mut(&source).expect("slot exists");
            slot.fetcher = new;
            slot.restarts += 1;
            slot.restarts_in_row += 1;
            self.report.restarts += 1;
            for (_, _, r) in &mut self.waiting {
                r.restarts += 1;
            }
            error!(source = %source, restarts = slot.restarts, "fetcher died (panic); restarted from its checkpoint");
            if let Some(req) = slot.running.clone() {
                if slot.restarts_in_row > MAX_CONSECUTIVE_RESTARTS || self.shutting_down {
                    let summary = JobSummary {
                        job_id: String::new(),
                        state: JobState::Failed,
                        pages: 0,
                        rows: 0,
                        dropped: 0,
                        window: None,
                        error: Some(format!(
                            "the fetcher of {source} crashed {} times in a row; giving up until the next run",
                            slot.restarts_in_row
                        )),
                    };
                    self.finished(source.clone(), summary);
                } else {
                    self.run_source(&source, req, ctx);
                }
            }
        }
    }

    fn finished(&mut self, source: String, summary: JobSummary) {
        if let Some(slot) = self.slots.get_mut(&source) {
            slot.running = None;
            if summary.state != JobState::Failed || !summary.job_id.is_empty() {
                slot.restarts_in_row = 0;
            }
            slot.last = Some(summary.clone());
        }
        self.report.jobs.push((source.clone(), summary.clone()));
        let mut i = 0;
        while i < self.waiting.len() {
            let (set, _, report) = &mut self.waiting[i];
            if set.remove(&source) {
                report.jobs.push((source.clone(), summary.clone()));
            }
            if set.is_empty() {
                let (_, tx, report) = self.waiting.remove(i);
                let _ = tx.send(report);
            } else {
                i += 1;
            }
        }
    }

    fn any_running(&self) -> bool {
        self.slots.values().any(|s| s.running.is_some())
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        for entry in self.pending_sources.take().unwrap_or_default() {
            let fetcher = self.spawn_fetcher(&entry, ctx);
            self.slots.insert(
                entry.spec.id.clone(),
                Slot {
                    entry,
                    fetcher,
                    running: None,
                    restarts_in_row: 0,
                    restarts: 0,
                    last: None,
                },
            );
        }
        ctx.run_interval(WATCH_INTERVAL, |act, ctx| act.watch(ctx));
    }
}

impl Handler<JobFinished> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: JobFinished, ctx: &mut Context<Self>) {
        self.finished(msg.source, msg.summary);
        if self.shutting_down && !self.any_running() {
            self.complete_shutdown(ctx);
        }
    }
}

impl Handler<Due> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: Due, ctx: &mut Context<Self>) {
        if self.shutting_down {
            return;
        }
        if self
            .slots
            .get(&msg.source)
            .is_some_and(|s| s.running.is_some())
        {
            warn!(source = %msg.source, scheduled_for = %msg.scheduled_for, "previous run still going: this tick is skipped");
            return;
        }
        self.run_source(&msg.source, JobRequest::scheduled(), ctx);
    }
}

impl Handler<RunAll> for Supervisor {
    type Result = ResponseFuture<RunReport>;

    fn handle(&mut self, msg: RunAll, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        let set: HashSet<String> = self.order.iter().cloned().collect();
        if set.is_empty() {
            let _ = tx.send(RunReport::default());
        } else {
            self.waiting.push((set, tx, RunReport::default()));
            for s in self.order.clone() {
                if self.slots.get(&s).is_some_and(|x| x.running.is_none()) {
                    self.run_source(
                        &s,
                        JobRequest {
                            kind: msg.kind,
                            backfill: None,
                        },
                        ctx,
                    );
                }
            }
        }
        Box::pin(async move { rx.await.unwrap_or_default() })
    }
}

impl Handler<RunBackfill> for Supervisor {
    type Result = ResponseFuture<RunReport>;

    fn handle(&mut self, msg: RunBackfill, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        match self.slots.get(&msg.source) {
            None => {
                let _ = tx.send(RunReport::default());
            }
            Some(_) => {
                self.waiting.push((
                    HashSet::from([msg.source.clone()]),
                    tx,
                    RunReport::default(),
                ));
                self.run_source(
                    &msg.source,
                    JobRequest {
                        kind: JobKind::Backfill,
                        backfill: Some(msg.backfill),
                    },
                    ctx,
                );
            }
        }
        Box::pin(async move { rx.await.unwrap_or_default() })
    }
}

impl Handler<StartSchedules> for Supervisor {
    type Result = ();

    fn handle(&mut self, _: StartSchedules, ctx: &mut Context<Self>) {
        let crons: Vec<(String, String)> = self
            .order
            .iter()
            .map(|s| (s.clone(), self.slots[s].entry.spec.cron.clone()))
            .collect();
        match Scheduler::new(crons, ctx.address().recipient()) {
            Ok(s) => self.scheduler = Some(s.start()),
            Err(e) => error!(error = %e, "scheduler could not start"),
        }
        // Catch up at once rather than waiting for the first tick.
        for s in self.order.clone() {
            self.run_source(&s, JobRequest::scheduled(), ctx);
        }
    }
}

impl Handler<Shutdown> for Supervisor {
    type Result = ResponseFuture<RunReport>;

    fn handle(&mut self, msg: Shutdown, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.shutdown_waiters.push(tx);
        if !self.shutting_down {
            self.shutting_down = true;
            info!("shutting down: no new runs; finishing pages in flight");
            if let Some(s) = &self.scheduler {
                s.do_send(StopScheduling);
            }
            for slot in self.slots.values() {
                slot.fetcher.do_send(Cancel);
            }
            ctx.run_later(msg.grace, |act, ctx| {
                if act.any_running() {
                    warn!("grace period over: abandoning pages in flight (they are fetched again on the next start)");
                }
                act.complete_shutdown(ctx);
            });
            if !self.any_running() {
                self.complete_shutdown(ctx);
            }
        }
        Box::pin(async move { rx.await.unwrap_or_default() })
    }
}

impl Supervisor {
    fn complete_shutdown(&mut self, ctx: &mut Context<Self>) {
        if self.shutdown_started {
            return;
        }
        self.shutdown_started = true;
        let sinks: Vec<Addr<SinkActor>> = self.sinks.iter().map(|s| s.addr.clone()).collect();
        let store = self.store.clone();
        ctx.spawn(
            async move {
                for s in sinks {
                    if let Ok(Err(e)) = s.send(FlushSink).await {
                        warn!(error = %e, "sink flush failed");
                    }
                }
                if let Err(e) = store.flush().await {
                    warn!(error = %e, "state flush failed");
                }
            }
            .into_actor(self)
            .map(|(), act, _| {
                for tx in act.shutdown_waiters.drain(..) {
                    let _ = tx.send(act.report.clone());
                }
            }),
        );
    }
}

impl Handler<GetStatus> for Supervisor {
    type Result = MessageResult<GetStatus>;

    fn handle(&mut self, _: GetStatus, _: &mut Context<Self>) -> Self::Result {
        let now = chrono::Utc::now();
        let scheduling = self.scheduler.is_some() && !self.shutting_down;
        MessageResult(
            self.order
                .iter()
                .map(|s| {
                    let slot = &self.slots[s];
                    let spec = &slot.entry.spec;
                    SourceStatus {
                        source: s.clone(),
                        running: slot.running.is_some(),
                        last: slot.last.clone(),
                        restarts: slot.restarts,
                        next_due: scheduling
                            .then(|| crate::scheduler::next_due(&spec.cron, now))
                            .flatten(),
                        quota: spec.quota.and_then(|q| {
                            let remaining = self
                                .quotas
                                .remaining(&spec.quota_key(), std::time::Instant::now())?;
                            Some(QuotaUse { spec: q, remaining })
                        }),
                    }
                })
                .collect(),
        )
    }
}
