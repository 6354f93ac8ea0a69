//! Page bodies fetched but not yet committed, kept on disk so that a restart after a crash takes
//! them from here instead of requesting them again.
//!
//! A source fetches pages ahead of the one it delivers and commits. Without the spool, a kill
//! loses every page fetched ahead, and the restart requests them all again (the API's quota is
//! 100 requests per 5 minutes per tenant). With it, each body is written here as soon as it
//! arrives, before the request for the page after it goes out, and removed once its page is
//! committed: at any moment at most the one page whose request is outstanding is at risk.
//!
//! Layout: `<state dir>/spool/<cursor key>/<url key>.page`, one file per page, where a key is a
//! hash of the cursor name or of the page's URL. A file is written under a name no page has
//! (`*.tmp`, or a `*.free` file of a committed page, written over) and renamed, and holds:
//!
//! | bytes | what |
//! |---|---|
//! | 8 | `MTSPOOL1` |
//! | 4 | URL length, little endian |
//! | n | the URL |
//! | 8 | body length, little endian |
//! | m | the body |
//! | 4 | CRC-32 of the URL and the body, little endian |
//!
//! A file that does not check out (cut short, damaged, another URL under the same key) is
//! never served: it is removed and the page is requested again. The spool is a cache: losing
//! it costs requests, never rows.
//!
//! Files are reused: a committed page's file is renamed to `*.free` rather than removed, and the
//! next page is written over it (then cut to its length) and renamed to its own name. Creating a
//! file and removing it (with its page cache) for every page cost about 5 % of the engine's CPU
//! against nginx (perf, session 17), where two renames and a write over cached pages cost less.
//! A `*.free` file is never served (no URL has its name), so a kill while one is written over
//! leaves no page that could be taken for another.
//!
//! What is not removed at its commit (the pages of a job that failed, a write that finished
//! after its task was aborted) is removed when the cursor's next job succeeds, or by
//! [`Spool::sweep`] once older than [`KEEP_FOR`] ([`sweep_all`] at engine start reaches the
//! cursors that no longer run).

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

const MAGIC: &[u8; 8] = b"MTSPOOL1";

/// How long a kept page stays useful: older pages are swept. A next link is not kept by the
/// API for ever, and an engine stopped for longer has its in-flight slice re-queried anyway.
pub const KEEP_FOR: Duration = Duration::from_secs(24 * 3600);

/// A temporary file older than this is left by a killed process, not being written.
const TMP_STALE: Duration = Duration::from_secs(600);

/// The most files of committed pages a spool keeps to write over: about the pages in flight at
/// once (the pages fetched ahead, and the one delivered); one more is removed instead.
const MAX_FREE: usize = 8;

/// The spool of one cursor (a source, or one backfill). Clones share the files they may write
/// over.
#[derive(Clone, Debug)]
pub struct Spool {
    dir: PathBuf,
    /// Files of committed pages (`*.free`) that the next [`Spool::put`] writes over.
    free: Arc<Mutex<Vec<PathBuf>>>,
}

/// Why a spool file was not served.
#[derive(Debug, PartialEq, Eq)]
pub enum Unusable {
    /// It is not a spool file, or it is cut short.
    Damaged(&'static str),
    /// It holds another URL's body (two URLs with one key).
    OtherUrl,
    /// It could not be read (the error).
    Unreadable(String),
}

impl std::fmt::Display for Unusable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unusable::Damaged(why) => write!(f, "damaged spool file ({why})"),
            Unusable::OtherUrl => f.write_str("the spool file holds another URL's page"),
            Unusable::Unreadable(e) => write!(f, "the spool file cannot be read: {e}"),
        }
    }
}

impl Spool {
    /// The spool of `cursor` in the state directory `state_dir`.
    pub fn new(state_dir: &Path, cursor: &str) -> Spool {
        Spool {
            dir: state_dir
                .join("spool")
                .join(format!("{:016x}", fnv1a(cursor.as_bytes()))),
            free: Arc::default(),
        }
    }

