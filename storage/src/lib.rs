//! Everything msgtrace keeps on disk, on [sled].
//!
//! The state directory holds one sled database with these trees:
//!
//! | tree | key | value |
//! |---|---|---|
//! | `checkpoints` | cursor name (the source id, or `backfill/<source>/<id>`) | [`Checkpoint`] |
//! | `jobs` | `<source>\0<job id>` | [`JobRecord`] |
//! | `meta` | `schema` | the layout version of the directory (checked at open) |
//! | `secrets` | secret name | an encrypted secret, versioned by its owner (`msgtrace::secrets`) through [`Store::put_raw`] |
//! | `details`, `details_seen` | see [`details`] | the details backlog and the identities of the detail records delivered |
//! | `sink_positions` | `<sink id>\0<file identity>` | how far a file sink's file holds committed rows ([`positions`]) |
//!
//! Beside the database, the marker [`layout::MARKER`] says that the directory holds a database
//! (so that one emptied or deleted is refused, not silently started over), `sinks/` how far
//! each file sink wrote its file ([`marks`]), and `spool/` keeps the bodies of pages fetched but not yet committed
//! ([`spool`]), so that a restart after a crash does not request them again.
//!
//! Every value is JSON with a `version` tag (see [`record`]), so a newer msgtrace can read an older
//! state directory and a human can read the dump. This crate knows nothing of actix or TOML.
#![deny(missing_docs)]

pub mod details;
pub mod dump;
pub mod layout;
pub mod marks;
pub mod positions;
pub mod record;
pub mod spool;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub use details::{DetailEntry, DetailRecordId};
pub use positions::SinkPosition;
pub use record::{Checkpoint, FileMark, InFlight, JobKind, JobRecord, JobState, TaskRecord};
pub use spool::Spool;

/// The on-disk layout version written to the `meta` tree.
pub const SCHEMA_VERSION: u32 = 1;

/// What can go wrong with the state directory. Each is one line saying what failed and what to
/// do: a disk that is full, a permission, damaged files, another process.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// Another process (usually a running engine) holds sled's exclusive lock.
    #[error("state directory {dir} is in use by another msgtrace process (sled holds an exclusive lock); stop that process, or copy the directory and use the copy")]
    Locked {
        /// The state directory.
        dir: PathBuf,
    },
    /// sled failed (I/O error, corruption); see [`describe_sled`].
    #[error("{}", describe_sled(.dir, .error))]
    Sled {
        /// The state directory.
        dir: PathBuf,
        /// sled's error (not a `#[source]`: the message already says what it means).
        error: sled::Error,
    },
    /// An I/O error on the state directory outside sled (creating it, its marker).
    #[error("{}", layout::IoCause::of(.error).describe(.dir, .error))]
    Io {
        /// The state directory.
        dir: PathBuf,
        /// The error.
        error: std::io::Error,
    },
    /// `state_dir` names something that is not a directory.
    #[error("state directory {dir} is not a directory; set state_dir to a directory (msgtrace creates it when missing)")]
    NotADirectory {
        /// The path.
        dir: PathBuf,
    },
    /// The directory held a database (its marker says so) but the database is gone or empty
    /// (sled also opens a database whose first segment is damaged as an empty one).
    #[error("state directory {dir} held a msgtrace database that is now missing, empty or unreadable (its files were emptied, deleted or damaged), so every checkpoint is lost; restore the directory from a backup, or, to start over on purpose and collect the whole window again, remove the directory (`rm -r {dir}`)")]
    Lost {
        /// The state directory.
        dir: PathBuf,
    },
    /// The directory was written by a newer msgtrace (a layout this build does not know).
    #[error("state directory {dir} has layout version {found}, newer than this msgtrace reads (up to {SCHEMA_VERSION}); run the msgtrace version that wrote it, or restore a backup made for this version")]
    NewerLayout {
        /// The state directory.
        dir: PathBuf,
        /// The version found.
        found: u32,
    },
    /// A stored value could not be decoded.
    #[error("state directory: record `{key}` in tree `{tree}` cannot be read ({reason}); it was written by an incompatible msgtrace version or is damaged: restore the state directory from a backup, or move it aside to start over")]
    Corrupt {
        /// The tree name.
        tree: String,
        /// The key, printed readably.
        key: String,
        /// The decode error.
        reason: String,
    },
}

