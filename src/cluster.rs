//! `[cluster]` in a running engine: the agent that keeps this instance's lease and claims
//! (`msgtrace_actors::cluster::agent`), and the handle the supervisor and the fetchers read
//! (docs/scaling.md).

use std::time::Duration;

use msgtrace_actors::cluster::agent::{self, AgentConfig, Busy, Ownership};
use msgtrace_actors::cluster::etcd::{Etcd, EtcdError};
use msgtrace_actors::cluster::handoff;
use msgtrace_actors::cluster::record::ClusterHandle;
use msgtrace_actors::cluster::{fence, membership};
use msgtrace_actors::supervisor::Supervisor;
use tokio::sync::watch;
use tracing::info;

use crate::config::ClusterConfig;

/// The agent of a running engine, and what it publishes.
pub(crate) struct ClusterRun {
    /// What the supervisor and the fetchers read.
    pub(crate) handle: ClusterHandle,
    /// The sources whose fetcher runs a job (kept by the supervisor, read by the agent).
    pub(crate) busy: Busy,
    stop: watch::Sender<bool>,
    /// A reload's sources, for the agent.
    sources: watch::Sender<Vec<(String, String)>>,
    task: Option<actix_rt::task::JoinHandle<()>>,
    /// The lease's time to live: the backfill requests are read every third of it.
    lease: Duration,
    /// The loop running the backfills asked for through etcd ([`ClusterRun::serve_backfills`]).
    handoff: Option<actix_rt::task::JoinHandle<()>>,
    /// The agent before it is started ([`ClusterRun::spawn`]).
    pending: Option<(AgentConfig, watch::Sender<Ownership>, watch::Receiver<bool>)>,
}

impl ClusterRun {
    /// The agent of `cluster` for `sources` (each id with its tenant's budget key, which the
    /// hash shares out), not started yet.
    pub(crate) fn new(cluster: &ClusterConfig, sources: &[(String, String)]) -> ClusterRun {
        // A request must fit in a round (a third of the lease), and loopback answers in
        // milliseconds: the bound is for an etcd that stalls.
        let timeout = (cluster.lease / 3).clamp(Duration::from_millis(500), Duration::from_secs(5));
        let etcd = Etcd::new(cluster.etcd.clone(), timeout);
        let agent = AgentConfig {
            etcd: etcd.clone(),
            prefix: cluster.prefix.clone(),
            name: cluster.name.clone(),
            lease: cluster.lease,
            sources: sources.iter().map(|(id, _)| id.clone()).collect(),
            keys: sources.iter().cloned().collect(),
            updates: None,
        };
        let (reloads, updates) = watch::channel(sources.to_vec());
        let agent = AgentConfig {
            updates: Some(updates),
            ..agent
        };
        let (out, owned) = watch::channel(Ownership::default());
        let (stop, stopped) = watch::channel(false);
        ClusterRun {
            handle: ClusterHandle {
                etcd,
                prefix: cluster.prefix.clone(),
                name: cluster.name.clone(),
                owned,
            },
            busy: Busy::default(),
            stop,
            sources: reloads,
            task: None,
            lease: cluster.lease,
            handoff: None,
            pending: Some((agent, out, stopped)),
        }
    }

    /// Starts the agent on the current actix System (once nothing of the engine's start can
    /// fail any more: an agent left behind would hold claims for an engine that never ran).
    pub(crate) fn spawn(&mut self) {
        if let Some((cfg, out, stopped)) = self.pending.take() {
            info!(name = %cfg.name, prefix = %cfg.prefix, "cluster: registering with etcd");
            self.task = Some(actix_rt::spawn(agent::run(
                cfg,
                self.busy.clone(),
                out,
                stopped,
            )));
        }
    }

    /// Runs, through `supervisor`, the backfills asked for through etcd (`msgtrace backfill`
    /// elsewhere) of the sources this instance holds: continuous mode only (a run that ends
    /// would leave them half done).
    pub(crate) fn serve_backfills(&mut self, supervisor: actix::Addr<Supervisor>) {
        if self.handoff.is_none() {
            let every = (self.lease / 3).max(Duration::from_millis(500));
            self.handoff = Some(actix_rt::spawn(handoff::run(
                self.handle.clone(),
                supervisor,
                every,
                self.stop.subscribe(),
            )));
        }
    }

    /// A reload's sources (each id with its tenant's budget key): the agent claims the added
    /// ones it should hold and gives up the removed ones at once.
    pub(crate) fn set_sources(&self, sources: Vec<(String, String)>) {
        self.sources.send_if_modified(|now| {
            let changed = *now != sources;
            *now = sources;
            changed
        });
    }

