//! The Fetcher actor: runs a source's jobs. It plans the window, requests pages, follows next
//! links, turns rows into events, hands each page to the sinks, and commits the checkpoint.
//!
//! The order for each page is fixed and is the delivery guarantee:
//! fetch → parse → deliver to every sink → every sink acknowledges → write checkpoint and job
//! record (one sled transaction) → `flush_async().await` → deliver the next page.
//! A crash anywhere before the flush completes means the page is fetched again on restart
//! (a duplicate, never a loss); a crash after it means the page is not fetched again. When
//! every sink of the source is a `file` sink, the flush runs while the next page is delivered
//! ([`flushing`]), and the file sink does not write twice the pages a kill left past the last
//! commit.
//!
//! With [`SourceSpec::commit_group`] above 1 (not the default, [`COMMIT_GROUP_PAGES`]), pages
//! that arrive back to back are committed together ([`group`]): all but the last are delivered
//! unsynced, the last synced, then one commit covers them all. A crash then fetches the whole
//! group again (at most `commit_group` pages twice).
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
//! at most one page twice into other sinks (the one being committed; one commit group with
//! groups on), none into `file` sinks, and
//! requests at most one page twice (the one whose request was outstanding). Re-read slices bypass the spool ([`PageUse`]).
//!
//! The thread that parses a page also makes it ready ([`make_ready`]: events, pipeline hooks,
//! NDJSON for the sinks that take it), so that its rows never cross threads; only a source with
//! an identity index (re-reading) has its pages made ready in order, after the page before is
//! committed.
//!
//! With `details`, the rows a page commits whose details are wanted enter the source's details
//! backlog in the same transaction; `details.rs` drains it (after a `--once` job's slices, or in
//! the detail worker of a scheduled source, beside its jobs) at the budget's low priority.
//!
//! [`SourceSpec::prefetch`]: crate::spec::SourceSpec::prefetch

use crate::auth::{AuthHeader, AuthToken, GetAuthHeader, InvalidateToken};
use crate::dialect::details::DetailsMode;
use crate::dialect::{self, Api, Page};
use crate::event::{Batch, Event, EventMeta, Ndjson, PageKey};
use crate::http::{self, HttpError};
use crate::retry::Failure;
use crate::sink::{Deliver, FlushSink, Resume, SinkActor};
use crate::spec::SourceSpec;
use crate::window::{self, SliceTask};
use actix::prelude::*;
use chrono::{DateTime, Utc};
use msgtrace_storage::{
    Checkpoint, Commit, DetailEntry, InFlight, JobKind, JobRecord, JobState, SeenEntry,
    SinkPosition, Spool, Store, TaskRecord,
};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tracing::{debug, info, warn, Instrument};

mod client;
mod deliver;
mod details;
mod error;
mod flushing;
mod group;
mod job;
mod passthrough;
mod prefetch;
mod ready;
mod shared;
mod slice;
mod slice_run;

use client::*;
use deliver::*;
use error::Stop;
pub use error::{CancelReason, FetchError, Kind};
use flushing::*;
use group::*;
pub use job::collect;
use job::*;
use prefetch::*;
use ready::*;
pub use shared::{RowBudget, Shared, ROWS_IN_FLIGHT};
use slice::*;
use slice_run::{Identity, Mark, Progress, Query, Request, SliceRun, Step};

