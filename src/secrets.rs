//! The secret store: named secrets kept in the state directory, encrypted at rest.
//!
//! Sources with `auth.method = "oauth_secret"` (a `text` secret: the client secret) or
//! `"basic_secret"` (a `credentials` secret: username and password) name a secret here instead of
//! holding the value in the configuration file. `msgtrace secrets set|list|rm` manage them.
//!
//! # Layout and encryption
//!
//! Each secret is one record of the sled tree `secrets` (key: the secret's name), stored as
//! versioned JSON like every other record:
//! `{"version":"1","kind":"text","nonce":"<base64>","ciphertext":"<base64>"}`. The value is sealed
//! with ChaCha20-Poly1305 under a random 96-bit nonce per value; the name and kind are bound to it
//! as associated data, so a record cannot be renamed or relabelled without failing to decrypt.
//! `list` needs no key: names and kinds are not secret.
//!
//! # The key lives apart from the data
//!
//! The 256-bit key comes from, in order:
//!
//! 1. `MSGTRACE_SECRET_KEY`: 64 hex digits, or the base64 of 32 bytes;
//! 2. the file named by `MSGTRACE_SECRET_KEY_FILE`;
//! 3. the file `<state_dir>.key` beside the state directory (`/var/lib/msgtrace` →
//!    `/var/lib/msgtrace.key`), so that a copy of the state directory (for the dump tool, a
//!    backup, a bug report) does not carry the key.
//!
//! A key file holds the key as 64 hex digits. The first `msgtrace secrets set` creates it (mode
//! 0600) when no key is given by the environment. Losing the key loses the secrets: store them
//! again.

use crate::config::Secret;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, OsRng, Payload};
use chacha20poly1305::{AeadCore, ChaCha20Poly1305, Key, Nonce};
use msgtrace_storage::{StorageError, Store};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// The sled tree that holds the secrets.
pub const TREE: &str = "secrets";
/// Environment variable holding the key itself.
pub const KEY_ENV: &str = "MSGTRACE_SECRET_KEY";
/// Environment variable naming the key file.
pub const KEY_FILE_ENV: &str = "MSGTRACE_SECRET_KEY_FILE";

/// What a secret holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecretKind {
    /// One string (a client secret): `oauth_secret`'s `client_secret_ref`.
    Text,
    /// A username and a password: `basic_secret`'s `credentials_secret`.
    Credentials,
}

impl SecretKind {
    /// The spelling used by `--kind` and `secrets list`.
    pub fn as_str(self) -> &'static str {
        match self {
            SecretKind::Text => "text",
            SecretKind::Credentials => "credentials",
        }
    }
}

impl fmt::Display for SecretKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `--kind` value that names no kind of secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown kind `{0}`; use text or credentials")]
pub struct UnknownKind(pub String);

impl std::str::FromStr for SecretKind {
    type Err = UnknownKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(SecretKind::Text),
            "credentials" => Ok(SecretKind::Credentials),
            other => Err(UnknownKind(other.to_owned())),
        }
    }
}

/// A secret's value. `Debug` never shows a password or a text value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretValue {
    /// A single string.
    Text(Secret),
    /// A username and its password.
    Credentials {
        /// The account name.
        username: String,
        /// The password.
        password: Secret,
    },
}

/// Why the input of `msgtrace secrets set` is not a secret of its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SecretInputError {
    /// A text secret with nothing in it.
    #[error("the value is empty")]
    Empty,
    /// Credentials without a username or a password.
    #[error("credentials need the username on the first line and the password on the second")]
    CredentialsIncomplete,
    /// Credentials of more than two lines.
    #[error("credentials are two lines (username, password); more lines were given")]
    CredentialsTooLong,
}

impl SecretValue {
    /// Its kind.
    pub fn kind(&self) -> SecretKind {
        match self {
            SecretValue::Text(_) => SecretKind::Text,
            SecretValue::Credentials { .. } => SecretKind::Credentials,
        }
    }

