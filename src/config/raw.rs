//! The raw configuration: one struct per TOML table, one field per key, every value optional.
//!
//! These types say which keys exist and what TOML type each value has; nothing else. Whether a key
//! is required, which values are allowed and what the defaults are is decided by
//! [`validate`](super::validate()), which turns a [`RawConfig`] into a [`Config`](super::Config).
//! Every struct denies unknown keys (and none uses `flatten`, which would silently turn that off);
//! [`RawAuth`] is an enum tagged by `method`, deserialized by hand so that its errors read as the
//! structs' do.
//!
//! `parse` reads a whole file: TOML syntax, then `${VAR}` expansion on the value tree, then
//! deserialization that records every type error and unknown key with its path and drops the
//! offending key, so that one run reports them all.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use super::{env, values, ConfigError};

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// `state_dir`: the sled database directory.
    pub state_dir: Option<String>,
    /// `log_level`: error | warn | info | debug.
    pub log_level: Option<String>,
    /// `log_format`: text | json.
    pub log_format: Option<String>,
    /// `metrics_listen`: socket address of the metrics endpoint.
    pub metrics_listen: Option<String>,
    /// `control_listen`: socket address of the control API and status page.
    pub control_listen: Option<String>,
    /// `[sources.<id>]`, by id.
    #[serde(default)]
    pub sources: BTreeMap<String, RawSource>,
    /// `[certificates.<name>]`, by name.
    #[serde(default)]
    pub certificates: BTreeMap<String, RawCertificate>,
    /// `[sinks.<id>]`, by id.
    #[serde(default)]
    pub sinks: BTreeMap<String, RawSink>,
    /// `[cluster]`: several instances sharing the sources through etcd.
    pub cluster: Option<RawCluster>,
}

/// `[cluster]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    /// `etcd`: the client URLs of the etcd cluster.
    pub etcd: Option<Vec<String>>,
    /// `prefix`: the key prefix every instance of the deployment shares.
    pub prefix: Option<String>,
    /// `name`: this instance's member name (default: the host name).
    pub name: Option<String>,
    /// `lease_secs`: the lease's time to live.
    pub lease_secs: Option<i64>,
}

/// `[sources.<id>]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    /// `description`: free text.
    pub description: Option<String>,
    /// `api`: graph | reporting.
    pub api: Option<String>,
    /// `url`: the message trace endpoint ("Report URL").
    pub url: Option<String>,
    /// `plan`: enterprise | gcc | gcc_high | dod.
    pub plan: Option<String>,
    /// `poll_interval_mins`: minutes between runs, a divisor of 60.
    pub poll_interval_mins: Option<i64>,
    /// `schedule`: a 5-field cron expression instead of `poll_interval_mins`.
    pub schedule: Option<String>,
    /// `start`: relative time expression or epoch seconds.
    pub start: Option<RawTime>,
    /// `end`: relative time expression or epoch seconds.
    pub end: Option<RawTime>,
    /// `page_size`: rows per page.
    pub page_size: Option<i64>,
    /// `reread`: trailing span re-read each run.
    pub reread: Option<RawDuration>,
    /// `quota`: request budget.
    pub quota: Option<RawQuota>,
    /// `tags`: labels for grouping.
    pub tags: Option<Vec<String>>,
    /// `fields`: static fields added to every event.
    pub fields: Option<BTreeMap<String, RawFieldValue>>,
    /// `disable_time_filter`: keep rows outside the window.
    pub disable_time_filter: Option<bool>,
    /// `details`: none | not_delivered | all (Graph only).
    pub details: Option<String>,
    /// `normalize`: "ecs".
    pub normalize: Option<String>,
    /// `local_domains`: the organisation's domains, for ECS `email.direction`.
    pub local_domains: Option<Vec<String>>,
    /// `log_level`: per-source override.
    pub log_level: Option<String>,
    /// `request_timeout_secs`: per request, 0 = unlimited.
    pub request_timeout_secs: Option<i64>,
    /// `job_timeout`: per job, 0 = unlimited.
    pub job_timeout: Option<RawDuration>,
    /// `reschedule_tasks`: retry failed tasks later.
    pub reschedule_tasks: Option<bool>,
    /// `task_reschedule_limit`: how many times.
    pub task_reschedule_limit: Option<i64>,
    /// `ttl`: how long finished jobs' artifacts are kept.
    pub ttl: Option<RawDuration>,
    /// `proxy_url`: HTTP proxy for this source.
    pub proxy_url: Option<String>,
    /// `[sources.<id>.auth]`.
    pub auth: Option<RawAuth>,
    /// `[sources.<id>.retry]`.
    pub retry: Option<RawRetry>,
}