/// What a Fetcher needs to run jobs.
pub struct FetcherEnv {
    /// The source.
    pub spec: SourceSpec,
    /// The state directory.
    pub store: Store,
    /// Where tokens come from.
    pub auth: Addr<AuthToken>,
    /// The sinks that take this source's events.
    pub sinks: Vec<Addr<SinkActor>>,
    /// Told when a job ends.
    pub supervisor: Recipient<JobFinished>,
    /// Called after each page commit (instrumentation and fault injection).
    pub page_hook: Option<PageHook>,
    /// The tenant's request budget.
    pub quota: Option<crate::quota::SharedGate>,
    /// Pipeline hooks applied to each page's events before the sinks.
    pub hooks: Vec<crate::hook::Hook>,
    /// What every fetcher of this engine shares ([`Shared`]: the rows-in-flight budget, the
    /// turns for spool I/O and parsing), and no other engine does.
    pub shared: Shared,
    /// What the source's sinks read of a batch.
    pub reads: Reads,
    /// Every sink of the source replays: after a restart it does not write twice the pages it
    /// holds past the position its last commit recorded (see `flushing.rs`), so a commit's
    /// flush may run behind the next page's delivery.
    pub replays: bool,
    /// Told when a commit adds rows to the details backlog (the scheduled mode's detail worker
    /// waits for it).
    pub details_wake: tokio::sync::Notify,
    /// `[cluster]`: the checkpoint of record is read from etcd at a job's start and every
    /// commit writes it there first, fenced by this instance's claim of the source.
    pub cluster: Option<crate::cluster::record::ClusterHandle>,
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

/// Called after each committed page with (source id, pages and rows of the running job up to
/// that page). An instrumentation and fault-injection point for tests and embedders.
pub type PageHook = std::sync::Arc<dyn Fn(&str, u64, u64) + Send + Sync>;

/// Pages a source fetches ahead of the one being delivered and committed, by default. A page
/// holds its place until it is taken for delivery, through its parse and [`make_ready`] (events,
/// hooks, NDJSON); with two places the API waited for them (Reporting pages: 0.52 to 0.62 × the
/// raw fetch with two, 0.70 to 0.77 with three, in alternating benchmark runs). Pages waiting
/// ahead are encoded, their rows freed, so three take less memory than two parsed pages did.
pub const PREFETCH_PAGES: usize = 3;

/// The most pages committed together by default ([`SourceSpec::commit_group`]): 1, every page
/// committed on its own. Groups ([`group`]) are there to be turned on where a sink's `fsync` is
/// slow beside the fetch (network disks). Against nginx on this project's 2-core machine groups
/// of 4 gained 1 to 11 % when it was idle and −9 to +6 % when it was busy (session 11), and a
/// group is what a crash delivers again (where a per-page commit repeats one page), so they are
/// not the default.
pub const COMMIT_GROUP_PAGES: usize = 1;

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

/// Stop after the page in flight (shutdown, reload): the job, and the detail worker after its
/// request in flight.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Cancel;

/// Stop the running job after its page in flight (the page delivered and committed), and
/// nothing else (the detail worker goes on): `[cluster]`, the source moved to another instance.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CancelJob;

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
    /// Stops the detail worker ([`details::keep_draining`]), once it runs.
    details: Option<watch::Sender<bool>>,
}

impl Fetcher {
    /// A fetcher for one source.
    pub fn new(env: FetcherEnv) -> Fetcher {
        Fetcher {
            env: Rc::new(env),
            cancel: None,
            details: None,
        }
    }

    /// Starts the detail worker of a scheduled source with details, unless it runs.
    fn start_details(&mut self, ctx: &mut Context<Self>) {
        if self.details.is_some() || self.env.spec.details == DetailsMode::None {
            return;
        }
        let (tx, rx) = watch::channel(false);
        self.details = Some(tx);
        let span = tracing::info_span!("details", source = %self.env.spec.id);
        let worker = details::keep_draining(self.env.clone(), rx).instrument(span);
        ctx.spawn(worker.into_actor(self));
    }
}

impl Actor for Fetcher {
    type Context = Context<Self>;
}

impl Handler<RunJob> for Fetcher {
    type Result = RunReply;

    fn handle(&mut self, msg: RunJob, ctx: &mut Context<Self>) -> RunReply {
        if msg.kind == JobKind::Scheduled {
            self.start_details(ctx);
        }
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

impl Handler<CancelJob> for Fetcher {
    type Result = ();

    fn handle(&mut self, _: CancelJob, _: &mut Context<Self>) {
        if let Some(tx) = &self.cancel {
            let _ = tx.send(true);
        }
    }
}

impl Handler<Cancel> for Fetcher {
    type Result = ();

    fn handle(&mut self, _: Cancel, _: &mut Context<Self>) {
        for tx in [&self.cancel, &self.details].into_iter().flatten() {
            let _ = tx.send(true);
        }
    }
}
