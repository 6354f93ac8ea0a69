//! The built-in sinks: `stdout` and `file` (NDJSON), [`http`] (NDJSON, JSON, Splunk HEC,
//! Elasticsearch bulk), [`azure`] (the Azure Monitor Logs Ingestion API: Sentinel) and
//! [`archive`] (`object_store`: gzip NDJSON objects in S3, Azure Blob, GCS or a directory). Each acknowledges a batch only once it is written and flushed (the file
//! sink also `fsync`s) or accepted by the receiver, so the checkpoint never moves past rows that
//! are not delivered.

use futures_util::future::LocalBoxFuture;
use msgtrace_actors::event::Batch;
use msgtrace_actors::sink::{Sink, SinkError, SinkInput};
use msgtrace_storage::marks::MarkFile;
use msgtrace_storage::FileMark;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

pub mod archive;
pub mod azure;
pub mod http;
pub mod replay;
pub use archive::ArchiveSink;
pub use azure::AzureLogsSink;
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
///
/// The sink only ever cuts bytes it wrote itself: given the state directory
/// ([`FileSink::with_marks`]), it records there which file it writes (path, device, inode) and
/// how long the file was after each acknowledged write ([`FileMark`], in a [`MarkFile`]). When it opens the file
/// again it cuts a line torn by a crash only past that length, and only in that same file. A
/// file it did not write (another file now under `path`, or no record) is never shortened; if
/// its last line has no newline, the sink's first line starts on a new line. `path` must not be
/// a symbolic link: the sink refuses to write through one.
pub struct FileSink {
    name: String,
    path: PathBuf,
    file: Option<File>,
    fsync: bool,
    rotate: Option<crate::config::Rotation>,
    /// Mode of a file the sink creates (exactly, whatever the umask).
    mode: u32,
    /// Where the sink records how far it wrote (in the engine's state directory); without it
    /// the sink never cuts anything.
    marks: Option<MarkFile>,
    /// The open file's mark: its identity and the length of what is in it.
    mark: Option<FileMark>,
    /// The open file ends in a line the sink did not finish: write a newline first.
    newline_first: bool,
    /// The NDJSON of a page not encoded by the fetcher, kept for the next page (see
    /// [`Batch::ndjson`]).
    buf: Vec<u8>,
    /// Bytes written to the open file and not yet synced: pages given unsynced
    /// ([`Batch::sync`]), synced by the next synced page, by [`Sink::flush`], and before the
    /// file is closed (rotation, reopening).
    unsynced: bool,
    /// Where the file held pages past its last commit when the engine started, until the file
    /// is first opened ([`FileSink::with_replay`]).
    replay: Option<replay::Replay>,
    /// While the pages delivered again match the file's bytes past its last commit: where the
    /// next one is compared (see [`FileSink::with_replay`]).
    replaying: Option<u64>,
}

/// Mode of the files a file sink creates unless configured (`mode`): owner and group read.
pub const DEFAULT_FILE_MODE: u32 = 0o640;

impl FileSink {
    /// A file sink with this id writing to `path`. The file is opened on first delivery.
    pub fn new(name: &str, path: &Path) -> FileSink {
        FileSink {
            name: name.into(),
            path: path.to_path_buf(),
            file: None,
            fsync: true,
            rotate: None,
            mode: DEFAULT_FILE_MODE,
            marks: None,
            mark: None,
            newline_first: false,
            buf: Vec::new(),
            unsynced: false,
            replay: None,
            replaying: None,
        }
    }

    /// The file holds pages past its last commit from `replay.from` on ([`replay`]): their
    /// sources deliver them again, and each page delivered again that has the bytes the file
    /// holds where the last one matched is acknowledged without being written, and synced as a
    /// page written would be, so that what is acknowledged is on disk. The first page that
    /// differs ends it, and it and every page after it are appended as usual. Only the file
    /// with `replay.file`'s identity, as the sink first opens it, is replayed.
    pub fn with_replay(mut self, replay: Option<replay::Replay>) -> FileSink {
        self.replay = replay;
        self
    }

    /// Rotates the file by size (see [`crate::config::Rotation`]).
    pub fn with_rotation(mut self, rotate: Option<crate::config::Rotation>) -> FileSink {
        self.rotate = rotate;
        self
    }

    /// The mode of files the sink creates (default [`DEFAULT_FILE_MODE`]); an existing file
    /// keeps its own.
    pub fn with_mode(mut self, mode: u32) -> FileSink {
        self.mode = mode;
        self
    }

