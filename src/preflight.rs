//! Checks of a configuration against the file system, made before a run starts and by
//! `msgtrace validate`: the state directory, the file sinks' paths, the object stores (built, not
//! contacted) and the federated token files. The configuration's own
//! checks ([`crate::config`]) need no I/O; these do, so they live here, in one place that
//! `validate`, `run`, `backfill` and an embedding host (through [`crate::engine::start`]) share.
//!
//! Each problem is one line, `key: what is wrong; what to do`. Nothing is left behind: a
//! directory is tested for writing with a probe file that is removed at once.

use crate::config::{AuthConfig, Config, SinkKind};
use crate::engine::SecretAccess;
use crate::secrets::SecretStore;
use msgtrace_actors::token::AuthError;
use msgtrace_storage::{StorageError, Store};
use std::io;
use std::path::{Path, PathBuf};

/// What [`check`] found; each problem is one line naming the key and the fix.
#[derive(Debug, thiserror::Error)]
#[error("{}", .problems.join("\n"))]
pub struct PreflightError {
    /// The problems, one line each.
    pub problems: Vec<String>,
}

/// Checks that the state directory can be used (a directory, readable and writable, or one that
/// can be created), that each file sink's path can be written (not a symbolic link or a
/// directory, its directory creatable), and that each `oauth_federated` token file can be read.
pub fn check(config: &Config) -> Result<(), PreflightError> {
    let mut problems = Vec::new();
    if let Err(e) = state_dir(&config.state_dir) {
        problems.push(format!("state_dir: {e}"));
    }
    for sink in config.sinks.values() {
        match &sink.kind {
            SinkKind::File { path, .. } => {
                if let Err(e) = file_sink_path(path) {
                    problems.push(format!("sinks.{}.path: {e}", sink.id));
                }
            }
            // Built as a run builds it (the environment's settings, files they name): no
            // request is made, so a refused credential shows only at the first page.
            SinkKind::ObjectStore(c) => {
                let retry = crate::sinks::http::default_retry();
                if let Err(e) = crate::sinks::archive::build_store(c, &retry) {
                    problems.push(format!("sinks.{}.url: {e}", sink.id));
                }
            }
            _ => {}
        }
    }
    for (at, auth) in auths(config) {
        if let AuthConfig::OAuthFederated { token_file, .. } = auth {
            if let Err(e) = federated_token_file(token_file) {
                problems.push(format!("{at}.auth.token_file: {e}"));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(PreflightError { problems })
    }
}

/// Every `auth` of the configuration with the key it is under: the sources', and the
/// `azure_logs_ingestion` sinks'.
fn auths(cfg: &Config) -> impl Iterator<Item = (String, &AuthConfig)> {
    let sources = cfg
        .sources
        .values()
        .map(|s| (format!("sources.{}", s.id), &s.auth));
    let sinks = cfg.sinks.values().filter_map(|s| match &s.kind {
        SinkKind::AzureLogsIngestion(c) => Some((format!("sinks.{}", s.id), &c.auth)),
        _ => None,
    });
    sources.chain(sinks)
}

/// What `msgtrace validate` finds beyond the file's own errors: [`check`]'s problems, each
/// source's secrets and certificates as the engine's start would read them, and whether the
/// listen addresses can be bound.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Findings {
    /// Errors: the configuration cannot run as it is (one line each).
    pub problems: Vec<String>,
    /// What could not be checked, and why.
    pub notes: Vec<String>,
    /// It runs, but look (the configuration's own warnings among them).
    pub warnings: Vec<String>,
}

/// Runs every check `validate` makes ([`Findings`]). Store secrets are read when the state
/// directory can be opened; while a running engine holds it they are not (a note says so).
pub fn validate(cfg: &Config) -> Findings {
    let mut found = Findings::default();
    if let Err(e) = check(cfg) {
        found.problems.extend(e.problems);
    }
    let secrets = secret_store(cfg, &mut found);
    let access = match &secrets {
        Some(s) => SecretAccess::Store(s),
        None => SecretAccess::Skip,
    };
    for s in cfg.sources.values() {
        if let Err(e) = crate::engine::source_spec(s, true, access) {
            found.problems.push(e.to_string());
        }
    }
    for s in cfg.sinks.values() {
        if let Err(e) = crate::engine::sink_auth_spec(s, access) {
            found.problems.push(e.to_string());
        }
    }
    listen_addresses(cfg, &mut found);
    found.warnings.extend(cfg.warnings.iter().cloned());
    found
}

/// The secret store, when a source reads one and the state directory can be opened.
fn secret_store(cfg: &Config, found: &mut Findings) -> Option<SecretStore> {
    let uses_store = auths(cfg).any(|(_, a)| {
        matches!(
            a,
            AuthConfig::BasicSecret { .. } | AuthConfig::OAuthSecret { .. }
        )
    });
    if !uses_store {
        return None;
    }
    if !cfg.state_dir.exists() {
        return Some(SecretStore::absent(&cfg.state_dir));
    }
    if !cfg.state_dir.is_dir() {
        return None; // a problem of `check`
    }
    match Store::open(&cfg.state_dir) {
        Ok(store) => Some(SecretStore::new(store)),
        Err(e @ StorageError::Locked { .. }) => {
            found.notes.push(format!("stored secrets not checked: {e}"));
            None
        }
        Err(e) => {
            found.problems.push(e.to_string());
            None
        }
    }
}

/// A taken port may be this configuration's own running msgtrace: a warning. An address this
/// host cannot listen on at all is a problem.
fn listen_addresses(cfg: &Config, found: &mut Findings) {
    let listens = [
        ("metrics_listen", cfg.metrics_listen),
        (
            "control_listen",
            cfg.control_listen
                .filter(|a| Some(*a) != cfg.metrics_listen),
        ),
    ];
    for (key, addr) in listens {
        if let Some(Err(e)) = addr.map(|a| crate::listener::bind(key, a)) {
            if e.error.kind() == io::ErrorKind::AddrInUse {
                found.warnings.push(e.to_string());
            } else {
                found.problems.push(e.to_string());
            }
        }
    }
}

/// Why a path of the configuration cannot be used: one line, what is wrong and what to do.
#[derive(Debug, thiserror::Error)]
enum PathProblem {
    /// `state_dir` is something else than a directory.
    #[error(
        "{0} is not a directory; set state_dir to a directory (msgtrace creates it when missing)"
    )]
    NotADirectory(String),
    /// Reading, writing or reaching `path` failed.
    #[error("{what} {path} ({reason}); {fix}")]
    Io {
        /// What was tried: `cannot read`, `cannot write in`, ...
        what: &'static str,
        /// The path.
        path: String,
        /// The I/O error, readable.
        reason: String,
        /// What to do.
        fix: String,
    },
    /// A missing directory whose nearest existing ancestor cannot take it.
    #[error("{path} does not exist and cannot be created: {why}")]
    NotCreatable {
        /// The directory (`its directory ...` for a file sink's).
        path: String,
        /// Why not.
        why: Box<PathProblem>,
    },
    /// A file sink's path is a symbolic link.
    #[error("{path}: {refusal}")]
    Symlink {
        /// The path.
        path: String,
        /// What the file sink says of it.
        refusal: String,
    },
    /// A file sink's path is a directory.
    #[error("{path} is a directory; set path to a file in it, e.g. {example}")]
    IsADirectory {
        /// The path.
        path: String,
        /// A file in it.
        example: String,
    },
    /// A file where a directory must be.
    #[error("{0} is a file, not a directory; choose another path")]
    FileInTheWay(String),
    /// Not even `.` or `/` exists.
    #[error("no existing directory above it")]
    NoAncestor,
}

