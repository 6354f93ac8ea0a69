//! The details backlog: the summary rows whose per-recipient details are still to be fetched,
//! and the identities of the detail records already delivered.
//!
//! | tree | key | value |
//! |---|---|---|
//! | `details` | `<source>\0<received µs, big endian><trace id>\0<recipient, lower case>` | [`DetailEntry`] (trace id, recipient, status, received time) |
//! | `details_seen` | the entry's key, then `\0<dateTime ns, big endian><event>\0<record id>` | `{"version":"1"}`: a detail record delivered |
//!
//! An entry is added in the transaction that commits its summary page ([`crate::Commit::details`]),
//! so a crash either loses neither or repeats the page, and adding it again is idempotent (same
//! key). It leaves, together with the identities of the records its request delivered, in one
//! transaction once the sinks acknowledged them ([`Store::complete_details`]): a crash between
//! the acknowledgement and that transaction delivers that request's records again, never a
//! record of another. A re-read row whose status changed is added again: its records already
//! delivered are known by their identities ([`Store::details_known`]), so only new ones are
//! delivered. The identities expire by received time, as the identity index does.

use crate::{record, source_prefix, Result, StorageError, Store};
use chrono::{DateTime, Utc};
use std::collections::HashSet;

/// A summary row whose details are to be fetched.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DetailEntry {
    /// The row's received time (part of the key: entries are taken oldest first, and their
    /// identities expire by it).
    pub received: DateTime<Utc>,
    /// The trace id.
    pub trace_id: String,
    /// The recipient, as the summary row spells it (the request asks for this one).
    pub recipient: String,
    /// The row's status when it was added.
    pub status: String,
}

/// A detail record delivered for an entry: with the entry's trace and recipient, its identity
/// (`id`, recipient, `dateTime`, `event`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DetailRecordId {
    /// The record's `id` (the trace's, in Microsoft's sample).
    pub id: String,
    /// `dateTime`.
    pub date_time: DateTime<Utc>,
    /// `event`.
    pub event: String,
}

/// The row's key ([`crate::row_key`]: the identity index's layout).
pub(crate) fn entry_key(source: &str, e: &DetailEntry) -> Vec<u8> {
    crate::row_key(source, e.received, &e.trace_id, &e.recipient)
}

/// The entry's key, `\0`: the prefix of its records' identities.
fn records_prefix(source: &str, e: &DetailEntry) -> Vec<u8> {
    let mut k = entry_key(source, e);
    k.push(0);
    k
}

/// Nanoseconds since the epoch: the API's times have 100 ns, and a record read again must be
/// the same record (years 1678 to 2262; others are clamped, and only ever compared).
fn nanos(t: DateTime<Utc>) -> i64 {
    t.timestamp_nanos_opt().unwrap_or(if t.timestamp() < 0 {
        i64::MIN
    } else {
        i64::MAX
    })
}

fn record_key(prefix: &[u8], r: &DetailRecordId) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(&nanos(r.date_time).to_be_bytes());
    k.extend_from_slice(r.event.as_bytes());
    k.push(0);
    k.extend_from_slice(r.id.as_bytes());
    k
}

/// Reads a record identity back from its key's tail (after the prefix).
fn record_of(tail: &[u8]) -> Option<DetailRecordId> {
    let (ns, rest) = tail.split_first_chunk::<8>()?;
    let at = rest.iter().position(|b| *b == 0)?;
    Some(DetailRecordId {
        id: String::from_utf8(rest[at + 1..].to_vec()).ok()?,
        date_time: DateTime::from_timestamp_nanos(i64::from_be_bytes(*ns)),
        event: String::from_utf8(rest[..at].to_vec()).ok()?,
    })
}

impl Store {
    /// Up to `limit` entries of `source`'s backlog, oldest received first.
    pub fn details_pending(&self, source: &str, limit: usize) -> Result<Vec<DetailEntry>> {
        let mut out = Vec::new();
        for item in self.details.scan_prefix(source_prefix(source)).take(limit) {
            let (k, v) = item.map_err(|e| self.sled_err(e))?;
            out.push(
                record::decode_detail_entry(&v).map_err(|e| StorageError::Corrupt {
                    tree: crate::DETAILS.into(),
                    key: String::from_utf8_lossy(&k).replace('\0', "/"),
                    reason: e.to_string(),
                })?,
            );
        }
        Ok(out)
    }

