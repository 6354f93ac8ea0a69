//! The configuration file: TOML in, a validated [`Config`] out.
//!
//! Loading runs in three steps, each in its own file:
//!
//! 1. [`raw`]: the TOML text is parsed into a value tree, `${VAR}` references are expanded from the
//!    environment ([`env`]), and the tree is deserialized into [`raw::RawConfig`], a struct that
//!    mirrors every key of the file (`deny_unknown_fields`, every value optional). Type errors and
//!    unknown keys are collected with their key path instead of stopping at the first one.
//! 2. [`validate`](validate()): checks every value, fills in the defaults and resolves the hosts of
//!    each source's plan, collecting every error. It does no I/O.
//! 3. The result is a [`Config`] whose fields are typed (enums, [`Url`], [`Duration`]) so that
//!    the rest of the program never re-checks a value.
//!
//! Every error carries the key path it concerns (`sources.contoso.poll_interval_mins`) and says what
//! to do; [`ConfigErrors`] prints one `<path>: <message>` line per error.
//!
//! # Examples
//!
//! ```
//! let config = msgtrace::config::from_str_with_env(
//!     r#"
//!     [sources.contoso.auth]
//!     method = "oauth"
//!     tenant_id = "contoso.onmicrosoft.com"
//!     client_id = "00000000-0000-0000-0000-000000000000"
//!     client_secret = "${SECRET}"
//!
//!     [sinks.out]
//!     type = "stdout"
//!     inputs = ["contoso"]
//!     "#,
//!     &|name| (name == "SECRET").then(|| "s3cr3t".to_string()),
//! )
//! .unwrap();
//! assert_eq!(config.sources["contoso"].poll_interval_mins(), Some(15));
//!
//! let errors = msgtrace::config::from_str("[sources.x]\npoll_interval_mins = 45\n").unwrap_err();
//! assert!(errors.to_string().contains("sources.x.poll_interval_mins: "));
//! ```

mod env;
pub mod raw;
mod validate;
mod values;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use url::Url;

/// Signature algorithm of a certificate client assertion (`assertion_alg`).
pub use msgtrace_actors::assertion::AssertionAlg;
pub use msgtrace_actors::dialect::details::DetailsMode;
pub use msgtrace_actors::dialect::Api;
/// How failed requests are retried (`[sources.<id>.retry]`): the fetcher's own policy, which
/// validation builds (`retry.type`, `initial_interval_ms` at most 20 s, `limit` at most 20,
/// `multiplier` at least 1, `codes`, `honor_retry_after`, `retry_connect_timeout`,
/// `retry_connect_reset`).
pub use msgtrace_actors::retry::{RetryKind, RetryPolicy};
/// Entra ID token endpoint version (`token_endpoint`).
pub use msgtrace_actors::spec::TokenEndpoint;
pub use msgtrace_actors::time::TimeExpr;
pub use validate::validate;

/// Default Microsoft Graph message trace endpoint (global cloud, v1.0).
pub const GRAPH_URL: &str = "https://graph.microsoft.com/v1.0/admin/exchange/tracing/messageTraces";
/// Default Reporting Web Service endpoint for the commercial cloud and GCC.
pub const RWS_URL: &str =
    "https://reports.office365.com/ecp/reportingwebservice/reporting.svc/MessageTrace";
/// Reporting Web Service endpoint for GCC High.
pub const RWS_URL_US: &str =
    "https://reports.office365.us/ecp/reportingwebservice/reporting.svc/MessageTrace";

