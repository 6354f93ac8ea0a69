//! The `object_store` sink: the archive past the API's 90 days. Each page becomes gzip NDJSON
//! objects in S3, Azure Blob Storage, Google Cloud Storage or a directory, through the
//! `object_store` crate (apache arrow-rs), laid out for query engines to read directly:
//!
//! ```text
//! {prefix}/source={source id}/date=YYYY-MM-DD/hour=HH/{page hash}.ndjson.gz
//! ```
//!
//! - **One object per page and hour** ([`page_objects`]): the lines are exactly what the file
//!   sink writes; each row goes under the UTC hour of its `_time`, so a page whose rows cross an
//!   hour is two objects (a row without a readable time, flagged `__isBroken`, goes with the
//!   page's first hour, so that the split does not depend on when the page was delivered).
//! - **Named by the page's identity** ([`page_hash`]): the cursor the page advances and the URL it
//!   was asked for ([`PageKey`]), which a page delivered again after a crash shares. So the
//!   delivery again *overwrites* what the killed one wrote: the archive holds every row once.
//!   A re-read's page (late rows and status changes only) also hashes its content, so it never
//!   replaces the page first read from the same URL, nor another re-read of it.
//! - **Atomic puts**: an object store shows an object whole or not at all; `file://` writes a
//!   temporary file (`{object}#1`), `fsync`s it and renames it; one that a kill left is
//!   removed when the object is put again ([`remove_staged`]).
//! - **Delivery**: the page is acknowledged only once every object of it is stored. Connection
//!   failures, timeouts, 429 and 5xx are retried by the crate per the sink's retry policy
//!   ([`super::http::default_retry`], as `http` sinks); a refused credential (401, 403) or any
//!   other refusal fails the page, which is then delivered again (the next run, or the held
//!   page of a scheduled run).

use super::http::default_retry;
use crate::config::{ObjectStoreConfig, StoreProvider};
use chrono::{DateTime, Utc};
use futures_util::future::LocalBoxFuture;
use msgtrace_actors::event::{Batch, PageKey};
use msgtrace_actors::retry::{RetryKind, RetryPolicy};
use msgtrace_actors::sink::{Sink, SinkError, SinkInput};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt as _, PutPayload};
use std::collections::BTreeMap;
use std::io::Write as _;
use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;
use tracing::debug;
use url::Url;

/// Why the sink could not store a page, or could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The store could not be built from the configuration and the environment.
    #[error("cannot set up the store {url}: {message}; check url, endpoint, [options] and the provider's environment variables")]
    Setup {
        /// The sink's `url`.
        url: String,
        /// The crate's reason (secrets masked).
        message: String,
    },
    /// The store refused the credentials.
    #[error("the store refused the credentials writing {path}: {message}; give the sink credentials that may write there (options or the provider's environment variables)")]
    Refused {
        /// The object.
        path: String,
        /// The crate's reason (secrets masked).
        message: String,
    },
    /// Any other failure to store an object (after the retries).
    #[error("writing {path} failed: {message}; the page is delivered again")]
    Put {
        /// The object.
        path: String,
        /// The crate's reason (secrets masked).
        message: String,
    },
    /// The page could not be compressed.
    #[error("gzip compression failed: {0}")]
    Gzip(#[from] std::io::Error),
}

/// Why a sink `url` names no object store; each message says what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArchiveUrlError {
    /// Not `s3`, `az`, `gs` or `file`.
    #[error(
        "scheme `{0}` is not an object store; use s3://bucket/prefix, az://container/prefix, gs://bucket/prefix or file:///directory"
    )]
    Scheme(String),
    /// `file://name/...`: a host where a path was meant.
    #[error("file:// takes an absolute path (`{0}` reads as a host); write file:///directory")]
    FileHost(String),
    /// `s3:///x`: no bucket or container (the scheme is kept for the message).
    #[error("names no bucket or container; write {0}://bucket/prefix")]
    NoBucket(String),
    /// `?...` or `#...`.
    #[error("has a query or fragment; write scheme://bucket/prefix only")]
    QueryOrFragment,
    /// A path the crate refuses as a prefix.
    #[error(
        "the path is not a valid object prefix ({0}); use segments of letters, digits, `-`, `_` and `.`"
    )]
    Prefix(String),
    /// `file:///`.
    #[error("names the root directory; write file:///directory")]
    Root,
}

