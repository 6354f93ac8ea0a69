//! The live members of a deployment: one key per instance under `<prefix>/members/`, bound to
//! the instance's lease, so that an instance that stops renewing it drops out by itself.
//!
//! A member's key is `<prefix>/members/<name>`, its value `{"version":"1","since":"<RFC 3339>"}`.
//! Registering is a transaction that creates the key only when it does not exist: a second
//! instance started with the same `cluster.name` is refused ([`RegisterError::NameTaken`])
//! instead of the two sharing one identity (and so the same sources).

use serde::{Deserialize, Serialize};

use super::etcd::{Compare, Etcd, EtcdError, Kv, Op, Txn};

/// Why an instance could not register.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    /// etcd did not answer, or refused.
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    /// Another live instance is registered under this name.
    #[error("cluster.name `{name}` is taken by another running instance (under {prefix}); give each instance its own cluster.name")]
    NameTaken {
        /// The name.
        name: String,
        /// The deployment's prefix.
        prefix: String,
    },
}

/// The value of a member's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "version")]
enum MemberRecord {
    #[serde(rename = "1")]
    V1 {
        /// When the instance registered.
        since: String,
    },
}

/// The key of member `name` under `prefix`.
pub fn member_key(prefix: &str, name: &str) -> Vec<u8> {
    format!("{prefix}/members/{name}").into_bytes()
}

/// The prefix of every member key under `prefix`.
fn members_prefix(prefix: &str) -> Vec<u8> {
    format!("{prefix}/members/").into_bytes()
}

/// Registers `name` under `prefix`, bound to `lease`. Registering again with the same lease is
/// no error (a retry whose first attempt went through).
pub async fn register(
    etcd: &Etcd,
    prefix: &str,
    name: &str,
    lease: i64,
) -> Result<(), RegisterError> {
    let key = member_key(prefix, name);
    let record = MemberRecord::V1 {
        since: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    };
    let value = serde_json::to_vec(&record).unwrap_or_default();
    let txn = Txn {
        compare: vec![Compare::CreateRevision(key.clone(), 0)],
        success: vec![Op::Put {
            key: key.clone(),
            value,
            lease,
        }],
        failure: vec![Op::Get(key.clone())],
    };
    let outcome = etcd.txn(&txn).await?;
    let held_by_us = outcome
        .ranges
        .first()
        .and_then(|kvs| kvs.iter().find(|kv| kv.key == key))
        .is_some_and(|kv| kv.lease == lease);
    if outcome.succeeded || held_by_us {
        Ok(())
    } else {
        Err(RegisterError::NameTaken {
            name: name.to_owned(),
            prefix: prefix.to_owned(),
        })
    }
}

/// Removes `name`'s key if it is still bound to `lease` (a clean stop: the others take its
/// sources at once instead of after its lease).
pub async fn deregister(
    etcd: &Etcd,
    prefix: &str,
    name: &str,
    lease: i64,
) -> Result<(), EtcdError> {
    let key = member_key(prefix, name);
    let txn = Txn {
        compare: vec![Compare::Lease(key.clone(), lease)],
        success: vec![Op::Delete(key)],
        failure: vec![],
    };
    etcd.txn(&txn).await.map(|_| ())
}

/// The names of the live members under `prefix`, sorted.
pub async fn members(etcd: &Etcd, prefix: &str) -> Result<Vec<String>, EtcdError> {
    let kvs = etcd.get_prefix(&members_prefix(prefix)).await?;
    Ok(live_members(prefix, &kvs))
}

/// The member names of a range over `<prefix>/members/`: keys bound to a lease (a key without
/// one was not written by an instance and would never go away), whose name is UTF-8 with no
/// `/`, sorted and without duplicates.
pub fn live_members(prefix: &str, kvs: &[Kv]) -> Vec<String> {
    let head = members_prefix(prefix);
    let mut names: Vec<String> = kvs
        .iter()
        .filter(|kv| kv.lease != 0)
        .filter_map(|kv| kv.key.strip_prefix(head.as_slice()))
        .filter_map(|name| std::str::from_utf8(name).ok())
        .filter(|name| !name.is_empty() && !name.contains('/'))
        .map(str::to_owned)
        .collect();
    names.sort_unstable();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, lease: i64) -> Kv {
        Kv {
            key: key.as_bytes().to_vec(),
            value: b"{}".to_vec(),
            create_revision: 1,
            mod_revision: 1,
            lease,
        }
    }

    #[test]
    fn live_members_are_the_leased_names_under_the_prefix() {
        let kvs = [
            kv("/m/members/b", 7),
            kv("/m/members/a", 8),
            kv("/m/members/manual", 0),
            kv("/m/members/x/y", 9),
            kv("/m/members/", 9),
            kv("/other/members/c", 9),
        ];
        assert_eq!(live_members("/m", &kvs), ["a", "b"]);
    }

    #[test]
    fn the_member_record_is_versioned() {
        let record = MemberRecord::V1 {
            since: "2026-12-04T19:00:00Z".into(),
        };
        assert_eq!(
            serde_json::to_string(&record).unwrap(),
            r#"{"version":"1","since":"2026-12-04T19:00:00Z"}"#
        );
        assert_eq!(member_key("/p", "c-0"), b"/p/members/c-0");
    }
}