/// A validated configuration: every value checked, every default filled in.
#[derive(Debug, Clone)]
pub struct Config {
    /// Directory of the sled database (checkpoints, jobs, artifacts, secret store).
    pub state_dir: PathBuf,
    /// Verbosity of the engine's own log.
    pub log_level: LogLevel,
    /// Whether log lines are human text or JSON objects (for log shippers).
    pub log_format: LogFormat,
    /// Where to serve Prometheus `/metrics` and `/health`; `None` serves nothing.
    pub metrics_listen: Option<SocketAddr>,
    /// Where to serve the control API and status page over TCP besides the state directory's
    /// socket (`control.sock`); `None`: the socket only. May equal `metrics_listen` (one listener).
    pub control_listen: Option<SocketAddr>,
    /// The inputs, by Input ID (the key of `[sources.<id>]`), each polled on its own schedule.
    pub sources: BTreeMap<String, SourceConfig>,
    /// Named certificates that `oauth_cert` sources refer to with `certificate = "<name>"`.
    pub certificates: BTreeMap<String, CertificateConfig>,
    /// The outputs, by id (the key of `[sinks.<id>]`).
    pub sinks: BTreeMap<String, SinkConfig>,
    /// `[cluster]`: the etcd this instance shares the sources through; `None`: single-instance
    /// mode (this instance collects every source).
    pub cluster: Option<ClusterConfig>,
    /// Things that are allowed but probably not meant (`http://` to a remote host, a source that
    /// feeds no sink, ...), one `<path>: <message>` line each, for the caller to log or print.
    pub warnings: Vec<String>,
}

/// `[cluster]`: several instances of one deployment sharing the sources through etcd
/// (docs/scaling.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// `etcd`: the etcd cluster's client URLs (scheme, host, port), tried in turn.
    pub etcd: Vec<Url>,
    /// `prefix`: every key of the deployment lies under it (`/msgtrace/prod`); starts with `/`,
    /// no `/` at the end.
    pub prefix: String,
    /// `name`: this instance's member name, unique among the live instances (default: the
    /// host name, which a StatefulSet's pods have each their own of).
    pub name: String,
    /// `lease_secs`: how long this instance's lease lives unrenewed (default 15 s): the time
    /// after which the others take its sources when it dies.
    pub lease: Duration,
}

/// One message trace input (`[sources.<id>]`).
#[derive(Debug, Clone, PartialEq)]
pub struct SourceConfig {
    /// The Input ID: the key of `[sources.<id>]`, used in state keys, metrics and `__inputId`.
    pub id: String,
    /// Free text for people reading the configuration or the job inspector.
    pub description: Option<String>,
    /// Which Microsoft API (and so which request/response dialect) this source speaks.
    pub api: Api,
    /// The message trace endpoint ("Report URL"): given, or the default for `api` and `plan`.
    pub url: Url,
    /// The Microsoft 365 cloud the tenant lives in; decides the default hosts.
    pub plan: Plan,
    /// When runs start: every N minutes aligned to the hour, or a cron expression.
    pub schedule: Schedule,
    /// Start of each run's date range, relative to the run's time (or an epoch).
    pub start: TimeExpr,
    /// End of each run's date range: the lag that lets late rows arrive before they are read.
    pub end: TimeExpr,
    /// Rows per page (`$top`); bounded by the API (5000 Graph, 2000 Reporting).
    pub page_size: u32,
    /// Trailing span re-read each run to pick up late rows and status changes (zero: none).
    pub reread: Duration,
    /// Request budget per tenant; `None` leaves requests unthrottled.
    pub quota: Option<Quota>,
    /// Labels for grouping sources (job inspector, metrics); not added to events.
    pub tags: Vec<String>,
    /// Static fields added to every event of this source.
    pub fields: BTreeMap<String, serde_json::Value>,
    /// `true` keeps rows whose time falls outside the requested window.
    pub disable_time_filter: bool,
    /// Which rows have their per-recipient details fetched (Graph only): none, the rows not
    /// delivered, or all.
    pub details: DetailsMode,
    /// Optional mapping of rows to a common schema.
    pub normalize: Option<Normalize>,
    /// The organisation's domains, lower-cased, for `email.direction` when normalizing to ECS.
    pub local_domains: Vec<String>,
    /// Per-source log verbosity; `None` uses the global `log_level`.
    pub log_level: Option<LogLevel>,
    /// Limit for one HTTP request (`request_timeout_secs`); `None` is unlimited (`0`).
    pub request_timeout: Option<Duration>,
    /// Limit for a whole job; `None` is unlimited (`"0"`).
    pub job_timeout: Option<Duration>,
    /// Whether a failed task is scheduled again (up to `task_reschedule_limit` times).
    pub reschedule_tasks: bool,
    /// How many times a failed task is rescheduled when `reschedule_tasks` is on.
    pub task_reschedule_limit: u32,
    /// How long the artifacts of finished jobs are kept before the TTL sweep removes them.
    pub ttl: Duration,
    /// Optional HTTP proxy for this source's requests (token endpoint and API).
    pub proxy_url: Option<ProxyUrl>,
    /// How this source authenticates.
    pub auth: AuthConfig,
    /// How failed requests are retried.
    pub retry: RetryPolicy,
}