    /// Records how far the sink wrote in the state directory `state_dir`, so that a line torn
    /// by a crash can be cut when the file is opened again, and nothing else ever is.
    pub fn with_marks(mut self, state_dir: &Path) -> FileSink {
        self.marks = Some(MarkFile::new(state_dir, &self.name));
        self
    }

    /// Whether `incoming` more bytes would take the open file past the rotation limit.
    fn rotation_due(&self, incoming: usize) -> bool {
        match (self.rotate, &self.mark) {
            (Some(r), Some(m)) => m.len > 0 && m.len + incoming as u64 > r.max_bytes,
            _ => false,
        }
    }

    /// Renames the live file to `path.1` (shifting older ones, dropping the oldest). A page is
    /// never split.
    fn rotate(&mut self, keep: u32) -> std::io::Result<()> {
        self.file = None;
        self.mark = None;
        self.replaying = None;
        let rotated = |n: u32| {
            let mut p = self.path.clone().into_os_string();
            p.push(format!(".{n}"));
            PathBuf::from(p)
        };
        let _ = std::fs::remove_file(rotated(keep));
        for n in (1..keep).rev() {
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

    fn err(&self, what: &str, e: impl std::fmt::Display) -> SinkError {
        SinkError {
            sink: self.name.clone(),
            message: format!("{what} {}: {e}", self.path.display()),
        }
    }

    /// Opens the file when it is not open: refuses a symbolic link, creates a missing file with
    /// the sink's mode, cuts a line this sink left torn, and records the file's mark (on disk
    /// before anything is written past it).
    fn open(&mut self) -> Result<(), SinkError> {
        if self.file.is_some() {
            return Ok(());
        }
        let (mut f, meta) = self.open_file()?;
        let (dev, ino) = file_identity(&meta);
        let path = self.path.to_string_lossy().into_owned();
        let own_from = self.own_bytes_from(&path, (dev, ino), meta.len());
        if let Some(from) = own_from {
            repair_torn_tail(&mut f, from).map_err(|e| self.err("cannot repair the end of", e))?;
        } else if meta.len() > 0 {
            tracing::info!(sink = %self.name, file = %self.path.display(), bytes = meta.len(), "appending to a file this sink did not write; its contents are left as they are");
        }
        let len = f.metadata().map_err(|e| self.err("cannot read", e))?.len();
        self.newline_first =
            ends_inside_a_line(&mut f, len).map_err(|e| self.err("cannot read", e))?;
        let mark = FileMark {
            path,
            dev,
            ino,
            len,
        };
        if let Some(Err(e)) = self.marks.as_mut().map(|m| m.store(&mark, true)) {
            return Err(self.err("cannot record the length of", e));
        }
        self.replaying = self.start_replay((dev, ino), len);
        self.mark = Some(mark);
        self.file = Some(f);
        Ok(())
    }

    /// Where the replay of the file just opened (`identity`, `len` bytes) begins, when the
    /// engine's start found pages past its last commit in this same file.
    fn start_replay(&mut self, identity: (u64, u64), len: u64) -> Option<u64> {
        let r = self
            .replay
            .take()
            .filter(|r| r.file == identity && r.from < len)?;
        tracing::info!(sink = %self.name, file = %self.path.display(), bytes = len - r.from, "the file holds pages written after its last commit: the pages delivered again are compared with them, not written twice");
        Some(r.from)
    }

    /// How many of `bytes` the file holds at `at`, from the first: up to the first byte that
    /// differs or the file's end (read a block at a time: a page that differs is told from its
    /// first block); and whether it is the file's end that stopped it.
    fn held_prefix(&mut self, at: u64, bytes: &[u8]) -> std::io::Result<(usize, bool)> {
        let f = self.file.as_mut().expect("opened by prepare");
        let len = f.metadata()?.len();
        let there = usize::try_from(len.saturating_sub(at))
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        f.seek(SeekFrom::Start(at))?;
        let mut held = vec![0u8; there.clamp(1, 64 * 1024)];
        let mut k = 0;
        while k < there {
            let n = (there - k).min(held.len());
            f.read_exact(&mut held[..n])?;
            if let Some(i) = held[..n]
                .iter()
                .zip(&bytes[k..k + n])
                .position(|(a, b)| a != b)
            {
                return Ok((k + i, false));
            }
            k += n;
        }
        Ok((k, at + k as u64 == len))
    }

    /// While replaying: how many of the page's `bytes`, from the first, the file holds already
    /// past its last commit, and so are not written again. All of them: the page is taken as
    /// written, synced as a write would be (`sync`), and the next page compared after it. A
    /// first part of them up to the file's end (the page a kill cut short, its torn line cut
    /// at the opening): the rest is written after it, and the replay is over. A byte that
    /// differs: none, and the replay is over.
    fn replayed(&mut self, bytes: &[u8], sync: bool) -> Result<usize, SinkError> {
        let Some(at) = self.replaying else {
            return Ok(0);
        };
        let (held, at_end) = self
            .held_prefix(at, bytes)
            .map_err(|e| self.err("cannot read", e))?;
        if held == bytes.len() {
            if self.fsync && sync {
                let f = self.file.as_ref().expect("opened by prepare");
                f.sync_data()
                    .map_err(|e| self.err("cannot sync (fsync)", e))?;
                self.unsynced = false;
            } else if self.fsync {
                self.unsynced = true;
            }
            let next = at + bytes.len() as u64;
            let end = self.mark.as_ref().map_or(0, |m| m.len);
            self.replaying = (next < end).then_some(next);
            tracing::debug!(sink = %self.name, bytes = bytes.len(), "a page delivered again was in the file already");
            return Ok(held);
        }
        self.replaying = None;
        if at_end {
            // The file ends with this page's first part: its rest follows it, with no newline
            // before it (the line the file ends in, if any, is this page's).
            self.newline_first = false;
            tracing::info!(sink = %self.name, file = %self.path.display(), bytes = held, "a page delivered again was in the file in part (a kill cut its write short): the rest of it is appended");
            return Ok(held);
        }
        tracing::info!(sink = %self.name, file = %self.path.display(), "a page delivered again differs from what the file holds past its last commit: it and the pages after it are appended (the rest of what the file held there stays, delivered twice)");
        Ok(0)
    }

    /// Opens the file for appending (its directory created, a symbolic link refused, a new file
    /// given exactly the sink's mode, a more open one warned about), with its metadata.
    fn open_file(&self) -> Result<(File, std::fs::Metadata), SinkError> {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| self.err("cannot create the directory of", e))?;
        }
        let existed = match std::fs::symlink_metadata(&self.path) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(self.err("refusing", symlink_refusal(&self.path)))
            }
            Ok(_) => true,
            Err(_) => false,
        };
        let mut options = OpenOptions::new();
        options.create(true).read(true).append(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            // A link put there after the check above is refused too (ELOOP).
            options.mode(self.mode).custom_flags(libc::O_NOFOLLOW);
        }
        let f = options
            .open(&self.path)
            .map_err(|e| self.err("cannot open", e))?;
        let meta = f.metadata().map_err(|e| self.err("cannot read", e))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = meta.permissions().mode() & 0o777;
            if !existed {
                // Exactly the configured mode: the umask may have taken bits away or not.
                f.set_permissions(std::fs::Permissions::from_mode(self.mode))
                    .map_err(|e| self.err("cannot set the mode of", e))?;
            } else if mode & !self.mode & 0o077 != 0 {
                tracing::warn!(
                    sink = %self.name,
                    file = %self.path.display(),
                    mode = format!("{mode:04o}"),
                    "the output file is more open than the sink's mode and holds message trace data; restrict it with `chmod {:o} {}`",
                    self.mode,
                    self.path.display()
                );
            }
        }
        Ok((f, meta))
    }

    /// Where the bytes this sink wrote itself begin in the file (`path`, device and inode, now
    /// `len` long): past the recorded length of this same file; `None` without a record of it.
    fn own_bytes_from(&self, path: &str, (dev, ino): (u64, u64), len: u64) -> Option<u64> {
        let recorded = match self.marks.as_ref().map(MarkFile::load) {
            Some(Ok(mark)) => mark,
            Some(Err(e)) => {
                tracing::warn!(sink = %self.name, error = %e, "the record of how far the sink wrote cannot be read; nothing is cut from the file");
                None
            }
            None => None,
        };
        recorded
            .filter(|m| m.path == path && m.dev == dev && m.ino == ino && m.len <= len)
            .map(|m| m.len)
    }

    /// Makes what was written unsynced durable. Without the file that holds it (closed by a
    /// failed write whose own sync failed too) it cannot: an error, so that no commit counts
    /// on it (the pages are delivered again).
    fn sync_pending(&mut self) -> Result<(), SinkError> {
        if !self.unsynced {
            return Ok(());
        }
        let Some(f) = &self.file else {
            return Err(SinkError {
                sink: self.name.clone(),
                message: format!(
                    "pages written unsynced to {} before a failed write may not be on disk; they are delivered again",
                    self.path.display()
                ),
            });
        };
        f.sync_data()
            .map_err(|e| self.err("cannot sync (fsync)", e))?;
        self.unsynced = false;
        Ok(())
    }

    /// Opens the file, rotating it first when `incoming` bytes would take it past the limit.
    fn prepare(&mut self, incoming: usize) -> Result<(), SinkError> {
        self.open()?;
        if let Some(r) = self.rotate.filter(|_| self.rotation_due(incoming)) {
            // The file is closed for good: what it holds unsynced is synced first.
            self.sync_pending()?;
            if let Err(e) = self.rotate(r.keep) {
                return Err(self.err("cannot rotate", e));
            }
            self.open()?;
        }
        Ok(())
    }
}

