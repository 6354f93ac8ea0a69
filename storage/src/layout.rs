//! The state directory as files: who may read it, the marker that says it holds a database, and
//! what an operating-system error on it means to an operator.
//!
//! - A state directory msgtrace creates is `0700`, and the files it and sled keep there `0600`
//!   (they hold addresses and subjects), whatever the process umask. A directory that exists
//!   already keeps its mode (it is the operator's); one that others may enter is warned about.
//! - Once a database holds its layout version, the marker file [`MARKER`] is written beside it.
//!   A directory with the marker but no database in it lost its database (emptied, deleted,
//!   restored half-way): opening it is refused instead of starting over silently.

use std::io;
use std::path::Path;

/// The marker file in a state directory whose database was created (holds the layout version).
pub const MARKER: &str = "msgtrace.layout";

/// Mode of the state directory and the directories under it.
pub const DIR_MODE: u32 = 0o700;

/// Mode of the files in the state directory.
pub const FILE_MODE: u32 = 0o600;

/// What an I/O error on the state directory is, for the operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoCause {
    /// No space left (or quota exceeded).
    DiskFull,
    /// The file system is mounted read-only.
    ReadOnly,
    /// Permission denied.
    Permission,
    /// Anything else.
    Other,
}

impl IoCause {
    /// Classifies an I/O error, also one sled copied into a message (it keeps the kind).
    pub fn of(e: &io::Error) -> IoCause {
        // By name: `StorageFull` and `ReadOnlyFilesystem` are newer than the minimum Rust.
        let kind = format!("{:?}", e.kind());
        match (e.raw_os_error(), kind.as_str()) {
            (Some(28 | 122), _) | (_, "StorageFull" | "QuotaExceeded") => IoCause::DiskFull,
            (Some(30), _) | (_, "ReadOnlyFilesystem") => IoCause::ReadOnly,
            _ if e.kind() == io::ErrorKind::PermissionDenied => IoCause::Permission,
            _ => IoCause::Other,
        }
    }

    /// One line: what happened on `dir` and what to do about it.
    pub fn describe(self, dir: &Path, e: &io::Error) -> String {
        let dir = dir.display();
        match self {
            IoCause::DiskFull => format!(
                "state directory {dir}: the disk is full; free space on its file system (or raise the quota), then start msgtrace again"
            ),
            IoCause::ReadOnly => format!(
                "state directory {dir}: the file system is read-only; set state_dir to a directory on a writable file system"
            ),
            IoCause::Permission => format!(
                "state directory {dir}: permission denied; make the directory and its files owned by the user msgtrace runs as (`chown -R USER {dir}`, `chmod 700 {dir}`)"
            ),
            IoCause::Other => format!(
                "state directory {dir}: {}; check the disk and the directory",
                readable(e)
            ),
        }
    }
}

/// An I/O error as one readable line: sled copies errors into their `Debug` text
/// (`Os { code: 5, kind: .., message: "Input/output error" }`); this keeps the message only.
pub fn readable(e: &io::Error) -> String {
    let text = e.to_string();
    match text.split_once("message: \"") {
        Some((_, rest)) if text.contains("Os {") => {
            rest.split('"').next().unwrap_or_default().to_lowercase()
        }
        _ => text,
    }
}

/// Makes sure `dir` can be a state directory: creates it (and its parents) `0700` when missing;
/// an existing path must be a directory. Returns whether it was created.
pub fn prepare_dir(dir: &Path) -> io::Result<bool> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {
            warn_if_open_to_others(dir, &m);
            Ok(false)
        }
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "not a directory",
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            create_private_dir(dir)?;
            Ok(true)
        }
        Err(e) => Err(e),
    }
}

/// Creates `dir` and any missing parents, each `0700` exactly (the umask cannot widen it).
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_private_dir(parent)?;
    }
    let mut builder = std::fs::DirBuilder::new();
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, DIR_MODE);
    match builder.create(dir) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        other => other,
    }
}

#[cfg(unix)]
fn warn_if_open_to_others(dir: &Path, m: &std::fs::Metadata) {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = m.permissions().mode() & 0o777;
    if mode & 0o007 != 0 {
        tracing::warn!(
            dir = %dir.display(),
            mode = format!("{mode:04o}"),
            "the state directory is open to every user and holds message trace data (addresses, subjects); restrict it with `chmod 700 {}`",
            dir.display()
        );
    }
}

#[cfg(not(unix))]
fn warn_if_open_to_others(_dir: &Path, _m: &std::fs::Metadata) {}

/// Whether `dir` holds the marker of a created database.
pub fn has_marker(dir: &Path) -> bool {
    dir.join(MARKER).exists()
}

/// Writes the marker (after the database holds its layout version), `0600`, synced.
pub fn write_marker(dir: &Path, version: u32) -> io::Result<()> {
    use std::io::Write as _;
    let mut f = private_file(&dir.join(MARKER))?;
    writeln!(
        f,
        "msgtrace state directory, layout {version}. While this file is here, msgtrace refuses to start if the database beside it is missing or empty; to start over on purpose, remove the whole directory."
    )?;
    f.sync_all()
}

/// Creates (or truncates) a file for writing with mode `0600`.
pub fn private_file(path: &Path) -> io::Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, FILE_MODE);
    o.open(path)
}

/// Takes group and other access away from the files sled keeps in the state directory (`conf`,
/// `db`, `snap.*`, the marker) and from its `blobs` directory: sled creates them with the
/// process umask. Only in a private directory (`0700` or narrower): where the operator opened
/// the directory to a group, its files are left as they are. Best effort: a file that cannot be
/// changed is left as it is.
pub fn restrict_database_files(dir: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let private = std::fs::metadata(dir).is_ok_and(|m| m.permissions().mode() & 0o077 == 0);
        if !private {
            return;
        }
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let mode = match name.as_ref() {
                "conf" | "db" | MARKER => FILE_MODE,
                n if n.starts_with("snap.") => FILE_MODE,
                "blobs" => DIR_MODE,
                _ => continue,
            };
            let Ok(m) = std::fs::symlink_metadata(entry.path()) else {
                continue;
            };
            if !m.file_type().is_symlink() && m.permissions().mode() & 0o077 != 0 {
                let _ =
                    std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(mode));
            }
        }
    }
    #[cfg(not(unix))]
    let _ = dir;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_are_classified_and_readable() {
        let full = io::Error::from_raw_os_error(28);
        assert_eq!(IoCause::of(&full), IoCause::DiskFull);
        // sled's copy keeps the kind, not the code, and its message is the Debug text.
        let copied = io::Error::new(full.kind(), format!("{full:?}"));
        assert_eq!(IoCause::of(&copied), IoCause::DiskFull);
        let line = IoCause::of(&copied).describe(Path::new("/s"), &copied);
        assert!(line.contains("free space"), "{line}");
        assert!(!line.contains("Os {"), "{line}");
        assert_eq!(
            IoCause::of(&io::Error::from_raw_os_error(13)),
            IoCause::Permission
        );
        assert_eq!(
            IoCause::of(&io::Error::from_raw_os_error(30)),
            IoCause::ReadOnly
        );
        let eio = io::Error::from_raw_os_error(5);
        let copied = io::Error::new(eio.kind(), format!("{eio:?}"));
        assert_eq!(readable(&copied), "input/output error");
    }
}