    /// The records already delivered for `entry` (by an earlier request for it).
    pub fn details_known(
        &self,
        source: &str,
        entry: &DetailEntry,
    ) -> Result<HashSet<DetailRecordId>> {
        let prefix = records_prefix(source, entry);
        let mut out = HashSet::new();
        for item in self.details_seen.scan_prefix(&prefix) {
            let (k, _) = item.map_err(|e| self.sled_err(e))?;
            if let Some(r) = record_of(&k[prefix.len()..]) {
                out.insert(r);
            }
        }
        Ok(out)
    }

    /// Once the sinks acknowledged the records of `entry`'s request (`delivered`; none when it
    /// had none, or the request was given up): the entry leaves the backlog and the records'
    /// identities are kept, in one transaction, then (when `durable`) flushed. An entry added
    /// again meanwhile with another status (a re-read saw it change) stays, for its own
    /// request. Returns whether the entry left.
    pub async fn complete_details(
        &self,
        source: &str,
        entry: &DetailEntry,
        delivered: &[DetailRecordId],
        positions: &[crate::SinkPosition],
        durable: bool,
    ) -> Result<bool> {
        use sled::Transactional;
        let key = entry_key(source, entry);
        let prefix = records_prefix(source, entry);
        let records: Vec<Vec<u8>> = delivered.iter().map(|r| record_key(&prefix, r)).collect();
        let seen_value = record::encode_detail_seen();
        let removed = (&self.details, &self.details_seen, &self.positions)
            .transaction(|(backlog, seen, sink_positions)| {
                let same = backlog
                    .get(&key)?
                    .and_then(|v| record::decode_detail_entry(&v).ok())
                    .is_some_and(|now| now.status == entry.status);
                if same {
                    backlog.remove(key.as_slice())?;
                }
                for k in &records {
                    seen.insert(k.as_slice(), seen_value.as_slice())?;
                }
                crate::positions::record_in(sink_positions, positions)?;
                Ok(same)
            })
            .map_err(|e| self.transaction_err(e))?;
        if durable {
            self.flush().await?;
        }
        Ok(removed)
    }

    /// Entries in `source`'s backlog.
    pub fn details_backlog(&self, source: &str) -> usize {
        self.details.scan_prefix(source_prefix(source)).count()
    }

    /// Every source with a backlog and its size, by source id.
    pub fn details_backlogs(&self) -> Result<Vec<(String, usize)>> {
        let mut out: Vec<(String, usize)> = Vec::new();
        for item in self.details.iter().keys() {
            let k = item.map_err(|e| self.sled_err(e))?;
            let source = k.split(|b| *b == 0).next().unwrap_or_default();
            let source = String::from_utf8_lossy(source);
            match out.last_mut() {
                Some((s, n)) if *s == source => *n += 1,
                _ => out.push((source.into_owned(), 1)),
            }
        }
        Ok(out)
    }

    /// Removes the identities of detail records of rows received before `before` (past the
    /// re-read span, no request for them comes again); returns how many.
    pub fn expire_details(&self, source: &str, before: DateTime<Utc>) -> Result<usize> {
        let start = source_prefix(source);
        let mut end = start.clone();
        end.extend_from_slice(&before.timestamp_micros().to_be_bytes());
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for item in self.details_seen.range(start..end).keys() {
            batch.remove(item.map_err(|e| self.sled_err(e))?);
            n += 1;
        }
        self.details_seen
            .apply_batch(batch)
            .map_err(|e| self.sled_err(e))?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Checkpoint, Commit};
    use chrono::TimeZone;