/// Why a symbolic link is refused as a file sink's path, and what to do.
pub fn symlink_refusal(path: &Path) -> String {
    let target = std::fs::canonicalize(path)
        .map(|t| format!(" ({})", t.display()))
        .unwrap_or_default();
    format!(
        "path is a symbolic link: the file sink does not write through links, it could damage a file it does not own; set path to the file itself{target}",
    )
}

/// A file's device and inode.
#[cfg(unix)]
pub(crate) fn file_identity(m: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt as _;
    (m.dev(), m.ino())
}

#[cfg(not(unix))]
pub(crate) fn file_identity(_m: &std::fs::Metadata) -> (u64, u64) {
    (0, 0)
}

/// Whether a file of length `len` ends inside a line (its last byte is not a newline).
fn ends_inside_a_line(f: &mut File, len: u64) -> std::io::Result<bool> {
    if len == 0 {
        return Ok(false);
    }
    let mut last = [0u8; 1];
    f.seek(SeekFrom::Start(len - 1))?;
    f.read_exact(&mut last)?;
    Ok(last[0] != b'\n')
}

/// A crash in the middle of a write can leave a partial last line. Cut the file back to its last
/// complete line, but never before `from` (where the sink's own bytes begin): that page was not
/// acknowledged, so it is delivered again whole.
pub fn repair_torn_tail(f: &mut File, from: u64) -> std::io::Result<()> {
    let len = f.metadata()?.len();
    if len <= from {
        return Ok(());
    }
    let mut pos = len;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let start = pos.saturating_sub(buf.len() as u64).max(from);
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
        if start == from {
            f.set_len(from)?;
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

    /// Closes the file and opens `path` again: after logrotate renamed the file, a new one. The
    /// renamed file is not touched again (nothing of it is ever cut), and the new one gets a
    /// record of its own.
    fn reopen(&mut self) -> Result<(), SinkError> {
        self.sync_pending()?;
        self.file = None;
        self.mark = None;
        self.replaying = None;
        self.open()
    }

    fn deliver<'a>(&'a mut self, batch: &'a Batch) -> LocalBoxFuture<'a, Result<(), SinkError>> {
        tracing::trace!("file sink: page in");
        let mut buf = std::mem::take(&mut self.buf);
        let bytes = batch.ndjson(&mut buf);
        // What the file holds of the page already is not written again: compared before any
        // rotation, which would split the page.
        let r = self.open().and_then(|()| {
            let held = self.replayed(bytes, batch.sync)?;
            if held == bytes.len() {
                return Ok(());
            }
            if held == 0 {
                self.prepare(bytes.len())?;
            }
            self.write(&bytes[held..], batch.sync)
        });
        self.buf = buf;
        release_if_large(&mut self.buf);
        Box::pin(async move { r })
    }

    /// Syncs what pages given unsynced ([`Batch::sync`]) left unsynced.
    fn flush(&mut self) -> LocalBoxFuture<'_, Result<(), SinkError>> {
        let r = self.sync_pending();
        Box::pin(async move { r })
    }

    /// As a job starts (see [`Sink::resume`]): when the open file holds more than the
    /// greatest length its commits recorded, the pages delivered again are compared with what
    /// lies past it, as after a restart ([`FileSink::with_replay`]).
    fn resume(&mut self, committed: &[FileMark]) {
        if self.replaying.is_some() {
            return;
        }
        let (Some(_), Some(mark)) = (&self.file, &self.mark) else {
            return;
        };
        let Some(c) = committed
            .iter()
            .find(|c| (c.dev, c.ino) == (mark.dev, mark.ino) && c.len < mark.len)
        else {
            return;
        };
        tracing::debug!(sink = %self.name, file = %self.path.display(), bytes = mark.len - c.len, "the file holds pages written after its last commit: the pages delivered again are compared with them, not written twice");
        self.replaying = Some(c.len);
    }

    /// The open file's mark, when the sink records its marks (in the state directory): how far
    /// the file holds the pages delivered so far (while replaying, the end of the last page
    /// matched, not the file's end).
    fn position(&self) -> Option<FileMark> {
        let mark = self.marks.as_ref().and(self.mark.as_ref())?;
        Some(FileMark {
            len: self.replaying.unwrap_or(mark.len),
            ..mark.clone()
        })
    }
}