    /// Reads a value as `msgtrace secrets set` receives it on stdin: text is the whole input
    /// without its final line break; credentials are the username on the first line and the
    /// password on the second.
    pub fn parse(kind: SecretKind, input: &str) -> Result<SecretValue, SecretInputError> {
        match kind {
            SecretKind::Text => {
                let v = input
                    .strip_suffix('\n')
                    .map(|v| v.strip_suffix('\r').unwrap_or(v))
                    .unwrap_or(input);
                if v.is_empty() {
                    return Err(SecretInputError::Empty);
                }
                Ok(SecretValue::Text(Secret::new(v)))
            }
            SecretKind::Credentials => {
                let mut lines = input.lines();
                let username = lines.next().unwrap_or("").trim().to_string();
                let password = lines.next().unwrap_or("");
                if username.is_empty() || password.is_empty() {
                    return Err(SecretInputError::CredentialsIncomplete);
                }
                if lines.any(|l| !l.trim().is_empty()) {
                    return Err(SecretInputError::CredentialsTooLong);
                }
                Ok(SecretValue::Credentials {
                    username,
                    password: Secret::new(password),
                })
            }
        }
    }

    fn plaintext(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(match self {
            SecretValue::Text(s) => s.expose().as_bytes().to_vec(),
            SecretValue::Credentials { username, password } => {
                format!("{username}\n{}", password.expose()).into_bytes()
            }
        })
    }

    fn from_plaintext(kind: SecretKind, bytes: &[u8]) -> Option<SecretValue> {
        let text = std::str::from_utf8(bytes).ok()?;
        Some(match kind {
            SecretKind::Text => SecretValue::Text(Secret::new(text)),
            SecretKind::Credentials => {
                let (u, p) = text.split_once('\n')?;
                SecretValue::Credentials {
                    username: u.to_string(),
                    password: Secret::new(p),
                }
            }
        })
    }
}

/// Why a secret could not be stored or read. Messages never contain a secret value or the key.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// No secret of that name.
    #[error("no secret named `{name}` in the secret store of {state_dir}: add it with `msgtrace secrets set {name} -c CONFIG{kind_flag}`{known}")]
    NotFound {
        /// The name asked for.
        name: String,
        /// The state directory.
        state_dir: String,
        /// `--kind credentials` when that is what is needed.
        kind_flag: String,
        /// "; stored: a, b" or "".
        known: String,
    },
    /// The secret is of the other kind.
    #[error("secret `{name}` is a {have} secret but a {want} secret is needed here: store it again with `msgtrace secrets set {name} -c CONFIG --kind {want}`")]
    WrongKind {
        /// Its name.
        name: String,
        /// What it is.
        have: SecretKind,
        /// What is needed.
        want: SecretKind,
    },
    /// No key anywhere.
    #[error("no secret store key: {source_desc} does not exist; `msgtrace secrets set` creates it, or set {KEY_ENV} (or {KEY_FILE_ENV}) to the key the secrets were stored with")]
    NoKey {
        /// Where it was looked for.
        source_desc: String,
    },
    /// The key is malformed.
    #[error("the secret store key from {source_desc} is invalid ({reason}): it must be 64 hex digits or the base64 of 32 bytes")]
    BadKey {
        /// Where it came from.
        source_desc: String,
        /// What is wrong (never the key).
        reason: KeyFormatError,
    },
    /// The key does not open the secret.
    #[error("secret `{name}` cannot be decrypted with the key from {source_desc}: it was stored under another key; set {KEY_ENV} or {KEY_FILE_ENV} to that key, or store the secret again")]
    Decrypt {
        /// Its name.
        name: String,
        /// Where the key came from.
        source_desc: String,
    },
    /// The record does not decode.
    #[error(
        "secret `{name}` is damaged or from an incompatible msgtrace ({reason}); store it again"
    )]
    Corrupt {
        /// Its name.
        name: String,
        /// Why.
        reason: String,
    },
    /// A name that cannot be used.
    #[error("invalid secret name `{0}`: use 1 to 128 letters, digits, `.`, `_` or `-`")]
    InvalidName(String),
    /// The key file could not be read or written.
    #[error("key file {path}: {reason}")]
    KeyFile {
        /// The file.
        path: String,
        /// The I/O error.
        reason: String,
    },
    /// The state directory failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Where the encryption key comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum KeySource {
    /// The key itself (from `MSGTRACE_SECRET_KEY`, or given by an embedding host).
    Value(Secret),
    /// A key file.
    File(PathBuf),
}

