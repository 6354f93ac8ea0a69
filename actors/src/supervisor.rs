//! The Supervisor actor: starts a Fetcher per source, routes schedule ticks to them, watches them
//! (a panic kills an actix actor for good, so it checks their mailboxes itself and restarts a
//! dead one, which resumes from its checkpoint), and runs the graceful shutdown.

use crate::auth::AuthToken;
use crate::fetcher::{
    Backfill, Cancel, CancelJob, Fetcher, FetcherEnv, JobFinished, JobSummary, RunJob, RunReply,
};
use crate::scheduler::{Due, Scheduler, StopScheduling};
use crate::sink::{FlushSink, SinkActor, SinkInput};
use crate::spec::SourceSpec;
use actix::prelude::*;
use msgtrace_storage::{JobKind, JobState, Store};
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;
use tokio::sync::oneshot;
use tracing::{debug, error, info, warn};

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
    /// After a restart, the sink compares the pages delivered again with what its file holds
    /// past the position the last commit recorded
    /// ([`Sink::position`](crate::sink::Sink::position)), and does not write them twice.
    pub replays: bool,
}

/// A source as the supervisor runs it.
#[derive(Clone)]
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

/// Runs a backfill of one source and answers when it ended. Asked while the source runs a job
/// (continuous mode), it runs once that job, and the backfills asked before it, have ended.
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

/// Replaces the sources and sinks the supervisor runs (a configuration reload). Sources it ran
/// that are not in `sources` are removed, and those named in `restart` are restarted with
/// their new entry: each stops after its page in flight (the page delivered and checkpointed);
/// once all of them have stopped, the restarted ones start again together (so a rebuilt sink
/// never writes beside the one it replaces) and run again the job they were running, from
/// their checkpoint: no page is lost or delivered twice. Sources new in `sources` start (and
/// run at once when the schedules are running). Sources kept as they are are not touched. The
/// answer resolves once every removed or restarted source's old fetcher has stopped: the sinks
/// that are no longer in `sinks` can then be flushed and stopped.
#[derive(Message)]
#[rtype(result = "oneshot::Receiver<()>")]
pub struct Reconfigure {
    /// Every source from now on, in order.
    pub sources: Vec<SourceEntry>,
    /// Sources already running whose spec, or set of sinks, changed.
    pub restart: HashSet<String>,
    /// Every sink from now on (a kept sink with its running address, its inputs as they are now).
    pub sinks: Vec<SinkEntry>,
    /// The pipeline hooks of the fetchers started from now on.
    pub hooks: Vec<crate::hook::Hook>,
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
    /// `[cluster]`: the member holding the source's claim, as the agent last read it (this
    /// instance's name when it is this one); `None` without `[cluster]` or while nobody does.
    pub owner: Option<String>,
    /// `[cluster]`: another instance holds the source's claim (its jobs here, and their
    /// outcome, are not this instance's concern now).
    pub elsewhere: bool,
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
    /// `[cluster]`: sources whose job here was stopped after its page in flight because the
    /// hash gives them to another member now (one joined): that member collects the rest.
    pub handed_over: Vec<String>,
}

impl RunReport {
    /// Whether every job succeeded, a job stopped because its source was handed over to
    /// another member (`handed_over`) counting as done here.
    pub fn all_succeeded(&self) -> bool {
        self.jobs.iter().all(|(source, s)| {
            s.state == JobState::Succeeded
                || (s.state == JobState::Cancelled && self.handed_over.contains(source))
        })
    }
}

pub use crate::fetcher::PageHook;

struct Slot {
    entry: SourceEntry,
    fetcher: Addr<Fetcher>,
    running: Option<JobRequest>,
    restarts_in_row: u32,
    restarts: u32,
    last: Option<JobSummary>,
    /// What a reload asked for: done once every source it stops has stopped.
    pending: Pending,
    /// The job to run once restarted: the one a reload stopped, or one asked for meanwhile.
    resume: Option<JobRequest>,
    /// Backfills asked for while a job ran, in order, each with who waits for its report:
    /// run one after the other once the source is idle (one fetcher, one budget per source).
    backfills: VecDeque<(Backfill, oneshot::Sender<RunReport>)>,
    /// A tick came (or this instance gained the source) while a backfill ran: the continuous
    /// job runs once it ends, before the next backfill, so that a backfill delays the
    /// continuous cursor by its own length only.
    due: bool,
}