impl SourceConfig {
    /// The polling interval when the schedule is `poll_interval_mins`, `None` for cron schedules.
    pub fn poll_interval_mins(&self) -> Option<u32> {
        match self.schedule {
            Schedule::Interval { mins } => Some(mins),
            Schedule::Cron { .. } => None,
        }
    }
}

/// When a source's runs start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    /// `poll_interval_mins`: every `mins` minutes, aligned to the hour (`mins` divides 60).
    Interval {
        /// Minutes between runs: 1 2 3 4 5 6 10 12 15 20 30 or 60.
        mins: u32,
    },
    /// `schedule`: a cron expression.
    Cron {
        /// The expression as written (5 fields, minute first), for messages.
        written: String,
        /// The same schedule in the `cron` crate's form (seconds first), ready for
        /// `cron::Schedule::from_str`; numeric days of week are turned into names because that
        /// crate counts Sunday as 1.
        expr: String,
    },
}

/// Microsoft 365 cloud ("Subscription Plan"); decides the default login, API and audience hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Commercial cloud (`enterprise`).
    Enterprise,
    /// Government Community Cloud (`gcc`): commercial hosts.
    Gcc,
    /// GCC High (`gcc_high`): `.us` hosts; no Graph message trace.
    GccHigh,
    /// Department of Defense (`dod`): `.us` login; no Graph message trace; RWS host unconfirmed.
    Dod,
}

impl Plan {
    /// The configuration spelling (`gcc_high`).
    pub fn as_str(self) -> &'static str {
        match self {
            Plan::Enterprise => "enterprise",
            Plan::Gcc => "gcc",
            Plan::GccHigh => "gcc_high",
            Plan::Dod => "dod",
        }
    }

    /// The Entra ID authority host of this cloud.
    pub fn default_login_url(self) -> &'static str {
        match self {
            Plan::Enterprise | Plan::Gcc => "https://login.microsoftonline.com",
            Plan::GccHigh | Plan::Dod => "https://login.microsoftonline.us",
        }
    }

    /// The message trace endpoint Microsoft offers for `api` in this cloud, if any.
    pub fn default_url(self, api: Api) -> Option<&'static str> {
        match (api, self) {
            (Api::Graph, Plan::Enterprise | Plan::Gcc) => Some(GRAPH_URL),
            (Api::Graph, Plan::GccHigh | Plan::Dod) => None,
            (Api::Reporting, Plan::Enterprise | Plan::Gcc) => Some(RWS_URL),
            (Api::Reporting, Plan::GccHigh) => Some(RWS_URL_US),
            (Api::Reporting, Plan::Dod) => None,
        }
    }

    /// The token audience (`resource`) for `api` in this cloud, if it is known.
    pub fn default_resource(self, api: Api) -> Option<&'static str> {
        match (api, self) {
            (Api::Graph, Plan::Enterprise | Plan::Gcc) => Some("https://graph.microsoft.com"),
            (Api::Graph, Plan::GccHigh) => Some("https://graph.microsoft.us"),
            (Api::Graph, Plan::Dod) => Some("https://dod-graph.microsoft.us"),
            (Api::Reporting, Plan::Enterprise | Plan::Gcc) => Some("https://outlook.office365.com"),
            (Api::Reporting, Plan::GccHigh) => Some("https://outlook.office365.us"),
            (Api::Reporting, Plan::Dod) => None,
        }
    }
}