/// The provider of a sink `url`, and its prefix (the path, without leading or trailing `/`); the
/// error says what to write instead.
pub fn parse_url(url: &Url) -> Result<(StoreProvider, String), ArchiveUrlError> {
    let provider = match url.scheme() {
        "s3" => StoreProvider::S3,
        "az" => StoreProvider::Azure,
        "gs" => StoreProvider::Gcs,
        "file" => StoreProvider::File,
        other => return Err(ArchiveUrlError::Scheme(other.to_owned())),
    };
    match (provider, url.host_str()) {
        (StoreProvider::File, Some(h)) if !h.is_empty() => {
            return Err(ArchiveUrlError::FileHost(h.to_owned()))
        }
        (StoreProvider::File, _) => {}
        (_, None) | (_, Some("")) => {
            return Err(ArchiveUrlError::NoBucket(url.scheme().to_owned()))
        }
        _ => {}
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(ArchiveUrlError::QueryOrFragment);
    }
    // For file://, the directory: a local store's paths start at `/`.
    let prefix = Path::from_url_path(url.path())
        .map_err(|e| ArchiveUrlError::Prefix(e.to_string()))?
        .to_string();
    if provider == StoreProvider::File && prefix.is_empty() {
        return Err(ArchiveUrlError::Root);
    }
    Ok((provider, prefix))
}

/// Settings that only the sink's `endpoint` key may make (it allows `http://` to loopback only).
const ENDPOINT_KEYS: &[&str] = &[
    "aws_endpoint",
    "aws_endpoint_url_s3",
    "azure_storage_endpoint",
    "azure_storage_use_emulator",
    "google_base_url",
    "allow_http",
    "allow_invalid_certificates",
];

/// Why a key of an `object_store` sink's `[options]` is refused; each message says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArchiveOptionError {
    /// A `file://` store has no settings.
    #[error("a file:// store takes no options; remove [options]")]
    FileStore,
    /// Not a name the crate knows for this provider (the examples are the provider's).
    #[error("not a setting of this store; use the object_store crate's names, e.g. {0}")]
    Unknown(&'static str),
    /// A setting only the sink's `endpoint` key may make.
    #[error(
        "set the sink's own endpoint key instead (http:// is allowed only to a loopback test server)"
    )]
    Endpoint,
}

/// Whether `key` is a setting of `provider` in the crate (any of its spellings) that `[options]`
/// may hold; the error says why not.
pub fn check_option(provider: StoreProvider, key: &str) -> Result<(), ArchiveOptionError> {
    let lower = key.to_ascii_lowercase();
    let canonical = match provider {
        StoreProvider::S3 => {
            object_store::aws::AmazonS3ConfigKey::from_str(&lower).map(|k| k.as_ref().to_owned())
        }
        StoreProvider::Azure => {
            object_store::azure::AzureConfigKey::from_str(&lower).map(|k| k.as_ref().to_owned())
        }
        StoreProvider::Gcs => {
            object_store::gcp::GoogleConfigKey::from_str(&lower).map(|k| k.as_ref().to_owned())
        }
        StoreProvider::File => return Err(ArchiveOptionError::FileStore),
    };
    let canonical = canonical.map_err(|_| {
        ArchiveOptionError::Unknown(match provider {
            StoreProvider::S3 => "aws_access_key_id, aws_secret_access_key, aws_region",
            StoreProvider::Azure => "azure_storage_account_name, azure_storage_account_key",
            StoreProvider::Gcs => "google_service_account",
            StoreProvider::File => "",
        })
    })?;
    if ENDPOINT_KEYS.contains(&canonical.as_str()) {
        return Err(ArchiveOptionError::Endpoint);
    }
    Ok(())
}