/// What becomes of a source once its running job has stopped ([`Reconfigure`]).
enum Pending {
    /// Nothing: it goes on.
    Keep,
    /// A new fetcher with this entry runs the job again, from the checkpoint.
    Replace(Box<SourceEntry>),
    /// The source is gone.
    Remove,
}

impl Slot {
    fn new(entry: SourceEntry, fetcher: Addr<Fetcher>) -> Slot {
        Slot {
            entry,
            fetcher,
            running: None,
            restarts_in_row: 0,
            restarts: 0,
            last: None,
            pending: Pending::Keep,
            resume: None,
            backfills: VecDeque::new(),
            due: false,
        }
    }
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
    /// Sources a reload stops whose job is still running, and the reloads that wait for them.
    stopping: HashSet<String>,
    reload_waiters: Vec<oneshot::Sender<()>>,
    report: RunReport,
    page_hook: Option<PageHook>,
    hooks: Vec<crate::hook::Hook>,
    pending_sources: Option<Vec<SourceEntry>>,
    quotas: crate::quota::QuotaRegistry,
    /// What every fetcher of this engine shares (the rows-in-flight budget among it).
    shared: crate::fetcher::Shared,
    /// `[cluster]`: which sources this instance may start, and (`Busy`) which of them run a
    /// job now, for the agent to give up a source only once it is idle.
    cluster: Option<(
        crate::cluster::record::ClusterHandle,
        crate::cluster::agent::Busy,
    )>,
    /// `[cluster]`: the sources this instance could start at the last watch tick.
    startable: HashSet<String>,
    /// `[cluster]`: sources whose running job was told to stop after its page in flight
    /// because this instance may no longer start them, each with whether that is because
    /// another member should hold them now (rather than a lease that may have ended).
    giving_up: HashMap<String, bool>,
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
            stopping: HashSet::new(),
            reload_waiters: Vec::new(),
            report: RunReport::default(),
            page_hook,
            hooks: Vec::new(),
            // Fetchers are started in `started`, once the supervisor has an address.
            pending_sources: Some(sources),
            quotas: crate::quota::QuotaRegistry::default(),
            shared: crate::fetcher::Shared::new(crate::fetcher::ROWS_IN_FLIGHT),
            cluster: None,
            startable: HashSet::new(),
            giving_up: HashMap::new(),
        }
    }
}

impl Supervisor {
    /// Pipeline hooks applied, in order, to every source's events before the sinks.
    pub fn with_hooks(mut self, hooks: Vec<crate::hook::Hook>) -> Supervisor {
        self.hooks = hooks;
        self
    }

    /// `[cluster]`: only the sources `cluster` says this instance holds are started, every
    /// commit goes through the fenced write, and `busy` is kept up to date for the agent.
    pub fn with_cluster(
        mut self,
        cluster: crate::cluster::record::ClusterHandle,
        busy: crate::cluster::agent::Busy,
    ) -> Supervisor {
        self.cluster = Some((cluster, busy));
        self
    }