/// An I/O failure on `path`, fixed by making it the user's writable directory.
fn io_problem(what: &'static str, path: &Path, e: &io::Error) -> PathProblem {
    PathProblem::Io {
        what,
        path: path.display().to_string(),
        reason: reason(e),
        fix: owner_fix(path),
    }
}

fn state_dir(dir: &Path) -> Result<(), PathProblem> {
    let shown = dir.display().to_string();
    match std::fs::metadata(dir) {
        Ok(m) if !m.is_dir() => Err(PathProblem::NotADirectory(shown)),
        Ok(_) => {
            std::fs::read_dir(dir).map_err(|e| io_problem("cannot read", dir, &e))?;
            probe_write(dir).map_err(|e| io_problem("cannot write in", dir, &e))
        }
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            Err(io_problem("cannot reach", dir, &e))
        }
        Err(_) => creatable(dir).map_err(|why| PathProblem::NotCreatable {
            path: shown,
            why: Box::new(why),
        }),
    }
}

fn file_sink_path(path: &Path) -> Result<(), PathProblem> {
    let shown = path.display().to_string();
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            return Err(PathProblem::Symlink {
                path: shown,
                refusal: crate::sinks::symlink_refusal(path),
            })
        }
        Ok(m) if m.is_dir() => {
            return Err(PathProblem::IsADirectory {
                path: shown,
                example: path.join("events.ndjson").display().to_string(),
            })
        }
        Ok(_) => {
            // Opening for appending changes nothing.
            return std::fs::OpenOptions::new()
                .append(true)
                .open(path)
                .map(drop)
                .map_err(|e| PathProblem::Io {
                    what: "cannot write",
                    path: shown,
                    reason: reason(&e),
                    fix: "make it writable by the user msgtrace runs as".into(),
                });
        }
        Err(_) => {}
    }
    let dir = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(d) => d.to_path_buf(),
        None => PathBuf::from("."),
    };
    let its_dir = format!("its directory {}", dir.display());
    match std::fs::metadata(&dir) {
        Ok(m) if m.is_dir() => {
            probe_write(&dir).map_err(|e| io_problem("cannot create files in", &dir, &e))
        }
        Ok(_) => Err(PathProblem::FileInTheWay(its_dir)),
        Err(_) => creatable(&dir).map_err(|why| PathProblem::NotCreatable {
            path: its_dir,
            why: Box::new(why),
        }),
    }
}

