//! How `msgtrace jobs`, `msgtrace secrets list` and `msgtrace-dump` read a state directory:
//! directly when it is free, else by asking the engine that holds it (sled's exclusive lock)
//! through its control socket, `STATE_DIR/control.sock`. Either way they get the same
//! records and print the same text.

use super::SecretEntry;
use crate::secrets::{SecretError, SecretKind, SecretStore};
use msgtrace_storage::{dump, JobRecord, StorageError, Store};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why a state directory cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// Opening or reading the directory failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The secret store could not be read.
    #[error(transparent)]
    Secrets(#[from] SecretError),
    /// Another process holds the directory and no engine answers on its socket.
    #[error("state directory {dir} is in use by another msgtrace process (sled holds an exclusive lock), and no engine answers on {socket} ({reason}); if that process is `msgtrace run`, retry in a moment; else stop it, or copy the directory and use the copy")]
    NoEngine {
        /// The state directory.
        dir: PathBuf,
        /// Its control socket.
        socket: PathBuf,
        /// Why the socket did not answer.
        reason: String,
    },
    /// The running engine answered with an error.
    #[error("the running engine ({socket}) answered {status}: {body}")]
    Engine {
        /// Its control socket.
        socket: PathBuf,
        /// The HTTP status.
        status: u16,
        /// Its explanation.
        body: String,
    },
}

/// A state directory to read: open, or held by a running engine.
pub enum StateDir {
    /// Opened here (no engine runs on it).
    Open(Store),
    /// Held by a running engine, asked through its control socket.
    Live(Live),
}

impl StateDir {
    /// Opens `dir` (creating it if missing), or finds the engine that holds it.
    pub fn open(dir: &Path) -> Result<StateDir, AccessError> {
        match Store::open(dir) {
            Ok(store) => Ok(StateDir::Open(store)),
            Err(StorageError::Locked { .. }) => {
                let live = Live {
                    dir: dir.to_path_buf(),
                    socket: super::socket_path(dir),
                };
                // Ask once now, so that "nobody answers" is said here, in one line.
                live.get("/api/secrets").map(|_| StateDir::Live(live))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Every job record, oldest first.
    pub fn jobs(&self) -> Result<Vec<JobRecord>, AccessError> {
        match self {
            StateDir::Open(store) => Ok(store.jobs(None)?),
            StateDir::Live(live) => live.json("/api/jobs"),
        }
    }

    /// Every source's details backlog that is not empty.
    pub fn details_backlogs(&self) -> Result<Vec<super::DetailsBacklog>, AccessError> {
        match self {
            StateDir::Open(store) => Ok(super::DetailsBacklog::of(store)?),
            StateDir::Live(live) => live.json("/api/details"),
        }
    }

    /// `[cluster]`: the running engine's view of the cluster; `None` for a state directory no
    /// engine holds, and for an engine without `[cluster]`.
    pub fn cluster(&self) -> Result<Option<crate::cluster::ClusterView>, AccessError> {
        match self {
            StateDir::Open(_) => Ok(None),
            StateDir::Live(live) => match live.json("/api/cluster") {
                // An engine of a release before `/api/cluster`.
                Err(AccessError::Engine { status: 404, .. }) => Ok(None),
                other => other,
            },
        }
    }

    /// The secret store's names and kinds.
    pub fn secrets(&self) -> Result<Vec<(String, SecretKind)>, AccessError> {
        match self {
            StateDir::Open(store) => Ok(SecretStore::new(store.clone()).list()?),
            StateDir::Live(live) => Ok(live
                .json::<Vec<SecretEntry>>("/api/secrets")?
                .into_iter()
                .map(|e| (e.name, e.kind))
                .collect()),
        }
    }

    /// What `msgtrace-dump` prints ([`dump::print`]); `None` when `tree` names no tree.
    pub fn dump(&self, tree: Option<&str>, json: bool) -> Result<Option<String>, AccessError> {
        match self {
            StateDir::Open(store) => Ok(dump::print(store, tree, json)?),
            StateDir::Live(live) => {
                let mut query = url::form_urlencoded::Serializer::new(String::new());
                if let Some(t) = tree {
                    query.append_pair("tree", t);
                }
                query.append_pair("format", if json { "json" } else { "text" });
                match live.get(&format!("/api/dump?{}", query.finish())) {
                    Ok(body) => Ok(Some(body)),
                    Err(AccessError::Engine { status: 404, .. }) => Ok(None),
                    Err(e) => Err(e),
                }
            }
        }
    }
}

/// A running engine's control socket.
pub struct Live {
    dir: PathBuf,
    socket: PathBuf,
}

/// How long the tools wait for the engine (a dump of a large identity index takes a while).
const TIMEOUT: Duration = Duration::from_secs(60);

impl Live {
    fn json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, AccessError> {
        let body = self.get(path)?;
        serde_json::from_str(&body).map_err(|e| AccessError::Engine {
            socket: self.socket.clone(),
            status: 200,
            body: format!(
                "an answer that does not decode ({e}): is it a msgtrace of another version?"
            ),
        })
    }

    /// GETs `path` from the engine: the body of a 200 answer.
    pub fn get(&self, path: &str) -> Result<String, AccessError> {
        let no_engine = |e: std::io::Error| AccessError::NoEngine {
            dir: self.dir.clone(),
            socket: self.socket.clone(),
            reason: e.to_string(),
        };
        let (status, body) = request(&self.socket, path).map_err(no_engine)?;
        let body = String::from_utf8_lossy(&body).into_owned();
        if status == 200 {
            Ok(body)
        } else {
            Err(AccessError::Engine {
                socket: self.socket.clone(),
                status,
                body: body.trim().to_owned(),
            })
        }
    }
}

#[cfg(unix)]
fn request(socket: &Path, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
    let mut s = std::os::unix::net::UnixStream::connect(socket)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.set_write_timeout(Some(TIMEOUT))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)?;
    parse_response(&answer)
}

#[cfg(not(unix))]
fn request(_: &Path, _: &str) -> std::io::Result<(u16, Vec<u8>)> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "the control socket needs Unix",
    ))
}