    /// Whether a job of `source` may start in this instance (always, without `[cluster]`).
    fn owned_here(&self, source: &str) -> bool {
        self.cluster
            .as_ref()
            .is_none_or(|(c, _)| c.may_start(source))
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
        let sinks: Vec<Addr<SinkActor>> = feeds().map(|s| s.addr.clone()).collect();
        let env = FetcherEnv {
            reads: crate::fetcher::Reads {
                events: feeds().any(|s| s.reads == SinkInput::Events),
                ndjson: feeds().any(|s| s.reads == SinkInput::Ndjson),
            },
            replays: feeds().all(|s| s.replays),
            spec: entry.spec.clone(),
            store: self.store.clone(),
            auth: self.auth.clone(),
            sinks,
            supervisor: ctx.address().recipient(),
            page_hook: self.page_hook.clone(),
            hooks: self.hooks.clone(),
            shared: self.shared.clone(),
            details_wake: Default::default(),
            cluster: self.cluster.as_ref().map(|(c, _)| c.clone()),
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
        if matches!(slot.pending, Pending::Replace(_)) {
            // Run by the new fetcher, once the reload's sources have all stopped.
            slot.resume = Some(req);
            return;
        }
        let fetcher = slot.fetcher.clone();
        let timeout = slot.entry.job_timeout;
        let source = source.to_owned();
        slot.running = Some(req.clone());
        if let Some((_, busy)) = &self.cluster {
            busy.borrow_mut().insert(source.clone());
        }
        let msg = RunJob {
            kind: req.kind,
            backfill: req.backfill.clone(),
            timeout,
        };
        // Queued now, so that a `Cancel` sent after it (a reload, the shutdown) reaches the
        // job it started.
        let request = fetcher.send(msg);
        ctx.spawn(
            request
                .into_actor(self)
                .map(move |reply, act, _| match reply {
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
                }),
        );
    }

    fn watch(&mut self, ctx: &mut Context<Self>) {
        let dead: Vec<String> = self
            .slots
            .iter()
            .filter(|(_, s)| !s.fetcher.connected())
            .map(|(k, _)| k.clone())
            .collect();
        for source in dead {
            if !matches!(self.slots[&source].pending, Pending::Keep) {
                // A fetcher a reload was stopping: it has stopped.
                error!(source = %source, "fetcher died (panic) while a reload stopped it");
                self.stopped(&source, None, ctx);
                continue;
            }
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
                    self.next_job(&source, ctx);
                } else {
                    self.run_source(&source, req, ctx);
                }
            }
        }
    }

    /// `[cluster]`, at every watch tick: follows what the agent publishes. A source this
    /// instance may start now and could not at the last tick (claimed: another instance died or
    /// left, or etcd answers again) runs at once when the schedules run, instead of at its next
    /// tick; a source it may no longer start (the hash gives it to another member, or the lease
    /// may have ended) whose job runs is told to stop after its page in flight, so that the
    /// claim is given up without waiting for the whole job.
    fn follow_ownership(&mut self, ctx: &mut Context<Self>) {
        let Some((cluster, _)) = &self.cluster else {
            return;
        };
        if self.shutting_down {
            return;
        }
        let now: HashSet<String> = self
            .order
            .iter()
            .filter(|s| cluster.may_start(s))
            .cloned()
            .collect();
        let handed: HashSet<String> = self
            .order
            .iter()
            .filter(|s| cluster.handing_over(s))
            .cloned()
            .collect();
        let scheduling = self.scheduler.is_some();
        for source in self.order.clone() {
            let Some(slot) = self.slots.get(&source) else {
                continue;
            };
            let running = slot.running.is_some();
            if now.contains(&source) {
                let gained = !self.startable.contains(&source);
                if gained && scheduling && running {
                    // A backfill (handed over with the source) runs: collected once it ends.
                    if let Some(slot) = self.slots.get_mut(&source) {
                        slot.due = true;
                    }
                } else if gained && scheduling && matches!(slot.pending, Pending::Keep) {
                    info!(source = %source, "cluster: the source is this instance's now; collecting it at once");
                    self.run_source(&source, JobRequest::scheduled(), ctx);
                }
            } else if running && !self.giving_up.contains_key(&source) {
                let to_another = handed.contains(&source);
                self.giving_up.insert(source.clone(), to_another);
                info!(source = %source, "cluster: the source is no longer this instance's; its job stops after its page in flight");
                slot.fetcher.do_send(CancelJob);
            }
        }
        self.startable = now;
    }

    /// Runs `backfill` of `source` now; `tx` gets its report.
    fn start_backfill(
        &mut self,
        source: &str,
        backfill: Backfill,
        tx: oneshot::Sender<RunReport>,
        ctx: &mut Context<Self>,
    ) {
        self.waiting
            .push((HashSet::from([source.to_owned()]), tx, RunReport::default()));
        let req = JobRequest {
            kind: JobKind::Backfill,
            backfill: Some(backfill),
        };
        self.run_source(source, req, ctx);
    }

    /// Once `source` is idle: the continuous job a tick asked for while a backfill ran runs,
    /// else its next backfill asked for meanwhile; while the engine shuts down, or once this
    /// instance may no longer start the source, none does (each asker of a backfill gets an
    /// empty report).
    fn next_job(&mut self, source: &str, ctx: &mut Context<Self>) {
        let startable = !self.shutting_down && self.owned_here(source);
        let Some(slot) = self.slots.get_mut(source) else {
            return;
        };
        if slot.running.is_some() || !matches!(slot.pending, Pending::Keep) {
            return;
        }
        if std::mem::take(&mut slot.due) && startable && self.scheduler.is_some() {
            self.run_source(source, JobRequest::scheduled(), ctx);
            return;
        }
        if !startable {
            if !slot.backfills.is_empty() {
                info!(source = %source, count = slot.backfills.len(), "backfills asked for are not run: the source is not this instance's now, or the engine stops");
            }
            slot.backfills.clear();
            return;
        }
        if let Some((backfill, tx)) = slot.backfills.pop_front() {
            self.start_backfill(source, backfill, tx, ctx);
        }
    }

    fn finished(&mut self, source: String, summary: JobSummary) {
        let handed =
            self.giving_up.remove(&source).unwrap_or(false) && summary.state == JobState::Cancelled;
        if let Some((_, busy)) = &self.cluster {
            busy.borrow_mut().remove(&source);
        }
        if let Some(slot) = self.slots.get_mut(&source) {
            slot.running = None;
            if summary.state != JobState::Failed || !summary.job_id.is_empty() {
                slot.restarts_in_row = 0;
            }
            slot.last = Some(summary.clone());
        }
        for report in std::iter::once(&mut self.report).chain(
            self.waiting
                .iter_mut()
                .filter(|(set, _, _)| set.contains(&source))
                .map(|(_, _, r)| r),
        ) {
            report.jobs.push((source.clone(), summary.clone()));
            if handed {
                report.handed_over.push(source.clone());
            }
        }
        let mut i = 0;
        while i < self.waiting.len() {
            let (set, _, _) = &mut self.waiting[i];
            set.remove(&source);
            if set.is_empty() {
                let (_, tx, report) = self.waiting.remove(i);
                let _ = tx.send(report);
            } else {
                i += 1;
            }
        }
    }

    /// A job a reload stopped has ended (`summary`; `None`: its fetcher died). A removed source
    /// is forgotten; a restarted one waits, with the job to run again, until every source the
    /// reload stops has stopped; then they all start again.
    fn stopped(&mut self, source: &str, summary: Option<JobSummary>, ctx: &mut Context<Self>) {
        self.giving_up.remove(source);
        if let Some((_, busy)) = &self.cluster {
            busy.borrow_mut().remove(source);
        }
        let slot = self.slots.get_mut(source).expect("slot exists");
        let req = slot.running.take();
        match &slot.pending {
            Pending::Replace(_) if !self.shutting_down => {
                slot.resume = req.or(slot.resume.take());
            }
            Pending::Keep | Pending::Replace(_) => {
                if let Some(summary) = summary {
                    self.finished(source.to_owned(), summary);
                }
            }
            Pending::Remove => {
                if let Some(summary) = summary {
                    self.finished(source.to_owned(), summary);
                }
                info!(source = %source, "reload: the source is removed");
                self.forget(source);
            }
        }
        self.stopping.remove(source);
        self.restart_replaced(ctx);
    }

    /// Once no source a reload stops is still running: starts the restarted ones with their new
    /// entry, each running again the job the reload stopped (from its checkpoint), and answers
    /// the reloads.
    fn restart_replaced(&mut self, ctx: &mut Context<Self>) {
        if !self.stopping.is_empty() {
            return;
        }
        let mut ids: Vec<String> = self
            .slots
            .iter()
            .filter(|(_, s)| matches!(s.pending, Pending::Replace(_)))
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        for id in ids {
            let slot = self.slots.get_mut(&id).expect("slot exists");
            let Pending::Replace(entry) = std::mem::replace(&mut slot.pending, Pending::Keep)
            else {
                continue;
            };
            let resume = slot.resume.take();
            let fetcher = self.spawn_fetcher(&entry, ctx);
            let slot = self.slots.get_mut(&id).expect("slot exists");
            slot.entry = *entry;
            slot.fetcher = fetcher;
            info!(source = %id, "reload: the source restarts from its checkpoint");
            // With `[cluster]`, a source this instance does not hold (yet) runs once it does
            // (`follow_ownership`).
            if let Some(req) = resume.filter(|_| !self.shutting_down && self.owned_here(&id)) {
                self.run_source(&id, req, ctx);
            }
            self.next_job(&id, ctx);
        }
        for tx in self.reload_waiters.drain(..) {
            let _ = tx.send(());
        }
    }

    /// Removes a source: its slot, and its place in the runs waiting for it.
    fn forget(&mut self, source: &str) {
        self.slots.remove(source);
        self.order.retain(|s| s != source);
        let mut i = 0;
        while i < self.waiting.len() {
            let (set, _, _) = &mut self.waiting[i];
            set.remove(source);
            if set.is_empty() {
                let (_, tx, report) = self.waiting.remove(i);
                let _ = tx.send(report);
            } else {
                i += 1;
            }
        }
    }

    /// What a reload asks of a source it ran: stop it after the page in flight (when a job
    /// runs), then remove it or restart it with a new entry.
    fn retire(&mut self, source: &str, next: Pending) {
        let slot = self.slots.get_mut(source).expect("slot exists");
        let running = slot.running.is_some();
        // Also when no job runs: the fetcher's detail worker stops after its request in flight
        // (it would keep the old fetcher alive beside the new one).
        slot.fetcher.do_send(Cancel);
        match next {
            Pending::Remove if !running => return self.forget(source),
            _ => slot.pending = next,
        }
        if running {
            info!(source = %source, "reload: the source stops after its page in flight");
            self.stopping.insert(source.to_owned());
        }
    }

    /// The schedules of the sources as they are after the pending reloads.
    fn start_scheduler(&mut self, ctx: &mut Context<Self>) {
        let crons: Vec<(String, String)> = self
            .order
            .iter()
            .map(|s| {
                let slot = &self.slots[s];
                let entry = match &slot.pending {
                    Pending::Replace(e) => e,
                    Pending::Keep | Pending::Remove => &slot.entry,
                };
                (s.clone(), entry.spec.cron.clone())
            })
            .collect();
        match Scheduler::new(crons, ctx.address().recipient()) {
            Ok(s) => self.scheduler = Some(s.start()),
            Err(e) => error!(error = %e, "scheduler could not start"),
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
            self.slots
                .insert(entry.spec.id.clone(), Slot::new(entry, fetcher));
        }
        ctx.run_interval(WATCH_INTERVAL, |act, ctx| {
            act.watch(ctx);
            act.follow_ownership(ctx);
        });
    }
}