/// `quota = { requests, per_secs }`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQuota {
    /// `requests`: allowed per span.
    pub requests: Option<i64>,
    /// `per_secs`: the span.
    pub per_secs: Option<i64>,
}

/// `[sources.<id>.auth]`: `method` picks the variant, and each variant holds the keys its method
/// reads. A key of another method is an error at its own path ("not used by method …"), a key of
/// no method an unknown key; a missing or unknown `method` is left to validation, which lists the
/// methods there are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawAuth {
    /// `basic`.
    Basic {
        /// `username`.
        username: Option<String>,
        /// `password`.
        password: Option<String>,
    },
    /// `basic_secret`.
    BasicSecret {
        /// `credentials_secret`: a `credentials` secret's name.
        credentials_secret: Option<String>,
    },
    /// `oauth`.
    OAuth {
        /// The keys every token method shares.
        app: RawOAuthApp,
        /// `client_secret`.
        client_secret: Option<String>,
    },
    /// `oauth_secret`.
    OAuthSecret {
        /// The keys every token method shares.
        app: RawOAuthApp,
        /// `client_secret_ref`: a `text` secret's name.
        client_secret_ref: Option<String>,
    },
    /// `oauth_cert`.
    OAuthCert {
        /// The keys every token method shares.
        app: RawOAuthApp,
        /// The certificate and the algorithm.
        cert: RawCertAuth,
    },
    /// `oauth_federated`.
    OAuthFederated {
        /// The keys every token method shares (`tenant_id`, `client_id` default from the
        /// environment).
        app: RawOAuthApp,
        /// `token_file`: the workload identity token, read at every token request.
        token_file: Option<String>,
    },
    /// `managed_identity`.
    ManagedIdentity {
        /// `client_id`: a user-assigned identity's client id (none: the system-assigned one).
        client_id: Option<String>,
        /// `resource`: token audience.
        resource: Option<String>,
        /// `imds_url`: the instance metadata endpoint.
        imds_url: Option<String>,
    },
    /// `method` is missing (`None`) or names no method.
    Unknown {
        /// `method` as written.
        method: Option<String>,
    },
}

/// The keys the Entra ID token methods share (`oauth`, `oauth_secret`, `oauth_cert`,
/// `oauth_federated`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawOAuthApp {
    /// `tenant_id`.
    pub tenant_id: Option<String>,
    /// `client_id`.
    pub client_id: Option<String>,
    /// `token_endpoint`: v1 | v2.
    pub token_endpoint: Option<String>,
    /// `resource`: token audience.
    pub resource: Option<String>,
    /// `login_url`: authority host.
    pub login_url: Option<String>,
}

/// The keys of `oauth_cert` besides the app's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawCertAuth {
    /// `certificate`: a `[certificates]` name.
    pub certificate: Option<String>,
    /// `cert_path` (inline).
    pub cert_path: Option<String>,
    /// `key_path` (inline).
    pub key_path: Option<String>,
    /// `passphrase` (inline).
    pub passphrase: Option<String>,
    /// `assertion_alg`: PS256 | RS256.
    pub assertion_alg: Option<String>,
}

/// Every key of an auth table, in the order an unknown key's message lists them.
const AUTH_KEYS: &[&str] = &[
    "method",
    "tenant_id",
    "client_id",
    "client_secret",
    "client_secret_ref",
    "username",
    "password",
    "credentials_secret",
    "certificate",
    "cert_path",
    "key_path",
    "passphrase",
    "assertion_alg",
    "token_endpoint",
    "resource",
    "login_url",
    "token_file",
    "imds_url",
];