/// A request budget: at most `requests` requests in any `per` span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Requests allowed per span (Graph documents 100).
    pub requests: u32,
    /// The span the budget applies to (Graph documents 5 minutes).
    pub per: Duration,
}

/// Row mapping applied before events reach the sinks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Normalize {
    /// Elastic Common Schema field names (`normalize = "ecs"`).
    Ecs,
}

/// A log verbosity (`error | warn | info | debug`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// Only failures.
    Error,
    /// Failures and things that look wrong.
    Warn,
    /// Progress of runs and jobs (the default).
    Info,
    /// Every request and decision.
    Debug,
}

impl LogLevel {
    /// The spelling `tracing` filters understand (`"info"`).
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
        }
    }
}

/// The shape of the engine's log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (the default).
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// How a source authenticates, one variant per `auth.method`; each holds only what it needs.
#[derive(Debug, Clone, PartialEq)]
pub enum AuthConfig {
    /// `basic`: HTTP Basic with an inline username and password (RWS-compatible endpoints only).
    Basic {
        /// The account name sent with HTTP Basic.
        username: String,
        /// The account password.
        password: Secret,
    },
    /// `basic_secret`: HTTP Basic with credentials kept in the secret store.
    BasicSecret {
        /// Name of a `credentials` secret (`msgtrace secrets set NAME --kind credentials`).
        credentials_secret: String,
    },
    /// `oauth`: client credentials with an inline client secret.
    OAuth {
        /// Tenant, client and token endpoint.
        app: OAuthApp,
        /// The application's client secret.
        client_secret: Secret,
    },
    /// `oauth_secret`: client credentials with the client secret kept in the secret store.
    OAuthSecret {
        /// Tenant, client and token endpoint.
        app: OAuthApp,
        /// Name of a `text` secret in the secret store holding the client secret.
        client_secret_ref: String,
    },
    /// `oauth_cert`: client credentials with a signed JWT assertion (certificate credential).
    OAuthCert {
        /// Tenant, client and token endpoint.
        app: OAuthApp,
        /// The certificate and key that sign the assertion (a `[certificates]` entry, resolved,
        /// or the inline `cert_path`/`key_path`).
        certificate: CertificateConfig,
        /// The `[certificates]` entry this came from, `None` when given inline.
        certificate_name: Option<String>,
        /// Signature algorithm of the assertion (PS256 with `x5t#S256`, or RS256 with `x5t`).
        assertion_alg: AssertionAlg,
    },
    /// `oauth_federated`: client credentials with a workload identity token (a Kubernetes
    /// service-account token, a GitHub OIDC token, …) as the client assertion.
    OAuthFederated {
        /// Tenant, client and token endpoint (`tenant_id`, `client_id` default from
        /// `AZURE_TENANT_ID`, `AZURE_CLIENT_ID`).
        app: OAuthApp,
        /// The file the platform keeps the current token in (`token_file`, default from
        /// `AZURE_FEDERATED_TOKEN_FILE`), read at every token request since it is rotated.
        token_file: PathBuf,
    },
    /// `managed_identity`: a token from the Azure instance metadata endpoint for the identity
    /// assigned to the machine; no credential at all.
    ManagedIdentity {
        /// A user-assigned identity's client id; `None` asks for the system-assigned identity.
        client_id: Option<String>,
        /// Token audience: given, or the default for the api and plan.
        resource: String,
        /// The instance metadata endpoint (`http://169.254.169.254` unless `imds_url` is set).
        imds_url: Url,
    },
}

/// The instance metadata endpoint of Azure VMs, scale sets and AKS nodes: plain http on a
/// link-local address, by design (it never leaves the host).
pub const IMDS_URL: &str = "http://169.254.169.254";