fn bad(what: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("not an HTTP answer: {what}"),
    )
}

/// An HTTP/1.1 answer read to its end (`Connection: close`): its status and body (a
/// `Content-Length` body, or a chunked one decoded).
pub(crate) fn parse_response(answer: &[u8]) -> std::io::Result<(u16, Vec<u8>)> {
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = std::str::from_utf8(&answer[..split]).map_err(|_| bad("headers not UTF-8"))?;
    let mut body = &answer[split + 4..];
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| {
            l.strip_prefix("HTTP/1.1 ")
                .or_else(|| l.strip_prefix("HTTP/1.0 "))
        })
        .and_then(|l| l.get(..3))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| bad("no status line"))?;
    let mut chunked = false;
    for l in lines {
        let Some((name, value)) = l.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("content-length") {
            let n: usize = value.parse().map_err(|_| bad("Content-Length"))?;
            body = body
                .get(..n)
                .ok_or_else(|| bad("body shorter than its Content-Length"))?;
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            && value.eq_ignore_ascii_case("chunked")
        {
            chunked = true;
        }
    }
    if !chunked {
        return Ok((status, body.to_vec()));
    }
    let mut out = Vec::new();
    loop {
        let end = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| bad("chunk size"))?;
        let size = std::str::from_utf8(&body[..end])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next()?.trim(), 16).ok())
            .ok_or_else(|| bad("chunk size"))?;
        if size == 0 {
            return Ok((status, out));
        }
        let chunk = body
            .get(end + 2..end + 2 + size)
            .ok_or_else(|| bad("chunk cut short"))?;
        out.extend_from_slice(chunk);
        body = body
            .get(end + 4 + size..)
            .ok_or_else(|| bad("chunk cut short"))?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_sized_and_chunked_answers() {
        let sized =
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-type: text/plain\r\n\r\nhello";
        assert_eq!(parse_response(sized).unwrap(), (200, b"hello".to_vec()));
        let chunked = b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4;x=y\r\ndefg\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked).unwrap(), (404, b"abcdefg".to_vec()));
        for broken in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nhello"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: 5",
            b"SSH-2.0-OpenSSH\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n9\r\nabc",
        ] {
            assert!(
                parse_response(broken).is_err(),
                "{:?}",
                String::from_utf8_lossy(broken)
            );
        }
    }
}
