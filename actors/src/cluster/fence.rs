//! A source's claim and its fenced checkpoint: who collects a source right now, and the one
//! write that proves it.
//!
//! The claim is the key `<prefix>/owners/<source>` (value `{"version":"1","owner":"<name>"}`),
//! created only when absent and bound to the claimer's lease: it goes when the lease ends, and
//! another instance can then claim the source. The checkpoint of record is
//! `<prefix>/checkpoints/<source>`, written only by [`fenced_put`], a transaction whose compares
//! are the claim's lease **and** its create revision: a writer whose lease has ended (it was
//! paused, or cut off from etcd, past `lease_secs`) is refused, and so is a writer holding a
//! claim it has since released, even when it claimed the source again later under the same
//! lease (the new claim has another create revision). A refused writer may have delivered its
//! page: that page is delivered again by the owner, which resumes from the last checkpoint
//! committed here; a page is never committed by two writers.

use serde::{Deserialize, Serialize};

use super::etcd::{Compare, Etcd, EtcdError, Kv, Op, Txn};

/// A claim held: the proof a fenced write checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The source claimed.
    pub source: String,
    /// The lease the claim is bound to.
    pub lease: i64,
    /// The owner key's create revision: this claim, not an earlier or later one.
    pub revision: i64,
}

/// What [`claim`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claimed {
    /// The source is ours.
    Ours(Claim),
    /// Another instance holds it (its name, as its claim says).
    Held(String),
}

/// Why a fenced write did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FenceError {
    /// etcd did not answer, or refused: nothing was written (or, after a timeout, possibly was:
    /// the write is the same when given again).
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    /// The claim is no longer this instance's: nothing was written.
    #[error("checkpoint of `{source_id}` not committed: this instance's claim has ended ({now}); the owner delivers the page again from the last committed checkpoint")]
    Fenced {
        /// The source (not `source`: thiserror takes a field of that name for the cause).
        source_id: String,
        /// Who holds the source now, in words.
        now: String,
    },
}

/// The value of an owner key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "version")]
enum OwnerRecord {
    #[serde(rename = "1")]
    V1 {
        /// The member name of the claimer.
        owner: String,
    },
}

/// The claim key of `source` under `prefix`.
pub fn owner_key(prefix: &str, source: &str) -> Vec<u8> {
    format!("{prefix}/owners/{source}").into_bytes()
}

/// The key of `source`'s checkpoint of record under `prefix`.
pub fn checkpoint_key(prefix: &str, source: &str) -> Vec<u8> {
    format!("{prefix}/checkpoints/{source}").into_bytes()
}

/// Claims `source` for `name` under `lease`, unless another claim exists. A claim of ours
/// (same lease) that exists already is taken as it is (a retry whose first attempt went
/// through, or a claim kept from before).
pub async fn claim(
    etcd: &Etcd,
    prefix: &str,
    source: &str,
    name: &str,
    lease: i64,
) -> Result<Claimed, EtcdError> {
    let key = owner_key(prefix, source);
    let record = OwnerRecord::V1 {
        owner: name.to_owned(),
    };
    let txn = Txn {
        compare: vec![Compare::CreateRevision(key.clone(), 0)],
        success: vec![
            Op::Put {
                key: key.clone(),
                value: serde_json::to_vec(&record).unwrap_or_default(),
                lease,
            },
            Op::Get(key.clone()),
        ],
        failure: vec![Op::Get(key.clone())],
    };
    let outcome = etcd.txn(&txn).await?;
    let found = outcome
        .ranges
        .first()
        .and_then(|kvs| kvs.iter().find(|kv| kv.key == key));
    Ok(match found {
        Some(kv) if kv.lease == lease => Claimed::Ours(Claim {
            source: source.to_owned(),
            lease,
            revision: kv.create_revision,
        }),
        Some(kv) => Claimed::Held(holder(kv)),
        // Created and gone again before it was read: its lease ended at that very moment.
        None => return Err(EtcdError::LeaseExpired(lease)),
    })
}

/// Gives up `claim` (the owner key goes if it is still this claim); `false` when it had
/// already ended.
pub async fn release(etcd: &Etcd, prefix: &str, claim: &Claim) -> Result<bool, EtcdError> {
    let key = owner_key(prefix, &claim.source);
    let txn = Txn {
        compare: claim_holds(&key, claim),
        success: vec![Op::Delete(key)],
        failure: vec![],
    };
    Ok(etcd.txn(&txn).await?.succeeded)
}

