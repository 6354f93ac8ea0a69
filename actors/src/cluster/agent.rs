//! The cluster agent: keeps this instance's lease and registration, claims the sources the
//! hash gives it, gives up (once their fetcher is idle) the ones it no longer should hold, and
//! publishes what it owns. A task on the engine's actix thread (awc's client is `!Send`), one
//! round every third of the lease.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

use super::assign;
use super::etcd::{Etcd, EtcdError, Lease};
use super::fence::{self, Claim, Claimed};
use super::membership::{self, RegisterError};

/// What the agent needs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The etcd client.
    pub etcd: Etcd,
    /// The deployment's key prefix.
    pub prefix: String,
    /// This instance's member name.
    pub name: String,
    /// The lease's time to live.
    pub lease: Duration,
    /// The ids of the sources to share.
    pub sources: Vec<String>,
    /// The key each source is hashed by (its tenant's request budget, `SourceSpec::quota_key`),
    /// so that the sources of one tenant go to one instance; a source without one is hashed by
    /// its id.
    pub keys: BTreeMap<String, String>,
}

/// What this instance owns, as the agent last saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ownership {
    /// Whether the last round held a live lease and a registration.
    pub live: bool,
    /// The live members, as last read.
    pub members: Vec<String>,
    /// The claims held, by source: the sources to collect (and commit with these claims).
    pub claims: BTreeMap<String, Claim>,
    /// Claims held that the hash gives another member now: no new job, and released once the
    /// source's fetcher is idle.
    pub leaving: BTreeSet<String>,
    /// Why the last round failed (etcd unreachable, the name taken), if it did.
    pub error: Option<String>,
}

/// The sources whose fetcher runs a job now: a leaving claim is released only once its source
/// is not in it (its page in flight committed).
pub type Busy = Rc<RefCell<BTreeSet<String>>>;

/// Why a round failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum RoundError {
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    #[error(transparent)]
    Register(#[from] RegisterError),
}

/// Runs rounds until `stop` turns true, publishing to `out`; then revokes the lease, so that
/// the others take the sources at once.
pub async fn run(
    cfg: AgentConfig,
    busy: Busy,
    out: watch::Sender<Ownership>,
    mut stop: watch::Receiver<bool>,
) {
    let mut lease: Option<Lease> = None;
    loop {
        let owned = match round(&cfg, &busy, &mut lease).await {
            Ok(owned) => owned,
            Err(e) => {
                warn!(error = %e, "cluster round failed; nothing is collected until etcd answers");
                Ownership {
                    error: Some(e.to_string()),
                    ..Ownership::default()
                }
            }
        };
        out.send_if_modified(|now| {
            let changed = *now != owned;
            if changed {
                info!(members = ?owned.members, owned = ?owned.claims.keys().collect::<Vec<_>>(), leaving = ?owned.leaving, "cluster ownership changed");
                *now = owned;
            }
            changed
        });
        tokio::select! {
            _ = tokio::time::sleep(cfg.lease / 3) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    if let Some(l) = lease {
        if let Err(e) = cfg.etcd.revoke(l.id).await {
            warn!(error = %e, "cluster lease not revoked at stop; the others take its sources when it expires");
        }
    }
    out.send_replace(Ownership::default());
}

/// One round: the lease renewed (or a new one), the registration, the members, the claims.
async fn round(
    cfg: &AgentConfig,
    busy: &Busy,
    lease: &mut Option<Lease>,
) -> Result<Ownership, RoundError> {
    let l = renew(cfg, lease).await?;
    membership::register(&cfg.etcd, &cfg.prefix, &cfg.name, l.id).await?;
    let members = membership::members(&cfg.etcd, &cfg.prefix).await?;
    let mut claims = held(cfg, l.id).await?;
    let held_ids: BTreeSet<String> = claims.keys().cloned().collect();
    let moves = assign::moves(&cfg.sources, &cfg.keys, &members, &cfg.name, &held_ids);
    for source in &moves.claim {
        if let Claimed::Ours(c) =
            fence::claim(&cfg.etcd, &cfg.prefix, source, &cfg.name, l.id).await?
        {
            claims.insert(source.clone(), c);
        }
    }
    let mut leaving = BTreeSet::new();
    for source in moves.release {
        let idle = !busy.borrow().contains(&source);
        match claims.get(&source) {
            Some(c) if idle => {
                fence::release(&cfg.etcd, &cfg.prefix, c).await?;
                claims.remove(&source);
            }
            _ => {
                leaving.insert(source);
            }
        }
    }
    Ok(Ownership {
        live: true,
        members,
        claims,
        leaving,
        error: None,
    })
}

/// The lease renewed, or a new one granted when there was none or it had ended.
async fn renew(cfg: &AgentConfig, lease: &mut Option<Lease>) -> Result<Lease, EtcdError> {
    if let Some(l) = *lease {
        match cfg.etcd.keep_alive(l.id).await {
            Ok(_) => return Ok(l),
            Err(EtcdError::LeaseExpired(_)) => {
                warn!("cluster lease expired (this instance was paused or cut off); its claims are gone, registering again");
                *lease = None;
            }
            Err(e) => return Err(e),
        }
    }
    let l = cfg.etcd.grant(cfg.lease).await?;
    *lease = Some(l);
    Ok(l)
}

/// The claims under `lease` that exist in etcd, by source.
async fn held(cfg: &AgentConfig, lease: i64) -> Result<BTreeMap<String, Claim>, EtcdError> {
    let head = fence::owner_key(&cfg.prefix, "");
    let kvs = cfg.etcd.get_prefix(&head).await?;
    Ok(kvs
        .into_iter()
        .filter(|kv| kv.lease == lease)
        .filter_map(|kv| {
            let source = std::str::from_utf8(kv.key.strip_prefix(head.as_slice())?)
                .ok()?
                .to_owned();
            Some((
                source.clone(),
                Claim {
                    source,
                    lease,
                    revision: kv.create_revision,
                },
            ))
        })
        .collect())
}