/// A sled error as one line with its fix: disk full, permission, read-only, damaged files.
pub fn describe_sled(dir: &Path, e: &sled::Error) -> String {
    let damaged = |what: &str| {
        format!(
            "state directory {} is damaged ({what}); restore it from a backup, or move it aside to start over (the next run then collects the whole window again)",
            dir.display()
        )
    };
    match e {
        sled::Error::Io(io) => layout::IoCause::of(io).describe(dir, io),
        sled::Error::Corruption { at, .. } => match at {
            Some(at) => damaged(&format!("corrupt data at {at}")),
            None => damaged("corrupt data"),
        },
        // Unreadable `conf` (sled says "created using a sled version earlier than 0.29"), or
        // one written with other settings.
        sled::Error::Unsupported(_) => damaged("its database files cannot be read"),
        sled::Error::ReportableBug(what) => damaged(&format!("sled failed: {what}")),
        other => format!("state directory {}: {other}", dir.display()),
    }
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, StorageError>;

/// A handle to the state directory. Cheap to clone; all clones share one database.
#[derive(Clone)]
pub struct Store {
    dir: PathBuf,
    db: sled::Db,
    checkpoints: sled::Tree,
    jobs: sled::Tree,
    seen: sled::Tree,
    details: sled::Tree,
    details_seen: sled::Tree,
    positions: sled::Tree,
    flushes: Arc<FlushGate>,
}

/// Lets one `flush_async` run at a time, shared by every clone of a [`Store`]: sled 0.34.7
/// deadlocks when several run at once (spacejam/sled#1308; a thousand sources committing their
/// first page together hung the engine for good). Callers whose writes were done before a flush
/// started share that flush instead of running their own (group commit), so waiting costs at
/// most one flush.
#[derive(Default)]
struct FlushGate {
    /// Flush requests so far; a caller takes its ticket after its writes are done.
    requested: AtomicU64,
    /// The highest ticket whose writes are on disk; held while a flush runs.
    durable: futures_util::lock::Mutex<u64>,
}

/// What one page changes in the state directory, written atomically by [`Store::commit`].
#[derive(Debug, Default)]
pub struct Commit<'a> {
    /// The source the identity index entries belong to.
    pub source: &'a str,
    /// The checkpoint to store, under its cursor name.
    pub checkpoint: Option<(&'a str, &'a Checkpoint)>,
    /// The job record to store.
    pub job: Option<&'a JobRecord>,
    /// Rows delivered, for the identity index (only when re-reading is on).
    pub seen: &'a [SeenEntry],
    /// Rows delivered whose details are to be fetched: added to the details backlog
    /// ([`details`]) with the page's checkpoint, so that a crash loses neither or repeats both.
    pub details: &'a [DetailEntry],
    /// Where the file sinks' files stood after the pages this commit covers ([`positions`]).
    pub positions: &'a [SinkPosition],
}

/// A delivered row in the identity index: its identity, received time and status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeenEntry {
    /// The row's received time (part of the key, so that old entries expire by range).
    pub time: chrono::DateTime<chrono::Utc>,
    /// Trace id (`MessageTraceId` / `id`).
    pub trace_id: String,
    /// Recipient address.
    pub recipient: String,
    /// The status delivered.
    pub status: String,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("dir", &self.dir).finish()
    }
}

const CHECKPOINTS: &str = "checkpoints";
const JOBS: &str = "jobs";
const SEEN: &str = "seen";
pub(crate) const DETAILS: &str = "details";
const DETAILS_SEEN: &str = "details_seen";
const META: &str = "meta";

