//! The built-in sinks: `stdout` and `file` (NDJSON), and [`http`] (NDJSON, JSON, Splunk HEC,
//! Elasticsearch bulk). Each acknowledges a batch only once it is written and flushed (the file
//! sink also `fsync`s) or accepted by the receiver, so the checkpoint never moves past rows that
//! are not delivered.

use futures_util::future::LocalBoxFuture;
use msgtrace_actors::event::Batch;
use msgtrace_actors::sink::{Sink, SinkError, SinkInput};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

pub mod http;
pub use http::HttpSink;

/// NDJSON on standard output.
pub struct StdoutSink {
    name: String,
    /// The NDJSON of a page not encoded by the fetcher, kept for the next page (see
    /// [`Batch::ndjson`]).
    buf: Vec<u8>,
}

impl StdoutSink {
    /// A stdout sink with this id.
    pub fn new(name: &str) -> StdoutSink {
        StdoutSink {
            name: name.into(),
            buf: Vec::new(),
        }
    }
}

impl Sink for StdoutSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn input(&self) -> SinkInput {
        SinkInput::Ndjson
    }

    fn deliver<'a>(&'a mut self, batch: &'a Batch) -> LocalBoxFuture<'a, Result<(), SinkError>> {
        let bytes = batch.ndjson(&mut self.buf);
        let r = {
            let mut out = std::io::stdout().lock();
            out.write_all(bytes).and_then(|()| out.flush())
        };
        release_if_large(&mut self.buf);
        let name = self.name.clone();
        Box::pin(async move {
            r.map_err(|e| SinkError {
                sink: name,
                message: format!("writing to stdout failed: {e}"),
            })
        })
    }
}

/// The largest page buffer the file and stdout sinks keep between pages (a page of 5000 Graph rows
/// is about 2 MB of NDJSON).
const KEEP_BUFFER_BYTES: usize = 16 << 20;

/// Lets go of a page buffer an unusually large page grew past [`KEEP_BUFFER_BYTES`].
fn release_if_large(buf: &mut Vec<u8>) {
    if buf.capacity() > KEEP_BUFFER_BYTES {
        *buf = Vec::new();
    }
}

/// NDJSON appended to a file.
pub struct FileSink {
    name: String,
    path: PathBuf,
    file: Option<File>,
    fsync: bool,
    rotate: Option<crate::config::Rotation>,
    /// The NDJSON of a page not encoded by the fetcher, kept for the next page (see
    /// [`Batch::ndjson`]).
    buf: Vec<u8>,
}

impl FileSink {
    /// A file sink with this id writing to `path`. The file is opened on first delivery.
    pub fn new(name: &str, path: &Path) -> FileSink {
        FileSink {
            name: name.into(),
            path: path.to_path_buf(),
            file: None,
            fsync: true,
            rotate: None,
            buf: Vec::new(),
        }
    }

    /// Rotates the file by size (see [`crate::config::Rotation`]).
    pub fn with_rotation(mut self, rotate: Option<crate::config::Rotation>) -> FileSink {
        self.rotate = rotate;
        self
    }

    /// Renames the live file to `path.1` (shifting older ones, dropping the oldest) when
    /// `incoming` more bytes would take it past the limit. A page is never split.
    fn rotate_if_needed(&mut self, incoming: usize) -> std::io::Result<()> {
        let Some(r) = self.rotate else {
            return Ok(());
        };
        let len = match std::fs::metadata(&self.path) {
            Ok(m) => m.len(),
            Err(_) => return Ok(()),
        };
        if len == 0 || len + incoming as u64 <= r.max_bytes {
            return Ok(());
        }
        self.file = None;
        let rotated = |n: u32| {
            let mut p = self.path.clone().into_os_string();
            p.push(format!(".{n}"));
            PathBuf::from(p)
        };
        let _ = std::fs::remove_file(rotated(r.keep));
        for n in (1..r.keep).rev() {
            if rotated(n).exists() {
                std::fs::rename(rotated(n), rotated(n + 1))?;
            }
        }
        std::fs::rename(&self.path, rotated(1))?;
        tracing::info!(sink = %self.name, file = %self.path.display(), "rotated");
        Ok(())
    }

    /// Whether to `fsync` each batch (on by default; flushing to the OS alone survives a process
    /// crash but not a power loss).
    pub fn with_fsync(mut self, fsync: bool) -> FileSink {
        self.fsync = fsync;
        self
    }

    fn err(&self, what: &str, e: std::io::Error) -> SinkError {
        SinkError {
            sink: self.name.clone(),
            message: format!("{what} {}: {e}", self.path.display()),
        }
    }

    fn open(&mut self) -> Result<&mut File, SinkError> {
        if self.file.is_none() {
            if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .map_err(|e| self.err("cannot create the directory of", e))?;
            }
            let mut f = OpenOptions::new()
                .create(true)
                .read(true)
                .append(true)
                .open(&self.path)
                .map_err(|e| self.err("cannot open", e))?;
            repair_torn_tail(&mut f).map_err(|e| self.err("cannot repair the end of", e))?;
            self.file = Some(f);
        }
        Ok(self.file.as_mut().expect("opened above"))
    }
}