/// The keys of an auth table other than `method`, taken one by one by the variant that reads them.
#[derive(Default)]
struct AuthKeys(BTreeMap<&'static str, String>);

impl AuthKeys {
    fn take(&mut self, key: &str) -> Option<String> {
        self.0.remove(key)
    }
}

impl RawOAuthApp {
    fn take(keys: &mut AuthKeys) -> RawOAuthApp {
        RawOAuthApp {
            tenant_id: keys.take("tenant_id"),
            client_id: keys.take("client_id"),
            token_endpoint: keys.take("token_endpoint"),
            resource: keys.take("resource"),
            login_url: keys.take("login_url"),
        }
    }
}

impl RawAuth {
    /// The methods, in the order messages list them.
    pub const METHODS: &'static [&'static str] = &[
        "basic",
        "basic_secret",
        "oauth",
        "oauth_secret",
        "oauth_cert",
        "oauth_federated",
        "managed_identity",
    ];

    /// The method's spelling (`oauth_cert`); `None` for [`RawAuth::Unknown`].
    pub fn method(&self) -> Option<&'static str> {
        Some(match self {
            RawAuth::Basic { .. } => "basic",
            RawAuth::BasicSecret { .. } => "basic_secret",
            RawAuth::OAuth { .. } => "oauth",
            RawAuth::OAuthSecret { .. } => "oauth_secret",
            RawAuth::OAuthCert { .. } => "oauth_cert",
            RawAuth::OAuthFederated { .. } => "oauth_federated",
            RawAuth::ManagedIdentity { .. } => "managed_identity",
            RawAuth::Unknown { .. } => return None,
        })
    }

    /// The `[certificates]` entry an `oauth_cert` table names.
    pub fn certificate(&self) -> Option<&str> {
        match self {
            RawAuth::OAuthCert { cert, .. } => cert.certificate.as_deref(),
            _ => None,
        }
    }

    /// `resource` (the token audience), where the method has one and it is set.
    pub fn resource(&self) -> Option<&str> {
        match self {
            RawAuth::OAuth { app, .. }
            | RawAuth::OAuthSecret { app, .. }
            | RawAuth::OAuthCert { app, .. }
            | RawAuth::OAuthFederated { app, .. } => app.resource.as_deref(),
            RawAuth::ManagedIdentity { resource, .. } => resource.as_deref(),
            RawAuth::Basic { .. } | RawAuth::BasicSecret { .. } | RawAuth::Unknown { .. } => None,
        }
    }

    /// The variant of `method`, taking the keys it reads out of `keys`; `None` for no method.
    fn take(method: &str, keys: &mut AuthKeys) -> Option<RawAuth> {
        Some(match method {
            "basic" => RawAuth::Basic {
                username: keys.take("username"),
                password: keys.take("password"),
            },
            "basic_secret" => RawAuth::BasicSecret {
                credentials_secret: keys.take("credentials_secret"),
            },
            "oauth" => RawAuth::OAuth {
                app: RawOAuthApp::take(keys),
                client_secret: keys.take("client_secret"),
            },
            "oauth_secret" => RawAuth::OAuthSecret {
                app: RawOAuthApp::take(keys),
                client_secret_ref: keys.take("client_secret_ref"),
            },
            "oauth_cert" => RawAuth::OAuthCert {
                app: RawOAuthApp::take(keys),
                cert: RawCertAuth {
                    certificate: keys.take("certificate"),
                    cert_path: keys.take("cert_path"),
                    key_path: keys.take("key_path"),
                    passphrase: keys.take("passphrase"),
                    assertion_alg: keys.take("assertion_alg"),
                },
            },
            "oauth_federated" => RawAuth::OAuthFederated {
                app: RawOAuthApp::take(keys),
                token_file: keys.take("token_file"),
            },
            "managed_identity" => RawAuth::ManagedIdentity {
                client_id: keys.take("client_id"),
                resource: keys.take("resource"),
                imds_url: keys.take("imds_url"),
            },
            _ => return None,
        })
    }

    /// The methods that read `key`: those whose variant takes it.
    fn readers(key: &'static str) -> Vec<&'static str> {
        let reads = |method: &&str| {
            let mut keys = AuthKeys(BTreeMap::from([(key, String::new())]));
            RawAuth::take(method, &mut keys);
            keys.0.is_empty()
        };
        RawAuth::METHODS.iter().copied().filter(reads).collect()
    }
}