impl AuthConfig {
    /// The configuration spelling of the method (`oauth_cert`).
    pub fn method(&self) -> &'static str {
        match self {
            AuthConfig::Basic { .. } => "basic",
            AuthConfig::BasicSecret { .. } => "basic_secret",
            AuthConfig::OAuth { .. } => "oauth",
            AuthConfig::OAuthSecret { .. } => "oauth_secret",
            AuthConfig::OAuthCert { .. } => "oauth_cert",
            AuthConfig::OAuthFederated { .. } => "oauth_federated",
            AuthConfig::ManagedIdentity { .. } => "managed_identity",
        }
    }

    /// The token request settings for the Entra ID token methods, `None` for Basic and a
    /// managed identity.
    pub fn oauth(&self) -> Option<&OAuthApp> {
        match self {
            AuthConfig::OAuth { app, .. }
            | AuthConfig::OAuthSecret { app, .. }
            | AuthConfig::OAuthCert { app, .. }
            | AuthConfig::OAuthFederated { app, .. } => Some(app),
            AuthConfig::Basic { .. }
            | AuthConfig::BasicSecret { .. }
            | AuthConfig::ManagedIdentity { .. } => None,
        }
    }

    /// The token audience of the Entra ID token methods, to change (a sink's); `None` for Basic.
    pub(crate) fn audience_mut(&mut self) -> Option<&mut String> {
        match self {
            AuthConfig::OAuth { app, .. }
            | AuthConfig::OAuthSecret { app, .. }
            | AuthConfig::OAuthCert { app, .. }
            | AuthConfig::OAuthFederated { app, .. } => Some(&mut app.resource),
            AuthConfig::ManagedIdentity { resource, .. } => Some(resource),
            AuthConfig::Basic { .. } | AuthConfig::BasicSecret { .. } => None,
        }
    }
}

/// What every OAuth client-credentials method needs to ask Entra ID for a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthApp {
    /// Directory (tenant) id or verified domain; part of the token URL.
    pub tenant_id: String,
    /// Application (client) id; also `iss`/`sub` of a certificate assertion.
    pub client_id: String,
    /// Authority host (`https://login.microsoftonline.com`): given, or the default of the plan.
    pub login_url: Url,
    /// Token audience: given, or the default for the api and plan (v2 asks for
    /// `<resource>/.default`, v1 sends `resource=`).
    pub resource: String,
    /// Which token endpoint version to call.
    pub token_endpoint: TokenEndpoint,
}

impl OAuthApp {
    /// The token URL: `{login}/{tenant}/oauth2/v2.0/token` (v2) or `{login}/{tenant}/oauth2/token` (v1).
    pub fn token_url(&self) -> String {
        self.token_endpoint.url(&self.login_url, &self.tenant_id)
    }
}

/// A certificate and its private key on disk (`[certificates.<name>]` or inline in `auth`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateConfig {
    /// PEM file with the certificate whose thumbprint goes in the assertion header.
    pub cert_path: PathBuf,
    /// PEM file with the private key (PKCS#8, possibly encrypted) that signs the assertion.
    pub key_path: PathBuf,
    /// Passphrase of an encrypted key.
    pub passphrase: Option<Secret>,
}

/// One output (`[sinks.<id>]`).
#[derive(Debug, Clone, PartialEq)]
pub struct SinkConfig {
    /// The key of `[sinks.<id>]`, for logs and metrics.
    pub id: String,
    /// The sources whose events this sink receives (all exist in [`Config::sources`]).
    pub inputs: Vec<String>,
    /// Where and how events are written.
    pub kind: SinkKind,
}