    /// The directory this cursor's pages are kept in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, url: &str) -> PathBuf {
        self.dir
            .join(format!("{:016x}.page", fnv1a(url.as_bytes())))
    }

    /// A name in this spool's directory that no page has: `<pid>-<n>.<extension>`.
    fn unnamed(&self, extension: &str) -> PathBuf {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        self.dir
            .join(format!("{}-{n}.{extension}", std::process::id()))
    }

    /// A file to write a page into before it is renamed to the page's name: a committed page's
    /// file when there is one (written over from its start), else a new temporary file.
    fn file_to_write(&self) -> io::Result<(PathBuf, std::fs::File, bool)> {
        let reused = self.free.lock().unwrap_or_else(|p| p.into_inner()).pop();
        if let Some(path) = reused {
            // Gone (swept, or the directory cleared): a new file instead.
            if let Ok(file) = std::fs::OpenOptions::new().write(true).open(&path) {
                return Ok((path, file, true));
            }
        }
        let tmp = self.unnamed("tmp");
        // Page bodies hold addresses and subjects: 0600 in 0700 directories.
        let file = match crate::layout::private_file(&tmp) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                crate::layout::create_private_dir(&self.dir)?;
                crate::layout::private_file(&tmp)?
            }
            other => other?,
        };
        Ok((tmp, file, false))
    }

    /// Keeps `body` as the page of `url`, replacing what was kept for it. The file appears
    /// whole or not at all (written under a name no page has, then renamed); it is not synced
    /// to disk: a kill of the process leaves it intact, a power cut may lose it (it is checked
    /// when read).
    pub fn put(&self, url: &str, body: &[u8]) -> io::Result<()> {
        let (path, mut file, reused) = self.file_to_write()?;
        let mut crc = crc32fast::Hasher::new();
        crc.update(url.as_bytes());
        crc.update(body);
        let mut head = Vec::with_capacity(MAGIC.len() + 4 + url.len() + 8);
        head.extend_from_slice(MAGIC);
        head.extend_from_slice(&(url.len() as u32).to_le_bytes());
        head.extend_from_slice(url.as_bytes());
        head.extend_from_slice(&(body.len() as u64).to_le_bytes());
        let length = (head.len() + body.len() + 4) as u64;
        let written = (|| {
            file.write_all(&head)?;
            file.write_all(body)?;
            file.write_all(&crc.finalize().to_le_bytes())?;
            if reused {
                // What is left of the longer page written before.
                file.set_len(length)?;
            }
            drop(file);
            std::fs::rename(&path, self.path(url))
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&path);
        }
        written
    }

    /// The body kept for `url`: `Ok(None)` when there is none; `Err` when the file is there
    /// but unusable (it is removed: the page must be requested again).
    pub fn get(&self, url: &str) -> Result<Option<Vec<u8>>, Unusable> {
        let path = self.path(url);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Unusable::Unreadable(e.to_string())),
        };
        let checked = check(&bytes, url);
        if checked.is_err() {
            let _ = std::fs::remove_file(&path);
        }
        checked.map(|(start, end)| {
            let mut bytes = bytes;
            bytes.truncate(end);
            bytes.drain(..start);
            Some(bytes)
        })
    }

    /// Forgets the page of `url` (it was committed): its file is renamed to a name no page has,
    /// for the next [`Spool::put`] to write over, or removed when the spool keeps enough such
    /// files. Nothing kept for it is fine.
    pub fn remove(&self, url: &str) -> io::Result<()> {
        let path = self.path(url);
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        let gone = if free.len() < MAX_FREE {
            let to = self.unnamed("free");
            std::fs::rename(&path, &to).map(|()| free.push(to))
        } else {
            drop(free);
            std::fs::remove_file(&path)
        };
        match gone {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Forgets every page of this cursor (its job ended with everything committed).
    ///
    /// The last page's [`Spool::remove`] may still run as the directory goes (it is not waited
    /// for, and with the commit's flush behind the next page it comes just before the job's
    /// end): its file renamed in after the directory was read fails the removal with the
    /// directory not empty, or a file it renamed away with not found. The removal is then tried
    /// again.
    pub fn clear(&self) -> io::Result<()> {
        let mut tries = 0;
        loop {
            self.free.lock().unwrap_or_else(|p| p.into_inner()).clear();
            match std::fs::remove_dir_all(&self.dir) {
                Ok(()) => return Ok(()),
                Err(_) if !self.dir.exists() => return Ok(()),
                Err(_) if tries < 4 => tries += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// Removes the pages kept longer than `max_age` and the temporary files (`*.tmp`, `*.free`)
    /// a killed process left; returns how many files it removed. Run before the cursor's job
    /// writes, as at its start: a `*.free` file this spool is about to write over is not told
    /// from one a killed process left but by its age.
    pub fn sweep(&self, max_age: Duration) -> io::Result<usize> {
        let entries = match std::fs::read_dir(&self.dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            other => other?,
        };
        let now = SystemTime::now();
        let mut removed = 0;
        for entry in entries {
            let path = entry?.path();
            let limit = match path.extension().and_then(|x| x.to_str()) {
                Some("page") => max_age,
                Some("tmp" | "free") => TMP_STALE.min(max_age),
                _ => continue,
            };
            let age = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .map(|t| now.duration_since(t).unwrap_or_default());
            if age.is_ok_and(|a| a >= limit) && std::fs::remove_file(&path).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Pages kept (files named `*.page`).
    pub fn len(&self) -> usize {
        std::fs::read_dir(&self.dir).map_or(0, |d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.path().extension().is_some_and(|x| x == "page"))
                .count()
        })
    }

    /// No page is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// [`Spool::sweep`] over every cursor's spool in the state directory `state_dir` (at engine
/// start: it also reaches cursors that no longer run), and removes the directories left empty;
/// returns how many files it removed.
pub fn sweep_all(state_dir: &Path, max_age: Duration) -> io::Result<usize> {
    let root = state_dir.join("spool");
    let dirs = match std::fs::read_dir(&root) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        other => other?,
    };
    let mut removed = 0;
    for dir in dirs {
        let dir = dir?.path();
        if !dir.is_dir() {
            continue;
        }
        let spool = Spool {
            dir: dir.clone(),
            free: Arc::default(),
        };
        removed += spool.sweep(max_age)?;
        // Fails, as it should, while pages are left.
        let _ = std::fs::remove_dir(&dir);
    }
    Ok(removed)
}

/// Where the body lies in a spool file of `url`.
fn check(bytes: &[u8], url: &str) -> Result<(usize, usize), Unusable> {
    let rest = bytes
        .strip_prefix(MAGIC)
        .ok_or(Unusable::Damaged("no spool header"))?;
    let (n, rest) = take_le::<4>(rest).ok_or(Unusable::Damaged("cut short"))?;
    let n = u32::from_le_bytes(n) as usize;
    if rest.len() < n {
        return Err(Unusable::Damaged("cut short"));
    }
    let (kept_url, rest) = rest.split_at(n);
    let (m, rest) = take_le::<8>(rest).ok_or(Unusable::Damaged("cut short"))?;
    let m = usize::try_from(u64::from_le_bytes(m)).map_err(|_| Unusable::Damaged("length"))?;
    if rest.len() != m.saturating_add(4) {
        return Err(Unusable::Damaged("cut short or too long"));
    }
    let (body, crc) = rest.split_at(m);
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(kept_url);
    hasher.update(body);
    if hasher.finalize().to_le_bytes() != crc {
        return Err(Unusable::Damaged("checksum"));
    }
    if kept_url != url.as_bytes() {
        return Err(Unusable::OtherUrl);
    }
    let start = bytes.len() - rest.len();
    Ok((start, start + m))
}

fn take_le<const N: usize>(bytes: &[u8]) -> Option<([u8; N], &[u8])> {
    let head = bytes.get(..N)?.try_into().ok()?;
    Some((head, &bytes[N..]))
}

/// FNV-1a, 64 bits: a file name that stays the same across builds and versions.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spool() -> (tempfile::TempDir, Spool) {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::new(dir.path(), "backfill/src/1");
        (dir, spool)
    }

    /// Regression (issue 15, defect 10): spool files were created with the umask (0644), and
    /// they hold page bodies (addresses, subjects).
    #[cfg(unix)]
    #[test]
    fn spool_files_and_directories_are_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let (dir, s) = spool();
        s.put("http://127.0.0.1/a", b"{}").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.path().join("spool")), 0o700);
        assert_eq!(mode(s.dir()), 0o700);
        assert_eq!(mode(&s.path("http://127.0.0.1/a")), 0o600);
    }

    #[test]
    fn a_page_comes_back_as_written_until_removed() {
        let (_dir, s) = spool();
        let url =
            "https://graph.microsoft.com/beta/admin/exchange/tracing/messageTraces?$skiptoken=a";
        assert_eq!(s.get(url), Ok(None));
        s.put(url, b"{\"value\":[]}").unwrap();
        assert_eq!(s.get(url), Ok(Some(b"{\"value\":[]}".to_vec())));
        // Replaced by a later put; other URLs are apart.
        s.put(url, b"second").unwrap();
        s.put("https://x/?b", b"other").unwrap();
        assert_eq!(s.get(url), Ok(Some(b"second".to_vec())));
        assert_eq!(s.len(), 2);
        s.remove(url).unwrap();
        assert_eq!(s.get(url), Ok(None));
        s.remove(url).unwrap();
        assert_eq!(s.len(), 1);
        s.clear().unwrap();
        assert!(s.is_empty());
        assert!(!s.dir().exists());
        s.clear().unwrap();
        // An empty body is a body.
        s.put(url, b"").unwrap();
        assert_eq!(s.get(url), Ok(Some(Vec::new())));
    }

    #[test]
    fn cursors_have_their_own_directories() {
        let dir = tempfile::tempdir().unwrap();
        let a = Spool::new(dir.path(), "a");
        let b = Spool::new(dir.path(), "b");
        a.put("u", b"from a").unwrap();
        assert_eq!(b.get("u"), Ok(None));
        b.clear().unwrap();
        assert_eq!(a.get("u"), Ok(Some(b"from a".to_vec())));
    }

    #[test]
    fn a_damaged_file_is_never_served_and_is_removed() {
        let (_dir, s) = spool();
        let url = "https://x/?p=2";
        s.put(url, b"0123456789").unwrap();
        let path = s.path(url);
        let whole = std::fs::read(&path).unwrap();
        let cases: Vec<(&str, Vec<u8>, Unusable)> = vec![
            ("empty", Vec::new(), Unusable::Damaged("no spool header")),
            (
                "cut in the body",
                whole[..whole.len() - 6].to_vec(),
                Unusable::Damaged("cut short or too long"),
            ),
            (
                "cut in the URL",
                whole[..14].to_vec(),
                Unusable::Damaged("cut short"),
            ),
            (
                "a flipped bit",
                {
                    let mut w = whole.clone();
                    let i = w.len() - 8;
                    w[i] ^= 1;
                    w
                },
                Unusable::Damaged("checksum"),
            ),
            (
                "zeros",
                vec![0; whole.len()],
                Unusable::Damaged("no spool header"),
            ),
            (
                "too long",
                [&whole[..], &[0]].concat(),
                Unusable::Damaged("cut short or too long"),
            ),
        ];
        for (what, bytes, why) in cases {
            std::fs::write(&path, bytes).unwrap();
            assert_eq!(s.get(url), Err(why), "{what}");
            assert!(!path.exists(), "{what}: removed");
        }
        // Another URL under this URL's key.
        let other = s.path("https://x/?p=3");
        std::fs::write(&path, &whole).unwrap();
        std::fs::rename(&path, &other).unwrap();
        assert_eq!(s.get("https://x/?p=3"), Err(Unusable::OtherUrl));
        assert!(!other.exists(), "another URL's: removed");
        // A directory in the file's place cannot be read: said, not taken for "no page".
        std::fs::create_dir_all(&path).unwrap();
        assert!(matches!(s.get(url), Err(Unusable::Unreadable(_))));
    }

    #[test]
    fn old_pages_and_stale_temporary_files_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let a = Spool::new(dir.path(), "a");
        let gone = Spool::new(dir.path(), "a cursor that no longer runs");
        a.put("fresh", b"1").unwrap();
        a.put("old", b"2").unwrap();
        gone.put("old", b"3").unwrap();
        let stale_tmp = a.dir().join("1-1.tmp");
        let live_tmp = a.dir().join("1-2.tmp");
        let stale_free = a.dir().join("1-3.free");
        std::fs::write(&stale_tmp, b"cut").unwrap();
        std::fs::write(&live_tmp, b"being written").unwrap();
        std::fs::write(&stale_free, b"a committed page").unwrap();
        let age = |path: &Path, secs: u64| {
            let f = std::fs::File::options().write(true).open(path).unwrap();
            f.set_modified(SystemTime::now() - Duration::from_secs(secs))
                .unwrap();
        };
        age(&a.path("old"), 2 * 3600);
        age(&gone.path("old"), 2 * 3600);
        age(&stale_tmp, 3600);
        age(&stale_free, 3600);
        assert_eq!(a.sweep(Duration::from_secs(3600)).unwrap(), 3);
        assert_eq!(a.get("fresh"), Ok(Some(b"1".to_vec())));
        assert_eq!(a.get("old"), Ok(None));
        assert!(!stale_tmp.exists() && live_tmp.exists() && !stale_free.exists());
        // At engine start: every cursor, and the directories left empty.
        assert_eq!(sweep_all(dir.path(), Duration::from_secs(3600)).unwrap(), 1);
        assert!(!gone.dir().exists());
        assert!(a.dir().exists());
        assert_eq!(sweep_all(&dir.path().join("none"), KEEP_FOR).unwrap(), 0);
    }

    #[test]
    fn a_failed_write_leaves_nothing_behind() {
        let (_dir, s) = spool();
        std::fs::create_dir_all(s.dir()).unwrap();
        // The target name is a non-empty directory: the rename fails.
        let target = s.path("u");
        std::fs::create_dir_all(target.join("x")).unwrap();
        assert!(s.put("u", b"body").is_err());
        let names: Vec<_> = std::fs::read_dir(s.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "only the directory in the way: {names:?}");
    }

    /// Session 17: a committed page's file is written over by the next page, not removed and
    /// created again; what was longer before is cut, and the renamed file is never served.
    #[cfg(unix)]
    #[test]
    fn a_committed_pages_file_is_written_over_by_the_next_page() {
        use std::os::unix::fs::MetadataExt as _;
        let (_dir, s) = spool();
        let long = vec![b'x'; 10_000];
        s.put("https://x/?p=1", &long).unwrap();
        // Held open, the file's inode cannot be freed and its number given to a new file.
        let first = std::fs::File::open(s.path("https://x/?p=1")).unwrap();
        s.remove("https://x/?p=1").unwrap();
        assert_eq!(
            s.get("https://x/?p=1"),
            Ok(None),
            "a committed page is not served"
        );
        assert_eq!(s.len(), 0);
        s.put("https://x/?p=2", b"short").unwrap();
        let second = std::fs::metadata(s.path("https://x/?p=2")).unwrap();
        assert_eq!(
            second.ino(),
            first.metadata().unwrap().ino(),
            "the same file"
        );
        assert_eq!(s.get("https://x/?p=2"), Ok(Some(b"short".to_vec())));
        assert_eq!(s.get("https://x/?p=1"), Ok(None));
        let names: Vec<_> = std::fs::read_dir(s.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "nothing else is left: {names:?}");
        // Clones write over the same files; a cleared spool starts new ones.
        let clone = s.clone();
        clone.remove("https://x/?p=2").unwrap();
        s.put("https://x/?p=3", b"third").unwrap();
        let third = std::fs::metadata(s.path("https://x/?p=3")).unwrap();
        assert_eq!(third.ino(), first.metadata().unwrap().ino());
        s.remove("https://x/?p=3").unwrap();
        s.clear().unwrap();
        s.put("https://x/?p=4", b"fourth").unwrap();
        assert_eq!(s.get("https://x/?p=4"), Ok(Some(b"fourth".to_vec())));
    }

    #[test]
    fn at_most_a_few_committed_files_are_kept_to_write_over() {
        let (_dir, s) = spool();
        let urls: Vec<String> = (0..MAX_FREE + 3).map(|i| format!("u{i}")).collect();
        for u in &urls {
            s.put(u, b"page").unwrap();
        }
        for u in &urls {
            s.remove(u).unwrap();
        }
        let free = std::fs::read_dir(s.dir())
            .unwrap()
            .filter(|e| {
                let path = e.as_ref().unwrap().path();
                path.extension().is_some_and(|x| x == "free")
            })
            .count();
        assert_eq!(free, MAX_FREE);
        assert!(s.is_empty());
    }

    #[test]
    fn file_names_are_stable() {
        // The names must not change between versions: a restart on a new build still finds them.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
