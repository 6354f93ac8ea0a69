//! How far each file sink wrote its file ([`FileMark`]), one small file per sink:
//! `<state dir>/sinks/<sink key>.mark`, where the key is a hash of the sink's id, holding the
//! versioned JSON of the mark.
//!
//! Not in sled: a sink runs on its own thread, and a database handle kept there would outlive
//! the engine's stop (sled's lock then refuses the next open). A mark is replaced by renaming a
//! new file over it, so it is whole or the previous one; a mark that cannot be read is treated
//! as none, which is safe: without a mark the sink never cuts anything.

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

/// The mark file of one file sink.
#[derive(Clone, Debug)]
pub struct MarkFile {
    path: PathBuf,
}

impl MarkFile {
    /// The mark file of the sink `sink` in the state directory `state_dir`.
    pub fn new(state_dir: &Path, sink: &str) -> MarkFile {
        MarkFile {
            path: state_dir.join("sinks").join(format!(
                "{:016x}.mark",
                crate::spool::fnv1a(sink.as_bytes())
            )),
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
    pub fn store(&self, mark: &FileMark, sync: bool) -> io::Result<()> {
        let dir = self.path.parent().expect("a mark file has a directory");
        let tmp = self.path.with_extension("tmp");
        let mut f = match layout::private_file(&tmp) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                layout::create_private_dir(dir)?;
                layout::private_file(&tmp)?
            }
            other => other?,
        };
        f.write_all(&record::encode_file_mark(mark))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_comes_back_and_a_damaged_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let marks = MarkFile::new(dir.path(), "out");
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
        let marks = MarkFile::new(dir.path(), "out");
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