impl<'de> Deserialize<'de> for RawAuth {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawAuth;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<RawAuth, A::Error> {
                let mut method = None;
                let mut keys = AuthKeys::default();
                // Key by key, so that an unknown key or a value that is not a string is reported
                // at its own path, as by a derived struct.
                while let Some(key) = map.next_key::<String>()? {
                    let Some(&known) = AUTH_KEYS.iter().find(|k| **k == key) else {
                        return Err(de::Error::unknown_field(&key, AUTH_KEYS));
                    };
                    let value: String = map.next_value()?;
                    if known == "method" {
                        method = Some(value);
                    } else {
                        keys.0.insert(known, value);
                    }
                }
                let Some(written) = method else {
                    return Ok(RawAuth::Unknown { method: None });
                };
                let Some(auth) = RawAuth::take(written.trim(), &mut keys) else {
                    return Ok(RawAuth::Unknown {
                        method: Some(written),
                    });
                };
                if let Some(&key) = AUTH_KEYS.iter().find(|k| keys.0.contains_key(*k)) {
                    let message = format!(
                        "not used by method {} (it belongs to {}); remove it or change method",
                        written.trim(),
                        RawAuth::readers(key).join(", ")
                    );
                    return Err(key_error(key, &message));
                }
                Ok(auth)
            }
        }
        deserializer.deserialize_map(V)
    }
}

/// serde reports a table's own errors at the table's path. An error about one of its keys that is
/// found only once the whole table is read (a key the table's `method` does not use) carries the
/// key at the start of its message; [`deserialize_collecting`] moves it into the path.
fn key_error<E: de::Error>(key: &str, message: &str) -> E {
    E::custom(format!("{KEY_ERROR}{key}`: {message}"))
}

const KEY_ERROR: &str = "at key `";

/// For a [`key_error`] message returns (key, message).
fn key_error_parts(message: &str) -> Option<(String, String)> {
    let (key, message) = message.strip_prefix(KEY_ERROR)?.split_once("`: ")?;
    Some((key.to_owned(), message.to_owned()))
}

/// `[sources.<id>.retry]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    /// `type`: backoff | static | disabled.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// `initial_interval_ms`.
    pub initial_interval_ms: Option<i64>,
    /// `limit`.
    pub limit: Option<i64>,
    /// `multiplier` (integer or float).
    pub multiplier: Option<f64>,
    /// `codes`: HTTP statuses.
    pub codes: Option<Vec<i64>>,
    /// `honor_retry_after`.
    pub honor_retry_after: Option<bool>,
    /// `retry_connect_timeout`.
    pub retry_connect_timeout: Option<bool>,
    /// `retry_connect_reset`.
    pub retry_connect_reset: Option<bool>,
}

/// `[certificates.<name>]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertificate {
    /// `cert_path`.
    pub cert_path: Option<String>,
    /// `key_path`.
    pub key_path: Option<String>,
    /// `passphrase`.
    pub passphrase: Option<String>,
}