impl fmt::Debug for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

impl KeySource {
    /// The key source the environment selects for `state_dir` (see the [module docs](self)).
    pub fn from_env(state_dir: &Path) -> KeySource {
        if let Some(v) = std::env::var(KEY_ENV).ok().filter(|v| !v.trim().is_empty()) {
            return KeySource::Value(Secret::new(v));
        }
        if let Some(p) = std::env::var_os(KEY_FILE_ENV).filter(|p| !p.is_empty()) {
            return KeySource::File(PathBuf::from(p));
        }
        KeySource::File(default_key_file(state_dir))
    }

    /// Where the key comes from, for messages.
    pub fn describe(&self) -> String {
        match self {
            KeySource::Value(_) => format!("the environment variable {KEY_ENV}"),
            KeySource::File(p) => format!("the key file {}", p.display()),
        }
    }
}

/// `<state_dir>.key`, beside the state directory.
pub fn default_key_file(state_dir: &Path) -> PathBuf {
    match state_dir.file_name() {
        Some(name) if name != "." && name != ".." => {
            let mut n = name.to_os_string();
            n.push(".key");
            state_dir.with_file_name(n)
        }
        _ => state_dir.join("..").join("msgtrace-state.key"),
    }
}

/// What is wrong with a secret store key's text (never the key itself).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyFormatError {
    /// Neither encoding.
    #[error("neither 64 hex digits nor base64")]
    Encoding,
    /// Base64 of another length.
    #[error("{0} bytes instead of 32")]
    Length(usize),
}

fn parse_key(text: &str) -> Result<Zeroizing<[u8; 32]>, KeyFormatError> {
    let t = text.trim();
    let bytes = Zeroizing::new(
        if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
            (0..32)
                .map(|i| u8::from_str_radix(&t[2 * i..2 * i + 2], 16).unwrap_or(0))
                .collect::<Vec<u8>>()
        } else {
            STANDARD
                .decode(t)
                .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(t))
                .map_err(|_| KeyFormatError::Encoding)?
        },
    );
    let key: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| KeyFormatError::Length(bytes.len()))?;
    Ok(Zeroizing::new(key))
}

/// The record stored in the `secrets` tree.
#[derive(Serialize, Deserialize)]
#[serde(tag = "version")]
enum StoredSecret {
    #[serde(rename = "1")]
    V1 {
        kind: SecretKind,
        nonce: String,
        ciphertext: String,
    },
}

fn aad(name: &str, kind: SecretKind) -> Vec<u8> {
    format!("msgtrace-secret/v1/{name}/{kind}").into_bytes()
}

/// Checks a secret name: 1 to 128 of `[A-Za-z0-9._-]`.
pub fn check_name(name: &str) -> Result<(), SecretError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(SecretError::InvalidName(name.to_string()))
    }
}

/// The secret store of a state directory. Every access to the `secrets` tree goes through it.
pub struct SecretStore {
    store: Option<Store>,
    state_dir: PathBuf,
    key_source: KeySource,
}

impl fmt::Debug for SecretStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretStore")
            .field("state_dir", &self.state_dir)
            .field("key", &self.key_source)
            .finish()
    }
}

impl SecretStore {
    /// The secret store of an open state directory, with the key the environment selects.
    pub fn new(store: Store) -> SecretStore {
        let state_dir = store.dir().to_path_buf();
        SecretStore {
            key_source: KeySource::from_env(&state_dir),
            store: Some(store),
            state_dir,
        }
    }

    /// The secret store of a state directory that does not exist yet: it holds no secrets.
    pub fn absent(state_dir: &Path) -> SecretStore {
        SecretStore {
            store: None,
            state_dir: state_dir.to_path_buf(),
            key_source: KeySource::from_env(state_dir),
        }
    }