/// The crate's retry settings for a sink retry policy: the same first delay, growth and number
/// of retries (the crate retries connection failures, timeouts, 429 and 5xx, never other 4xx).
pub fn retry_config(policy: &RetryPolicy) -> object_store::RetryConfig {
    let (max_retries, base) = match policy.kind {
        RetryKind::Disabled => (0, 1.0),
        RetryKind::Static => (policy.limit as usize, 1.0),
        RetryKind::Backoff => (policy.limit as usize, policy.multiplier.max(1.0)),
    };
    object_store::RetryConfig {
        backoff: object_store::BackoffConfig {
            init_backoff: policy.initial,
            max_backoff: Duration::from_secs(60),
            base,
        },
        max_retries,
        retry_timeout: Duration::from_secs(180),
    }
}

/// The store a configuration names, with the provider's settings from the environment (the
/// crate's `from_env`: `AWS_*`, `AZURE_*`, `GOOGLE_*`), then `[options]`, then `endpoint`.
/// Builds only: no request is made.
pub fn build_store(
    config: &ObjectStoreConfig,
    retry: &RetryPolicy,
) -> Result<Arc<dyn ObjectStore>, ArchiveError> {
    let url = config.url.as_str();
    let options = config
        .options
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.expose()));
    let endpoint = config
        .endpoint
        .as_ref()
        .map(|e| e.as_str().trim_end_matches('/'));
    let allow_http = config
        .endpoint
        .as_ref()
        .is_some_and(|e| e.scheme() == "http");
    let retry = retry_config(retry);
    install_tls_provider();
    let store: Result<Arc<dyn ObjectStore>, object_store::Error> = match config.provider {
        StoreProvider::File => Ok(Arc::new(
            object_store::local::LocalFileSystem::new().with_fsync(true),
        )),
        StoreProvider::S3 => {
            let mut b = object_store::aws::AmazonS3Builder::from_env().with_url(url);
            for (k, v) in options {
                if let Ok(key) = k.parse() {
                    b = b.with_config(key, v);
                }
            }
            if let Some(e) = endpoint {
                b = b.with_endpoint(e).with_allow_http(allow_http);
            }
            b.with_retry(retry).build().map(|s| Arc::new(s) as _)
        }
        StoreProvider::Azure => {
            let mut b = object_store::azure::MicrosoftAzureBuilder::from_env().with_url(url);
            for (k, v) in options {
                if let Ok(key) = k.parse() {
                    b = b.with_config(key, v);
                }
            }
            if let Some(e) = endpoint {
                b = b.with_endpoint(e.to_owned()).with_allow_http(allow_http);
            }
            b.with_retry(retry).build().map(|s| Arc::new(s) as _)
        }
        StoreProvider::Gcs => {
            let mut b = object_store::gcp::GoogleCloudStorageBuilder::from_env().with_url(url);
            for (k, v) in options {
                if let Ok(key) = k.parse() {
                    b = b.with_config(key, v);
                }
            }
            if let Some(e) = endpoint {
                b = b.with_base_url(e).with_client_options(
                    object_store::ClientOptions::new().with_allow_http(allow_http),
                );
            }
            b.with_retry(retry).build().map(|s| Arc::new(s) as _)
        }
    };
    store.map_err(|e| ArchiveError::Setup {
        url: config.url.to_string(),
        message: mask(&e.to_string(), config),
    })
}

/// Makes `ring` the process's rustls provider unless one is installed already (a host's own):
/// reqwest, under the crate's clients, is built without one of its own (which would be aws-lc,
/// a C library to build) and refuses to build a client without it.
fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A message of the crate with every secret of the configuration, and every signature or token
/// in a URL it quotes, replaced by `***`.
fn mask(message: &str, config: &ObjectStoreConfig) -> String {
    let mut out = message.to_owned();
    for v in config.options.values() {
        let v = v.expose();
        if v.len() >= 4 {
            out = out.replace(v, "***");
        }
    }
    // A SAS token or a presigned request carries its signature in the query.
    for param in [
        "sig=",
        "X-Amz-Signature=",
        "X-Amz-Credential=",
        "X-Amz-Security-Token=",
    ] {
        let mut from = 0;
        while let Some(i) = out[from..].find(param) {
            let start = from + i + param.len();
            let end = out[start..]
                .find(|c: char| c == '&' || c.is_whitespace() || c == '"')
                .map_or(out.len(), |j| start + j);
            out.replace_range(start..end, "***");
            from = start + 3;
        }
    }
    out
}