/// `[sinks.<id>]`: the keys of every sink type; validation checks which belong to `type`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSink {
    /// `type`: stdout | file | http | azure_logs_ingestion | object_store.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// `inputs`: source ids.
    pub inputs: Option<Vec<String>>,
    /// `path` (file).
    pub path: Option<String>,
    /// `rotate_max_bytes` (file): rotate the file before it would grow past this size.
    pub rotate_max_bytes: Option<i64>,
    /// `rotate_keep` (file): rotated files kept (`path.1` newest .. `path.N`).
    pub rotate_keep: Option<i64>,
    /// `mode` (file): octal mode of the files the sink creates, e.g. `"0640"`.
    pub mode: Option<String>,
    /// `url` (http: the endpoint; object_store: `s3://bucket/prefix`, `az://…`, `gs://…`,
    /// `file:///…`).
    pub url: Option<String>,
    /// `format` (http): ndjson | json | splunk_hec | elasticsearch_bulk.
    pub format: Option<String>,
    /// `token` (http).
    pub token: Option<String>,
    /// `headers` (http).
    pub headers: Option<BTreeMap<String, String>>,
    /// `compression` (http, azure_logs_ingestion): none | gzip.
    pub compression: Option<String>,
    /// `batch` (http).
    pub batch: Option<RawBatch>,
    /// `endpoint` (azure_logs_ingestion: the data collection endpoint; object_store: an
    /// S3-compatible or emulator endpoint instead of the provider's).
    pub endpoint: Option<String>,
    /// `dcr_id` (azure_logs_ingestion): the data collection rule's immutable id.
    pub dcr_id: Option<String>,
    /// `stream` (azure_logs_ingestion): the rule's input stream.
    pub stream: Option<String>,
    /// `plan` (azure_logs_ingestion): the cloud, which decides the token audience.
    pub plan: Option<String>,
    /// `[sinks.<id>.auth]` (azure_logs_ingestion): the keys of a source's `[auth]`.
    pub auth: Option<RawAuth>,
    /// `[sinks.<id>.options]` (object_store): the provider's own settings by the `object_store`
    /// crate's names (`aws_access_key_id`, `azure_storage_account_name`, …), credentials among
    /// them.
    pub options: Option<BTreeMap<String, String>>,
}

/// `batch = { max_rows, max_bytes, timeout_secs }`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBatch {
    /// `max_rows`.
    pub max_rows: Option<i64>,
    /// `max_bytes`.
    pub max_bytes: Option<i64>,
    /// `timeout_secs`.
    pub timeout_secs: Option<i64>,
}

/// A `start`/`end` value: a time expression (`"-3h@h"`) or epoch seconds (`1720536960`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawTime {
    /// Written as a string.
    Expr(String),
    /// Written as an integer.
    Epoch(i64),
}

