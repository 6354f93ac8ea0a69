//! The owner's side of a backfill asked for through etcd ([`super::backfill`]): a loop on the
//! engine's actix thread (awc's client is `!Send`) of a continuously running instance that,
//! every round (and whenever what this instance owns changes, or a backfill ends here), reads
//! the requests, takes those of the sources it holds, and runs each through the supervisor, on
//! the source's one fetcher and under its tenant's one request budget. It records how each
//! ended; one that did not end on its own (a shutdown, the source moving away) is left for
//! this instance or the source's next owner to run again from the backfill's checkpoint.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::Duration;

use actix::Addr;
use chrono::Utc;
use tokio::sync::{watch, Notify};
use tracing::{debug, info, warn};

use super::backfill::{self, Found, Outcome};
use super::etcd::EtcdError;
use super::record::ClusterHandle;
use crate::supervisor::{RunBackfill, Supervisor};

/// The request keys running here, with their source.
type Here = Rc<RefCell<BTreeMap<Vec<u8>, String>>>;

/// What the loop works with.
struct Handoff {
    handle: ClusterHandle,
    supervisor: Addr<Supervisor>,
    here: Here,
    /// Told when a backfill ends here: the source's next request may start.
    ended: Rc<Notify>,
    /// The requests passed over (they do not decode), each reported once.
    warned: BTreeSet<String>,
}

/// Runs rounds every `every` until `stop` turns true. The backfills running then are left to
/// the supervisor's shutdown (they stop after their page in flight, and are not recorded as
/// ended).
pub async fn run(
    handle: ClusterHandle,
    supervisor: Addr<Supervisor>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut owned = handle.owned.clone();
    let mut h = Handoff {
        handle,
        supervisor,
        here: Here::default(),
        ended: Rc::new(Notify::new()),
        warned: BTreeSet::new(),
    };
    let mut watching = true;
    loop {
        if let Err(e) = h.round().await {
            // The agent reports etcd's state; this is the same cause.
            debug!(error = %e, "cluster: backfill requests not read this round");
        }
        let ended = h.ended.clone();
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            changed = owned.changed(), if watching => watching = changed.is_ok(),
            () = ended.notified() => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
}

impl Handoff {
    /// Reads the requests and takes those this instance should run now.
    async fn round(&mut self) -> Result<(), EtcdError> {
        if !self.handle.owned.borrow().live {
            return Ok(());
        }
        let listed = backfill::list(&self.handle.etcd, &self.handle.prefix).await?;
        let mut requests = Vec::new();
        for r in listed {
            match r {
                Ok(found) => requests.push(found),
                Err(e) => {
                    if self.warned.insert(e.to_string()) {
                        warn!(error = %e, "cluster: a backfill request is passed over");
                    }
                }
            }
        }
        let picked: Vec<Found> = {
            let here = self.here.borrow();
            backfill::to_run(&requests, |s| self.handle.may_start(s), &here)
                .into_iter()
                .cloned()
                .collect()
        };
        for found in picked {
            self.take(found).await;
        }
        Ok(())
    }

    /// Takes `found` (marks it running, fenced by the source's claim) and runs it.
    async fn take(&self, found: Found) {
        let source = found.request.source.clone();
        let (Ok(claim), Some(range)) = (self.handle.claim(&source), found.request.backfill())
        else {
            return;
        };
        let next = found.request.taken(&self.handle.name, Utc::now());
        let etcd = &self.handle.etcd;
        let taken = match backfill::update(etcd, &self.handle.prefix, &claim, &found, &next).await {
            Ok(Some(taken)) => taken,
            Ok(None) => {
                debug!(source = %source, "cluster: a backfill request changed, or the claim ended, before it was taken");
                return;
            }
            Err(e) => {
                warn!(source = %source, error = %e, "cluster: a backfill request could not be taken; trying again next round");
                return;
            }
        };
        info!(source = %source, start = %range.start, end = %range.end, asked_by = %taken.request.asked_by, "cluster: running a backfill asked for through etcd");
        self.here
            .borrow_mut()
            .insert(taken.key.clone(), source.clone());
        let (handle, supervisor) = (self.handle.clone(), self.supervisor.clone());
        let (here, ended) = (self.here.clone(), self.ended.clone());
        actix_rt::spawn(async move {
            let report = supervisor
                .send(RunBackfill {
                    source: source.clone(),
                    backfill: range,
                })
                .await
                .unwrap_or_default();
            let summary = report.jobs.iter().rev().find(|(s, _)| *s == source);
            match Outcome::of(summary.map(|(_, job)| job)) {
                Some(outcome) => record(&handle, &claim, &taken, &outcome).await,
                None => {
                    info!(source = %source, "cluster: the backfill stopped before its end; it resumes from its checkpoint, here or on the source's next owner")
                }
            }
            here.borrow_mut().remove(&taken.key);
            ended.notify_one();
        });
    }
}

/// Records how the backfill of `taken` ended.
async fn record(
    handle: &ClusterHandle,
    claim: &super::fence::Claim,
    taken: &Found,
    outcome: &Outcome,
) {
    let source = &taken.request.source;
    let next = taken.request.ended(outcome, Utc::now());
    match backfill::update(&handle.etcd, &handle.prefix, claim, taken, &next).await {
        Ok(Some(_)) => info!(source = %source, state = %next.describe(), "cluster: backfill ended"),
        Ok(None) => {
            info!(source = %source, "cluster: the backfill's end is not recorded: the source's claim has ended (or the request changed since it was taken); the source's owner runs it again from its checkpoint")
        }
        Err(e) => {
            warn!(source = %source, error = %e, "cluster: the backfill's end is not recorded; it runs again from its checkpoint")
        }
    }
}