/// The sink types (`type`), each with its own settings.
#[derive(Debug, Clone, PartialEq)]
pub enum SinkKind {
    /// NDJSON on standard output.
    Stdout,
    /// NDJSON appended to a file.
    File {
        /// The file written to (created if missing).
        path: PathBuf,
        /// Size-based rotation, when configured.
        rotate: Option<Rotation>,
        /// Mode of the files the sink creates (`mode`, default `0640`); existing files keep
        /// theirs.
        mode: u32,
    },
    /// Batches POSTed to an HTTP endpoint.
    Http(HttpSinkConfig),
    /// Batches POSTed to the Azure Monitor Logs Ingestion API (Log Analytics, Microsoft
    /// Sentinel).
    AzureLogsIngestion(Box<AzureLogsConfig>),
    /// One gzip NDJSON object per page and hour in an object store (S3, Azure Blob, Google
    /// Cloud Storage, a directory): the archive past the API's 90 days.
    ObjectStore(Box<ObjectStoreConfig>),
}

/// Settings of an `object_store` sink ([`crate::sinks::object_store`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectStoreConfig {
    /// `s3://bucket/prefix`, `az://container/prefix`, `gs://bucket/prefix` or `file:///path`.
    pub url: Url,
    /// Which store the URL names.
    pub provider: StoreProvider,
    /// The path inside the bucket (or the directory) under which the archive lies; no leading
    /// or trailing `/`, empty for the bucket's root.
    pub prefix: String,
    /// An S3-compatible or emulator endpoint instead of the provider's (`https://`, or `http://`
    /// to a loopback test server only).
    pub endpoint: Option<Url>,
    /// The provider's own settings by the crate's names, credentials among them: held as
    /// secrets, never shown.
    pub options: BTreeMap<String, Secret>,
}

/// The store an `object_store` sink's `url` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreProvider {
    /// `s3://`: Amazon S3 or an S3-compatible store.
    S3,
    /// `az://`: Azure Blob Storage.
    Azure,
    /// `gs://`: Google Cloud Storage.
    Gcs,
    /// `file://`: a directory of this machine.
    File,
}

/// Size-based rotation of a file sink: before a page would make the file larger than
/// `max_bytes`, it is renamed to `path.1` (older ones shift to `.2` .. `.keep`, the oldest is
/// removed) and a new file is started. A page is never split across files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// Largest size of the live file, in bytes.
    pub max_bytes: u64,
    /// Rotated files kept.
    pub keep: u32,
}

/// Settings of an `http` sink.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpSinkConfig {
    /// Where batches are POSTed.
    pub url: Url,
    /// Body format of a batch.
    pub format: HttpFormat,
    /// Token sent as `Authorization` (`Splunk <token>` for HEC, `Bearer <token>` otherwise).
    pub token: Option<Secret>,
    /// Extra request headers; values are held as secrets since they often carry credentials.
    pub headers: BTreeMap<String, Secret>,
    /// Body compression.
    pub compression: Compression,
    /// When a batch is sent.
    pub batch: BatchConfig,
}

/// Settings of an `azure_logs_ingestion` sink: where the Logs Ingestion API takes the events
/// and how the sink gets its token.
#[derive(Debug, Clone, PartialEq)]
pub struct AzureLogsConfig {
    /// The data collection endpoint (DCE), or the rule's own logs ingestion endpoint: scheme
    /// and host only.
    pub endpoint: Url,
    /// The data collection rule's immutable id (`dcr-` and 32 hex digits).
    pub dcr_id: String,
    /// The rule's input stream (`Custom-MessageTrace`).
    pub stream: String,
    /// The Azure cloud; decides the default token audience and login host.
    pub plan: Plan,
    /// How the sink gets its token: a source's OAuth methods, `resource` defaulting to the
    /// Azure Monitor audience of the plan.
    pub auth: AuthConfig,
    /// Body compression.
    pub compression: Compression,
}

impl AzureLogsConfig {
    /// The URL each batch is POSTed to.
    pub fn ingestion_url(&self) -> String {
        format!(
            "{}/dataCollectionRules/{}/streams/{}?api-version=2023-01-01",
            self.endpoint.as_str().trim_end_matches('/'),
            self.dcr_id,
            self.stream
        )
    }
}