impl Store {
    /// Opens (or creates) the state directory.
    ///
    /// A new directory is created `0700` and its files are kept `0600` ([`layout`]). Refused:
    /// another process has it open ([`StorageError::Locked`]), it is not a directory, it held a
    /// database that is gone ([`StorageError::Lost`]), or a newer msgtrace wrote it
    /// ([`StorageError::NewerLayout`]). While it is [`StorageError::Locked`], tried again every
    /// 50 ms for up to `wait`: an engine that just stopped in this process (an embedder's
    /// restart, a test) may still be letting go of it on another thread.
    pub fn open_waiting(dir: impl AsRef<Path>, wait: std::time::Duration) -> Result<Store> {
        let until = std::time::Instant::now() + wait;
        loop {
            match Store::open(dir.as_ref()) {
                Err(StorageError::Locked { .. }) if std::time::Instant::now() < until => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                other => return other,
            }
        }
    }

    /// [`Store::open_waiting`] without the wait: [`StorageError::Locked`] at once when another
    /// handle holds it (the tools then ask the running engine).
    pub fn open(dir: impl AsRef<Path>) -> Result<Store> {
        let dir = dir.as_ref().to_path_buf();
        let io_err = |error: std::io::Error| StorageError::Io {
            dir: dir.clone(),
            error,
        };
        match layout::prepare_dir(&dir) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(StorageError::NotADirectory { dir });
            }
            other => other.map_err(io_err)?,
        };
        let had_database = layout::has_marker(&dir);
        let db = sled::Config::new()
            .path(&dir)
            .open()
            .map_err(|e| classify_open_error(&dir, e))?;
        let sled_err = |error| StorageError::Sled {
            dir: dir.clone(),
            error,
        };
        let checkpoints = db.open_tree(CHECKPOINTS).map_err(sled_err)?;
        let jobs = db.open_tree(JOBS).map_err(sled_err)?;
        let seen = db.open_tree(SEEN).map_err(sled_err)?;
        let details = db.open_tree(DETAILS).map_err(sled_err)?;
        let details_seen = db.open_tree(DETAILS_SEEN).map_err(sled_err)?;
        let positions = db.open_tree(positions::SINK_POSITIONS).map_err(sled_err)?;
        let meta = db.open_tree(META).map_err(sled_err)?;
        match meta.get("schema").map_err(sled_err)? {
            None if had_database => return Err(StorageError::Lost { dir }),
            None => {
                meta.insert("schema", SCHEMA_VERSION.to_string().as_bytes())
                    .map_err(sled_err)?;
                db.flush().map_err(sled_err)?;
            }
            Some(v) => match std::str::from_utf8(&v)
                .ok()
                .and_then(|v| v.parse::<u32>().ok())
            {
                Some(found) if found > SCHEMA_VERSION => {
                    return Err(StorageError::NewerLayout { dir, found })
                }
                Some(_) => {}
                None => {
                    return Err(StorageError::Corrupt {
                        tree: META.into(),
                        key: "schema".into(),
                        reason: format!("not a version number: {:?}", String::from_utf8_lossy(&v)),
                    })
                }
            },
        }
        if !had_database {
            layout::write_marker(&dir, SCHEMA_VERSION).map_err(io_err)?;
        }
        layout::restrict_database_files(&dir);
        Ok(Store {
            dir,
            db,
            checkpoints,
            jobs,
            seen,
            details,
            details_seen,
            positions,
            flushes: Arc::default(),
        })
    }

    /// The directory this store lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The spool of the cursor `name`: pages fetched but not yet committed ([`spool`]).
    pub fn spool(&self, name: &str) -> Spool {
        Spool::new(&self.dir, name)
    }

    fn sled_err(&self, error: sled::Error) -> StorageError {
        StorageError::Sled {
            dir: self.dir.clone(),
            error,
        }
    }

    /// The checkpoint stored under `name` (a source id, or a backfill cursor name).
    pub fn checkpoint(&self, name: &str) -> Result<Option<Checkpoint>> {
        match self
            .checkpoints
            .get(name.as_bytes())
            .map_err(|e| self.sled_err(e))?
        {
            None => Ok(None),
            Some(bytes) => {
                record::decode_checkpoint(&bytes)
                    .map(Some)
                    .map_err(|e| StorageError::Corrupt {
                        tree: CHECKPOINTS.into(),
                        key: name.into(),
                        reason: e.to_string(),
                    })
            }
        }
    }

    /// Writes what a page changed (checkpoint, job record, identity index entries) atomically,
    /// then, when `durable`, waits until it is on disk (`flush_async`). This is the commit point
    /// of a page.
    pub async fn commit(&self, commit: Commit<'_>, durable: bool) -> Result<()> {
        self.write(&commit)?;
        if durable {
            self.flush().await?;
        }
        Ok(())
    }

    /// Writes a [`Commit`] atomically (one sled transaction over the trees) without flushing.
    pub fn write(&self, commit: &Commit<'_>) -> Result<()> {
        use sled::Transactional;
        let cp = commit
            .checkpoint
            .map(|(name, cp)| (name.as_bytes().to_vec(), record::encode_checkpoint(cp)));
        let job_kv = commit
            .job
            .map(|j| (job_key(&j.source, &j.id), record::encode_job(j)));
        let seen: Vec<(Vec<u8>, Vec<u8>)> = commit
            .seen
            .iter()
            .map(|e| (seen_key(commit.source, e), record::encode_seen(&e.status)))
            .collect();
        let details: Vec<(Vec<u8>, Vec<u8>)> = commit
            .details
            .iter()
            .map(|e| {
                (
                    details::entry_key(commit.source, e),
                    record::encode_detail_entry(e),
                )
            })
            .collect();
        (
            &self.checkpoints,
            &self.jobs,
            &self.seen,
            &self.details,
            &self.positions,
        )
            .transaction(|(cps, jobs, seen_tree, backlog, positions)| {
                if let Some((k, v)) = &cp {
                    cps.insert(k.as_slice(), v.as_slice())?;
                }
                if let Some((k, v)) = &job_kv {
                    jobs.insert(k.as_slice(), v.as_slice())?;
                }
                for (k, v) in &seen {
                    seen_tree.insert(k.as_slice(), v.as_slice())?;
                }
                for (k, v) in &details {
                    backlog.insert(k.as_slice(), v.as_slice())?;
                }
                positions::record_in(positions, commit.positions)
            })
            .map_err(|e| self.transaction_err(e))
    }

    /// A failed transaction as a [`StorageError`] (no transaction of this crate aborts).
    fn transaction_err(&self, e: sled::transaction::TransactionError<()>) -> StorageError {
        match e {
            sled::transaction::TransactionError::Storage(e) => self.sled_err(e),
            sled::transaction::TransactionError::Abort(()) => {
                self.sled_err(sled::Error::Unsupported("transaction aborted".into()))
            }
        }
    }

    /// The status last delivered for a row identity, if the identity index has it.
    pub fn seen_status(&self, source: &str, entry: &SeenEntry) -> Result<Option<String>> {
        match self
            .seen
            .get(seen_key(source, entry))
            .map_err(|e| self.sled_err(e))?
        {
            None => Ok(None),
            Some(v) => record::decode_seen(&v)
                .map(Some)
                .map_err(|e| StorageError::Corrupt {
                    tree: SEEN.into(),
                    key: format!("{source}/{}/{}", entry.trace_id, entry.recipient),
                    reason: e.to_string(),
                }),
        }
    }

    /// Removes identity index entries of rows received before `before`; returns how many.
    pub fn expire_seen(
        &self,
        source: &str,
        before: chrono::DateTime<chrono::Utc>,
    ) -> Result<usize> {
        let start = source_prefix(source);
        let mut end = start.clone();
        end.extend_from_slice(&before.timestamp_micros().to_be_bytes());
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for item in self.seen.range(start..end) {
            let (k, _) = item.map_err(|e| self.sled_err(e))?;
            batch.remove(k);
            n += 1;
        }
        self.seen.apply_batch(batch).map_err(|e| self.sled_err(e))?;
        Ok(n)
    }

    /// How many identities the index holds for a source.
    pub fn seen_len(&self, source: &str) -> usize {
        self.seen.scan_prefix(source_prefix(source)).count()
    }

    /// Stores a job record (without flushing).
    pub fn put_job(&self, job: &JobRecord) -> Result<()> {
        self.jobs
            .insert(job_key(&job.source, &job.id), record::encode_job(job))
            .map_err(|e| self.sled_err(e))?;
        Ok(())
    }

    /// All job records, oldest first, optionally only one source's.
    pub fn jobs(&self, source: Option<&str>) -> Result<Vec<JobRecord>> {
        let iter = match source {
            Some(s) => self.jobs.scan_prefix(source_prefix(s)),
            None => self.jobs.iter(),
        };
        let mut out = Vec::new();
        for item in iter {
            let (k, v) = item.map_err(|e| self.sled_err(e))?;
            let job = record::decode_job(&v).map_err(|e| StorageError::Corrupt {
                tree: JOBS.into(),
                key: String::from_utf8_lossy(&k).replace('\0', "/"),
                reason: e.to_string(),
            })?;
            out.push(job);
        }
        out.sort_by(|a, b| a.started_at.cmp(&b.started_at).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Removes the records of jobs that finished before `cutoff` (the artifact TTL sweep).
    /// Returns how many were removed. Running jobs are never removed.
    pub fn sweep_jobs(&self, source: &str, cutoff: chrono::DateTime<chrono::Utc>) -> Result<usize> {
        let mut removed = 0;
        for job in self.jobs(Some(source))? {
            if job.state.is_finished() && job.finished_at.is_some_and(|t| t < cutoff) {
                self.jobs
                    .remove(job_key(&job.source, &job.id))
                    .map_err(|e| self.sled_err(e))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Waits until everything written so far is on disk. One sled flush runs at a time (see
    /// `FlushGate`); a flush that started after this call's writes covers them too.
    pub async fn flush(&self) -> Result<()> {
        let gate = &self.flushes;
        let ticket = gate.requested.fetch_add(1, Ordering::SeqCst) + 1;
        let mut durable = gate.durable.lock().await;
        if *durable >= ticket {
            return Ok(());
        }
        // Every ticket handed out so far belongs to writes that are done: this flush covers them.
        let covers = gate.requested.load(Ordering::SeqCst);
        self.db.flush_async().await.map_err(|e| self.sled_err(e))?;
        *durable = covers;
        Ok(())
    }

    /// Flushes synchronously (for shutdown paths outside an async context).
    pub fn flush_blocking(&self) -> Result<()> {
        self.db.flush().map_err(|e| self.sled_err(e))?;
        Ok(())
    }

    /// Stores `value` under `key` in the named tree `tree` (for records this crate does not
    /// model itself, such as the `secrets` tree, whose values the caller versions and encrypts),
    /// then flushes.
    pub fn put_raw(&self, tree: &str, key: &str, value: &[u8]) -> Result<()> {
        let t = self.db.open_tree(tree).map_err(|e| self.sled_err(e))?;
        t.insert(key.as_bytes(), value)
            .map_err(|e| self.sled_err(e))?;
        self.flush_blocking()
    }

    /// The value under `key` in the named tree, if any.
    pub fn get_raw(&self, tree: &str, key: &str) -> Result<Option<Vec<u8>>> {
        let t = self.db.open_tree(tree).map_err(|e| self.sled_err(e))?;
        Ok(t.get(key.as_bytes())
            .map_err(|e| self.sled_err(e))?
            .map(|v| v.to_vec()))
    }

    /// Removes `key` from the named tree and flushes; whether it was there.
    pub fn remove_raw(&self, tree: &str, key: &str) -> Result<bool> {
        let t = self.db.open_tree(tree).map_err(|e| self.sled_err(e))?;
        let was = t
            .remove(key.as_bytes())
            .map_err(|e| self.sled_err(e))?
            .is_some();
        self.flush_blocking()?;
        Ok(was)
    }

    /// Every (key, value) of the named tree, in key order.
    pub fn list_raw(&self, tree: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let t = self.db.open_tree(tree).map_err(|e| self.sled_err(e))?;
        let mut out = Vec::new();
        for item in t.iter() {
            let (k, v) = item.map_err(|e| self.sled_err(e))?;
            out.push((String::from_utf8_lossy(&k).into_owned(), v.to_vec()));
        }
        Ok(out)
    }

    /// The underlying database, for the dump tool.
    pub fn db(&self) -> &sled::Db {
        &self.db
    }
}

/// `source \0`: the keys of one source in the `seen` and `jobs` trees start with it.
fn source_prefix(source: &str) -> Vec<u8> {
    let mut k = source.as_bytes().to_vec();
    k.push(0);
    k
}

/// `source \0 received-µs (big endian) trace \0 recipient (lower case)`: a row's key, ordered by
/// time within a source (the identity index and the details backlog).
fn row_key(
    source: &str,
    time: chrono::DateTime<chrono::Utc>,
    trace_id: &str,
    recipient: &str,
) -> Vec<u8> {
    let mut k = source_prefix(source);
    k.extend_from_slice(&time.timestamp_micros().to_be_bytes());
    k.extend_from_slice(trace_id.as_bytes());
    k.push(0);
    k.extend_from_slice(recipient.to_ascii_lowercase().as_bytes());
    k
}

/// A row's key in the identity index ([`row_key`]).
fn seen_key(source: &str, e: &SeenEntry) -> Vec<u8> {
    row_key(source, e.time, &e.trace_id, &e.recipient)
}

fn job_key(source: &str, id: &str) -> Vec<u8> {
    let mut k = source_prefix(source);
    k.extend_from_slice(id.as_bytes());
    k
}

fn classify_open_error(dir: &Path, e: sled::Error) -> StorageError {
    if let sled::Error::Io(io) = &e {
        let text = io.to_string();
        if io.kind() == std::io::ErrorKind::WouldBlock || text.contains("lock") {
            return StorageError::Locked {
                dir: dir.to_path_buf(),
            };
        }
    }
    StorageError::Sled {
        dir: dir.to_path_buf(),
        error: e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    fn t(h: u32) -> chrono::DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, h, 0, 0).unwrap()
    }

    #[test]
    fn checkpoint_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let cp = Checkpoint {
            cursor: Some(t(3)),
            in_flight: Some(InFlight {
                job_id: "j1".into(),
                slice_start: t(3),
                slice_end: t(4),
                next_link: Some("http://127.0.0.1/x?$skiptoken=abc".into()),
                pages: 2,
                rows: 20,
                query_end: None,
                oldest: Some(t(3)),
                oldest_ids: vec![("id".into(), "a@b.c".into())],
                requeries: 0,
            }),
            pages_total: 7,
            rows_total: 70,
            updated_at: t(5),
            origin: None,
        };
        {
            let store = Store::open(dir.path()).unwrap();
            futures_block_on(store.commit(
                Commit {
                    source: "contoso",
                    checkpoint: Some(("contoso", &cp)),
                    ..Commit::default()
                },
                true,
            ))
            .unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.checkpoint("contoso").unwrap(), Some(cp));
        assert_eq!(store.checkpoint("other").unwrap(), None);
    }

    #[test]
    fn identity_index_remembers_status_and_expires_by_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let e = |h, id: &str, status: &str| SeenEntry {
            time: t(h),
            trace_id: id.into(),
            recipient: "A@b.c".into(),
            status: status.into(),
        };
        let entries = vec![e(1, "x", "Pending"), e(2, "y", "Delivered")];
        store
            .write(&Commit {
                source: "s",
                seen: &entries,
                ..Commit::default()
            })
            .unwrap();
        assert_eq!(
            store.seen_status("s", &e(1, "x", "")).unwrap().as_deref(),
            Some("Pending")
        );
        let mut other_case = e(1, "x", "");
        other_case.recipient = "a@B.C".into();
        assert!(store.seen_status("s", &other_case).unwrap().is_some());
        assert!(store
            .seen_status("other", &e(1, "x", ""))
            .unwrap()
            .is_none());
        assert_eq!(store.seen_len("s"), 2);
        assert_eq!(store.expire_seen("s", t(2)).unwrap(), 1);
        assert_eq!(store.seen_len("s"), 1);
        assert!(store.seen_status("s", &e(2, "y", "")).unwrap().is_some());
    }

    #[test]
    fn second_open_reports_lock() {
        let dir = tempfile::tempdir().unwrap();
        let _a = Store::open(dir.path()).unwrap();
        let err = Store::open(dir.path()).unwrap_err();
        assert!(matches!(err, StorageError::Locked { .. }), "{err}");
        assert!(err
            .to_string()
            .contains("in use by another msgtrace process"));
    }

    /// Regression (issue 15, defect 7): after `truncate -s 0 db; rm snap.*` the next open
    /// started an empty database without a word (and collected the whole window again).
    #[test]
    fn a_lost_database_is_refused_not_started_over() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        {
            let store = Store::open(&state).unwrap();
            store.put_raw("secrets", "k", b"v").unwrap();
        }
        std::fs::File::options()
            .write(true)
            .open(state.join("db"))
            .unwrap()
            .set_len(0)
            .unwrap();
        for e in std::fs::read_dir(&state).unwrap().flatten() {
            if e.file_name().to_string_lossy().starts_with("snap.") {
                std::fs::remove_file(e.path()).unwrap();
            }
        }
        let err = Store::open(&state).unwrap_err();
        assert!(matches!(err, StorageError::Lost { .. }), "{err}");
        let text = err.to_string();
        assert!(text.contains("restore") && text.contains("rm -r"), "{text}");
        assert!(
            Store::open(&state).is_err(),
            "still refused the second time"
        );
        // Starting over on purpose: remove the directory.
        std::fs::remove_dir_all(&state).unwrap();
        Store::open(&state).unwrap();
    }

    /// sled opens a database whose first bytes are damaged as an empty one: that is refused
    /// too, not started over.
    #[test]
    fn a_database_damaged_at_its_start_is_refused_not_started_over() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        let db = dir.path().join("db");
        let mut bytes = std::fs::read(&db).unwrap();
        bytes.iter_mut().take(64).for_each(|b| *b ^= 0x5a);
        std::fs::write(&db, &bytes).unwrap();
        let err = Store::open(dir.path()).unwrap_err();
        assert!(matches!(err, StorageError::Lost { .. }), "{err}");
    }

    /// Regression (issue 15, defect 7): `SCHEMA_VERSION` was written but never checked.
    #[test]
    fn a_newer_layout_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store
                .put_raw(META, "schema", (SCHEMA_VERSION + 1).to_string().as_bytes())
                .unwrap();
        }
        let err = Store::open(dir.path()).unwrap_err();
        assert!(matches!(err, StorageError::NewerLayout { .. }), "{err}");
        assert!(err.to_string().contains("newer"), "{err}");
    }

    /// Regression (issue 15, defect 9): damaged sled files said "created using a sled version
    /// earlier than 0.29" or `backtrace ()`, with no fix.
    #[test]
    fn damaged_database_files_say_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        std::fs::write(dir.path().join("conf"), [0xff_u8; 64]).unwrap();
        let err = Store::open(dir.path()).unwrap_err().to_string();
        assert!(!err.contains("0.29") && !err.contains("backtrace"), "{err}");
        assert!(
            err.contains("damaged") && err.contains("backup") && err.contains("move it aside"),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
    }

    /// Regression (issue 15, defect 9): sled errors printed their Debug text (`Os { code: 28,
    /// kind: StorageFull, .. }`), twice through the error chain, with no fix.
    #[test]
    fn a_full_disk_is_one_line_with_the_fix() {
        let full = std::io::Error::from_raw_os_error(28);
        // sled hands out copies of its I/O errors, their message the Debug text.
        let copied = std::io::Error::new(full.kind(), format!("{full:?}"));
        let err = StorageError::Sled {
            dir: "/var/lib/msgtrace".into(),
            error: sled::Error::Io(copied),
        };
        let text = err.to_string();
        assert!(text.contains("free space"), "{text}");
        assert!(!text.contains("Os {"), "{text}");
        assert!(
            std::error::Error::source(&err).is_none(),
            "no source: a chain would print the cause again"
        );
    }

    /// Regression (issue 15, defect 10): the state directory was created 0755 and the
    /// database files 0644 (with the umask), though they hold addresses and subjects.
    #[cfg(unix)]
    #[test]
    fn a_new_state_directory_is_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        drop(Store::open(&state).unwrap());
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&state), 0o700);
        for f in ["db", "conf", layout::MARKER] {
            assert_eq!(mode(&state.join(f)), 0o600, "{f}");
        }
    }

    #[test]
    fn a_path_that_is_not_a_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        let err = Store::open(&file).unwrap_err();
        assert!(matches!(err, StorageError::NotADirectory { .. }), "{err}");
    }

    #[test]
    fn jobs_listed_and_swept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut old = JobRecord::new("a", "a-1", JobKind::Scheduled, t(1));
        old.finish(JobState::Succeeded, t(2));
        let running = JobRecord::new("a", "a-2", JobKind::Scheduled, t(3));
        let other = JobRecord::new("b", "b-1", JobKind::Once, t(1));
        for j in [&old, &running, &other] {
            store.put_job(j).unwrap();
        }
        assert_eq!(store.jobs(Some("a")).unwrap().len(), 2);
        assert_eq!(store.jobs(None).unwrap().len(), 3);
        assert_eq!(store.sweep_jobs("a", t(10)).unwrap(), 1);
        let left: Vec<_> = store
            .jobs(Some("a"))
            .unwrap()
            .into_iter()
            .map(|j| j.id)
            .collect();
        assert_eq!(left, vec!["a-2".to_string()]);
    }

    #[test]
    fn raw_trees_put_get_list_remove() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store.put_raw("secrets", "b", b"2").unwrap();
            store.put_raw("secrets", "a", b"1").unwrap();
            assert_eq!(store.get_raw("secrets", "a").unwrap(), Some(b"1".to_vec()));
            assert!(store.remove_raw("secrets", "b").unwrap());
            assert!(!store.remove_raw("secrets", "b").unwrap());
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            store.list_raw("secrets").unwrap(),
            vec![("a".to_string(), b"1".to_vec())]
        );
        assert_eq!(store.get_raw("secrets", "zz").unwrap(), None);
    }

    #[test]
    fn corrupt_record_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.checkpoints.insert("bad", &b"{not json"[..]).unwrap();
        let err = store.checkpoint("bad").unwrap_err();
        assert!(err
            .to_string()
            .contains("record `bad` in tree `checkpoints`"));
    }

    /// Regression: sled 0.34.7 deadlocks when several `flush_async` run at once
    /// (spacejam/sled#1308); a thousand sources committing their first page together hung the
    /// engine for good. Commits of many sources at once must all complete.
    #[test]
    fn many_concurrent_commits_complete() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let cp = Checkpoint {
                cursor: Some(t(3)),
                in_flight: None,
                pages_total: 1,
                rows_total: 1,
                updated_at: t(3),
                origin: None,
            };
            let mut commits: Vec<_> = (0..200)
                .map(|i| {
                    let (store, cp) = (store.clone(), cp.clone());
                    Some(Box::pin(async move {
                        let name = format!("s{i}");
                        let job = JobRecord::new(&name, "j", JobKind::Once, t(1));
                        store
                            .commit(
                                Commit {
                                    source: &name,
                                    checkpoint: Some((&name, &cp)),
                                    job: Some(&job),
                                    seen: &[],
                                    details: &[],
                                    positions: &[],
                                },
                                true,
                            )
                            .await
                    }))
                })
                .collect();
            // Polls every commit until all are done (a join_all without a dependency).
            futures_block_on(std::future::poll_fn(|cx| {
                let mut pending = false;
                for slot in commits.iter_mut() {
                    if let Some(f) = slot {
                        match std::future::Future::poll(f.as_mut(), cx) {
                            std::task::Poll::Ready(r) => {
                                r.unwrap();
                                *slot = None;
                            }
                            std::task::Poll::Pending => pending = true,
                        }
                    }
                }
                if pending {
                    std::task::Poll::Pending
                } else {
                    std::task::Poll::Ready(())
                }
            }));
            let _ = tx.send(store.jobs(None).unwrap().len());
        });
        let n = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("200 concurrent commits did not complete within 60 s: sled deadlocked");
        assert_eq!(n, 200);
    }

    pub(crate) fn futures_block_on<F: std::future::Future>(f: F) -> F::Output {
        // A minimal executor: sled's flush_async completes on its own threads.
        use std::sync::Arc;
        use std::task::{Context, Poll, Wake, Waker};
        struct Thread(std::thread::Thread);
        impl Wake for Thread {
            fn wake(self: Arc<Self>) {
                self.0.unpark();
            }
        }
        let waker = Waker::from(Arc::new(Thread(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        let mut f = std::pin::pin!(f);
        loop {
            if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
            std::thread::park();
        }
    }
}