/// One object of a page: where it goes and its gzip NDJSON.
#[derive(Debug)]
pub struct Object {
    /// The object's path in the store.
    pub path: Path,
    /// Its rows.
    pub rows: usize,
    /// The gzip-compressed NDJSON.
    pub body: Vec<u8>,
}

/// The fields of a line the sink reads to place it.
#[derive(serde::Deserialize)]
struct Placing {
    #[serde(rename = "_time")]
    time: Option<f64>,
    #[serde(rename = "__isBroken", default)]
    broken: bool,
}

/// The hash that names a page's objects: of its [`PageKey`] (and, for a re-read or a batch
/// without a key, of its NDJSON), 32 hex digits.
pub fn page_hash(page: Option<&PageKey>, ndjson: &[u8]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    match page {
        Some(k) => {
            for part in [k.cursor.as_bytes(), b"\0", k.url.as_bytes()] {
                ctx.update(part);
            }
            if k.reread {
                ctx.update(b"\0reread\0");
                ctx.update(ndjson);
            }
        }
        None => {
            ctx.update(b"content\0");
            ctx.update(ndjson);
        }
    }
    let digest = ctx.finish();
    digest.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The start of the UTC hour of epoch seconds `t`.
fn hour_of(t: f64) -> Option<i64> {
    t.is_finite()
        .then(|| (t.floor() as i64).div_euclid(3600) * 3600)
}

/// The objects of one page: its NDJSON lines grouped by the UTC hour of their `_time`, each
/// group gzip-compressed and named `{prefix}/source={source}/date=…/hour=…/{hash}.ndjson.gz`.
/// Lines whose time cannot be read (flagged `__isBroken`, or without `_time`) go with the page's
/// first hour; when no line has one, with the hour of `now`.
pub fn page_objects(
    prefix: &str,
    source: &str,
    page: Option<&PageKey>,
    ndjson: &[u8],
    now: DateTime<Utc>,
) -> Result<Vec<Object>, ArchiveError> {
    let lines: Vec<&[u8]> = ndjson
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    let hours: Vec<Option<i64>> = lines
        .iter()
        .map(|l| {
            serde_json::from_slice::<Placing>(l)
                .ok()
                .filter(|p| !p.broken)
                .and_then(|p| p.time)
                .and_then(hour_of)
        })
        .collect();
    let fallback = hours
        .iter()
        .flatten()
        .next()
        .copied()
        .unwrap_or_else(|| now.timestamp().div_euclid(3600) * 3600);
    let mut groups: BTreeMap<i64, (usize, flate2::write::GzEncoder<Vec<u8>>)> = BTreeMap::new();
    for (line, hour) in lines.iter().zip(&hours) {
        let (rows, enc) = groups.entry(hour.unwrap_or(fallback)).or_insert_with(|| {
            (
                0,
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default()),
            )
        });
        *rows += 1;
        enc.write_all(line)?;
        enc.write_all(b"\n")?;
    }
    let hash = page_hash(page, ndjson);
    groups
        .into_iter()
        .map(|(hour, (rows, enc))| {
            Ok(Object {
                path: object_path(prefix, source, hour, &hash),
                rows,
                body: enc.finish()?,
            })
        })
        .collect()
}

/// `{prefix}/source={source}/date=YYYY-MM-DD/hour=HH/{hash}.ndjson.gz` for the hour starting at
/// epoch seconds `hour`.
pub fn object_path(prefix: &str, source: &str, hour: i64, hash: &str) -> Path {
    let at = DateTime::<Utc>::from_timestamp(hour, 0).unwrap_or_default();
    let ours = [
        format!("source={source}"),
        at.format("date=%Y-%m-%d").to_string(),
        at.format("hour=%H").to_string(),
        format!("{hash}.ndjson.gz"),
    ];
    ours.into_iter()
        .fold(Path::parse(prefix).unwrap_or_default(), |path, part| {
            path.join(part)
        })
}

/// Removes what puts of `location` into a directory cut short by a kill left: the crate writes
/// `{file}#1` (or the next free number) and renames it, so the leftovers are `#1`, `#2`, … up
/// to the first one missing. Query engines read `*.ndjson.gz` only, so they are litter, not
/// rows; the put that follows uses `#1` again.
fn remove_staged(location: &Path) {
    let Ok(file) = object_store::local::LocalFileSystem::new().path_to_filesystem(location) else {
        return;
    };
    for n in 1..=1000 {
        let mut staged = file.clone().into_os_string();
        staged.push(format!("#{n}"));
        if std::fs::remove_file(&staged).is_err() {
            break;
        }
        debug!(file = %std::path::Path::new(&staged).display(), "removed a put cut short");
    }
}