impl Plan {
    /// The Azure Monitor token audience of this cloud (`<audience>/.default` is the scope).
    pub fn monitor_audience(self) -> &'static str {
        match self {
            Plan::Enterprise | Plan::Gcc => "https://monitor.azure.com",
            Plan::GccHigh | Plan::Dod => "https://monitor.azure.us",
        }
    }
}

/// Body format of an `http` sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpFormat {
    /// One JSON object per line.
    Ndjson,
    /// One JSON array per batch.
    Json,
    /// Splunk HTTP Event Collector envelopes (`{"time":..,"event":{..}}` per event).
    SplunkHec,
    /// Elasticsearch `_bulk` (action line + document line).
    ElasticsearchBulk,
}

/// Body compression of an `http` sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Plain body (the default).
    None,
    /// `Content-Encoding: gzip`.
    Gzip,
}

/// Limits that close a batch of an `http` sink: whichever is reached first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchConfig {
    /// Events per batch (default 5000).
    pub max_rows: usize,
    /// Body bytes per batch before compression (default 4 000 000).
    pub max_bytes: usize,
    /// Longest time an event waits in an open batch (default 1 s).
    pub timeout: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_rows: 5000,
            max_bytes: 4_000_000,
            timeout: Duration::from_secs(1),
        }
    }
}

/// A secret value (password, client secret, passphrase, token): the one `Secret` type of the
/// whole program, re-exported from the actors crate.
///
/// Its `Debug` and `Display` print `***` and it is not `Serialize`, so that it cannot end up in a
/// log line, an error message or a state dump by accident; [`Secret::expose`] is the one way in.
pub use msgtrace_actors::secret::Secret;

/// A proxy URL, which may carry credentials (`http://user:pass@proxy:3128`): its `Debug` and
/// `Display` hide the password.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyUrl(Url);

impl ProxyUrl {
    /// The full URL, password included, for the HTTP client.
    pub fn url(&self) -> &Url {
        &self.0
    }
}

impl fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ProxyUrl({self})")
    }
}

impl fmt::Display for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.0.clone();
        if shown.password().is_some() {
            // Cannot fail: the URL has a host, since it has a password.
            let _ = shown.set_password(Some("***"));
        }
        f.write_str(shown.as_str())
    }
}

/// One problem in the configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    /// Where: a key path (`sources.contoso.auth.client_id`), or the file for a read error.
    pub path: String,
    /// What is wrong and what to do about it (never the value of an environment variable).
    pub message: String,
}