impl Handler<JobFinished> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: JobFinished, ctx: &mut Context<Self>) {
        if self
            .slots
            .get(&msg.source)
            .is_some_and(|s| !matches!(s.pending, Pending::Keep))
        {
            self.stopped(&msg.source, Some(msg.summary), ctx);
        } else {
            self.finished(msg.source.clone(), msg.summary);
        }
        self.next_job(&msg.source, ctx);
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
        if let Some(slot) = self.slots.get_mut(&msg.source) {
            match &slot.running {
                Some(JobRequest {
                    backfill: Some(_), ..
                }) => {
                    debug!(source = %msg.source, scheduled_for = %msg.scheduled_for, "a backfill runs: this tick's job runs once it ends");
                    slot.due = true;
                    return;
                }
                Some(_) => {
                    warn!(source = %msg.source, scheduled_for = %msg.scheduled_for, "previous run still going: this tick is skipped");
                    return;
                }
                None => {}
            }
        }
        if !self.owned_here(&msg.source) {
            debug!(source = %msg.source, "another instance owns the source: this tick is skipped");
            return;
        }
        self.run_source(&msg.source, JobRequest::scheduled(), ctx);
    }
}

impl Handler<RunAll> for Supervisor {
    type Result = ResponseFuture<RunReport>;