/// A crash in the middle of a write can leave a partial last line. Cut the file back to its last
/// complete line: that page was not acknowledged, so it is delivered again whole.
pub fn repair_torn_tail(f: &mut File) -> std::io::Result<()> {
    let len = f.metadata()?.len();
    if len == 0 {
        return Ok(());
    }
    let mut pos = len;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let start = pos.saturating_sub(buf.len() as u64);
        let n = (pos - start) as usize;
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(&mut buf[..n])?;
        if pos == len && buf[n - 1] == b'\n' {
            return Ok(());
        }
        if let Some(i) = buf[..n].iter().rposition(|b| *b == b'\n') {
            f.set_len(start + i as u64 + 1)?;
            break;
        }
        if start == 0 {
            f.set_len(0)?;
            break;
        }
        pos = start;
    }
    tracing::warn!("cut a partial last line left by an interrupted write");
    f.sync_data()
}

impl Sink for FileSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn input(&self) -> SinkInput {
        SinkInput::Ndjson
    }

    fn deliver<'a>(&'a mut self, batch: &'a Batch) -> LocalBoxFuture<'a, Result<(), SinkError>> {
        let mut buf = std::mem::take(&mut self.buf);
        let r = self.write(batch.ndjson(&mut buf));
        self.buf = buf;
        release_if_large(&mut self.buf);
        Box::pin(async move { r })
    }
}

impl FileSink {
    /// Appends `bytes` (whole lines), rotating first when due, then `fsync`s them unless told not
    /// to.
    fn write(&mut self, bytes: &[u8]) -> Result<(), SinkError> {
        if let Err(e) = self.rotate_if_needed(bytes.len()) {
            return Err(self.err("cannot rotate", e));
        }
        let fsync = self.fsync;
        let r = self.open().and_then(|f| {
            f.write_all(bytes)
                .and_then(|()| f.flush())
                .and_then(|()| if fsync { f.sync_data() } else { Ok(()) })
                .map_err(|e| e.to_string())
                .map_err(|e| SinkError {
                    sink: String::new(),
                    message: e,
                })
        });
        let r = r.map_err(|mut e| {
            if e.sink.is_empty() {
                e.sink = self.name.clone();
                e.message = format!("writing {} failed: {}", self.path.display(), e.message);
            }
            e
        });
        if r.is_err() {
            // Reopen next time: the failed write may have left a partial line to repair.
            self.file = None;
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_by_size_never_splits_a_page_and_keeps_n_files() {
        use msgtrace_actors::event::Event;
        use std::sync::Arc;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.ndjson");
        let mut sink = FileSink::new("f", &path).with_rotation(Some(crate::config::Rotation {
            max_bytes: 250,
            keep: 2,
        }));
        let page = |n: usize| {
            let events = (0..n)
                .map(|i| {
                    let mut fields = serde_json::Map::new();
                    fields.insert("i".into(), (i as u64).into());
                    fields.insert("pad".into(), "x".repeat(30).into());
                    Event::new(fields, Arc::from("s"), Arc::from("u"))
                })
                .collect();
            Batch::new(Arc::from("s"), events)
        };
        let block = |f: LocalBoxFuture<'_, Result<(), SinkError>>| {
            actix_rt::System::new().block_on(f).unwrap()
        };
        for _ in 0..6 {
            block(sink.deliver(&page(3)));
        }
        let lines = |p: &Path| {
            std::fs::read_to_string(p)
                .map(|t| t.lines().count())
                .unwrap_or(0)
        };
        let rotated = |n: u32| PathBuf::from(format!("{}.{n}", path.display()));
        // Each page is 3 lines of ~50 bytes: at most one page (150 bytes) fits under 250 with
        // another; files hold whole pages.
        for p in [path.clone(), rotated(1), rotated(2)] {
            assert!(p.exists(), "{}", p.display());
            assert_eq!(lines(&p) % 3, 0, "whole pages only in {}", p.display());
            assert!(std::fs::metadata(&p).unwrap().len() <= 250);
        }
        assert!(!rotated(3).exists(), "only `keep` rotated files");
    }

    #[test]
    fn torn_tail_is_cut_to_last_full_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.ndjson");
        std::fs::write(&p, b"{\"a\":1}\n{\"b\":2}\n{\"c\":").unwrap();
        let mut f = OpenOptions::new().read(true).append(true).open(&p).unwrap();
        repair_torn_tail(&mut f).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"{\"a\":1}\n{\"b\":2}\n");
        repair_torn_tail(&mut f).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"{\"a\":1}\n{\"b\":2}\n");
        std::fs::write(&p, b"partial").unwrap();
        let mut f = OpenOptions::new().read(true).append(true).open(&p).unwrap();
        repair_torn_tail(&mut f).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"");
    }
}