/// Whether `dir` (missing) could be created: its nearest existing ancestor is a directory we
/// may write in.
fn creatable(dir: &Path) -> Result<(), PathProblem> {
    let mut at = dir;
    loop {
        match at.parent() {
            Some(p) if !p.as_os_str().is_empty() => at = p,
            _ => at = Path::new("."),
        }
        match std::fs::metadata(at) {
            Ok(m) if m.is_dir() => {
                return probe_write(at).map_err(|e| io_problem("cannot create anything in", at, &e))
            }
            Ok(_) => return Err(PathProblem::FileInTheWay(at.display().to_string())),
            Err(_) if at == Path::new(".") || at == Path::new("/") => {
                return Err(PathProblem::NoAncestor)
            }
            Err(_) => {}
        }
    }
}

/// Creates and removes a probe file in `dir`.
fn probe_write(dir: &Path) -> io::Result<()> {
    let probe = dir.join(format!(".msgtrace-check-{}", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)?;
    std::fs::remove_file(&probe)
}

fn reason(e: &io::Error) -> String {
    match msgtrace_storage::layout::IoCause::of(e) {
        msgtrace_storage::layout::IoCause::ReadOnly => "read-only file system".into(),
        msgtrace_storage::layout::IoCause::DiskFull => "the disk is full".into(),
        msgtrace_storage::layout::IoCause::Permission => "permission denied".into(),
        msgtrace_storage::layout::IoCause::Other => msgtrace_storage::layout::readable(e),
    }
}

fn owner_fix(dir: &Path) -> String {
    format!(
        "make it a writable directory owned by the user msgtrace runs as (`chown USER {0}`, `chmod 700 {0}`), on a writable file system",
        dir.display()
    )
}

/// A workload identity token file that is missing or unreadable; an empty one passes, since the
/// platform may be about to write it (the token request then retries).
fn federated_token_file(path: &Path) -> Result<(), AuthError> {
    match msgtrace_actors::identity::read_federated_token(path) {
        Err(e @ AuthError::Rejected(_)) => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_dir_that_is_a_file_or_under_a_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        let e = state_dir(&file).unwrap_err().to_string();
        assert!(e.contains("is not a directory"), "{e}");
        let e = state_dir(&file.join("state")).unwrap_err().to_string();
        assert!(e.contains("is a file, not a directory"), "{e}");
        state_dir(&dir.path().join("new/state")).unwrap();
        state_dir(dir.path()).unwrap();
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no probe left"
        );
    }

    #[test]
    fn file_sink_paths() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        file_sink_path(&dir.path().join("a/b/e.ndjson")).unwrap();
        file_sink_path(&file).unwrap();
        let e = file_sink_path(&file.join("e.ndjson"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("is a file, not a directory"), "{e}");
        let e = file_sink_path(&file.join("a/e.ndjson"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot be created"), "{e}");
        let e = file_sink_path(dir.path()).unwrap_err().to_string();
        assert!(e.contains("is a directory"), "{e}");
        #[cfg(unix)]
        {
            let link = dir.path().join("link.ndjson");
            std::os::unix::fs::symlink(&file, &link).unwrap();
            let e = file_sink_path(&link).unwrap_err().to_string();
            assert!(e.contains("symbolic link"), "{e}");
        }
    }

    #[test]
    fn messages_are_one_line_naming_the_path_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        let (f, d) = (file.display(), dir.path().display());
        assert_eq!(
            state_dir(&file).unwrap_err().to_string(),
            format!("{f} is not a directory; set state_dir to a directory (msgtrace creates it when missing)")
        );
        assert_eq!(
            file_sink_path(&file.join("a/e.ndjson")).unwrap_err().to_string(),
            format!("its directory {f}/a does not exist and cannot be created: {f} is a file, not a directory; choose another path")
        );
        assert_eq!(
            file_sink_path(dir.path()).unwrap_err().to_string(),
            format!("{d} is a directory; set path to a file in it, e.g. {d}/events.ndjson")
        );
    }

    #[test]
    fn federated_token_files() {
        let dir = tempfile::tempdir().unwrap();
        let e = federated_token_file(&dir.path().join("token")).unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
        std::fs::write(dir.path().join("token"), "").unwrap();
        federated_token_file(&dir.path().join("token")).unwrap();
    }
}