    /// Uses another key source (embedding hosts, tests).
    pub fn with_key_source(mut self, key_source: KeySource) -> SecretStore {
        self.key_source = key_source;
        self
    }

    /// Where the key comes from.
    pub fn key_source(&self) -> &KeySource {
        &self.key_source
    }

    fn key(&self, create: bool) -> Result<Zeroizing<[u8; 32]>, SecretError> {
        let source_desc = self.key_source.describe();
        match &self.key_source {
            KeySource::Value(v) => parse_key(v.expose()).map_err(|reason| SecretError::BadKey {
                source_desc,
                reason,
            }),
            KeySource::File(path) => {
                let io = |e: std::io::Error| SecretError::KeyFile {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                };
                match std::fs::read_to_string(path) {
                    Ok(text) => {
                        let text = Zeroizing::new(text);
                        warn_if_readable_by_others(path);
                        parse_key(&text).map_err(|reason| SecretError::BadKey {
                            source_desc,
                            reason,
                        })
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                        let key = ChaCha20Poly1305::generate_key(&mut OsRng);
                        let hex = Zeroizing::new(
                            key.iter().map(|b| format!("{b:02x}")).collect::<String>() + "\n",
                        );
                        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                            std::fs::create_dir_all(parent).map_err(io)?;
                        }
                        write_private_file(path, hex.as_bytes()).map_err(io)?;
                        tracing::info!(path = %path.display(), "secret store key file created");
                        let mut out = Zeroizing::new([0u8; 32]);
                        out.copy_from_slice(&key);
                        Ok(out)
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        Err(SecretError::NoKey { source_desc })
                    }
                    Err(e) => Err(io(e)),
                }
            }
        }
    }

    fn opened(&self) -> Option<&Store> {
        self.store.as_ref()
    }

    /// Stores (or replaces) a secret, creating the key file if there is none.
    pub fn set(&self, name: &str, value: &SecretValue) -> Result<(), SecretError> {
        check_name(name)?;
        let store = self.opened().ok_or_else(|| SecretError::NotFound {
            name: name.to_string(),
            state_dir: self.state_dir.display().to_string(),
            kind_flag: String::new(),
            known: String::new(),
        })?;
        let key = self.key(true)?;
        let cipher = ChaCha20Poly1305::new(Key::from_slice(key.as_slice()));
        let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
        let kind = value.kind();
        let plaintext = value.plaintext();
        let ciphertext = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext.as_slice(),
                    aad: &aad(name, kind),
                },
            )
            .map_err(|_| SecretError::Corrupt {
                name: name.to_string(),
                reason: "encryption failed".into(),
            })?;
        let record = StoredSecret::V1 {
            kind,
            nonce: STANDARD.encode(nonce),
            ciphertext: STANDARD.encode(ciphertext),
        };
        let bytes = serde_json::to_vec(&record).map_err(|e| SecretError::Corrupt {
            name: name.to_string(),
            reason: e.to_string(),
        })?;
        store.put_raw(TREE, name, &bytes)?;
        Ok(())
    }

    fn record(&self, name: &str) -> Result<Option<StoredSecret>, SecretError> {
        let Some(store) = self.opened() else {
            return Ok(None);
        };
        let Some(bytes) = store.get_raw(TREE, name)? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| SecretError::Corrupt {
                name: name.to_string(),
                reason: e.to_string(),
            })
    }

    /// Reads and decrypts a secret.
    pub fn get(&self, name: &str) -> Result<SecretValue, SecretError> {
        self.get_expecting(name, None)
    }

    fn get_expecting(
        &self,
        name: &str,
        want: Option<SecretKind>,
    ) -> Result<SecretValue, SecretError> {
        let Some(StoredSecret::V1 {
            kind,
            nonce,
            ciphertext,
        }) = self.record(name)?
        else {
            let known = self.list().unwrap_or_default();
            let known: Vec<String> = known
                .into_iter()
                .filter(|(_, k)| want.is_none_or(|w| w == *k))
                .map(|(n, _)| n)
                .collect();
            return Err(SecretError::NotFound {
                name: name.to_string(),
                state_dir: self.state_dir.display().to_string(),
                kind_flag: match want {
                    Some(SecretKind::Credentials) => " --kind credentials".into(),
                    _ => String::new(),
                },
                known: if known.is_empty() {
                    String::new()
                } else {
                    format!("; stored: {}", known.join(", "))
                },
            });
        };
        if let Some(want) = want.filter(|w| *w != kind) {
            return Err(SecretError::WrongKind {
                name: name.to_string(),
                have: kind,
                want,
            });
        }
        let corrupt = |reason: &str| SecretError::Corrupt {
            name: name.to_string(),
            reason: reason.to_string(),
        };
        let nonce = STANDARD
            .decode(nonce)
            .ok()
            .filter(|n| n.len() == 12)
            .ok_or_else(|| corrupt("bad nonce"))?;
        let ciphertext = STANDARD
            .decode(ciphertext)
            .map_err(|_| corrupt("bad ciphertext"))?;
        let key = self.key(false)?;
        let cipher = ChaCha20Poly1305::new(Key::from_slice(key.as_slice()));
        let plaintext = Zeroizing::new(
            cipher
                .decrypt(
                    Nonce::from_slice(&nonce),
                    Payload {
                        msg: &ciphertext,
                        aad: &aad(name, kind),
                    },
                )
                .map_err(|_| SecretError::Decrypt {
                    name: name.to_string(),
                    source_desc: self.key_source.describe(),
                })?,
        );
        SecretValue::from_plaintext(kind, &plaintext).ok_or_else(|| corrupt("bad plaintext"))
    }

    /// A `text` secret (an `oauth_secret` client secret).
    pub fn text(&self, name: &str) -> Result<Secret, SecretError> {
        match self.get_expecting(name, Some(SecretKind::Text))? {
            SecretValue::Text(s) => Ok(s),
            other => Err(SecretError::WrongKind {
                name: name.to_string(),
                have: other.kind(),
                want: SecretKind::Text,
            }),
        }
    }

    /// A `credentials` secret (a `basic_secret` username and password).
    pub fn credentials(&self, name: &str) -> Result<(String, Secret), SecretError> {
        match self.get_expecting(name, Some(SecretKind::Credentials))? {
            SecretValue::Credentials { username, password } => Ok((username, password)),
            other => Err(SecretError::WrongKind {
                name: name.to_string(),
                have: other.kind(),
                want: SecretKind::Credentials,
            }),
        }
    }

    /// Names and kinds of every secret, by name. Needs no key.
    pub fn list(&self) -> Result<Vec<(String, SecretKind)>, SecretError> {
        let Some(store) = self.opened() else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for (name, bytes) in store.list_raw(TREE)? {
            let record: StoredSecret =
                serde_json::from_slice(&bytes).map_err(|e| SecretError::Corrupt {
                    name: name.clone(),
                    reason: e.to_string(),
                })?;
            let StoredSecret::V1 { kind, .. } = record;
            out.push((name, kind));
        }
        Ok(out)
    }

    /// Removes a secret; whether it existed.
    pub fn remove(&self, name: &str) -> Result<bool, SecretError> {
        match self.opened() {
            Some(store) => Ok(store.remove_raw(TREE, name)?),
            None => Ok(false),
        }
    }
}

