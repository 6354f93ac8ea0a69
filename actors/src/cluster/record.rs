//! The cluster as the supervisor and a fetcher see it: whether a source may start here, the
//! checkpoint of record read at a job's start, and each commit's fenced write of it.

use msgtrace_storage::record::{decode_checkpoint, encode_checkpoint};
use msgtrace_storage::Checkpoint;
use tokio::sync::watch;

use super::agent::Ownership;
use super::etcd::{Etcd, EtcdError};
use super::fence::{self, Claim, FenceError};

/// This instance's view of the cluster: the etcd client, the prefix and what the agent
/// publishes. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ClusterHandle {
    /// The etcd client.
    pub etcd: Etcd,
    /// The deployment's key prefix.
    pub prefix: String,
    /// This instance's member name.
    pub name: String,
    /// What this instance owns, as its agent last saw it.
    pub owned: watch::Receiver<Ownership>,
}

/// Why the checkpoint of record could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// etcd did not answer, or refused.
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    /// The value is not a checkpoint this release reads.
    #[error("the checkpoint of record of `{cursor}` in etcd does not decode ({why}); a newer release wrote it, or another program: remove the key to start from `start` again")]
    Undecodable {
        /// The cursor.
        cursor: String,
        /// The decoder's message.
        why: String,
    },
}

impl ClusterHandle {
    /// Whether a job of `source` may start: this instance is live, holds the source's claim,
    /// and is not giving it up.
    pub fn may_start(&self, source: &str) -> bool {
        let owned = self.owned.borrow();
        owned.live && owned.claims.contains_key(source) && !owned.leaving.contains(source)
    }

    /// Whether this instance is live and gives `source` up because the hash gives it to
    /// another member now (not because its lease may have ended).
    pub fn handing_over(&self, source: &str) -> bool {
        let owned = self.owned.borrow();
        owned.live && owned.leaving.contains(source)
    }

    /// The checkpoint of record of `cursor`, if one was committed.
    pub async fn load(&self, cursor: &str) -> Result<Option<Checkpoint>, RecordError> {
        let Some(bytes) = fence::committed(&self.etcd, &self.prefix, cursor).await? else {
            return Ok(None);
        };
        decode_checkpoint(&bytes)
            .map(Some)
            .map_err(|why| RecordError::Undecodable {
                cursor: cursor.to_owned(),
                why: why.to_string(),
            })
    }

    /// The claim this instance holds of `source` now: a job takes it at its start and commits
    /// under it to its end, so that a job that outlived its claim (paused past the lease) can
    /// never commit under a claim taken again since, from a checkpoint it did not read.
    pub fn claim(&self, source: &str) -> Result<Claim, FenceError> {
        self.owned
            .borrow()
            .claims
            .get(source)
            .cloned()
            .ok_or_else(|| FenceError::Fenced {
                source_id: source.to_owned(),
                now: "this instance holds no claim of it".to_owned(),
            })
    }

    /// Writes `cp` as `cursor`'s checkpoint of record under `claim`: refused
    /// ([`FenceError::Fenced`]) once the claim has ended.
    pub async fn commit(
        &self,
        claim: &Claim,
        cursor: &str,
        cp: &Checkpoint,
    ) -> Result<(), FenceError> {
        let written = fence::fenced_put(
            &self.etcd,
            &self.prefix,
            claim,
            cursor,
            &encode_checkpoint(cp),
        )
        .await;
        if let Err(FenceError::Fenced { .. }) = &written {
            crate::telemetry::fenced_refusal(&claim.source);
        }
        written
    }

    /// Whether another instance holds `source`'s claim, as the agent last read it.
    pub fn elsewhere(&self, source: &str) -> bool {
        let owned = self.owned.borrow();
        owned.owners.get(source).is_some_and(|o| *o != self.name)
    }

    /// Who holds `source`'s claim, as the agent last read it (this instance's name when it is
    /// this instance); `None` while nobody does, or before the agent's first round.
    pub fn owner(&self, source: &str) -> Option<String> {
        self.owned.borrow().owners.get(source).cloned()
    }
}
