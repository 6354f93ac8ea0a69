//! How far each file sink wrote its file ([`FileMark`]), one small file per sink:
//! `<state dir>/sinks/<sink key>.mark`, where the key is a hash of the sink's id, holding the
//! versioned JSON of the mark, padded with spaces.
//!
//! Not in sled: a sink runs on its own thread, and a database handle kept there would outlive
//! the engine's stop (sled's lock then refuses the next open). A synced mark (a file opened)
//! replaces the file by renaming a new one over it, so it is whole or the previous one. The
//! per-page update of the length (unsynced) rewrites the padded record in place with one
//! `pwrite`, which a killed process cannot tear: creating and renaming a file per page cost
//! 0.78 ms of the page's delivery on average (median 0.44 ms, session 16's trace), and journal
//! work for the page's `fsync`. A mark that cannot be read (a power cut tearing an unsynced
//! rewrite) is treated as none, which is safe: without a mark the sink never cuts anything.

use crate::layout;
use crate::record::{self, FileMark};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

/// Why a file sink's mark cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum MarkError {
    /// The file cannot be read (its reason, readably).
    #[error("{0}")]
    Unreadable(String),
    /// Its contents are not a mark.
    #[error(transparent)]
    Corrupt(#[from] record::DecodeError),
}

/// Room a mark's record keeps for its length to grow in place: `len` is at most 20 digits.
const ROOM: usize = 24;

/// The mark file of one file sink.
#[derive(Debug)]
pub struct MarkFile {
    path: PathBuf,
    /// The file as the last synced store left it, open for rewriting in place, and its size.
    open: Option<(std::fs::File, usize)>,
}

impl MarkFile {
    /// The mark file of the sink `sink` in the state directory `state_dir`.
    pub fn new(state_dir: &Path, sink: &str) -> MarkFile {
        MarkFile {
            path: state_dir.join("sinks").join(format!(
                "{:016x}.mark",
                crate::spool::fnv1a(sink.as_bytes())
            )),
            open: None,
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The mark: `Ok(None)` when there is none, `Err` when it cannot be read.
    pub fn load(&self) -> Result<Option<FileMark>, MarkError> {
        match std::fs::read(&self.path) {
            Ok(bytes) => Ok(Some(record::decode_file_mark(&bytes)?)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(MarkError::Unreadable(layout::readable(&e))),
        }
    }

    /// Replaces the mark (`0600`, in a `0700` directory). With `sync`, it is on disk when this
    /// returns (before the sink writes past it); without, it survives a crash of the process.
    pub fn store(&mut self, mark: &FileMark, sync: bool) -> io::Result<()> {
        let mut record = record::encode_file_mark(mark);
        if !sync {
            if let Some((f, size)) = &self.open {
                if record.len() <= *size {
                    record.resize(*size, b' ');
                    return write_at_start(f, &record);
                }
            }
        }
        self.open = None;
        record.resize(record.len() + ROOM, b' ');
        self.replace(&record, sync)?;
        // Rewritten in place from now on (best effort: without it, replaced as above).
        let f = std::fs::OpenOptions::new().write(true).open(&self.path);
        self.open = f.ok().map(|f| (f, record.len()));
        Ok(())
    }

    /// Puts `record` in place of the file by a rename: whole or the previous one.
    fn replace(&self, record: &[u8], sync: bool) -> io::Result<()> {
        let dir = self.path.parent().expect("a mark file has a directory");
        let tmp = self.path.with_extension("tmp");
        let mut f = match layout::private_file(&tmp) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                layout::create_private_dir(dir)?;
                layout::private_file(&tmp)?
            }
            other => other?,
        };
        f.write_all(record)?;
        if sync {
            f.sync_all()?;
        }
        drop(f);
        std::fs::rename(&tmp, &self.path)?;
        if sync {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

/// One `pwrite` of `bytes` at the start of `f`.
#[cfg(unix)]
fn write_at_start(f: &std::fs::File, bytes: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::FileExt as _;
    f.write_all_at(bytes, 0)
}

#[cfg(not(unix))]
fn write_at_start(mut f: &std::fs::File, bytes: &[u8]) -> io::Result<()> {
    use std::io::{Seek as _, SeekFrom};
    f.seek(SeekFrom::Start(0))?;
    f.write_all(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(path: &str, len: u64) -> FileMark {
        FileMark {
            path: path.into(),
            dev: 7,
            ino: 8,
            len,
        }
    }

    #[cfg(unix)]
    #[test]
    fn unsynced_lengths_are_rewritten_in_place_and_read_back() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().unwrap();
        let mut marks = MarkFile::new(dir.path(), "out");
        marks.store(&mark("/x/e.ndjson", 0), true).unwrap();
        let meta = std::fs::metadata(marks.path()).unwrap();
        // Lengths of every width, growing and (a file found shorter) shrinking.
        for len in [9, 1_000_000, 5, u64::MAX, 42] {
            marks.store(&mark("/x/e.ndjson", len), false).unwrap();
            let now = std::fs::metadata(marks.path()).unwrap();
            // The same file, its size unchanged: no file created or renamed per page.
            assert_eq!((now.ino(), now.len()), (meta.ino(), meta.len()));
            let read = MarkFile::new(dir.path(), "out").load().unwrap();
            assert_eq!(read, Some(mark("/x/e.ndjson", len)));
        }
        assert!(!marks.path().with_extension("tmp").exists());
    }

    #[test]
    fn a_mark_that_does_not_fit_in_place_replaces_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut marks = MarkFile::new(dir.path(), "out");
        // Unsynced before any synced store: nothing to rewrite yet.
        marks.store(&mark("a", 1), false).unwrap();
        assert_eq!(marks.load().unwrap(), Some(mark("a", 1)));
        marks.store(&mark("a", 2), true).unwrap();
        let long = "b".repeat(300);
        marks.store(&mark(&long, 3), false).unwrap();
        assert_eq!(marks.load().unwrap(), Some(mark(&long, 3)));
        // And rewritten in place again after it.
        marks.store(&mark(&long, 4), false).unwrap();
        assert_eq!(marks.load().unwrap(), Some(mark(&long, 4)));
        // A mark file of the unpadded form (written before session 16) still reads.
        std::fs::write(marks.path(), record::encode_file_mark(&mark("c", 5))).unwrap();
        assert_eq!(marks.load().unwrap(), Some(mark("c", 5)));
    }

    #[test]
    fn a_mark_comes_back_and_a_damaged_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut marks = MarkFile::new(dir.path(), "out");
        assert_eq!(marks.load().unwrap(), None);
        let mark = FileMark {
            path: "/x/e.ndjson".into(),
            dev: 1,
            ino: 2,
            len: 3,
        };
        marks.store(&mark, true).unwrap();
        assert_eq!(marks.load().unwrap(), Some(mark.clone()));
        let next = FileMark { len: 9, ..mark };
        marks.store(&next, false).unwrap();
        assert_eq!(MarkFile::new(dir.path(), "out").load().unwrap(), Some(next));
        assert_eq!(MarkFile::new(dir.path(), "other").load().unwrap(), None);
        std::fs::write(marks.path(), b"{\"version\":\"1\"").unwrap();
        assert!(marks.load().is_err());
    }

    #[cfg(unix)]
    #[test]
    fn mark_files_are_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let mut marks = MarkFile::new(dir.path(), "out");
        let mark = FileMark {
            path: "p".into(),
            dev: 0,
            ino: 0,
            len: 0,
        };
        marks.store(&mark, false).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(marks.path()), 0o600);
        assert_eq!(mode(marks.path().parent().unwrap()), 0o700);
    }
}