/// Pages archived in an object store (`type = "object_store"`).
pub struct ArchiveSink {
    name: String,
    config: ObjectStoreConfig,
    retry: RetryPolicy,
    /// Built at the first delivery (and again after a reopen: credentials the environment or a
    /// file gives are read anew).
    store: Option<Arc<dyn ObjectStore>>,
    /// The NDJSON of a page not encoded by the fetcher, kept for the next page.
    buf: Vec<u8>,
}

impl ArchiveSink {
    /// An `object_store` sink with this id and configuration, retrying per [`default_retry`].
    pub fn new(name: &str, config: &ObjectStoreConfig) -> ArchiveSink {
        ArchiveSink {
            name: name.to_owned(),
            config: config.clone(),
            retry: default_retry(),
            store: None,
            buf: Vec::new(),
        }
    }

    /// Replaces the retry policy (tests use short delays).
    pub fn with_retry(mut self, retry: RetryPolicy) -> ArchiveSink {
        self.retry = retry;
        self
    }

    fn error(&self, e: ArchiveError) -> SinkError {
        SinkError {
            sink: self.name.clone(),
            message: e.to_string(),
        }
    }

    fn store(&mut self) -> Result<Arc<dyn ObjectStore>, ArchiveError> {
        if let Some(s) = &self.store {
            return Ok(s.clone());
        }
        let s = build_store(&self.config, &self.retry)?;
        self.store = Some(s.clone());
        Ok(s)
    }

    /// Stores every object of a page, one after the other.
    async fn put_all(
        store: Arc<dyn ObjectStore>,
        objects: Vec<Object>,
        config: &ObjectStoreConfig,
    ) -> Result<(), ArchiveError> {
        for o in objects {
            if config.provider == StoreProvider::File {
                remove_staged(&o.path);
            }
            let shown = o.path.to_string();
            let (rows, bytes) = (o.rows, o.body.len());
            match store.put(&o.path, PutPayload::from(o.body)).await {
                Ok(_) => debug!(object = %shown, rows, bytes, "object stored"),
                Err(e) => {
                    let message = mask(&e.to_string(), config);
                    return Err(match e {
                        object_store::Error::PermissionDenied { .. }
                        | object_store::Error::Unauthenticated { .. } => ArchiveError::Refused {
                            path: shown,
                            message,
                        },
                        _ => ArchiveError::Put {
                            path: shown,
                            message,
                        },
                    });
                }
            }
        }
        Ok(())
    }
}