#[cfg(unix)]
fn write_private_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(not(unix))]
fn write_private_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                "secret store key file is accessible to other users; chmod 600 it"
            );
        }
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_: &Path) {}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &Path) -> SecretStore {
        SecretStore::new(Store::open(dir.join("state")).unwrap())
            .with_key_source(KeySource::File(dir.join("state.key")))
    }

    #[test]
    fn round_trip_both_kinds_encrypted_at_rest() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        s.set("client", &SecretValue::Text(Secret::new("hunter2-text")))
            .unwrap();
        let creds =
            SecretValue::parse(SecretKind::Credentials, "svc@contoso.com\nhunter2-pw\n").unwrap();
        s.set("rws", &creds).unwrap();
        assert_eq!(s.text("client").unwrap().expose(), "hunter2-text");
        let (u, p) = s.credentials("rws").unwrap();
        assert_eq!((u.as_str(), p.expose()), ("svc@contoso.com", "hunter2-pw"));
        assert_eq!(
            s.list().unwrap(),
            vec![
                ("client".to_string(), SecretKind::Text),
                ("rws".to_string(), SecretKind::Credentials)
            ]
        );
        // At rest: versioned JSON, no plaintext.
        let raw = s
            .opened()
            .unwrap()
            .get_raw(TREE, "client")
            .unwrap()
            .unwrap();
        let text = String::from_utf8(raw).unwrap();
        assert!(
            text.starts_with(r#"{"version":"1","kind":"text""#),
            "{text}"
        );
        assert!(!text.contains("hunter2"));
        // The key file is private and beside, not inside, the state directory.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.path().join("state.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(s.remove("client").unwrap());
        assert!(!s.remove("client").unwrap());
    }

    #[test]
    fn errors_name_the_fix_and_never_the_value() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        s.set("client", &SecretValue::Text(Secret::new("hunter2")))
            .unwrap();
        let e = s.credentials("client").unwrap_err().to_string();
        assert!(
            e.contains("is a text secret but a credentials secret"),
            "{e}"
        );
        let e = s.text("nope").unwrap_err().to_string();
        assert!(e.contains("no secret named `nope`"), "{e}");
        assert!(e.contains("stored: client"), "{e}");
        let other = SecretStore::new(s.store.clone().unwrap())
            .with_key_source(KeySource::Value(Secret::new("00".repeat(32))));
        let e = other.text("client").unwrap_err().to_string();
        assert!(
            e.contains("cannot be decrypted with the key from the environment"),
            "{e}"
        );
        let bad = SecretStore::new(s.store.clone().unwrap())
            .with_key_source(KeySource::Value(Secret::new("short")));
        let e = bad.text("client").unwrap_err().to_string();
        assert!(e.contains("must be 64 hex digits"), "{e}");
        let none = SecretStore::new(s.store.clone().unwrap())
            .with_key_source(KeySource::File(dir.path().join("missing.key")));
        let e = none.text("client").unwrap_err().to_string();
        assert!(e.contains("missing.key does not exist"), "{e}");
        assert!(check_name("a b").is_err());
        for msg in [format!("{s:?}"), format!("{:?}", s.get("client").unwrap())] {
            assert!(!msg.contains("hunter2"), "{msg}");
        }
    }

    #[test]
    fn keys_parse_as_hex_or_base64() {
        let hex = "ab".repeat(32);
        assert_eq!(parse_key(&hex).unwrap()[0], 0xab);
        let b64 = STANDARD.encode([7u8; 32]);
        assert_eq!(parse_key(&format!("{b64}\n")).unwrap()[31], 7);
        assert!(parse_key(&STANDARD.encode([7u8; 16])).is_err());
        assert_eq!(
            default_key_file(Path::new("/var/lib/msgtrace")),
            PathBuf::from("/var/lib/msgtrace.key")
        );
        assert_eq!(
            default_key_file(Path::new("./msgtrace-state/")),
            PathBuf::from("./msgtrace-state.key")
        );
    }

    #[test]
    fn stdin_values() {
        assert_eq!(
            SecretValue::parse(SecretKind::Text, "abc\r\n").unwrap(),
            SecretValue::Text(Secret::new("abc"))
        );
        assert_eq!(
            SecretValue::parse(SecretKind::Text, "a b\n\n").unwrap(),
            SecretValue::Text(Secret::new("a b\n"))
        );
        assert!(SecretValue::parse(SecretKind::Text, "\n").is_err());
        assert!(SecretValue::parse(SecretKind::Credentials, "user\n").is_err());
        assert!(SecretValue::parse(SecretKind::Credentials, "u\np\nextra\n").is_err());
    }
}