impl ConfigError {
    fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Every problem found in a configuration; displays one `<path>: <message>` line per error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors {
    /// The errors, in the order of the file's sections.
    pub errors: Vec<ConfigError>,
    /// Warnings found along the way (as in [`Config::warnings`]), so that `validate` can show
    /// them even when the configuration is rejected.
    pub warnings: Vec<String>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl From<ConfigError> for ConfigErrors {
    fn from(error: ConfigError) -> Self {
        ConfigErrors {
            errors: vec![error],
            warnings: Vec::new(),
        }
    }
}

/// Reads, expands (from the process environment) and validates the configuration file at `path`.
///
/// A missing or unreadable file is a single error whose path is the file name.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    from_str(&read_file(path)?)
}

/// Reads only `state_dir` from the configuration file at `path`, expanding `${VAR}` in that one
/// value: what `msgtrace jobs` and `msgtrace secrets` need, so that they work where the
/// collector's own variables (client secrets...) are not set. The rest of the file is not
/// validated (its TOML syntax is).
pub fn load_state_dir(path: &Path) -> Result<PathBuf, ConfigErrors> {
    state_dir_from_str_with_env(&read_file(path)?, &env::process_env)
}

/// Reads `state_dir` and `[cluster]` from the configuration file at `path`, as
/// [`load_state_dir`] reads `state_dir` alone: what `msgtrace jobs` needs to show who owns each
/// source (from etcd) while this instance does not run.
pub fn load_state_dir_and_cluster(
    path: &Path,
) -> Result<(PathBuf, Option<ClusterConfig>), ConfigErrors> {
    let env = &env::process_env;
    let parsed = raw::parse_keeping(&read_file(path)?, env, &|key| {
        key == "state_dir" || key == "cluster"
    });
    let fail = |errors| ConfigErrors {
        errors,
        warnings: Vec::new(),
    };
    match parsed.raw {
        Some(raw) if parsed.errors.is_empty() => {
            let dir = validate::state_dir(raw.state_dir.as_deref()).map_err(|e| fail(vec![e]))?;
            let cluster = validate::cluster_only(&raw, &parsed.expanded, env).map_err(fail)?;
            Ok((dir, cluster))
        }
        _ => Err(fail(parsed.errors)),
    }
}

/// [`load_state_dir`] of configuration text, looking variables up with `env`.
///
/// ```
/// let toml = "state_dir = \"${DIR}/state\"\n[sources.a.auth]\nclient_secret = \"${UNSET}\"\n";
/// let dir = msgtrace::config::state_dir_from_str_with_env(toml, &|name| {
///     (name == "DIR").then(|| "/var/lib/msgtrace".to_string())
/// });
/// assert_eq!(dir.unwrap(), std::path::Path::new("/var/lib/msgtrace/state"));
/// ```
pub fn state_dir_from_str_with_env(
    toml: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<PathBuf, ConfigErrors> {
    let parsed = raw::parse_keeping(toml, env, &|key| key == "state_dir");
    let errors = parsed.errors;
    match parsed.raw {
        Some(raw) if errors.is_empty() => Ok(validate::state_dir(raw.state_dir.as_deref())?),
        _ => Err(ConfigErrors {
            errors,
            warnings: Vec::new(),
        }),
    }
}

/// The text of a configuration file; an unreadable file is one error naming it and the fix.
fn read_file(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| {
        let hint = match e.kind() {
            std::io::ErrorKind::NotFound => "check the path given with -c",
            std::io::ErrorKind::PermissionDenied => "make the file readable by this user",
            std::io::ErrorKind::InvalidData => "save the file as UTF-8",
            _ => "check the path given with -c",
        };
        ConfigError::new(
            path.display().to_string(),
            format!("cannot read the configuration file: {e}; {hint}"),
        )
    })
}

/// Parses and validates configuration text, expanding `${VAR}` from the process environment.
pub fn from_str(toml: &str) -> Result<Config, ConfigErrors> {
    from_str_with_env(toml, &env::process_env)
}

/// Parses and validates configuration text, looking variables up with `env` instead of the
/// process environment (for tests and embedders that keep their own settings).
pub fn from_str_with_env(
    toml: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    let parsed = raw::parse(toml, env);
    let mut errors = parsed.errors;
    let Some(raw) = parsed.raw else {
        // A syntax error leaves nothing to validate.
        return Err(ConfigErrors {
            errors,
            warnings: Vec::new(),
        });
    };
    let mut result = validate::validate_parsed(raw, &parsed.expanded, env);
    if errors.is_empty() {
        return result;
    }
    // Errors found while reading the file come first; validation errors about a value that was
    // already rejected (and so dropped) would only repeat them.
    let warnings = match &mut result {
        Ok(config) => std::mem::take(&mut config.warnings),
        Err(later) => {
            let read_errors = errors.len();
            for error in later.errors.drain(..) {
                if !errors[..read_errors]
                    .iter()
                    .any(|e| values::is_within(&error.path, &e.path))
                {
                    errors.push(error);
                }
            }
            std::mem::take(&mut later.warnings)
        }
    };
    Err(ConfigErrors { errors, warnings })
}

impl std::str::FromStr for Config {
    type Err = ConfigErrors;

    fn from_str(toml: &str) -> Result<Self, Self::Err> {
        from_str(toml)
    }
}