    fn t(h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, h, 0, 0).unwrap()
    }

    fn entry(h: u32, trace: &str, status: &str) -> DetailEntry {
        DetailEntry {
            received: t(h),
            trace_id: trace.into(),
            recipient: "A@b.c".into(),
            status: status.into(),
        }
    }

    fn record(event: &str, secs: i64) -> DetailRecordId {
        DetailRecordId {
            id: "x".into(),
            date_time: t(1) + chrono::Duration::seconds(secs),
            event: event.into(),
        }
    }

    fn cp() -> Checkpoint {
        Checkpoint {
            cursor: Some(t(5)),
            in_flight: None,
            pages_total: 1,
            rows_total: 1,
            updated_at: t(5),
            origin: None,
        }
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        crate::tests::futures_block_on(f)
    }

    #[test]
    fn entries_come_with_their_page_s_commit_and_adding_one_again_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let entries = vec![entry(2, "y", "Failed"), entry(1, "x", "Pending")];
        for _ in 0..2 {
            store
                .write(&Commit {
                    source: "s",
                    checkpoint: Some(("s", &cp())),
                    details: &entries,
                    ..Commit::default()
                })
                .unwrap();
        }
        assert_eq!(store.details_backlog("s"), 2);
        assert_eq!(store.details_backlog("other"), 0);
        // Oldest received first.
        assert_eq!(
            store.details_pending("s", 10).unwrap(),
            vec![entries[1].clone(), entries[0].clone()]
        );
        assert_eq!(store.details_pending("s", 1).unwrap().len(), 1);
        assert_eq!(
            store.details_backlogs().unwrap(),
            vec![("s".to_string(), 2)]
        );
    }

    #[test]
    fn entries_survive_a_reopen_with_their_checkpoint() {
        // The entries are in the checkpoint's transaction (sled's: all of it or none of it).
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store
                .write(&Commit {
                    source: "s",
                    checkpoint: Some(("s", &cp())),
                    details: &[entry(1, "x", "Failed")],
                    ..Commit::default()
                })
                .unwrap();
            store.flush_blocking().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.checkpoint("s").unwrap(), Some(cp()));
        assert_eq!(store.details_backlog("s"), 1, "survives a reopen");
    }

    #[test]
    fn a_completed_entry_leaves_with_its_records_identities() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let e = entry(1, "x", "Pending");
        store
            .write(&Commit {
                source: "s",
                details: std::slice::from_ref(&e),
                ..Commit::default()
            })
            .unwrap();
        assert!(store.details_known("s", &e).unwrap().is_empty());
        let delivered = [record("Receive", 0), record("Defer", 2)];
        assert!(block_on(store.complete_details("s", &e, &delivered, &[], true)).unwrap());
        assert_eq!(store.details_backlog("s"), 0);
        let known = store.details_known("s", &e).unwrap();
        assert_eq!(known, delivered.iter().cloned().collect());
        // The recipient in another case is the same entry; another source's is not.
        let mut other_case = e.clone();
        other_case.recipient = "a@B.C".into();
        assert_eq!(store.details_known("s", &other_case).unwrap().len(), 2);
        assert!(store.details_known("t", &e).unwrap().is_empty());
    }

    #[test]
    fn a_status_change_enqueues_again_and_the_known_records_stay_known() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let pending = entry(1, "x", "Pending");
        let failed = entry(1, "x", "Failed");
        let add = |e: &DetailEntry| {
            store
                .write(&Commit {
                    source: "s",
                    details: std::slice::from_ref(e),
                    ..Commit::default()
                })
                .unwrap()
        };
        add(&pending);
        let first = [record("Receive", 0), record("Defer", 2)];
        // The re-read saw the change while the first request was under way: the entry stays
        // for the second request, the first one's records are known.
        add(&failed);
        assert!(!block_on(store.complete_details("s", &pending, &first, &[], false)).unwrap());
        assert_eq!(store.details_pending("s", 9).unwrap(), vec![failed.clone()]);
        assert_eq!(store.details_known("s", &failed).unwrap().len(), 2);
        assert!(
            block_on(store.complete_details("s", &failed, &[record("Fail", 9)], &[], false))
                .unwrap()
        );
        assert_eq!(store.details_backlog("s"), 0);
        assert_eq!(store.details_known("s", &failed).unwrap().len(), 3);
    }

    #[test]
    fn identities_expire_by_the_row_s_received_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for (h, trace) in [(1, "old"), (3, "new")] {
            let e = entry(h, trace, "Failed");
            block_on(store.complete_details("s", &e, &[record("Fail", 1)], &[], false)).unwrap();
        }
        block_on(store.complete_details(
            "u",
            &entry(1, "old", "Failed"),
            &[record("Fail", 1)],
            &[],
            false,
        ))
        .unwrap();
        assert_eq!(store.expire_details("s", t(2)).unwrap(), 1);
        assert!(store
            .details_known("s", &entry(1, "old", "Failed"))
            .unwrap()
            .is_empty());
        assert_eq!(
            store
                .details_known("s", &entry(3, "new", "Failed"))
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            store
                .details_known("u", &entry(1, "old", "Failed"))
                .unwrap()
                .len(),
            1,
            "another source's stay"
        );
    }

    #[test]
    fn record_keys_read_back() {
        let prefix = records_prefix("s", &entry(1, "x", "Failed"));
        for r in [
            record("Receive", 0),
            record("", -5),
            record("Deliver", 86_400),
        ] {
            let k = record_key(&prefix, &r);
            assert_eq!(record_of(&k[prefix.len()..]), Some(r));
        }
        assert_eq!(record_of(b"short"), None);
    }
}