impl<'de> Deserialize<'de> for RawTime {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RawTime;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a time expression such as \"-3h@h\" or epoch seconds")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawTime, E> {
                Ok(RawTime::Expr(v.to_owned()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawTime, E> {
                Ok(RawTime::Epoch(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawTime, E> {
                i64::try_from(v)
                    .map(RawTime::Epoch)
                    .map_err(|_| E::custom("epoch seconds out of range"))
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// A duration value: seconds as an integer (`30`) or text (`"0"`, `"45s"`, `"15m"`, `"4h"`, `"2d"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawDuration {
    /// Written as a string.
    Text(String),
    /// Written as an integer: seconds.
    Secs(i64),
}

impl<'de> Deserialize<'de> for RawDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RawDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a duration such as \"45s\", \"15m\", \"4h\", \"2d\" or a number of seconds",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawDuration, E> {
                Ok(RawDuration::Text(v.to_owned()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawDuration, E> {
                Ok(RawDuration::Secs(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawDuration, E> {
                i64::try_from(v)
                    .map(RawDuration::Secs)
                    .map_err(|_| E::custom("duration out of range"))
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// A value of `fields`: a string, a number or a boolean.
#[derive(Debug, Clone, PartialEq)]
pub enum RawFieldValue {
    /// A string.
    String(String),
    /// An integer.
    Integer(i64),
    /// A float.
    Float(f64),
    /// A boolean.
    Bool(bool),
}

impl<'de> Deserialize<'de> for RawFieldValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RawFieldValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, a number or a boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawFieldValue, E> {
                Ok(RawFieldValue::String(v.to_owned()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawFieldValue, E> {
                Ok(RawFieldValue::Integer(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawFieldValue, E> {
                Ok(i64::try_from(v)
                    .map(RawFieldValue::Integer)
                    .unwrap_or(RawFieldValue::Float(v as f64)))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<RawFieldValue, E> {
                Ok(RawFieldValue::Float(v))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<RawFieldValue, E> {
                Ok(RawFieldValue::Bool(v))
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// The outcome of [`parse`].
#[derive(Debug, Default)]
pub(crate) struct Parsed {
    /// The file's contents without the keys that had errors; `None` after a syntax error.
    pub raw: Option<RawConfig>,
    /// Syntax, expansion, type and unknown-key errors.
    pub errors: Vec<ConfigError>,
    /// Key paths whose value came (in part) from the environment: never echo these values.
    pub expanded: BTreeSet<String>,
}

/// Parses TOML text, expands `${VAR}` with `env`, and deserializes into a [`RawConfig`],
/// collecting every error instead of stopping at the first.
pub(crate) fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Parsed {
    parse_keeping(text, env, &|_| true)
}

/// [`parse`] of only the top-level keys `keep` accepts: the others are dropped before `${VAR}`
/// expansion, so that neither their variables nor their values are looked at.
pub(crate) fn parse_keeping(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
    keep: &dyn Fn(&str) -> bool,
) -> Parsed {
    let mut parsed = Parsed::default();
    let mut table = match text.parse::<toml::Table>() {
        Ok(table) => table,
        Err(e) => {
            parsed.errors.push(syntax_error(text, &e));
            return parsed;
        }
    };
    table.retain(|key, _| keep(key));
    let mut tree = toml::Value::Table(table);
    env::expand_tree(&mut tree, env, &mut parsed.errors, &mut parsed.expanded);
    parsed.raw = Some(deserialize_collecting(tree, &mut parsed.errors));
    parsed
}

/// Turns a TOML syntax error into one line: the key path it is in (as far as the text shows),
/// line and column, and toml's own message.
fn syntax_error(text: &str, error: &toml::de::Error) -> ConfigError {
    let message = error.message().trim().replace('\n', "; ");
    let Some(span) = error.span() else {
        return ConfigError::new(
            "(file)",
            format!("TOML syntax error: {message}; fix the syntax"),
        );
    };
    let offset = span.start.min(text.len());
    let before = text.get(..offset).unwrap_or("");
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    let path = values::key_path_at_line(text, line).unwrap_or_else(|| format!("line {line}"));
    ConfigError::new(
        path,
        format!("TOML syntax error at line {line}, column {column}: {message}; fix the syntax"),
    )
}

/// Deserializes `tree`; on an error, records it with its key path, removes the key it concerns
/// and tries again, until what is left deserializes.
fn deserialize_collecting(mut tree: toml::Value, errors: &mut Vec<ConfigError>) -> RawConfig {
    // Each round removes one key, so the number of keys bounds the number of rounds.
    let mut rounds = count_keys(&tree) + 1;
    loop {
        let error = match RawConfig::deserialize(tree.clone()) {
            Ok(raw) => return raw,
            Err(error) => error,
        };
        let (container, message) = split_error(&error);
        let (path, text) = match (unknown_field(&message), key_error_parts(&message)) {
            (Some((field, accepted)), _) => {
                let path = values::join(&container, &field);
                (path, values::unknown_key_message(&field, &accepted))
            }
            (None, Some((key, text))) => (values::join(&container, &key), text),
            (None, None) => (container.clone(), values::type_error_message(&message)),
        };
        let path_shown = if path.is_empty() {
            "(top level)".to_owned()
        } else {
            path.clone()
        };
        errors.push(ConfigError::new(path_shown, text));
        rounds = rounds.saturating_sub(1);
        if path.is_empty() || rounds == 0 || !remove_path(&mut tree, &path) {
            return RawConfig::default();
        }
    }
}

/// Splits a toml deserialization error into (key path, message).
fn split_error(error: &toml::de::Error) -> (String, String) {
    let message = error.message().to_owned();
    let full = error.to_string();
    let rest = full.strip_prefix(message.as_str()).unwrap_or("");
    let path = rest
        .trim()
        .strip_prefix("in `")
        .and_then(|r| r.strip_suffix('`'))
        .unwrap_or("")
        .to_owned();
    (path, message)
}

/// For serde's "unknown field `x`, expected one of `a`, `b`" returns (x, [a, b]).
fn unknown_field(message: &str) -> Option<(String, Vec<String>)> {
    let rest = message.strip_prefix("unknown field `")?;
    let (field, rest) = rest.split_once('`')?;
    let accepted = rest
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect();
    Some((field.to_owned(), accepted))
}

fn count_keys(value: &toml::Value) -> usize {
    match value {
        toml::Value::Table(t) => t.len() + t.values().map(count_keys).sum::<usize>(),
        toml::Value::Array(a) => a.iter().map(count_keys).sum(),
        _ => 0,
    }
}

/// Removes the key at a dotted `path` (keys may themselves contain dots); `false` if not found.
fn remove_path(value: &mut toml::Value, path: &str) -> bool {
    let toml::Value::Table(table) = value else {
        return false;
    };
    if table.remove(path).is_some() {
        return true;
    }
    let candidates: Vec<String> = table
        .keys()
        .filter(|k| {
            path.len() > k.len() + 1
                && path.starts_with(k.as_str())
                && path.as_bytes()[k.len()] == b'.'
        })
        .cloned()
        .collect();
    candidates.iter().any(|k| match table.get_mut(k) {
        Some(child) => remove_path(child, &path[k.len() + 1..]),
        None => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn collects_every_unknown_key_and_type_error() {
        let parsed = parse(
            "bogus = 1\n[sources.a]\npage_size = \"x\"\nnope = 2\n[sources.a.auth]\nmethod = 3\nextra = true\n",
            &no_env,
        );
        let paths: Vec<_> = parsed.errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths.len(), 5, "{:?}", parsed.errors);
        for p in [
            "bogus",
            "sources.a.page_size",
            "sources.a.nope",
            "sources.a.auth.method",
            "sources.a.auth.extra",
        ] {
            assert!(paths.contains(&p), "{p} missing in {paths:?}");
        }
        assert!(parsed.raw.unwrap().sources.contains_key("a"));
    }

    #[test]
    fn syntax_error_names_the_key_and_position() {
        let parsed = parse("[sources.a]\npage_size = 10 00\n", &no_env);
        assert!(parsed.raw.is_none());
        let e = &parsed.errors[0];
        assert_eq!(e.path, "sources.a.page_size");
        assert!(e.message.contains("line 2, column"), "{}", e.message);
    }

    #[test]
    fn numbers_and_strings_both_accepted_where_documented() {
        let parsed = parse(
            "[sources.a]\nstart = 1720536960\nend = \"-2h@h\"\njob_timeout = 30\nttl = \"4h\"\nfields = { a = 1, b = \"x\", c = true, d = 1.5 }\n",
            &no_env,
        );
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        let s = &parsed.raw.unwrap().sources["a"];
        assert_eq!(s.start, Some(RawTime::Epoch(1720536960)));
        assert_eq!(s.job_timeout, Some(RawDuration::Secs(30)));
        assert_eq!(s.fields.as_ref().unwrap()["d"], RawFieldValue::Float(1.5));
    }

    #[test]
    fn auth_tables_parse_into_their_method_variant() {
        let parsed = parse(
            "[sources.a.auth]\nmethod = \" oauth_cert \"\ntenant_id = \"t\"\ncertificate = \"c\"\n\
             [sources.b.auth]\ntenant_id = \"t\"\n[sources.c.auth]\nmethod = \"basic\"\nusername = \"u\"\nresource = \"r\"\n",
            &no_env,
        );
        let raw = parsed.raw.unwrap();
        let RawAuth::OAuthCert { app, cert } = raw.sources["a"].auth.clone().unwrap() else {
            panic!("{:?}", raw.sources["a"].auth);
        };
        assert_eq!(app.tenant_id.as_deref(), Some("t"));
        assert_eq!(cert.certificate.as_deref(), Some("c"));
        assert_eq!(
            raw.sources["b"].auth,
            Some(RawAuth::Unknown { method: None })
        );
        // A key of another method is an error at its own path, and is dropped.
        assert_eq!(parsed.errors.len(), 1, "{:?}", parsed.errors);
        assert_eq!(parsed.errors[0].path, "sources.c.auth.resource");
        assert!(
            parsed.errors[0]
                .message
                .starts_with("not used by method basic (it belongs to oauth,"),
            "{}",
            parsed.errors[0].message
        );
        assert_eq!(
            raw.sources["c"].auth,
            Some(RawAuth::Basic {
                username: Some("u".into()),
                password: None
            })
        );
    }
}
