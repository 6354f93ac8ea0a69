//! The cluster agent: keeps this instance's lease and registration, claims the sources the
//! hash gives it, gives up (once their fetcher is idle) the ones it no longer should hold, and
//! publishes what it owns. A task on the engine's actix thread (awc's client is `!Send`), one
//! round every third of the lease.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
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
    /// A reload's sources, each `(id, key)`: they replace `sources` and `keys` at once (a
    /// round follows), so that added sources are claimed and removed ones given up.
    pub updates: Option<watch::Receiver<Vec<(String, String)>>>,
}

/// What this instance owns, as the agent last saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ownership {
    /// Whether this instance holds a lease that has not ended (as far as it can know: the last
    /// round that reached etcd renewed it, and its time to live has not run out since) and a
    /// registration.
    pub live: bool,
    /// The live members, as last read.
    pub members: Vec<String>,
    /// The claims held, by source: the sources to collect (and commit with these claims).
    pub claims: BTreeMap<String, Claim>,
    /// Claims held that the hash gives another member now: no new job, and released once the
    /// source's fetcher is idle.
    pub leaving: BTreeSet<String>,
    /// Who holds each claimed source of the deployment (this instance included), by source,
    /// as last read: what `msgtrace jobs` and the control API show.
    pub owners: BTreeMap<String, String>,
    /// Why the last round failed (etcd unreachable, the name taken), if it did: while it is
    /// set, etcd is not reachable (or refuses), and nothing is committed unless the lease is
    /// still known to live.
    pub error: Option<String>,
}