    fn handle(&mut self, msg: RunAll, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        let set: HashSet<String> = self
            .order
            .iter()
            .filter(|s| self.owned_here(s))
            .cloned()
            .collect();
        if set.is_empty() {
            let _ = tx.send(RunReport::default());
        } else {
            self.waiting.push((set.clone(), tx, RunReport::default()));
            for s in self.order.clone() {
                let idle = self.slots.get(&s).is_some_and(|x| x.running.is_none());
                if idle && set.contains(&s) {
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
        let owned = self.owned_here(&msg.source);
        match self.slots.get_mut(&msg.source) {
            // Not run: the report is empty.
            None => {}
            Some(_) if self.shutting_down => {}
            Some(_) if !owned => {
                warn!(source = %msg.source, "backfill not run: another instance owns the source");
            }
            Some(slot) if slot.running.is_some() || !matches!(slot.pending, Pending::Keep) => {
                info!(source = %msg.source, "backfill waits for the source's job running now");
                slot.backfills.push_back((msg.backfill, tx));
            }
            Some(_) => self.start_backfill(&msg.source, msg.backfill, tx, ctx),
        }
        Box::pin(async move { rx.await.unwrap_or_default() })
    }
}

impl Handler<StartSchedules> for Supervisor {
    type Result = ();

    fn handle(&mut self, _: StartSchedules, ctx: &mut Context<Self>) {
        self.start_scheduler(ctx);
        // Catch up at once rather than waiting for the first tick; with `[cluster]`, the
        // sources this instance holds (those it claims later run when it does,
        // `follow_ownership`).
        for s in self.order.clone() {
            if self.owned_here(&s) {
                self.startable.insert(s.clone());
                self.run_source(&s, JobRequest::scheduled(), ctx);
            }
        }
    }
}

impl Handler<Reconfigure> for Supervisor {
    type Result = MessageResult<Reconfigure>;

    fn handle(&mut self, msg: Reconfigure, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        if self.shutting_down {
            return MessageResult(rx);
        }
        self.sinks = msg.sinks;
        self.hooks = msg.hooks;
        let order: Vec<String> = msg.sources.iter().map(|e| e.spec.id.clone()).collect();
        let mut entries: HashMap<String, SourceEntry> = msg
            .sources
            .into_iter()
            .map(|e| (e.spec.id.clone(), e))
            .collect();
        let mut ids: Vec<String> = self.slots.keys().cloned().collect();
        ids.sort();
        for id in ids {
            // A source an earlier reload removed whose job is still stopping, and back now, is
            // replaced too: never two fetchers on one cursor.
            let stopping = !matches!(self.slots[&id].pending, Pending::Keep);
            let next = match entries.remove(&id) {
                None => Pending::Remove,
                Some(e) if stopping || msg.restart.contains(&id) => Pending::Replace(Box::new(e)),
                Some(_) => continue,
            };
            self.retire(&id, next);
        }
        self.order = order;
        let schedules = self.scheduler.is_some();
        for id in self.order.clone() {
            if let Some(entry) = entries.remove(&id) {
                info!(source = %id, "reload: source added");
                // Started with the restarted ones: a sink it feeds may be a rebuilt one.
                let fetcher = self.spawn_fetcher(&entry, ctx);
                let mut slot = Slot::new(entry.clone(), fetcher);
                slot.pending = Pending::Replace(Box::new(entry));
                slot.resume = schedules.then(JobRequest::scheduled);
                self.slots.insert(id, slot);
            }
        }
        if let Some(s) = self.scheduler.take() {
            s.do_send(StopScheduling);
            self.start_scheduler(ctx);
        }
        self.reload_waiters.push(tx);
        self.restart_replaced(ctx);
        MessageResult(rx)
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
            for slot in self.slots.values_mut() {
                slot.fetcher.do_send(Cancel);
                slot.backfills.clear();
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
                        owner: self.cluster.as_ref().and_then(|(c, _)| c.owner(s)),
                        elsewhere: self.cluster.as_ref().is_some_and(|(c, _)| c.elsewhere(s)),
                    }
                })
                .collect(),
        )
    }
}