impl FileSink {
    /// Appends `bytes` (whole lines) to the open file, after a newline when the file ends
    /// inside a line not the sink's, `fsync`s them (and whatever was written unsynced before)
    /// when `sync` unless configured not to, and records the new length.
    fn write(&mut self, bytes: &[u8], sync: bool) -> Result<(), SinkError> {
        let fsync = self.fsync && sync;
        let newline: &[u8] = if self.newline_first { b"\n" } else { b"" };
        let f = self.file.as_mut().expect("opened by prepare");
        let r = f
            .write_all(newline)
            .and_then(|()| f.write_all(bytes))
            .and_then(|()| f.flush())
            .and_then(|()| {
                tracing::trace!(bytes = bytes.len(), "file sink: written");
                if fsync {
                    f.sync_data()
                } else {
                    Ok(())
                }
            });
        tracing::trace!(fsync, ok = r.is_ok(), "file sink: synced");
        if let Err(e) = r {
            // What earlier pages left unsynced is synced if it can be; a page is committed only
            // after a later synced write (or flush) succeeds anyway.
            if self.unsynced && f.sync_data().is_ok() {
                self.unsynced = false;
            }
            // Reopen next time: the failed write may have left a partial line to repair.
            self.file = None;
            return Err(SinkError {
                sink: self.name.clone(),
                message: format!("writing {} failed: {e}", self.path.display()),
            });
        }
        self.newline_first = false;
        self.unsynced = self.fsync && !sync;
        let mark = self.mark.as_mut().expect("opened with a mark");
        mark.len += (newline.len() + bytes.len()) as u64;
        if let Some(marks) = &mut self.marks {
            // Not synced: a mark older than the file is safe (only a torn line past it is cut).
            if let Err(e) = marks.store(mark, false) {
                return Err(self.err("cannot record the length of", e));
            }
            tracing::trace!("file sink: mark stored");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use msgtrace_actors::event::Event;
    use std::sync::Arc;

    /// A page of `n` events of about 50 bytes each.
    fn page(n: usize) -> Batch {
        let events = (0..n)
            .map(|i| {
                let mut fields = serde_json::Map::new();
                fields.insert("i".into(), (i as u64).into());
                fields.insert("pad".into(), "x".repeat(30).into());
                Event::new(fields, Arc::from("s"), Arc::from("u"))
            })
            .collect();
        Batch::new(Arc::from("s"), events)
    }

    fn deliver(sink: &mut FileSink, batch: &Batch) -> Result<(), SinkError> {
        actix_rt::System::new().block_on(sink.deliver(batch))
    }

    /// A page of `n` events numbered from `first`.
    fn page_from(first: u64, n: u64) -> Batch {
        page_of(first..first + n)
    }

    /// A page of events numbered `ids`.
    fn page_of(ids: impl Iterator<Item = u64>) -> Batch {
        let events = ids
            .map(|i| {
                let mut fields = serde_json::Map::new();
                fields.insert("i".into(), i.into());
                Event::new(fields, Arc::from("s"), Arc::from("u"))
            })
            .collect();
        Batch::new(Arc::from("s"), events)
    }

    /// A page whose write a kill cut short (its torn line cut at the opening) is completed by
    /// its delivery again: the file holds each row once, in order.
    #[test]
    fn a_page_the_file_holds_in_part_is_completed_not_written_again_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.ndjson");
        let (mut first, state) = sink_with_marks(dir.path(), &path);
        deliver(&mut first, &page_from(0, 2)).unwrap();
        let committed = first.position().unwrap().len;
        deliver(&mut first, &page_from(2, 2)).unwrap();
        drop(first);
        // The next page's write, cut short by the kill: one line whole, the next torn.
        let whole = {
            let mut buf = Vec::new();
            page_from(4, 3).ndjson(&mut buf).to_vec()
        };
        let torn = whole.iter().position(|b| *b == b'\n').unwrap() + 4;
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&whole[..torn]).unwrap();
        drop(f);
        let file = file_identity(&std::fs::metadata(&path).unwrap());
        let mut sink = FileSink::new("f", &path)
            .with_marks(&state)
            .with_replay(Some(replay::Replay {
                file,
                from: committed,
            }));
        deliver(&mut sink, &page_from(2, 2)).unwrap();
        deliver(&mut sink, &page_from(4, 3)).unwrap();
        assert_eq!(sink.replaying, None);
        let ids: Vec<u64> = lines_of(&path)
            .iter()
            .map(|v| v["i"].as_u64().unwrap())
            .collect();
        assert_eq!(ids, (0..7).collect::<Vec<_>>());
        assert_eq!(
            sink.position().unwrap().len,
            std::fs::metadata(&path).unwrap().len()
        );
    }