/// Writes `value` as the checkpoint of record of `cursor` (the source's, or one of its
/// backfills'), only while `claim` (of the source) holds.
pub async fn fenced_put(
    etcd: &Etcd,
    prefix: &str,
    claim: &Claim,
    cursor: &str,
    value: &[u8],
) -> Result<(), FenceError> {
    let txn = fenced_put_txn(prefix, claim, cursor, value);
    let outcome = etcd.txn(&txn).await?;
    if outcome.succeeded {
        return Ok(());
    }
    let key = owner_key(prefix, &claim.source);
    let now = match outcome
        .ranges
        .first()
        .and_then(|kvs| kvs.iter().find(|kv| kv.key == key))
    {
        Some(kv) if kv.lease == claim.lease => "claimed again since, by this instance".to_owned(),
        Some(kv) => format!("now held by `{}`", holder(kv)),
        None => "its lease ended; not claimed by anyone yet".to_owned(),
    };
    Err(FenceError::Fenced {
        source_id: claim.source.clone(),
        now,
    })
}

/// The checkpoint of record of `source` (or of a cursor of it), if one was committed.
pub async fn committed(
    etcd: &Etcd,
    prefix: &str,
    source: &str,
) -> Result<Option<Vec<u8>>, EtcdError> {
    Ok(etcd
        .get(&checkpoint_key(prefix, source))
        .await?
        .map(|kv| kv.value))
}

/// The transaction of [`fenced_put`]: the claim's compares, the put, and on failure a read of
/// the owner key (to say who holds it).
pub fn fenced_put_txn(prefix: &str, claim: &Claim, cursor: &str, value: &[u8]) -> Txn {
    let key = owner_key(prefix, &claim.source);
    Txn {
        compare: claim_holds(&key, claim),
        success: vec![Op::Put {
            key: checkpoint_key(prefix, cursor),
            value: value.to_vec(),
            lease: 0,
        }],
        failure: vec![Op::Get(key)],
    }
}

/// The compares that hold while `claim` does: its owner key bound to its lease, and created at
/// its revision.
pub(crate) fn claim_holds(key: &[u8], claim: &Claim) -> Vec<Compare> {
    vec![
        Compare::Lease(key.to_vec(), claim.lease),
        Compare::CreateRevision(key.to_vec(), claim.revision),
    ]
}

/// Every claimed source under `prefix`, with its owner key (whose [`holder`] holds it), in
/// key order.
pub async fn claimed(etcd: &Etcd, prefix: &str) -> Result<Vec<(String, Kv)>, EtcdError> {
    let head = owner_key(prefix, "");
    let kvs = etcd.get_prefix(&head).await?;
    Ok(kvs
        .into_iter()
        .filter_map(|kv| {
            let source = std::str::from_utf8(kv.key.strip_prefix(head.as_slice())?).ok()?;
            Some((source.to_owned(), kv))
        })
        .collect())
}

/// The claimer an owner key names (or says that it names none).
pub fn holder(kv: &Kv) -> String {
    match serde_json::from_slice::<OwnerRecord>(&kv.value) {
        Ok(OwnerRecord::V1 { owner }) => owner,
        Err(_) => "a writer that is not msgtrace".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fenced_put_compares_the_claims_lease_and_revision() {
        let claim = Claim {
            source: "contoso".into(),
            lease: 42,
            revision: 17,
        };
        let txn = fenced_put_txn("/p", &claim, "contoso", b"cp");
        assert_eq!(
            txn.compare,
            [
                Compare::Lease(b"/p/owners/contoso".to_vec(), 42),
                Compare::CreateRevision(b"/p/owners/contoso".to_vec(), 17),
            ]
        );
        assert_eq!(
            txn.success,
            [Op::Put {
                key: b"/p/checkpoints/contoso".to_vec(),
                value: b"cp".to_vec(),
                lease: 0
            }]
        );
        assert_eq!(txn.failure, [Op::Get(b"/p/owners/contoso".to_vec())]);
    }

    #[test]
    fn the_holder_is_read_from_the_versioned_record() {
        let kv = |value: &[u8]| Kv {
            key: b"k".to_vec(),
            value: value.to_vec(),
            create_revision: 1,
            mod_revision: 1,
            lease: 1,
        };
        assert_eq!(holder(&kv(br#"{"version":"1","owner":"c-1"}"#)), "c-1");
        assert_eq!(holder(&kv(b"junk")), "a writer that is not msgtrace");
    }

    #[test]
    fn a_refusal_is_one_line_naming_the_source() {
        let e = FenceError::Fenced {
            source_id: "contoso".into(),
            now: "now held by `c-1`".into(),
        };
        let text = e.to_string();
        assert_eq!(text.lines().count(), 1);
        assert!(
            text.starts_with("checkpoint of `contoso` not committed"),
            "{text}"
        );
    }
}