impl Ownership {
    /// What a failed round leaves (`error`): while the lease surely still lives
    /// (`lease_alive`) the claims of `before` are kept (their commits are fenced by etcd
    /// anyway), with the error; once it may have ended, nothing is held (the members and
    /// owners last read are kept, to be shown).
    fn degraded(before: &Ownership, error: String, lease_alive: bool) -> Ownership {
        if lease_alive && before.live {
            Ownership {
                error: Some(error),
                ..before.clone()
            }
        } else {
            Ownership {
                owners: before.owners.clone(),
                members: before.members.clone(),
                error: Some(error),
                ..Ownership::default()
            }
        }
    }
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
/// the others take the sources at once. A round that fails (etcd unreachable) is tried again at
/// the next one; the claims are kept while the lease surely lives, and given up (no job
/// starts, a running one stops after its page in flight) once it may have ended.
pub async fn run(
    mut cfg: AgentConfig,
    busy: Busy,
    out: watch::Sender<Ownership>,
    mut stop: watch::Receiver<bool>,
) {
    let mut lease: Option<Lease> = None;
    // Until when the lease surely lives: the start of the last renewal plus its time to live.
    let mut alive_until = Instant::now();
    loop {
        let began = Instant::now();
        let owned = match round(&cfg, &busy, &mut lease).await {
            Ok(owned) => {
                if let Some(l) = lease {
                    alive_until = began + l.ttl;
                }
                owned
            }
            Err(e) => {
                Ownership::degraded(&out.borrow(), e.to_string(), Instant::now() < alive_until)
            }
        };
        publish(&out, owned);
        // Rounds every third of the lease; one more at the moment the lease may end while
        // etcd does not answer, to give the claims up then.
        let mut next = Instant::now() + cfg.lease / 3;
        if out.borrow().error.is_some() && out.borrow().live {
            next = next.min(alive_until);
        }
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            () = reloaded(&mut cfg) => {}
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

/// Waits for a reload's sources and takes them into `cfg` (forever, without updates).
async fn reloaded(cfg: &mut AgentConfig) {
    let Some(updates) = &mut cfg.updates else {
        return std::future::pending().await;
    };
    if updates.changed().await.is_err() {
        // The engine dropped its end: no reload will come.
        cfg.updates = None;
        return std::future::pending().await;
    }
    let sources = updates.borrow_and_update().clone();
    info!(
        sources = sources.len(),
        "cluster: the reloaded configuration's sources are shared from now on"
    );
    cfg.sources = sources.iter().map(|(id, _)| id.clone()).collect();
    cfg.keys = sources.into_iter().collect();
}

/// Publishes what a round found when it changed: one log line per change of state (etcd lost
/// or back, the claims), never one per retry, and the metrics.
fn publish(out: &watch::Sender<Ownership>, owned: Ownership) {
    crate::telemetry::cluster_state(
        owned.error.is_none(),
        owned.members.len(),
        owned.claims.len(),
    );
    out.send_if_modified(|now| {
        if *now == owned {
            return false;
        }
        // A change of state, not of the error's words (a refused connection, then a timeout).
        match (&now.error, &owned.error) {
            (None, Some(e)) if owned.live => {
                warn!(error = %e, "cluster: etcd does not answer; retrying every round, the claims kept only while the lease surely lives");
            }
            (None, Some(e)) => {
                warn!(error = %e, "cluster: no live lease and etcd does not answer; nothing is collected or committed here until it does");
            }
            (Some(_), Some(_)) if now.live && !owned.live => {
                warn!("cluster: the lease may have ended while etcd did not answer; the claims are given up, nothing is collected or committed here until it answers");
            }
            (Some(_), None) => info!("cluster: etcd answers again"),
            _ => {}
        }
        let gained = owned.claims.keys().filter(|s| !now.claims.contains_key(*s)).count();
        let lost = now.claims.keys().filter(|s| !owned.claims.contains_key(*s)).count();
        crate::telemetry::ownership_changed(gained as u64, lost as u64);
        if gained + lost > 0 || now.members != owned.members || now.leaving != owned.leaving {
            info!(members = ?owned.members, owned = ?owned.claims.keys().collect::<Vec<_>>(), leaving = ?owned.leaving, "cluster ownership changed");
        }
        *now = owned;
        true
    });
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
    let (mut claims, mut owners) = held(cfg, l.id).await?;
    let held_ids: BTreeSet<String> = claims.keys().cloned().collect();
    let moves = assign::moves(&cfg.sources, &cfg.keys, &members, &cfg.name, &held_ids);
    for source in &moves.claim {
        match fence::claim(&cfg.etcd, &cfg.prefix, source, &cfg.name, l.id).await? {
            Claimed::Ours(c) => {
                owners.insert(source.clone(), cfg.name.clone());
                claims.insert(source.clone(), c);
            }
            Claimed::Held(by) => {
                owners.insert(source.clone(), by);
            }
        }
    }
    let mut leaving = BTreeSet::new();
    for source in moves.release {
        let idle = !busy.borrow().contains(&source);
        match claims.get(&source) {
            Some(c) if idle => {
                fence::release(&cfg.etcd, &cfg.prefix, c).await?;
                claims.remove(&source);
                owners.remove(&source);
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
        owners,
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

/// The claims under `lease` that exist in etcd, by source, and who holds every claimed source.
async fn held(
    cfg: &AgentConfig,
    lease: i64,
) -> Result<(BTreeMap<String, Claim>, BTreeMap<String, String>), EtcdError> {
    let mut claims = BTreeMap::new();
    let mut owners = BTreeMap::new();
    for (source, kv) in fence::claimed(&cfg.etcd, &cfg.prefix).await? {
        owners.insert(source.clone(), fence::holder(&kv));
        if kv.lease == lease {
            let claim = Claim {
                source: source.clone(),
                lease,
                revision: kv.create_revision,
            };
            claims.insert(source, claim);
        }
    }
    Ok((claims, owners))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held() -> Ownership {
        let claim = Claim {
            source: "contoso".into(),
            lease: 7,
            revision: 3,
        };
        Ownership {
            live: true,
            members: vec!["c-0".into(), "c-1".into()],
            claims: [("contoso".to_owned(), claim)].into(),
            leaving: BTreeSet::new(),
            owners: [
                ("contoso".to_owned(), "c-0".to_owned()),
                ("fabrikam".to_owned(), "c-1".to_owned()),
            ]
            .into(),
            error: None,
        }
    }

    #[test]
    fn a_failed_round_keeps_the_claims_only_while_the_lease_surely_lives() {
        let before = held();
        let kept = Ownership::degraded(&before, "etcd unreachable".into(), true);
        assert_eq!(kept.claims, before.claims);
        assert!(kept.live);
        assert_eq!(kept.error.as_deref(), Some("etcd unreachable"));

        let gone = Ownership::degraded(&kept, "etcd unreachable".into(), false);
        assert!(!gone.live && gone.claims.is_empty() && gone.leaving.is_empty());
        assert_eq!(
            gone.owners, before.owners,
            "the owners last read are still shown"
        );
        assert_eq!(gone.error.as_deref(), Some("etcd unreachable"));

        // Never live again without a round that reached etcd.
        let still = Ownership::degraded(&gone, "etcd unreachable".into(), true);
        assert!(!still.live && still.claims.is_empty());
    }
}