    /// After a restart, the pages delivered again that the file holds past its last commit
    /// are taken as written, one after the other, and the first that differs ends it: it and
    /// every page after it are appended. Only the file the replay names is replayed.
    #[test]
    fn pages_delivered_again_that_the_file_holds_past_its_commit_are_not_written_twice() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.ndjson");
        let (mut first, state) = sink_with_marks(dir.path(), &path);
        let mut ends = Vec::new();
        for k in 0..3 {
            deliver(&mut first, &page_from(2 * k, 2)).unwrap();
            ends.push(first.position().unwrap().len);
        }
        drop(first);
        let written = std::fs::read_to_string(&path).unwrap();
        let file = file_identity(&std::fs::metadata(&path).unwrap());
        // Killed with only the first page committed: the next two are delivered again.
        let restarted = || {
            FileSink::new("f", &path)
                .with_marks(&state)
                .with_replay(Some(replay::Replay {
                    file,
                    from: ends[0],
                }))
        };
        let mut sink = restarted();
        deliver(&mut sink, &page_from(2, 2)).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), written);
        assert_eq!(
            sink.position().unwrap().len,
            ends[1],
            "the commit records the match"
        );
        deliver(&mut sink, &page_from(4, 2)).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), written);
        assert_eq!(sink.position().unwrap().len, ends[2]);
        assert_eq!(sink.replaying, None, "the file's end: the replay is over");
        deliver(&mut sink, &page_from(6, 1)).unwrap();
        assert_eq!(lines_of(&path).len(), 7, "the next page is appended");
        let len = |p: &Path| std::fs::metadata(p).unwrap().len();
        assert_eq!(sink.position().unwrap().len, len(&path));
        drop(sink);

        // The page delivered again differs (the API sent it with a late row): it is appended,
        // and the replay is over even for a page that would match after it.
        let path_len = len(&path);
        let mut sink = restarted();
        deliver(&mut sink, &page_of([99, 2, 3].into_iter())).unwrap();
        assert_eq!(sink.replaying, None);
        deliver(&mut sink, &page_from(4, 2)).unwrap();
        assert_eq!(lines_of(&path).len(), 7 + 3 + 2);
        assert_eq!(sink.position().unwrap().len, len(&path));
        assert!(len(&path) > path_len);
        drop(sink);

        // As a job starts in the same process (the fetcher before it panicked): the commits
        // recorded less than the file holds, and the pages delivered again are matched too.
        let held = std::fs::read_to_string(&path).unwrap();
        let mut sink = restarted().with_replay(None);
        deliver(&mut sink, &page_from(100, 1)).unwrap();
        let committed = sink.position().unwrap();
        deliver(&mut sink, &page_from(101, 2)).unwrap();
        let end = sink.position().unwrap();
        sink.resume(&[FileMark {
            ino: 0,
            ..committed.clone()
        }]);
        assert_eq!(sink.replaying, None, "another file's record");
        sink.resume(std::slice::from_ref(&end));
        assert_eq!(sink.replaying, None, "nothing past the commit");
        sink.resume(std::slice::from_ref(&committed));
        deliver(&mut sink, &page_from(101, 2)).unwrap();
        assert_eq!(sink.position().unwrap(), end);
        assert_eq!(sink.replaying, None);
        let lines = |t: &str| t.lines().count();
        assert_eq!(
            lines(&std::fs::read_to_string(&path).unwrap()),
            lines(&held) + 3
        );
        drop(sink);

        // Another file under the path: nothing of it is taken for the pages delivered again.
        std::fs::rename(&path, dir.path().join("old")).unwrap();
        std::fs::write(&path, &written).unwrap();
        let mut sink = restarted();
        deliver(&mut sink, &page_from(2, 2)).unwrap();
        assert_eq!(lines_of(&path).len(), 6 + 2);
    }

    /// A sink recording its marks in a state directory under `dir`.
    fn sink_with_marks(dir: &Path, path: &Path) -> (FileSink, PathBuf) {
        let state = dir.join("state");
        (FileSink::new("f", path).with_marks(&state), state)
    }

    fn lines_of(path: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
            .collect()
    }

    /// A sink with marks under `dir` rotating `path` past 250 bytes, keeping 2 rotated files.
    fn rotating_sink(dir: &Path, path: &Path) -> (FileSink, PathBuf) {
        let (sink, state) = sink_with_marks(dir, path);
        let rotation = crate::config::Rotation {
            max_bytes: 250,
            keep: 2,
        };
        (sink.with_rotation(Some(rotation)), state)
    }

    /// A page given unsynced stays unsynced until a synced page, a flush, or the file's close
    /// at rotation or reopening syncs it; the lines are the same either way.
    #[test]
    fn a_page_given_unsynced_is_synced_by_a_synced_page_a_flush_a_rotation_or_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.ndjson");
        let (mut sink, _store) = rotating_sink(dir.path(), &path);
        let unsynced = Batch {
            sync: false,
            ..page(3)
        };
        deliver(&mut sink, &unsynced).unwrap();
        assert!(sink.unsynced);
        deliver(&mut sink, &page(1)).unwrap();
        assert!(!sink.unsynced, "a synced page syncs what came before it");
        // The next page rotates the file (over 250 bytes): the old one is synced before.
        deliver(&mut sink, &unsynced).unwrap();
        assert!(sink.unsynced);
        assert_eq!(
            lines_of(&PathBuf::from(format!("{}.1", path.display()))).len(),
            4
        );
        deliver(&mut sink, &unsynced).unwrap();
        assert!(
            sink.unsynced,
            "the rotated file was synced, the new one is not"
        );
        actix_rt::System::new().block_on(sink.flush()).unwrap();
        assert!(!sink.unsynced);
        deliver(&mut sink, &unsynced).unwrap();
        sink.reopen().unwrap();
        assert!(!sink.unsynced, "reopening syncs the file it closes");
        assert_eq!(lines_of(&path).len(), 3);
    }

    #[test]
    fn rotation_by_size_never_splits_a_page_and_keeps_n_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.ndjson");
        let (mut sink, _store) = rotating_sink(dir.path(), &path);
        for _ in 0..6 {
            deliver(&mut sink, &page(3)).unwrap();
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
        repair_torn_tail(&mut f, 0).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"{\"a\":1}\n{\"b\":2}\n");
        repair_torn_tail(&mut f, 0).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"{\"a\":1}\n{\"b\":2}\n");
        std::fs::write(&p, b"partial").unwrap();
        let mut f = OpenOptions::new().read(true).append(true).open(&p).unwrap();
        repair_torn_tail(&mut f, 0).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"");
    }

    #[test]
    fn torn_tail_is_never_cut_before_the_sinks_own_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.ndjson");
        // 8 bytes not ours (a line without its newline), then ours: a newline and a torn line.
        std::fs::write(&p, b"theirs 1\n{\"c\":").unwrap();
        let mut f = OpenOptions::new().read(true).append(true).open(&p).unwrap();
        repair_torn_tail(&mut f, 8).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"theirs 1\n");
        std::fs::write(&p, b"theirs 1{\"c\":").unwrap();
        repair_torn_tail(&mut f, 8).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"theirs 1");
    }

    /// Regression (issue 15, defect 6): a file the sink did not write, whose last line had no
    /// newline, lost that line ("cut a partial last line left by an interrupted write").
    #[test]
    fn a_file_the_sink_did_not_write_loses_no_byte() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.ndjson");
        let theirs = b"an operator's line\nand one without its newline";
        std::fs::write(&path, theirs).unwrap();
        let (mut sink, _store) = sink_with_marks(dir.path(), &path);
        deliver(&mut sink, &page(2)).unwrap();
        let text = std::fs::read(&path).unwrap();
        assert!(
            text.starts_with(theirs),
            "{}",
            String::from_utf8_lossy(&text)
        );
        assert_eq!(
            text[theirs.len()],
            b'\n',
            "our first line starts on a new line"
        );
        let ours: Vec<&[u8]> = text[theirs.len() + 1..].split(|b| *b == b'\n').collect();
        assert_eq!(ours.len(), 3, "two lines and the end");
        for line in &ours[..2] {
            serde_json::from_slice::<serde_json::Value>(line).unwrap();
        }
    }

    /// Regression (issue 15, defect 6): the mark belongs to one file; another file put under
    /// the same path (a restore, a rename) is not the sink's and is not cut.
    #[test]
    fn another_file_under_the_same_path_is_not_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.ndjson");
        let (mut sink, store) = sink_with_marks(dir.path(), &path);
        deliver(&mut sink, &page(2)).unwrap();
        drop(sink);
        let replacement = dir.path().join("other.ndjson");
        std::fs::write(&replacement, b"{\"kept\":1}\n{\"kept\":").unwrap();
        std::fs::rename(&replacement, &path).unwrap();
        let mut sink = FileSink::new("f", &path).with_marks(&store);
        deliver(&mut sink, &page(1)).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("{\"kept\":1}\n{\"kept\":\n"), "{text}");
    }

    /// Issue 16 (SIGHUP): after logrotate renamed the file, a reopen starts a new file at the
    /// configured path with a record of its own; the renamed file keeps every byte it had.
    #[test]
    fn a_reopen_after_a_rename_starts_a_new_file_and_leaves_the_renamed_one_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.ndjson");
        let (mut sink, store) = sink_with_marks(dir.path(), &path);
        deliver(&mut sink, &page(2)).unwrap();
        let renamed = dir.path().join("e.ndjson.1");
        std::fs::rename(&path, &renamed).unwrap();
        let before = std::fs::read(&renamed).unwrap();
        sink.reopen().unwrap();
        assert!(
            path.exists(),
            "the reopen creates the file at the configured path"
        );
        deliver(&mut sink, &page(3)).unwrap();
        assert_eq!(std::fs::read(&renamed).unwrap(), before);
        assert_eq!(lines_of(&path).len(), 3);
        let mark = MarkFile::new(&store, "f").load().unwrap().unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(
            (mark.dev, mark.ino),
            file_identity(&meta),
            "the new file's record"
        );
        assert_eq!(mark.len, meta.len());
        // A reopen with nothing renamed goes on appending to the same file, cutting nothing.
        sink.reopen().unwrap();
        deliver(&mut sink, &page(1)).unwrap();
        assert_eq!(lines_of(&path).len(), 4);
        assert_eq!(std::fs::read(&renamed).unwrap(), before);
    }

    /// What the sink wrote and a crash tore is still cut when it opens the file again.
    #[test]
    fn a_line_the_sink_left_torn_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.ndjson");
        std::fs::write(&path, b"{\"theirs\":1}\n").unwrap();
        let (mut sink, store) = sink_with_marks(dir.path(), &path);
        deliver(&mut sink, &page(2)).unwrap();
        drop(sink);
        // The crash: half a line past what was acknowledged.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"i\":0,\"pa").unwrap();
        let mut sink = FileSink::new("f", &path).with_marks(&store);
        deliver(&mut sink, &page(3)).unwrap();
        let lines = lines_of(&path);
        assert_eq!(lines.len(), 1 + 2 + 3, "{lines:?}");
        assert_eq!(lines[0]["theirs"], 1);
    }

    /// Regression (issue 15, defect 6): the sink followed a symbolic link `path` to a file it
    /// did not own, and cut that file's last line.
    #[cfg(unix)]
    #[test]
    fn a_symlinked_path_is_refused_and_its_target_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("important.log");
        std::fs::write(&target, b"line 1\nline 2 without newline").unwrap();
        let path = dir.path().join("e.ndjson");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        let (mut sink, _store) = sink_with_marks(dir.path(), &path);
        let err = deliver(&mut sink, &page(1)).unwrap_err();
        assert!(
            err.message.contains("symbolic link")
                && err.message.contains("set path to the file itself"),
            "{}",
            err.message
        );
        assert_eq!(
            std::fs::read(&target).unwrap(),
            b"line 1\nline 2 without newline"
        );
    }

    /// Regression (issue 15, defect 10): output files were created 0644 (the umask), though
    /// they hold addresses and subjects.
    #[cfg(unix)]
    #[test]
    fn created_files_get_the_sinks_mode_and_existing_ones_keep_theirs() {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.ndjson");
        let (mut sink, store) = sink_with_marks(dir.path(), &path);
        deliver(&mut sink, &page(1)).unwrap();
        assert_eq!(mode(&path), DEFAULT_FILE_MODE);
        let other = dir.path().join("o.ndjson");
        let mut sink = FileSink::new("g", &other)
            .with_marks(&store)
            .with_mode(0o600);
        deliver(&mut sink, &page(1)).unwrap();
        assert_eq!(mode(&other), 0o600);
        let existing = dir.path().join("x.ndjson");
        std::fs::write(&existing, b"").unwrap();
        std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut sink = FileSink::new("h", &existing).with_marks(&store);
        deliver(&mut sink, &page(1)).unwrap();
        assert_eq!(mode(&existing), 0o644, "an existing file keeps its mode");
    }
}