impl Sink for ArchiveSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn input(&self) -> SinkInput {
        SinkInput::Ndjson
    }

    /// Builds the store again at the next delivery (`SIGHUP`: rotated credentials).
    fn reopen(&mut self) -> Result<(), SinkError> {
        self.store = None;
        Ok(())
    }

    fn deliver<'a>(&'a mut self, batch: &'a Batch) -> LocalBoxFuture<'a, Result<(), SinkError>> {
        let mut buf = std::mem::take(&mut self.buf);
        let objects = page_objects(
            &self.config.prefix,
            &batch.source,
            batch.page.as_deref(),
            batch.ndjson(&mut buf),
            Utc::now(),
        );
        buf.clear();
        self.buf = buf;
        super::release_if_large(&mut self.buf);
        let store = self.store();
        Box::pin(async move {
            let (objects, store) = match (objects, store) {
                (Ok(o), Ok(s)) => (o, s),
                (Err(e), _) | (_, Err(e)) => return Err(self.error(e)),
            };
            Self::put_all(store, objects, &self.config)
                .await
                .map_err(|e| self.error(e))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;
    use msgtrace_actors::event::Event;

    fn key(url: &str, reread: bool) -> PageKey {
        PageKey {
            cursor: "src".into(),
            url: url.into(),
            reread,
        }
    }

    fn line(time: f64, id: &str) -> String {
        format!("{{\"id\":\"{id}\",\"_time\":{time}}}\n")
    }

    fn gunzip(body: &[u8]) -> String {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(body), &mut s).unwrap();
        s
    }

    #[test]
    fn urls_name_their_provider_and_prefix() {
        let p = |u: &str| parse_url(&Url::parse(u).unwrap());
        assert_eq!(
            p("s3://bucket/a/b/").unwrap(),
            (StoreProvider::S3, "a/b".into())
        );
        assert_eq!(p("az://c").unwrap(), (StoreProvider::Azure, "".into()));
        assert_eq!(p("gs://b/x").unwrap(), (StoreProvider::Gcs, "x".into()));
        assert_eq!(
            p("file:///var/lib/archive").unwrap(),
            (StoreProvider::File, "var/lib/archive".into())
        );
        assert!(p("https://bucket/x")
            .unwrap_err()
            .to_string()
            .contains("s3://"));
        assert!(p("file://relative/x")
            .unwrap_err()
            .to_string()
            .contains("file:///"));
        assert!(p("file:///").unwrap_err().to_string().contains("root"));
        assert!(p("s3://b/x?y=1").unwrap_err().to_string().contains("query"));
    }

    #[test]
    fn options_are_the_crates_names_without_the_endpoint_ones() {
        assert!(check_option(StoreProvider::S3, "aws_access_key_id").is_ok());
        assert!(check_option(StoreProvider::S3, "AWS_REGION").is_ok());
        assert!(check_option(StoreProvider::Azure, "azure_storage_account_key").is_ok());
        assert!(check_option(StoreProvider::Gcs, "google_service_account").is_ok());
        assert!(check_option(StoreProvider::S3, "aws_acces_key")
            .unwrap_err()
            .to_string()
            .contains("aws_access_key_id"));
        for k in ["endpoint", "aws_endpoint_url", "allow_http"] {
            assert!(
                check_option(StoreProvider::S3, k)
                    .unwrap_err()
                    .to_string()
                    .contains("endpoint key"),
                "{k}"
            );
        }
        assert!(check_option(StoreProvider::Azure, "use_emulator").is_err());
        assert!(check_option(StoreProvider::File, "x").is_err());
    }

    #[test]
    fn a_page_is_one_object_per_hour_named_by_its_identity() {
        // 10:59:59.5 and 11:00:00 on 2026-11-24 (UTC), newest first as the API sends them.
        let t10 = 1_764_000_000.0 - 0.5; // 2025-11-24T15:59:59.5Z
        let t11 = 1_764_000_000.0;
        let page = format!("{}{}{}", line(t11, "a"), line(t10, "b"), line(t10, "c"));
        let k = key("https://graph/x?$skiptoken=1", false);
        let objects =
            page_objects("arch/v1", "src", Some(&k), page.as_bytes(), Utc::now()).unwrap();
        assert_eq!(objects.len(), 2);
        let hash = page_hash(Some(&k), b"");
        assert_eq!(hash.len(), 32);
        assert_eq!(
            objects[0].path.as_ref(),
            format!("arch/v1/source=src/date=2025-11-24/hour=15/{hash}.ndjson.gz")
        );
        assert_eq!(
            objects[1].path.as_ref(),
            format!("arch/v1/source=src/date=2025-11-24/hour=16/{hash}.ndjson.gz")
        );
        assert_eq!(
            gunzip(&objects[0].body),
            format!("{}{}", line(t10, "b"), line(t10, "c"))
        );
        assert_eq!(objects[0].rows, 2);
        assert_eq!(gunzip(&objects[1].body), line(t11, "a"));
    }

    #[test]
    fn the_same_page_again_has_the_same_names_and_another_page_others() {
        let page = line(1_764_000_000.0, "a");
        let names = |k: &PageKey, body: &str| -> Vec<String> {
            page_objects("", "src", Some(k), body.as_bytes(), Utc::now())
                .unwrap()
                .into_iter()
                .map(|o| o.path.to_string())
                .collect()
        };
        let k = key("https://graph/x?a=1", false);
        assert_eq!(names(&k, &page), names(&k, &page));
        // Delivered again with other rows (asked again after a power cut): still overwritten.
        assert_eq!(names(&k, &page), names(&k, &line(1_764_000_001.0, "z")));
        assert_ne!(
            names(&k, &page),
            names(&key("https://graph/x?a=2", false), &page)
        );
        let backfill = PageKey {
            cursor: "backfill/src/1-2".into(),
            ..k.clone()
        };
        assert_ne!(names(&k, &page), names(&backfill, &page));
        // A re-read of the same URL never replaces the page first read, nor another re-read
        // that found other rows; the same re-read again does.
        let r = key("https://graph/x?a=1", true);
        assert_ne!(names(&k, &page), names(&r, &page));
        assert_ne!(names(&r, &page), names(&r, &line(1_764_000_000.0, "b")));
        assert_eq!(names(&r, &page), names(&r, &page));
        assert!(names(&k, &page)[0].starts_with("source=src/date=2025-11-24/hour=16/"));
    }

    #[test]
    fn rows_without_a_readable_time_go_with_the_pages_first_hour() {
        let page = format!(
            "{}{{\"id\":\"x\",\"_time\":1.0,\"__isBroken\":true}}\n{{\"id\":\"y\"}}\n",
            line(1_764_000_000.0, "a")
        );
        let objects = page_objects("", "src", None, page.as_bytes(), Utc::now()).unwrap();
        assert_eq!(objects.len(), 1);
        assert_eq!(objects[0].rows, 3);
        let lone = page_objects("", "src", None, b"{\"id\":\"y\"}\n", Utc::now()).unwrap();
        assert_eq!(lone.len(), 1);
    }

    #[test]
    fn retries_follow_the_sinks_policy() {
        let r = retry_config(&default_retry());
        assert_eq!(r.max_retries, 5);
        assert_eq!(r.backoff.init_backoff, Duration::from_secs(1));
        assert_eq!(r.backoff.base, 2.0);
        let off = RetryPolicy {
            kind: RetryKind::Disabled,
            ..default_retry()
        };
        assert_eq!(retry_config(&off).max_retries, 0);
    }

    #[test]
    fn messages_mask_secrets_and_signatures() {
        let mut options = BTreeMap::new();
        options.insert(
            "aws_secret_access_key".to_owned(),
            Secret::new("wJalrXUtnFEMI"),
        );
        let config = ObjectStoreConfig {
            url: Url::parse("s3://b/p").unwrap(),
            provider: StoreProvider::S3,
            prefix: "p".into(),
            endpoint: None,
            options,
        };
        let m = mask(
            "key wJalrXUtnFEMI at https://a/b?sv=1&sig=abc%2Fdef&se=2 and X-Amz-Signature=ffee end",
            &config,
        );
        assert_eq!(
            m,
            "key *** at https://a/b?sv=1&sig=***&se=2 and X-Amz-Signature=*** end"
        );
    }

    /// file:// end to end: a page delivered twice (a crash before its checkpoint) is one set of
    /// objects, read back whole.
    #[test]
    fn a_page_delivered_again_overwrites_its_objects_in_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let url = Url::from_directory_path(dir.path().join("archive")).unwrap();
        let (provider, prefix) = parse_url(&url).unwrap();
        let config = ObjectStoreConfig {
            url,
            provider,
            prefix,
            endpoint: None,
            options: BTreeMap::new(),
        };
        let mut sink = ArchiveSink::new("a", &config);
        let events = (0..3)
            .map(|i| {
                let mut f = serde_json::Map::new();
                f.insert("id".into(), format!("m{i}").into());
                f.insert("_time".into(), (1_764_000_000.0 + f64::from(i)).into());
                Event::new(f, Arc::from("src"), Arc::from("u"))
            })
            .collect();
        let mut batch = Batch::new(Arc::from("src"), events);
        batch.page = Some(Arc::new(key("https://graph/x", false)));
        for _ in 0..2 {
            actix_rt::System::new()
                .block_on(sink.deliver(&batch))
                .unwrap();
        }
        let hour = dir
            .path()
            .join("archive/source=src/date=2025-11-24/hour=16");
        let files: Vec<_> = std::fs::read_dir(&hour)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(files.len(), 1, "{files:?}");
        let text = gunzip(&std::fs::read(&files[0]).unwrap());
        assert_eq!(text.lines().count(), 3);
    }
}