    /// Stops the agent: its lease is revoked, and the others take its sources at once.
    pub(crate) async fn stop(self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.handoff {
            let _ = task.await;
        }
        if let Some(task) = self.task {
            let _ = task.await;
        }
    }
}

/// Why this instance could not join the cluster before a run that ends.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    /// The agent ended before its first round.
    #[error("cluster: the agent stopped before its first round")]
    AgentStopped,
    /// The agent's first round failed (etcd unreachable, the name taken): its own one line.
    #[error("cluster: {0}")]
    FirstRound(String),
}

/// Waits for the agent's first round: `Ok` once this instance is a live member holding its
/// claims, or its first error (etcd unreachable, the name taken).
pub(crate) async fn live(owned: Option<watch::Receiver<Ownership>>) -> Result<(), JoinError> {
    let Some(mut owned) = owned else {
        return Ok(());
    };
    let seen = owned
        .wait_for(|o| o.live || o.error.is_some())
        .await
        .map_err(|_| JoinError::AgentStopped)?;
    match &seen.error {
        Some(e) if !seen.live => Err(JoinError::FirstRound(e.clone())),
        _ => Ok(()),
    }
}

/// This instance's view of the cluster, as `/health`, `/api/cluster` and `msgtrace jobs` show
/// it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClusterView {
    /// This instance's member name.
    pub name: String,
    /// `up` while the agent's last round reached etcd, `unreachable` while it does not answer
    /// (or refuses).
    pub etcd: String,
    /// Why the last round failed, when it did.
    pub error: Option<String>,
    /// Whether this instance holds a lease that has not ended (it may collect and commit).
    pub live: bool,
    /// The live members, as last read.
    pub members: Vec<String>,
    /// The sources whose claim this instance holds.
    pub owned: Vec<String>,
    /// Who holds the claim of each claimed source of the deployment, by source.
    pub owners: std::collections::BTreeMap<String, String>,
}

impl ClusterView {
    /// What `handle`'s agent last published.
    pub fn of(handle: &ClusterHandle) -> ClusterView {
        let o = handle.owned.borrow();
        ClusterView {
            name: handle.name.clone(),
            etcd: if o.error.is_none() {
                "up"
            } else {
                "unreachable"
            }
            .to_owned(),
            error: o.error.clone(),
            live: o.live,
            members: o.members.clone(),
            owned: o.claims.keys().cloned().collect(),
            owners: o.owners.clone(),
        }
    }

    /// What etcd says of the deployment of `cluster`, read by a command while this instance
    /// does not run (`msgtrace jobs` on a stopped instance): the members and who holds each
    /// source (this instance too, until its lease expires, when it died); etcd `unreachable`,
    /// with the error, when it does not answer.
    pub async fn read(cluster: &ClusterConfig) -> ClusterView {
        msgtrace_actors::http::install_crypto();
        let etcd = Etcd::new(cluster.etcd.clone(), Duration::from_secs(5));
        let read = async {
            let members = membership::members(&etcd, &cluster.prefix).await?;
            let claimed = fence::claimed(&etcd, &cluster.prefix).await?;
            Ok::<_, EtcdError>((members, claimed))
        };
        let (etcd, error, members, claimed) = match read.await {
            Ok((members, claimed)) => ("up", None, members, claimed),
            Err(e) => ("unreachable", Some(e.to_string()), Vec::new(), Vec::new()),
        };
        let owners: std::collections::BTreeMap<String, String> = claimed
            .iter()
            .map(|(source, kv)| (source.clone(), fence::holder(kv)))
            .collect();
        ClusterView {
            name: cluster.name.clone(),
            etcd: etcd.to_owned(),
            error,
            live: false,
            members,
            owned: (owners.iter())
                .filter(|(_, o)| **o == cluster.name)
                .map(|(s, _)| s.clone())
                .collect(),
            owners,
        }
    }

    /// Why this instance is degraded as a member of the cluster (etcd unreachable, no live
    /// lease), in one line; `None` when it is not.
    pub fn degraded(&self) -> Option<String> {
        match (&self.error, self.live) {
            (Some(e), true) => Some(format!(
                "etcd unreachable (the claims are kept while the lease surely lives): {e}"
            )),
            (Some(e), false) => Some(format!(
                "etcd unreachable and no live lease: nothing is collected or committed here: {e}"
            )),
            (None, false) => Some("not a live member of the cluster yet".to_owned()),
            (None, true) => None,
        }
    }
}
