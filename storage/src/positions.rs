//! How far each file sink's file holds committed rows: the tree `sink_positions`, written in
//! the transaction of every commit that follows a delivery (a page's [`crate::Commit`], a row's
//! details), so that it is never behind what the checkpoints and the details backlog say is
//! delivered.
//!
//! Key `<sink id>\0<dev, 8 bytes big-endian><ino, 8 bytes>`, value the [`FileMark`] of that
//! file with the greatest length any commit recorded for it. Every committed page of a file ends
//! at or before that length, since pages are appended one after the other and each commit keeps
//! the greater length. So what the file holds past it was written by pages that no commit
//! covers, and that their sources deliver again after a restart: the engine's start finds it
//! (`msgtrace::sinks::replay`), and the sink compares the pages delivered again with it instead
//! of writing them twice. A record is keyed by the
//! file's identity, not its path: a file rotated away and the new one under the same path keep
//! records of their own, so that a commit of the old file's last page cannot lower the new
//! one's.

use crate::record::{self, FileMark};
use crate::{Result, Store};

pub(crate) const SINK_POSITIONS: &str = "sink_positions";

/// Where a sink's file stood after a delivery: the sink's id and its file's mark.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SinkPosition {
    /// The sink's id.
    pub sink: String,
    /// The file (path and identity) and its length after the delivery.
    pub file: FileMark,
}

fn key(sink: &str, (dev, ino): (u64, u64)) -> Vec<u8> {
    let mut k = Vec::with_capacity(sink.len() + 17);
    k.extend_from_slice(sink.as_bytes());
    k.push(0);
    k.extend_from_slice(&dev.to_be_bytes());
    k.extend_from_slice(&ino.to_be_bytes());
    k
}

/// Records `positions` in a transaction over the tree: each file's record keeps the greater
/// length (a record that cannot be read is replaced).
pub(crate) fn record_in(
    tree: &sled::transaction::TransactionalTree,
    positions: &[SinkPosition],
) -> sled::transaction::ConflictableTransactionResult<(), ()> {
    for p in positions {
        let k = key(&p.sink, (p.file.dev, p.file.ino));
        let kept = tree
            .get(&k)?
            .and_then(|v| record::decode_file_mark(&v).ok())
            .is_some_and(|m| m.len >= p.file.len);
        if !kept {
            tree.insert(k, record::encode_file_mark(&p.file))?;
        }
    }
    Ok(())
}

impl Store {
    /// The greatest length a commit recorded for the file `(dev, ino)` of sink `sink`.
    pub fn committed_position(&self, sink: &str, file: (u64, u64)) -> Result<Option<FileMark>> {
        match self
            .positions
            .get(key(sink, file))
            .map_err(|e| self.sled_err(e))?
        {
            None => Ok(None),
            Some(v) => {
                record::decode_file_mark(&v)
                    .map(Some)
                    .map_err(|e| crate::StorageError::Corrupt {
                        tree: SINK_POSITIONS.into(),
                        key: format!("{sink}/{}/{}", file.0, file.1),
                        reason: e.to_string(),
                    })
            }
        }
    }

    /// Every record: each sink's files and the greatest length a commit recorded for them.
    pub fn positions(&self) -> Result<Vec<SinkPosition>> {
        let mut out = Vec::new();
        for item in self.positions.iter() {
            let (k, v) = item.map_err(|e| self.sled_err(e))?;
            let sink = k.split(|b| *b == 0).next().unwrap_or_default();
            let file = record::decode_file_mark(&v).map_err(|e| crate::StorageError::Corrupt {
                tree: SINK_POSITIONS.into(),
                key: String::from_utf8_lossy(sink).into_owned(),
                reason: e.to_string(),
            })?;
            out.push(SinkPosition {
                sink: String::from_utf8_lossy(sink).into_owned(),
                file,
            });
        }
        Ok(out)
    }

    /// Removes every record but those of the files in `keep` (sink id and file identity): the
    /// records of files rotated away, of sinks no longer configured, or all of them (`[cluster]`,
    /// whose commits record none, so that records left from before could only be stale).
    /// Returns how many were removed.
    pub fn keep_positions(&self, keep: &[(&str, (u64, u64))]) -> Result<usize> {
        let keep: Vec<Vec<u8>> = keep.iter().map(|(s, f)| key(s, *f)).collect();
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for item in self.positions.iter().keys() {
            let k = item.map_err(|e| self.sled_err(e))?;
            if !keep.iter().any(|kept| kept.as_slice() == k.as_ref()) {
                batch.remove(k);
                n += 1;
            }
        }
        self.positions
            .apply_batch(batch)
            .map_err(|e| self.sled_err(e))?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Commit;

    fn at(sink: &str, ino: u64, len: u64) -> SinkPosition {
        SinkPosition {
            sink: sink.into(),
            file: FileMark {
                path: "/out/e.ndjson".into(),
                dev: 3,
                ino,
                len,
            },
        }
    }

    fn commit(store: &Store, positions: &[SinkPosition]) {
        store
            .write(&Commit {
                source: "s",
                positions,
                ..Default::default()
            })
            .unwrap();
    }

    fn len(store: &Store, sink: &str, ino: u64) -> Option<u64> {
        store
            .committed_position(sink, (3, ino))
            .unwrap()
            .map(|m| m.len)
    }

    #[test]
    fn a_files_record_keeps_the_greatest_length_committed_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        commit(&store, &[at("out", 7, 100)]);
        // Another source's page, committed after it though written before.
        commit(&store, &[at("out", 7, 60)]);
        assert_eq!(len(&store, "out", 7), Some(100));
        commit(&store, &[at("out", 7, 180), at("other", 7, 5)]);
        assert_eq!(len(&store, "out", 7), Some(180));
        // A file rotated away and the new one under the same path: records of their own.
        commit(&store, &[at("out", 8, 20)]);
        commit(&store, &[at("out", 7, 190)]);
        assert_eq!(
            (len(&store, "out", 7), len(&store, "out", 8)),
            (Some(190), Some(20))
        );
        assert_eq!(len(&store, "other", 7), Some(5));
        assert_eq!(len(&store, "out", 9), None);
        let mut all: Vec<(String, u64, u64)> = store
            .positions()
            .unwrap()
            .into_iter()
            .map(|p| (p.sink, p.file.ino, p.file.len))
            .collect();
        all.sort();
        assert_eq!(
            all,
            [
                ("other".into(), 7, 5),
                ("out".into(), 7, 190),
                ("out".into(), 8, 20)
            ]
        );
    }

    #[test]
    fn keeping_positions_removes_every_other_record() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        commit(
            &store,
            &[at("out", 7, 100), at("out", 8, 5), at("gone", 7, 1)],
        );
        assert_eq!(store.keep_positions(&[("out", (3, 8))]).unwrap(), 2);
        assert_eq!(
            (len(&store, "out", 7), len(&store, "out", 8)),
            (None, Some(5))
        );
        assert_eq!(len(&store, "gone", 7), None);
        assert_eq!(store.keep_positions(&[]).unwrap(), 1);
        assert_eq!(len(&store, "out", 8), None);
    }
}
