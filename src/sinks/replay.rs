//! At the engine's start, before any sink opens its file: where each file sink's file holds
//! pages that no commit covers ([`Replay`]), found from the greatest length a commit recorded
//! for it ([`msgtrace_storage::positions`]).
//!
//! Those pages are the page being committed when the process was killed and, since a commit's
//! flush runs behind the next page's delivery (`fetcher/flushing.rs`), the page after it. Their
//! sources deliver them again from their checkpoints (from the spool, so with the same bytes),
//! and the sink compares each page delivered again with what the file holds there instead of
//! appending it a second time ([`super::FileSink::with_replay`]). Nothing is ever cut: a
//! program tailing the file (Filebeat, Vector, a forwarder) has read those lines already, and
//! a file that shrinks makes some of them read it all again from the start.

use msgtrace_storage::Store;
use std::path::Path;

/// Where the pages past a file's last commit begin: the file (device and inode) and the
/// committed length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Replay {
    /// The file's device and inode: another file under the path is not replayed.
    pub file: (u64, u64),
    /// The greatest length a commit recorded for it.
    pub from: u64,
}

/// Why a file sink's file could not be looked at (the start goes on: its pages past the last
/// commit are then appended again, as a kill did before).
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The file's metadata could not be read.
    #[error("file sink {sink}: cannot read {path}: {error}; pages written after its last commit may be delivered twice")]
    Io {
        /// The sink's id.
        sink: String,
        /// The file.
        path: String,
        /// What failed.
        error: std::io::Error,
    },
    /// The state directory's record could not be read.
    #[error("file sink {sink}: {error}")]
    State {
        /// The sink's id.
        sink: String,
        /// What failed.
        error: msgtrace_storage::StorageError,
    },
}

/// A file sink's file as the engine's start found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Found {
    /// Its device and inode.
    pub file: (u64, u64),
    /// Where it holds pages past its last commit, when it does.
    pub replay: Option<Replay>,
}

/// The file at `path` of sink `sink` (`None` when there is none, or not a regular one).
pub fn uncommitted(store: &Store, sink: &str, path: &Path) -> Result<Option<Found>, ReplayError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_file() => m,
        Ok(_) => return Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => {
            return Err(ReplayError::Io {
                sink: sink.into(),
                path: path.display().to_string(),
                error,
            })
        }
    };
    let file = super::file_identity(&meta);
    let committed = store
        .committed_position(sink, file)
        .map_err(|error| ReplayError::State {
            sink: sink.into(),
            error,
        })?;
    let replay = committed
        .filter(|c| c.len < meta.len())
        .map(|c| Replay { file, from: c.len });
    Ok(Some(Found { file, replay }))
}
