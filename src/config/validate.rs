//! Raw configuration to validated [`Config`]: every check, every default, no I/O.
//!
//! Each check records an error with its key path and carries on, so that one run reports every
//! problem. Values that came from the environment are never repeated in a message.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use url::{Host, Url};

use super::raw::{
    RawAuth, RawCertAuth, RawConfig, RawDuration, RawFieldValue, RawOAuthApp, RawRetry, RawSink,
    RawSource, RawTime,
};
use super::values::{cron_to_six_fields, join, parse_duration};
use super::*;
use crate::sinks::archive;

/// Divisors of 60: the intervals that keep runs aligned to the hour.
const POLL_INTERVALS: &[i64] = &[1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30, 60];

/// Validates a raw configuration, filling in defaults and collecting every error.
///
/// Does no I/O: files named in the configuration (certificates, sink paths) are checked when they
/// are used. The process environment is read only for the defaults `oauth_federated` takes from
/// `AZURE_TENANT_ID`, `AZURE_CLIENT_ID` and `AZURE_FEDERATED_TOKEN_FILE`.
pub fn validate(raw: RawConfig) -> Result<Config, ConfigErrors> {
    validate_parsed(raw, &BTreeSet::new(), &super::env::process_env)
}

/// What an `[auth]` table signs in to: the API and cloud of its source (a sink's: Graph's
/// rules), and whether the URL was given (then basic methods are not refused for Graph).
#[derive(Clone, Copy)]
struct AuthTarget {
    api: Api,
    plan: Plan,
    explicit_url: bool,
}

/// [`validate`], knowing which key paths hold values from the environment (not to be echoed).
pub(crate) fn validate_parsed(
    raw: RawConfig,
    expanded: &BTreeSet<String>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    let mut cx = Cx {
        errors: Vec::new(),
        warnings: Vec::new(),
        expanded,
        env,
    };

    let state_dir = state_dir(raw.state_dir.as_deref()).unwrap_or_else(|e| {
        cx.errors.push(e);
        PathBuf::new()
    });
    let log_level = cx
        .log_level("log_level", raw.log_level.as_deref())
        .unwrap_or(LogLevel::Info);
    let log_format = cx.choice(
        "log_format",
        raw.log_format.as_deref(),
        &[("text", LogFormat::Text), ("json", LogFormat::Json)],
    );
    let log_format = log_format.unwrap_or(LogFormat::Text);
    let metrics_listen = cx.listen(
        "metrics_listen",
        raw.metrics_listen.as_deref(),
        "/metrics and /health (source names, job errors)",
    );
    let control_listen = cx.listen(
        "control_listen",
        raw.control_listen.as_deref(),
        "the control API and status page (sources, jobs, errors, the state directory's dump)",
    );

    let certificates = cx.certificates(&raw.certificates);

    if raw.sources.is_empty() {
        cx.error(
            "sources",
            "no source is configured; add a [sources.<id>] table with its [sources.<id>.auth]",
        );
    }
    let sources: BTreeMap<_, _> = (raw.sources.iter())
        .filter_map(|(id, s)| Some((id.clone(), cx.source(id, s, &raw, &certificates)?)))
        .collect();
    let sinks: BTreeMap<_, _> = (raw.sinks.iter())
        .filter_map(|(id, s)| Some((id.clone(), cx.sink(id, s, &raw, &certificates)?)))
        .collect();

    let cluster = raw.cluster.as_ref().and_then(|c| cx.cluster(c));

    cx.unused(&raw);

    if !cx.errors.is_empty() {
        return Err(ConfigErrors {
            errors: cx.errors,
            warnings: cx.warnings,
        });
    }
    Ok(Config {
        state_dir,
        log_level,
        log_format,
        metrics_listen,
        control_listen,
        sources,
        certificates,
        sinks,
        cluster,
        warnings: cx.warnings,
    })
}

/// `[cluster]` alone, validated as in [`validate`] (`None` without the table): what
/// `msgtrace jobs` reads beside `state_dir`.
pub(crate) fn cluster_only(
    raw: &RawConfig,
    expanded: &BTreeSet<String>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<ClusterConfig>, Vec<ConfigError>> {
    let mut cx = Cx {
        errors: Vec::new(),
        warnings: Vec::new(),
        expanded,
        env,
    };
    let cluster = raw.cluster.as_ref().and_then(|c| cx.cluster(c));
    if cx.errors.is_empty() {
        Ok(cluster)
    } else {
        Err(cx.errors)
    }
}

/// `state_dir`: the directory given, or the default `./msgtrace-state`.
pub(crate) fn state_dir(value: Option<&str>) -> Result<PathBuf, ConfigError> {
    match value {
        Some(dir) if dir.trim().is_empty() => Err(ConfigError::new(
            "state_dir",
            "empty path; set a directory such as \"/var/lib/msgtrace\" or remove the key",
        )),
        Some(dir) => Ok(PathBuf::from(dir)),
        None => Ok(PathBuf::from("./msgtrace-state")),
    }
}

/// The validation context: what was found so far.
struct Cx<'a> {
    errors: Vec<ConfigError>,
    warnings: Vec<String>,
    expanded: &'a BTreeSet<String>,
    /// The environment, for the defaults the Azure SDKs take from it (`AZURE_TENANT_ID`, …).
    env: &'a dyn Fn(&str) -> Option<String>,
}

impl Cx<'_> {
    fn error(&mut self, path: &str, message: impl Into<String>) {
        self.errors.push(ConfigError::new(path, message));
    }

    fn warn(&mut self, path: &str, message: impl std::fmt::Display) {
        self.warnings.push(format!("{path}: {message}"));
    }

    /// A value for a message: quoted, or a neutral phrase when it came from the environment.
    fn quote(&self, path: &str, value: &str) -> String {
        if self.expanded.contains(path) {
            "the value (from the environment)".to_owned()
        } else {
            format!("`{value}`")
        }
    }

    /// A listen address key (`metrics_listen`, `control_listen`): `IP:PORT`, or a bare port for
    /// 127.0.0.1; an address that is not loopback is a warning, since `serves` is then reachable
    /// from the network.
    fn listen(&mut self, key: &str, value: Option<&str>, serves: &str) -> Option<SocketAddr> {
        let text = value?.trim();
        let addr = match text.parse::<u16>() {
            Ok(port) => SocketAddr::from(([127, 0, 0, 1], port)),
            Err(_) => match text.parse::<SocketAddr>() {
                Ok(addr) => addr,
                Err(_) => {
                    let shown = self.quote(key, text);
                    self.error(
                        key,
                        format!("{shown} is not a socket address; write IP:PORT, e.g. \"127.0.0.1:9464\" or \"[::]:9464\""),
                    );
                    return None;
                }
            },
        };
        if !addr.ip().is_loopback() {
            let shown = self.quote(key, &addr.to_string());
            self.warn(
                key,
                format!(
                    "{shown} is not a loopback address: {serves} are reachable from the network; \
                     use 127.0.0.1 unless a client on another host needs it, and then firewall the port"
                ),
            );
        }
        Some(addr)
    }

    /// `[cluster]`: the etcd endpoints (required), the prefix (required), the name (default
    /// the host name), the lease (default 15 s).
    fn cluster(&mut self, raw: &super::raw::RawCluster) -> Option<ClusterConfig> {
        let errors = self.errors.len();
        let mut etcd = Vec::new();
        match raw.etcd.as_deref() {
            None | Some([]) => self.error(
                "cluster.etcd",
                "is required; list the etcd client URLs, e.g. [\"http://127.0.0.1:2379\"]",
            ),
            Some(urls) => {
                for (i, text) in urls.iter().enumerate() {
                    let path = format!("cluster.etcd[{i}]");
                    let fix = "write the client URL only, e.g. \"http://127.0.0.1:2379\"";
                    etcd.extend(self.server_url(&path, text, fix));
                }
            }
        }
        let prefix = self.cluster_prefix(raw.prefix.as_deref());
        let name = match raw.name.as_deref() {
            Some(name) => self.member_name("cluster.name", name),
            None => match super::values::host_name() {
                Some(host) => self.member_name("cluster.name", &host),
                None => {
                    self.error("cluster.name", "is not set and the host name cannot be read; set a name unique to this instance, e.g. \"collector-0\"");
                    None
                }
            },
        };
        let lease_secs = match raw.lease_secs {
            Some(secs) => {
                self.int_in::<u64>("cluster.lease_secs", secs, 2, 3600, " seconds (default 15)")
            }
            None => Some(15),
        };
        if self.errors.len() > errors {
            return None;
        }
        Some(ClusterConfig {
            etcd,
            prefix: prefix?,
            name: name?,
            lease: Duration::from_secs(lease_secs?),
        })
    }

    /// `cluster.prefix`: required, `/` first, no `/` last, no empty segment, printable ASCII.
    fn cluster_prefix(&mut self, value: Option<&str>) -> Option<String> {
        let path = "cluster.prefix";
        let prefix = self.required(
            path,
            value,
            "the key prefix all instances of this deployment share, e.g. \"/msgtrace/prod\"",
        )?;
        let printable = prefix.bytes().all(|b| b.is_ascii_graphic());
        if !prefix.starts_with('/') || prefix.ends_with('/') || prefix.contains("//") || !printable
        {
            let shown = self.quote(path, &prefix);
            self.error(path, format!("{shown} is not a key prefix; write `/` and path segments without spaces and no `/` at the end, e.g. \"/msgtrace/prod\""));
            return None;
        }
        Some(prefix)
    }

    /// A member name: what a host name may hold (letters, digits, `-`, `_`, `.`), at most 253.
    fn member_name(&mut self, path: &str, name: &str) -> Option<String> {
        let name = name.trim();
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
        if name.is_empty() || name.len() > 253 || !name.chars().all(allowed) {
            let shown = self.quote(path, name);
            self.error(path, format!("{shown} is not a member name; use 1 to 253 letters, digits, `-`, `_` and `.`, unique to this instance"));
            return None;
        }
        Some(name.to_owned())
    }

    /// One of a fixed set of spellings; `None` when absent or unknown (unknown is an error).
    fn choice<T: Copy>(
        &mut self,
        path: &str,
        value: Option<&str>,
        options: &[(&str, T)],
    ) -> Option<T> {
        let value = value?;
        if let Some((_, v)) = options.iter().find(|(name, _)| *name == value.trim()) {
            return Some(*v);
        }
        let names: Vec<&str> = options.iter().map(|(name, _)| *name).collect();
        let shown = self.quote(path, value);
        self.error(
            path,
            format!("unknown value {shown}; use one of: {}", names.join(", ")),
        );
        None
    }

    fn log_level(&mut self, path: &str, value: Option<&str>) -> Option<LogLevel> {
        let levels = [
            ("error", LogLevel::Error),
            ("warn", LogLevel::Warn),
            ("info", LogLevel::Info),
            ("debug", LogLevel::Debug),
        ];
        self.choice(path, value, &levels)
    }

    /// Source, sink and certificate names end up in state keys, metrics labels and file names.
    fn check_id(&mut self, path: &str, id: &str, what: &str) {
        if id.is_empty() {
            self.error(
                path,
                format!("empty {what}; use letters, digits, `_` and `-`"),
            );
        } else if !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            self.error(
                path,
                format!("{what} `{id}` may only contain letters, digits, `_` and `-`; rename it"),
            );
        }
    }

    /// A required non-empty string.
    fn required(&mut self, path: &str, value: Option<&str>, why: &str) -> Option<String> {
        match value {
            Some(v) if !v.trim().is_empty() => Some(v.to_owned()),
            Some(_) => {
                self.error(path, format!("is empty; set {why}"));
                None
            }
            None => {
                self.error(path, format!("is required; set {why}"));
                None
            }
        }
    }

    fn required_path(&mut self, path: &str, value: Option<&str>, what: &str) -> Option<PathBuf> {
        self.required(path, value, what).map(PathBuf::from)
    }

    /// An absolute http(s) URL; `http://` to a host other than loopback is allowed with a warning.
    fn url(&mut self, path: &str, text: &str) -> Option<Url> {
        let shown = self.quote(path, text);
        let url = match Url::parse(text.trim()) {
            Ok(url) => url,
            Err(e) => {
                self.error(path, format!("{shown} is not a valid URL ({e}); write an absolute URL such as https://host/path"));
                return None;
            }
        };
        match url.scheme() {
            "https" => {}
            "http" => {
                if !is_loopback(&url) {
                    self.warn(
                        path,
                        "plain http:// to a host that is not loopback: credentials and events travel unencrypted; \
                         use https:// unless this is a test server",
                    );
                }
            }
            other => {
                self.error(path, format!("scheme `{other}` is not supported; use https:// (or http:// for test servers)"));
                return None;
            }
        }
        if url.host().is_none() {
            self.error(
                path,
                format!("{shown} has no host; write an absolute URL such as https://host/path"),
            );
            return None;
        }
        Some(url)
    }

    /// An http(s) URL that names a server only (scheme, host, port): a path, query or fragment is
    /// an error whose message ends with `fix` (what the key is, with an example), since the
    /// program appends its own path to it or ignores what follows the port.
    fn server_url(&mut self, path: &str, text: &str, fix: &str) -> Option<Url> {
        let url = self.url(path, text)?;
        if matches!(url.path(), "" | "/") && url.query().is_none() && url.fragment().is_none() {
            return Some(url);
        }
        // Only the part after the host: the value itself may carry a proxy password.
        let shown = if self.expanded.contains(path) {
            "the value from the environment has one".to_owned()
        } else {
            format!("`{}`", &url[url::Position::BeforePath..])
        };
        self.error(path, format!("has a path or query ({shown}); {fix}"));
        None
    }

    /// A non-negative integer that fits `T`, with its allowed range in the message.
    fn int_in<T: TryFrom<i64>>(
        &mut self,
        path: &str,
        value: i64,
        min: i64,
        max: i64,
        hint: &str,
    ) -> Option<T> {
        if value < min || value > max {
            self.error(
                path,
                format!("{value} is out of range; use {min} to {max}{hint}"),
            );
            return None;
        }
        T::try_from(value).ok()
    }

    fn duration(&mut self, path: &str, value: Option<&RawDuration>, default: Duration) -> Duration {
        match value {
            None => default,
            Some(RawDuration::Secs(n)) if *n >= 0 => Duration::from_secs(n.unsigned_abs()),
            Some(RawDuration::Secs(n)) => {
                self.error(
                    path,
                    format!(
                        "{n} is negative; write a duration such as \"45s\", \"15m\", \"4h\" or 0"
                    ),
                );
                default
            }
            Some(RawDuration::Text(text)) => match parse_duration(text) {
                Ok(d) => d,
                Err(why) => {
                    let shown = self.quote(path, text);
                    self.error(path, format!("{shown}: {why}"));
                    default
                }
            },
        }
    }

    fn time(&mut self, path: &str, value: Option<&RawTime>, default: &str) -> Option<TimeExpr> {
        let text = match value {
            None => default.to_owned(),
            Some(RawTime::Epoch(n)) if *n < 0 => {
                self.error(path, format!("{n} is negative; write epoch seconds or a time expression such as \"-3h@h\""));
                return None;
            }
            Some(RawTime::Epoch(n)) => n.to_string(),
            Some(RawTime::Expr(s)) => s.clone(),
        };
        match TimeExpr::parse(&text) {
            Ok(t) => Some(t),
            Err(e) if self.expanded.contains(path) => {
                let _ = e;
                self.error(path, "the value (from the environment) is not a time expression; write e.g. \"-3h@h\", \"now\" or epoch seconds");
                None
            }
            Err(e) => {
                self.error(path, e.to_string());
                None
            }
        }
    }

    /// Warnings for what is configured and never used: a source that feeds no sink, a
    /// certificate no source or sink names.
    fn unused(&mut self, raw: &RawConfig) {
        for id in raw.sources.keys() {
            let fed = raw
                .sinks
                .values()
                .any(|s| s.inputs.iter().flatten().any(|i| i == id));
            if !fed {
                self.warn(
                    &join("sources", id),
                    "feeds no sink: its events are collected and dropped; add it to a sink's `inputs`",
                );
            }
        }
        for name in raw.certificates.keys() {
            let used = raw
                .sources
                .values()
                .map(|s| &s.auth)
                .chain(raw.sinks.values().map(|s| &s.auth))
                .any(|a| a.as_ref().and_then(RawAuth::certificate) == Some(name.as_str()));
            if !used {
                self.warn(&join("certificates", name), "not used by any source");
            }
        }
    }

    /// `[certificates.<name>]`: both paths required.
    fn certificates(
        &mut self,
        raw: &BTreeMap<String, super::raw::RawCertificate>,
    ) -> BTreeMap<String, CertificateConfig> {
        let mut certificates = BTreeMap::new();
        for (name, cert) in raw {
            let path = join("certificates", name);
            self.check_id(&path, name, "certificate name");
            let cert_path = self.required_path(
                &join(&path, "cert_path"),
                cert.cert_path.as_deref(),
                "the certificate PEM file",
            );
            let key_path = self.required_path(
                &join(&path, "key_path"),
                cert.key_path.as_deref(),
                "the private key PEM file",
            );
            if let (Some(cert_path), Some(key_path)) = (cert_path, key_path) {
                let passphrase = secret(cert.passphrase.as_deref());
                certificates.insert(
                    name.clone(),
                    CertificateConfig {
                        cert_path,
                        key_path,
                        passphrase,
                    },
                );
            }
        }
        certificates
    }

    fn source(
        &mut self,
        id: &str,
        raw: &RawSource,
        config: &RawConfig,
        certificates: &BTreeMap<String, CertificateConfig>,
    ) -> Option<SourceConfig> {
        let p = join("sources", id);
        let at = |key: &str| join(&p, key);
        self.check_id(&p, id, "source id");

        let api = self.choice(
            &at("api"),
            raw.api.as_deref(),
            &[("graph", Api::Graph), ("reporting", Api::Reporting)],
        );
        let plan = self.choice(&at("plan"), raw.plan.as_deref(), PLANS);
        let known = (api.is_some() || raw.api.is_none()) && (plan.is_some() || raw.plan.is_none());
        let api = api.unwrap_or(Api::Graph);
        let plan = plan.unwrap_or(Plan::Enterprise);
        let url = self.source_url(&p, raw, api, plan, known);
        let schedule = self.schedule(&p, raw);
        let (start, end) = self.start_end(&p, raw);
        let page_size = self.page_size(&p, raw, api);
        let reread = self.duration(&at("reread"), raw.reread.as_ref(), Duration::ZERO);
        let quota = self.quota(&p, raw, api);
        let details = self.details(&p, raw, api);
        let tags = raw.tags.clone().unwrap_or_default();
        for (i, tag) in tags.iter().enumerate() {
            if tag.trim().is_empty() {
                self.error(&format!("{}[{i}]", at("tags")), "empty tag; remove it");
            }
        }
        let fields = self.static_fields(&p, raw);
        let (normalize, local_domains) = self.normalize(&p, raw);
        let log_level = self.log_level(&at("log_level"), raw.log_level.as_deref());
        let request_timeout = self.request_timeout(&p, raw);
        let job_timeout =
            Some(self.duration(&at("job_timeout"), raw.job_timeout.as_ref(), Duration::ZERO))
                .filter(|d| !d.is_zero());
        let task_reschedule_limit = match raw.task_reschedule_limit {
            None => Some(1),
            Some(n) => self.int_in(&at("task_reschedule_limit"), n, 0, u32::MAX.into(), ""),
        };
        let ttl = self.duration(&at("ttl"), raw.ttl.as_ref(), Duration::from_secs(4 * 3600));
        let proxy_url = self.proxy_url(&p, raw);
        let auth = self.source_auth(&p, raw, api, plan, config, certificates);
        let retry = self.retry(&at("retry"), raw.retry.as_ref());

        Some(SourceConfig {
            id: id.to_owned(),
            description: raw.description.clone(),
            api,
            url: url?,
            plan,
            schedule: schedule?,
            start: start?,
            end: end?,
            page_size: page_size?,
            reread,
            quota,
            tags,
            fields,
            disable_time_filter: raw.disable_time_filter.unwrap_or(false),
            details,
            normalize,
            local_domains,
            log_level,
            request_timeout,
            job_timeout,
            reschedule_tasks: raw.reschedule_tasks.unwrap_or(true),
            task_reschedule_limit: task_reschedule_limit?,
            ttl,
            proxy_url,
            auth: auth?,
            retry: retry?,
        })
    }

    /// `url`: given (the endpoint, not a bare host), or the plan's default for the API; `None`
    /// when `api` or `plan` was not understood (`known`: already reported).
    fn source_url(
        &mut self,
        p: &str,
        raw: &RawSource,
        api: Api,
        plan: Plan,
        known: bool,
    ) -> Option<Url> {
        let at = |key: &str| join(p, key);
        match raw.url.as_deref() {
            Some(text) => self.url(&at("url"), text).filter(|url| {
                let bare = matches!(url.path(), "" | "/");
                if bare {
                    let shown = self.quote(&at("url"), text);
                    let example = plan.default_url(api).unwrap_or(GRAPH_URL);
                    self.error(
                        &at("url"),
                        format!("{shown} names a host, not the message trace endpoint; write the full URL, e.g. \"{example}\""),
                    );
                }
                !bare
            }),
            None if !known => None,
            None => match plan.default_url(api) {
                Some(default) => Url::parse(default).ok(),
                None if api == Api::Graph => {
                    self.error(
                        &at("api"),
                        format!(
                            "Microsoft offers no Graph message trace API for plan {} (Graph message trace exists \
                             only in the global cloud); use api = \"reporting\", or set url to a compatible endpoint",
                            plan.as_str()
                        ),
                    );
                    None
                }
                None => {
                    self.error(
                        &at("url"),
                        format!(
                            "Microsoft documents no Reporting Web Service host for plan {}; set url (and \
                             auth.resource) to your tenant's endpoint",
                            plan.as_str()
                        ),
                    );
                    None
                }
            },
        }
    }

    /// `schedule` (cron) or `poll_interval_mins` (a divisor of 60; 15 by default).
    fn schedule(&mut self, p: &str, raw: &RawSource) -> Option<Schedule> {
        let at = |key: &str| join(p, key);
        match (raw.schedule.as_deref(), raw.poll_interval_mins) {
            (Some(_), Some(_)) => {
                self.error(
                    &at("schedule"),
                    "set either schedule or poll_interval_mins, not both; remove one",
                );
                None
            }
            (Some(expr), None) => match cron_to_six_fields(expr) {
                Ok(six) => Some(Schedule::Cron {
                    written: expr.trim().to_owned(),
                    expr: six,
                }),
                Err(why) => {
                    let shown = self.quote(&at("schedule"), expr);
                    self.error(
                        &at("schedule"),
                        format!("{shown} is not a valid cron expression: {why}"),
                    );
                    None
                }
            },
            (None, mins) => {
                let mins = mins.unwrap_or(15);
                if POLL_INTERVALS.contains(&mins) {
                    u32::try_from(mins)
                        .ok()
                        .map(|mins| Schedule::Interval { mins })
                } else {
                    self.error(
                        &at("poll_interval_mins"),
                        format!(
                            "{mins} does not divide 60 evenly; use one of 1 2 3 4 5 6 10 12 15 20 30 60, or a \
                             cron `schedule`"
                        ),
                    );
                    None
                }
            }
        }
    }

    /// `start` and `end` (`end` after `start` when both are relative or both epoch).
    fn start_end(&mut self, p: &str, raw: &RawSource) -> (Option<TimeExpr>, Option<TimeExpr>) {
        let at = |key: &str| join(p, key);
        let start = self.time(&at("start"), raw.start.as_ref(), "-3h@h");
        let end = self.time(&at("end"), raw.end.as_ref(), "-2h@h");
        if let (Some(start), Some(end)) = (&start, &end) {
            // Relative expressions are compared at a fixed time (no clock read: no I/O, same answer
            // every time); a mix of epoch and relative depends on the day, so it is left alone.
            let is_epoch = |t: &TimeExpr| t.as_str().bytes().all(|b| b.is_ascii_digit());
            if is_epoch(start) == is_epoch(end) {
                let reference = Utc.with_ymd_and_hms(2024, 7, 9, 13, 37, 5).single();
                if let Some(now) = reference {
                    if start.resolve(now) >= end.resolve(now) {
                        self.error(
                            &at("end"),
                            format!("end ({end}) is not after start ({start}); the date range would be empty"),
                        );
                    }
                }
            }
        }

        (start, end)
    }

    /// `page_size`: 1 to the API's most (5000 Graph, 2000 Reporting), 1000 by default.
    fn page_size(&mut self, p: &str, raw: &RawSource, api: Api) -> Option<u32> {
        let at = |key: &str| join(p, key);
        let max_page = if api == Api::Graph { 5000 } else { 2000 };
        let page_hint = format!(
            " for api {}",
            if api == Api::Graph {
                "graph"
            } else {
                "reporting"
            }
        );
        match raw.page_size {
            None => Some(1000),
            Some(n) => self.int_in(&at("page_size"), n, 1, max_page, &page_hint),
        }
    }

    /// `details`: none (default), not_delivered or all; Graph only (the Reporting Web Service
    /// has no detail request).
    fn details(&mut self, p: &str, raw: &RawSource, api: Api) -> DetailsMode {
        let at = join(p, "details");
        let modes = [
            ("none", DetailsMode::None),
            ("not_delivered", DetailsMode::NotDelivered),
            ("all", DetailsMode::All),
        ];
        let mode = self
            .choice(&at, raw.details.as_deref(), &modes)
            .unwrap_or_default();
        if api == Api::Reporting && mode != DetailsMode::None {
            self.error(
                &at,
                format!(
                    "details = \"{}\" needs api = \"graph\" (the Reporting Web Service has no per-recipient detail request); remove details, or use api = \"graph\"",
                    mode.as_str()
                ),
            );
        }
        mode
    }

    /// `quota`: Graph's 100 requests per 5 minutes by default; none for the Reporting Web Service.
    fn quota(&mut self, p: &str, raw: &RawSource, api: Api) -> Option<Quota> {
        let at = |key: &str| join(p, key);
        match &raw.quota {
            None if api == Api::Graph => Some(Quota {
                requests: 100,
                per: Duration::from_secs(300),
            }),
            None => None,
            Some(q) => {
                let qp = at("quota");
                let requests = match q.requests {
                    Some(n) => {
                        self.int_in::<u32>(&join(&qp, "requests"), n, 1, u32::MAX.into(), "")
                    }
                    None => {
                        self.error(
                            &join(&qp, "requests"),
                            "is required in quota; e.g. quota = { requests = 100, per_secs = 300 }",
                        );
                        None
                    }
                };
                let per = match q.per_secs {
                    Some(n) => self
                        .int_in::<u64>(&join(&qp, "per_secs"), n, 1, i64::MAX, "")
                        .map(Duration::from_secs),
                    None => {
                        self.error(
                            &join(&qp, "per_secs"),
                            "is required in quota; e.g. quota = { requests = 100, per_secs = 300 }",
                        );
                        None
                    }
                };
                requests
                    .zip(per)
                    .map(|(requests, per)| Quota { requests, per })
            }
        }
    }

    /// `fields`: static fields added to every event (not `_time` or `__*`, no nan/inf).
    fn static_fields(&mut self, p: &str, raw: &RawSource) -> BTreeMap<String, serde_json::Value> {
        let at = |key: &str| join(p, key);
        let mut fields = BTreeMap::new();
        for (name, value) in raw.fields.iter().flatten() {
            let fp = join(&at("fields"), name);
            if name.is_empty() || name == "_time" || name.starts_with("__") {
                self.error(&fp, "reserved or empty field name (`_time` and `__*` are set by msgtrace); rename it");
                continue;
            }
            let json = match value {
                RawFieldValue::String(s) => serde_json::Value::String(s.clone()),
                RawFieldValue::Integer(n) => serde_json::Value::from(*n),
                RawFieldValue::Bool(b) => serde_json::Value::Bool(*b),
                RawFieldValue::Float(f) => match serde_json::Number::from_f64(*f) {
                    Some(n) => serde_json::Value::Number(n),
                    None => {
                        self.error(
                            &fp,
                            "nan and inf cannot be written to JSON events; use a finite number",
                        );
                        continue;
                    }
                },
            };
            fields.insert(name.clone(), json);
        }

        fields
    }

    /// `normalize` and `local_domains` (used only with `normalize = "ecs"`).
    fn normalize(&mut self, p: &str, raw: &RawSource) -> (Option<Normalize>, Vec<String>) {
        let at = |key: &str| join(p, key);
        let normalize = self.choice(
            &at("normalize"),
            raw.normalize.as_deref(),
            &[("ecs", Normalize::Ecs)],
        );
        let mut local_domains = Vec::new();
        for (i, domain) in raw.local_domains.iter().flatten().enumerate() {
            let d = domain.trim().trim_start_matches('@').to_ascii_lowercase();
            if d.is_empty() || d.contains(|c: char| c.is_whitespace() || c == '@' || c == '/') {
                let path = format!("{}[{i}]", at("local_domains"));
                let shown = self.quote(&path, domain);
                self.error(
                    &path,
                    format!("{shown} is not a domain; write e.g. \"contoso.com\""),
                );
            } else {
                local_domains.push(d);
            }
        }
        if raw.local_domains.is_some() && raw.normalize.is_none() {
            self.warn(
                &at("local_domains"),
                "only used with normalize = \"ecs\"; set it or remove local_domains",
            );
        }

        (normalize, local_domains)
    }

    /// `proxy_url`: the proxy's origin only.
    fn proxy_url(&mut self, p: &str, raw: &RawSource) -> Option<ProxyUrl> {
        let at = |key: &str| join(p, key);
        raw
            .proxy_url
            .as_deref()
            .and_then(|text| {
                self.server_url(
                    &at("proxy_url"),
                    text,
                    "proxy_url is the proxy's scheme, host and port only, e.g. \"http://proxy.example.com:3128\" \
                     (with user:password@ before the host if it asks for them)",
                )
            })
            .map(ProxyUrl)
    }

    /// `[sources.<id>.auth]`, required.
    fn source_auth(
        &mut self,
        p: &str,
        raw: &RawSource,
        api: Api,
        plan: Plan,
        config: &RawConfig,
        certificates: &BTreeMap<String, CertificateConfig>,
    ) -> Option<AuthConfig> {
        let at = |key: &str| join(p, key);
        match &raw.auth {
            Some(auth) => {
                let target = AuthTarget {
                    api,
                    plan,
                    explicit_url: raw.url.is_some(),
                };
                self.auth(&at("auth"), auth, target, config, certificates)
            }
            None => {
                self.error(
                    &at("auth"),
                    "is required; add [sources.<id>.auth] with method = \"oauth\" (or basic, basic_secret, \
                     oauth_secret, oauth_cert) and its credentials",
                );
                None
            }
        }
    }

    /// `request_timeout_secs`: 300 by default, 0 for none.
    fn request_timeout(&mut self, p: &str, raw: &RawSource) -> Option<Duration> {
        match raw.request_timeout_secs {
            None => Some(Duration::from_secs(300)),
            Some(0) => None,
            Some(n) if n < 0 => {
                self.error(
                    &join(p, "request_timeout_secs"),
                    format!("{n} is negative; use seconds, or 0 for unlimited"),
                );
                None
            }
            Some(n) => Some(Duration::from_secs(n.unsigned_abs())),
        }
    }

    /// `[… .auth]`: the method's own function checks its keys (serde has already refused the keys
    /// of other methods).
    fn auth(
        &mut self,
        p: &str,
        raw: &RawAuth,
        target: AuthTarget,
        config: &RawConfig,
        certificates: &BTreeMap<String, CertificateConfig>,
    ) -> Option<AuthConfig> {
        let AuthTarget {
            api,
            plan,
            explicit_url,
        } = target;
        let at = |key: &str| join(p, key);
        if let Some(method) = raw.method().filter(|m| m.starts_with("basic")) {
            if api == Api::Graph && !explicit_url {
                self.error(
                    &at("method"),
                    format!(
                        "Microsoft Graph accepts only OAuth tokens, not method {method}; use oauth, oauth_secret or \
                         oauth_cert, or api = \"reporting\""
                    ),
                );
            }
        }
        match raw {
            RawAuth::Unknown { method } => {
                self.unknown_method(&at("method"), method.as_deref());
                None
            }
            RawAuth::Basic { username, password } => {
                self.basic(p, username.as_deref(), password.as_deref())
            }
            RawAuth::BasicSecret { credentials_secret } => {
                self.basic_secret(p, credentials_secret.as_deref())
            }
            RawAuth::OAuthFederated { app, token_file } => {
                self.oauth_federated(p, app, token_file.as_deref(), api, plan)
            }
            RawAuth::ManagedIdentity {
                client_id,
                resource,
                imds_url,
            } => {
                let resource = self.resource(p, resource.as_deref(), api, plan);
                self.managed_identity(p, client_id.as_deref(), resource, imds_url.as_deref())
            }
            RawAuth::OAuth { app, client_secret } => {
                let app = self.oauth_app(p, app, api, plan);
                self.oauth(p, app, client_secret.as_deref())
            }
            RawAuth::OAuthSecret {
                app,
                client_secret_ref,
            } => {
                let app = self.oauth_app(p, app, api, plan);
                self.oauth_secret(p, app, client_secret_ref.as_deref())
            }
            RawAuth::OAuthCert { app, cert } => {
                let app = self.oauth_app(p, app, api, plan);
                self.oauth_cert(p, app, cert, config, certificates)
            }
        }
    }

    /// `method = "basic_secret"`.
    fn basic_secret(&mut self, p: &str, credentials_secret: Option<&str>) -> Option<AuthConfig> {
        let name = self.required(
            &join(p, "credentials_secret"),
            credentials_secret,
            "the name of a credentials secret (msgtrace secrets set NAME --kind credentials)",
        );
        Some(AuthConfig::BasicSecret {
            credentials_secret: name?,
        })
    }

    /// `method = "oauth"`: the app and its inline client secret.
    fn oauth(
        &mut self,
        p: &str,
        app: Option<OAuthApp>,
        client_secret: Option<&str>,
    ) -> Option<AuthConfig> {
        let secret = self.required(
            &join(p, "client_secret"),
            client_secret,
            "the client secret for method oauth (e.g. \"${O365_CLIENT_SECRET}\"), or use method \
             oauth_secret with client_secret_ref",
        );
        Some(AuthConfig::OAuth {
            app: app?,
            client_secret: Secret::new(secret?),
        })
    }

    /// `method = "oauth_secret"`: the app and the name of its client secret in the store.
    fn oauth_secret(
        &mut self,
        p: &str,
        app: Option<OAuthApp>,
        client_secret_ref: Option<&str>,
    ) -> Option<AuthConfig> {
        let name = self.required(
            &join(p, "client_secret_ref"),
            client_secret_ref,
            "the name of a secret in the store (msgtrace secrets set NAME)",
        );
        Some(AuthConfig::OAuthSecret {
            app: app?,
            client_secret_ref: name?,
        })
    }

    /// `oauth_federated`: `tenant_id`, `client_id` and `token_file` default from the variables the
    /// Azure SDKs (and AKS workload identity) use.
    fn oauth_federated(
        &mut self,
        p: &str,
        raw: &RawOAuthApp,
        token_file: Option<&str>,
        api: Api,
        plan: Plan,
    ) -> Option<AuthConfig> {
        let from_env = |key: &Option<String>, var: &str| key.clone().or_else(|| (self.env)(var));
        let app = RawOAuthApp {
            tenant_id: from_env(&raw.tenant_id, "AZURE_TENANT_ID"),
            client_id: from_env(&raw.client_id, "AZURE_CLIENT_ID"),
            ..raw.clone()
        };
        let token_file = token_file
            .map(str::to_owned)
            .or_else(|| (self.env)("AZURE_FEDERATED_TOKEN_FILE"));
        let mut missing = |key: &str, var: &str, what: &str| {
            self.error(
                &join(p, key),
                format!("is required; set {what}, or {var} in the environment (AKS workload identity sets it)"),
            );
        };
        if app.tenant_id.is_none() {
            missing(
                "tenant_id",
                "AZURE_TENANT_ID",
                "the directory (tenant) id or domain",
            );
        }
        if app.client_id.is_none() {
            missing(
                "client_id",
                "AZURE_CLIENT_ID",
                "the application (client) id",
            );
        }
        if token_file.is_none() {
            missing(
                "token_file",
                "AZURE_FEDERATED_TOKEN_FILE",
                "the file the platform writes the workload identity token to",
            );
        }
        let complete = app.tenant_id.is_some() && app.client_id.is_some();
        let app = if complete {
            self.oauth_app(p, &app, api, plan)
        } else {
            None
        };
        let token_file = self.required_path(
            &join(p, "token_file"),
            Some(token_file?.as_str()),
            "the file the platform writes the workload identity token to",
        );
        Some(AuthConfig::OAuthFederated {
            app: app?,
            token_file: token_file?,
        })
    }

    /// `managed_identity`: an optional user-assigned identity, the audience, the metadata endpoint.
    fn managed_identity(
        &mut self,
        p: &str,
        client_id: Option<&str>,
        resource: Option<String>,
        imds_url: Option<&str>,
    ) -> Option<AuthConfig> {
        let client_id = client_id.map(|c| {
            self.required(
                &join(p, "client_id"),
                Some(c),
                "the user-assigned identity's client id, or remove it for the system-assigned identity",
            )
        });
        let imds_url = self.imds_url(&join(p, "imds_url"), imds_url);
        Some(AuthConfig::ManagedIdentity {
            client_id: match client_id {
                Some(c) => Some(c?.trim().to_owned()),
                None => None,
            },
            resource: resource?,
            imds_url: imds_url?,
        })
    }

    /// `imds_url`: the metadata endpoint is plain http on a link-local address by design; another
    /// one (a test server, a proxy on the host) must be https, or http on loopback or link-local.
    fn imds_url(&mut self, path: &str, text: Option<&str>) -> Option<Url> {
        let Some(text) = text else {
            return Url::parse(IMDS_URL).ok();
        };
        let fix = "imds_url is the metadata endpoint's scheme, host and port only (default http://169.254.169.254): \
                   https://, or http:// to a loopback or link-local address";
        let shown = self.quote(path, text);
        let url = match Url::parse(text.trim()) {
            Ok(url) if url.scheme() == "http" => url,
            _ => return self.server_url(path, text, fix),
        };
        let local = match url.host() {
            Some(Host::Ipv4(ip)) => ip.is_loopback() || ip.is_link_local(),
            Some(Host::Ipv6(ip)) => ip.is_loopback() || (ip.segments()[0] & 0xffc0) == 0xfe80,
            Some(Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
            None => false,
        };
        if !local {
            self.error(
                path,
                format!("{shown} is plain http:// to a host that is neither loopback nor link-local, where a token \
                         would travel unencrypted; use https://, or the default http://169.254.169.254"),
            );
            return None;
        }
        if !matches!(url.path(), "" | "/") || url.query().is_some() {
            self.error(path, format!("has a path or query; {fix}"));
            return None;
        }
        Some(url)
    }

    /// A missing `method`, or one that names no method.
    fn unknown_method(&mut self, path: &str, method: Option<&str>) {
        let methods = RawAuth::METHODS.join(", ");
        match method {
            None => self.error(path, format!("is required; use one of: {methods}")),
            Some(m) => {
                let shown = self.quote(path, m.trim());
                self.error(
                    path,
                    format!("unknown method {shown}; use one of: {methods}"),
                );
            }
        }
    }

    /// `basic`.
    fn basic(
        &mut self,
        p: &str,
        username: Option<&str>,
        password: Option<&str>,
    ) -> Option<AuthConfig> {
        let username = self.required(
            &join(p, "username"),
            username,
            "the account name for method basic",
        );
        let password = self.required(
            &join(p, "password"),
            password,
            "the password for method basic (e.g. \"${RWS_PASSWORD}\"), or use method basic_secret",
        );
        Some(AuthConfig::Basic {
            username: username?,
            password: Secret::new(password?),
        })
    }

    /// `oauth_cert`: the certificate (a `[certificates]` entry or inline) and the algorithm.
    fn oauth_cert(
        &mut self,
        p: &str,
        app: Option<OAuthApp>,
        raw: &RawCertAuth,
        config: &RawConfig,
        certificates: &BTreeMap<String, CertificateConfig>,
    ) -> Option<AuthConfig> {
        let at = |key: &str| join(p, key);
        let RawCertAuth {
            certificate: name,
            cert_path,
            key_path,
            passphrase,
            assertion_alg,
        } = raw;
        let alg = match assertion_alg.as_deref() {
            None => Some(AssertionAlg::Ps256),
            Some(a) if a.trim().eq_ignore_ascii_case("PS256") => Some(AssertionAlg::Ps256),
            Some(a) if a.trim().eq_ignore_ascii_case("RS256") => Some(AssertionAlg::Rs256),
            Some(a) => {
                let shown = self.quote(&at("assertion_alg"), a);
                self.error(
                    &at("assertion_alg"),
                    format!("unknown algorithm {shown}; use PS256 or RS256"),
                );
                None
            }
        };
        let inline = cert_path.is_some() || key_path.is_some() || passphrase.is_some();
        let (certificate, certificate_name) = match (name, inline) {
            (Some(_), true) => {
                self.error(
                    &at("certificate"),
                    "set either certificate (a [certificates] entry) or cert_path/key_path/passphrase, not both",
                );
                (None, None)
            }
            (Some(name), false) => (
                self.named_certificate(p, name, config, certificates),
                Some(name.clone()),
            ),
            (None, _) => {
                let cert_path = self.required_path(
                    &at("cert_path"),
                    cert_path.as_deref(),
                    "the certificate PEM file, or name a [certificates] entry with certificate = \"NAME\"",
                );
                let key_path = self.required_path(
                    &at("key_path"),
                    key_path.as_deref(),
                    "the private key PEM file",
                );
                let cert = cert_path
                    .zip(key_path)
                    .map(|(cert_path, key_path)| CertificateConfig {
                        cert_path,
                        key_path,
                        passphrase: secret(passphrase.as_deref()),
                    });
                (cert, None)
            }
        };
        Some(AuthConfig::OAuthCert {
            app: app?,
            certificate: certificate?,
            certificate_name,
            assertion_alg: alg?,
        })
    }

    /// `certificate = "NAME"`: the `[certificates]` entry, if it exists and is valid.
    fn named_certificate(
        &mut self,
        p: &str,
        name: &str,
        config: &RawConfig,
        certificates: &BTreeMap<String, CertificateConfig>,
    ) -> Option<CertificateConfig> {
        if let Some(cert) = certificates.get(name) {
            return Some(cert.clone());
        }
        if config.certificates.contains_key(name) {
            // The entry exists but has its own errors, reported under [certificates].
            return None;
        }
        let known: Vec<&str> = config.certificates.keys().map(String::as_str).collect();
        let known = if known.is_empty() {
            "none are defined".to_owned()
        } else {
            known.join(", ")
        };
        let path = join(p, "certificate");
        let shown = self.quote(&path, name);
        self.error(
            &path,
            format!("no [certificates] entry named {shown}; known certificates: {known}"),
        );
        None
    }

    fn oauth_app(&mut self, p: &str, raw: &RawOAuthApp, api: Api, plan: Plan) -> Option<OAuthApp> {
        let at = |key: &str| join(p, key);
        let tenant_id = self.required(
            &at("tenant_id"),
            raw.tenant_id.as_deref(),
            "the directory (tenant) id or domain",
        );
        if let Some(t) = &tenant_id {
            if t.contains(|c: char| c.is_whitespace() || matches!(c, '/' | '?' | '#')) {
                self.error(
                    &at("tenant_id"),
                    "must be a tenant id (GUID) or domain, without spaces or `/`",
                );
            }
        }
        let client_id = self.required(
            &at("client_id"),
            raw.client_id.as_deref(),
            "the application (client) id",
        );
        let login_url = match raw.login_url.as_deref() {
            Some(text) => self.server_url(
                &at("login_url"),
                text,
                "login_url is the authority host only, e.g. \"https://login.microsoftonline.com\": \
                 msgtrace appends /<tenant_id>/oauth2/v2.0/token (or /oauth2/token) itself",
            ),
            None => Url::parse(plan.default_login_url()).ok(),
        };
        let resource = self.resource(p, raw.resource.as_deref(), api, plan);
        let token_endpoint = match raw.token_endpoint.as_deref() {
            None => Some(TokenEndpoint::V2),
            Some(v) => self.choice(
                &at("token_endpoint"),
                Some(v),
                &[("v1", TokenEndpoint::V1), ("v2", TokenEndpoint::V2)],
            ),
        };
        Some(OAuthApp {
            tenant_id: tenant_id?.trim().to_owned(),
            client_id: client_id?.trim().to_owned(),
            login_url: login_url?,
            resource: resource?,
            token_endpoint: token_endpoint?,
        })
    }

    /// `resource`: the token audience, without `/.default`; the default for the api and plan.
    fn resource(&mut self, p: &str, raw: Option<&str>, api: Api, plan: Plan) -> Option<String> {
        let at = |key: &str| join(p, key);
        let dot_default = raw.is_some_and(|r| {
            r.trim()
                .trim_end_matches('/')
                .to_ascii_lowercase()
                .ends_with("/.default")
        });
        if dot_default {
            self.error(
                &at("resource"),
                "ends with /.default, which msgtrace adds itself (v2 asks for scope=<resource>/.default); \
                 write the audience alone, e.g. \"https://graph.microsoft.com\"",
            );
        }
        let resource = match raw {
            Some(r) => self.required(
                &at("resource"),
                Some(r),
                "the token audience, e.g. \"https://outlook.office365.com\"",
            ),
            None => match plan.default_resource(api) {
                Some(r) => Some(r.to_owned()),
                None => {
                    self.error(
                        &at("resource"),
                        format!(
                            "no default token audience is known for plan {}; set resource",
                            plan.as_str()
                        ),
                    );
                    None
                }
            },
        };
        Some(resource?.trim().trim_end_matches('/').to_owned())
    }

    fn retry(&mut self, p: &str, raw: Option<&RawRetry>) -> Option<RetryPolicy> {
        let at = |key: &str| join(p, key);
        let default = RawRetry::default();
        let raw = raw.unwrap_or(&default);
        let kind = match raw.kind.as_deref() {
            None => Some(RetryKind::Backoff),
            Some(k) => self.choice(
                &at("type"),
                Some(k),
                &[
                    ("backoff", RetryKind::Backoff),
                    ("static", RetryKind::Static),
                    ("disabled", RetryKind::Disabled),
                ],
            ),
        };
        let initial_interval = match raw.initial_interval_ms {
            None => Some(Duration::from_millis(1000)),
            Some(n) => self
                .int_in::<u64>(&at("initial_interval_ms"), n, 0, 20_000, " milliseconds")
                .map(Duration::from_millis),
        };
        let limit = match raw.limit {
            None => Some(5),
            Some(n) => self.int_in(&at("limit"), n, 0, 20, " (0 = no retries)"),
        };
        let multiplier = match raw.multiplier {
            None => Some(2.0),
            Some(m) if m.is_finite() && m >= 1.0 => Some(m),
            Some(m) => {
                self.error(
                    &at("multiplier"),
                    format!("{m} is below 1; use 1 (constant delay) or more, e.g. 2"),
                );
                None
            }
        };
        let mut codes = Vec::new();
        for (i, code) in raw.codes.iter().flatten().enumerate() {
            let path = format!("{}[{i}]", at("codes"));
            match u16::try_from(*code) {
                Ok(c) if (100..=599).contains(&c) && !(200..=299).contains(&c) => codes.push(c),
                _ if (200..=299).contains(code) => self.error(
                    &path,
                    format!("{code} is a success status; list only failures such as 429 or 503"),
                ),
                _ => self.error(
                    &path,
                    format!("{code} is not an HTTP status; use 100 to 599, e.g. 429 or 503"),
                ),
            }
        }
        if raw.codes.is_none() {
            codes = vec![429, 503];
        }
        Some(RetryPolicy {
            kind: kind?,
            initial: initial_interval?,
            limit: limit?,
            multiplier: multiplier?,
            codes,
            honor_retry_after: raw.honor_retry_after.unwrap_or(true),
            retry_connect_timeout: raw.retry_connect_timeout.unwrap_or(true),
            retry_connect_reset: raw.retry_connect_reset.unwrap_or(true),
        })
    }

    fn sink(
        &mut self,
        id: &str,
        raw: &RawSink,
        config: &RawConfig,
        certificates: &BTreeMap<String, CertificateConfig>,
    ) -> Option<SinkConfig> {
        let p = join("sinks", id);
        self.check_id(&p, id, "sink id");
        let inputs = self.inputs(&p, raw, config);
        let kind = self.sink_type(&p, raw)?;
        self.keys_of_other_types(&p, raw, kind);
        let kind = match kind {
            "stdout" => Some(SinkKind::Stdout),
            "file" => self.file_sink(&p, raw),
            AZURE => self
                .azure_sink(&p, raw, config, certificates)
                .map(|c| SinkKind::AzureLogsIngestion(Box::new(c))),
            OBJECT_STORE => self
                .object_store_sink(&p, raw)
                .map(|c| SinkKind::ObjectStore(Box::new(c))),
            _ => self.http_sink(&p, raw).map(SinkKind::Http),
        };
        Some(SinkConfig {
            id: id.to_owned(),
            inputs: inputs?,
            kind: kind?,
        })
    }

    /// `inputs`: required, not empty, each a configured source.
    fn inputs(&mut self, p: &str, raw: &RawSink, config: &RawConfig) -> Option<Vec<String>> {
        let at = |key: &str| join(p, key);
        match &raw.inputs {
            None => {
                self.error(&at("inputs"), "is required; list the source ids this sink receives, e.g. inputs = [\"contoso\"]");
                None
            }
            Some(list) if list.is_empty() => {
                self.error(
                    &at("inputs"),
                    "is empty; list the source ids this sink receives, e.g. inputs = [\"contoso\"]",
                );
                None
            }
            Some(list) => {
                let mut ok = true;
                for (i, input) in list.iter().enumerate() {
                    if !config.sources.contains_key(input) {
                        let path = format!("{}[{i}]", at("inputs"));
                        let known: Vec<&str> = config.sources.keys().map(String::as_str).collect();
                        let known = if known.is_empty() {
                            "none".to_owned()
                        } else {
                            known.join(", ")
                        };
                        let shown = self.quote(&path, input);
                        self.error(&path, format!("no source {shown}; known sources: {known}"));
                        ok = false;
                    }
                }
                ok.then(|| list.clone())
            }
        }
    }

    /// `type`, required and known.
    fn sink_type<'r>(&mut self, p: &str, raw: &'r RawSink) -> Option<&'r str> {
        let at = |key: &str| join(p, key);
        const TYPES: &[&str] = &["stdout", "file", "http", AZURE, OBJECT_STORE];
        match raw.kind.as_deref().map(str::trim) {
            None => {
                self.error(
                    &at("type"),
                    "is required; use stdout, file, http, azure_logs_ingestion or object_store",
                );
                None
            }
            Some(k) if TYPES.contains(&k) => Some(k),
            Some(k) => {
                let shown = self.quote(&at("type"), k);
                self.error(
                    &at("type"),
                    format!(
                        "unknown sink type {shown}; use stdout, file, http, azure_logs_ingestion or object_store"
                    ),
                );
                None
            }
        }
    }

    /// Keys that belong to another sink type than `kind`: each one an error.
    fn keys_of_other_types(&mut self, p: &str, raw: &RawSink, kind: &str) {
        let at = |key: &str| join(p, key);
        let owners: [(&str, bool, &[&str]); 16] = [
            ("path", raw.path.is_some(), &["file"]),
            ("mode", raw.mode.is_some(), &["file"]),
            (
                "rotate_max_bytes",
                raw.rotate_max_bytes.is_some(),
                &["file"],
            ),
            ("rotate_keep", raw.rotate_keep.is_some(), &["file"]),
            ("url", raw.url.is_some(), &["http", OBJECT_STORE]),
            ("format", raw.format.is_some(), &["http"]),
            ("token", raw.token.is_some(), &["http"]),
            ("headers", raw.headers.is_some(), &["http"]),
            ("compression", raw.compression.is_some(), &["http", AZURE]),
            ("batch", raw.batch.is_some(), &["http"]),
            ("endpoint", raw.endpoint.is_some(), &[AZURE, OBJECT_STORE]),
            ("dcr_id", raw.dcr_id.is_some(), &[AZURE]),
            ("stream", raw.stream.is_some(), &[AZURE]),
            ("plan", raw.plan.is_some(), &[AZURE]),
            ("auth", raw.auth.is_some(), &[AZURE]),
            ("options", raw.options.is_some(), &[OBJECT_STORE]),
        ];
        for (key, present, owners) in owners {
            if present && !owners.contains(&kind) {
                let owners = owners.join(", ");
                self.error(
                    &at(key),
                    format!("not used by sink type {kind} (only by {owners}); remove it"),
                );
            }
        }
    }

    /// A `file` sink: `path`, `mode`, rotation.
    fn file_sink(&mut self, p: &str, raw: &RawSink) -> Option<SinkKind> {
        let at = |key: &str| join(p, key);
        let rotate = match raw.rotate_max_bytes {
            None => None,
            Some(n) => self
                .int_in::<u64>(&at("rotate_max_bytes"), n, 4096, i64::MAX, "")
                .map(|max_bytes| Rotation { max_bytes, keep: 5 }),
        };
        let keep = match raw.rotate_keep {
            None => Some(5),
            Some(n) => self.int_in::<u32>(&at("rotate_keep"), n, 1, 1000, ""),
        };
        if raw.rotate_keep.is_some() && raw.rotate_max_bytes.is_none() {
            self.error(
                &at("rotate_keep"),
                "has no effect without rotate_max_bytes; set both or neither",
            );
        }
        let mode = match raw.mode.as_deref() {
            None => Some(crate::sinks::DEFAULT_FILE_MODE),
            Some(text) => match file_mode(text) {
                Ok(m) => Some(m),
                Err(e) => {
                    let shown = self.quote(&at("mode"), text);
                    self.error(&at("mode"), format!("{shown} {e}"));
                    None
                }
            },
        };
        let path = self.required_path(
            &at("path"),
            raw.path.as_deref(),
            "the file to append events to",
        );
        path.zip(mode).map(|(path, mode)| SinkKind::File {
            path,
            rotate: rotate.zip(keep).map(|(r, keep)| Rotation { keep, ..r }),
            mode,
        })
    }

    /// An `azure_logs_ingestion` sink. Its `[auth]` is validated as a source's is (the same
    /// methods and keys), with the Azure Monitor audience of `plan` as the default `resource`.
    fn azure_sink(
        &mut self,
        p: &str,
        raw: &RawSink,
        config: &RawConfig,
        certificates: &BTreeMap<String, CertificateConfig>,
    ) -> Option<AzureLogsConfig> {
        let at = |key: &str| join(p, key);
        let endpoint = self.azure_endpoint(p, raw);
        let dcr_id = self.dcr_id(p, raw);
        let stream = self.azure_stream(p, raw);
        let plan = match raw.plan.as_deref() {
            None => Some(Plan::Enterprise),
            Some(v) => self.choice(&at("plan"), Some(v), PLANS),
        };
        let compression = self.compression(p, raw);
        let auth = self.azure_auth(p, raw, plan, config, certificates);
        Some(AzureLogsConfig {
            endpoint: endpoint?,
            dcr_id: dcr_id?,
            stream: stream?,
            plan: plan?,
            auth: auth?,
            compression: compression?,
        })
    }

    /// `endpoint` of an `azure_logs_ingestion` sink: https, origin only.
    fn azure_endpoint(&mut self, p: &str, raw: &RawSink) -> Option<Url> {
        let at = |key: &str| join(p, key);
        match raw.endpoint.as_deref() {
            Some(text) => self.https_server_url(
                &at("endpoint"),
                text,
                "endpoint is the data collection endpoint's logs ingestion URL, scheme and host only, e.g. \
                 \"https://my-dce-a1b2.eastus-1.ingest.monitor.azure.com\": msgtrace appends \
                 /dataCollectionRules/<dcr_id>/streams/<stream> itself",
            ),
            None => {
                self.error(
                    &at("endpoint"),
                    "is required; set the logs ingestion endpoint of the data collection endpoint (or of the rule), \
                     e.g. \"https://my-dce-a1b2.eastus-1.ingest.monitor.azure.com\"",
                );
                None
            }
        }
    }

    /// `dcr_id`: the rule's immutable id (`dcr-` and 32 hex digits).
    fn dcr_id(&mut self, p: &str, raw: &RawSink) -> Option<String> {
        let at = |key: &str| join(p, key);
        let dcr_id = self.required(
            &at("dcr_id"),
            raw.dcr_id.as_deref(),
            "the data collection rule's immutable id, e.g. \"dcr-0123456789abcdef0123456789abcdef\" \
             (az monitor data-collection rule show --query immutableId)",
        );
        dcr_id.map(|d| d.trim().to_owned()).filter(|d| {
            let ok = d.len() == 36
                && d.starts_with("dcr-")
                && d[4..].bytes().all(|b| b.is_ascii_hexdigit());
            if !ok {
                let shown = self.quote(&at("dcr_id"), d);
                self.error(
                    &at("dcr_id"),
                    format!(
                        "{shown} is not an immutable id (`dcr-` and 32 hex digits, not the rule's name or resource id); \
                         copy it with az monitor data-collection rule show --query immutableId"
                    ),
                );
            }
            ok
        })
    }

    /// `stream`: `Custom-` (or `Microsoft-`) and a name.
    fn azure_stream(&mut self, p: &str, raw: &RawSink) -> Option<String> {
        let at = |key: &str| join(p, key);
        let stream = self.required(
            &at("stream"),
            raw.stream.as_deref(),
            "the rule's input stream, e.g. \"Custom-MessageTrace\"",
        );
        stream.map(|s| s.trim().to_owned()).filter(|s| {
            let name = s.strip_prefix("Custom-").or_else(|| s.strip_prefix("Microsoft-"));
            let ok = name.is_some_and(|n| {
                !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            });
            if !ok {
                let shown = self.quote(&at("stream"), s);
                self.error(
                    &at("stream"),
                    format!(
                        "{shown} is not a stream name; write the rule's streamDeclarations name, `Custom-` and \
                         letters, digits or `_`, e.g. \"Custom-MessageTrace\""
                    ),
                );
            }
            ok
        })
    }

    /// `[sinks.<id>.auth]`: validated as a source's (the same methods and keys), Entra ID
    /// methods only, with the Azure Monitor audience of `plan` as the default `resource`.
    fn azure_auth(
        &mut self,
        p: &str,
        raw: &RawSink,
        plan: Option<Plan>,
        config: &RawConfig,
        certificates: &BTreeMap<String, CertificateConfig>,
    ) -> Option<AuthConfig> {
        let at = |key: &str| join(p, key);
        match (&raw.auth, plan) {
            (None, _) => {
                self.error(
                    &at("auth"),
                    "is required; add [sinks.<id>.auth] with method = \"oauth\" (or oauth_secret, oauth_cert), \
                     tenant_id, client_id and the credential of an app registration that has the role \
                     Monitoring Metrics Publisher on the data collection rule",
                );
                None
            }
            (Some(a), Some(plan)) => {
                // The Graph api only stands in for a source's: the audience default is replaced
                // below, and `true` skips the Graph-only check of basic methods (refused below).
                let target = AuthTarget {
                    api: Api::Graph,
                    plan,
                    explicit_url: true,
                };
                let auth = self.auth(&at("auth"), a, target, config, certificates);
                let mut auth = auth?;
                match auth.audience_mut() {
                    Some(audience) if a.resource().is_none() => {
                        *audience = plan.monitor_audience().to_owned();
                    }
                    Some(_) => {}
                    None => {
                        let method = auth.method();
                        self.error(
                            &join(&at("auth"), "method"),
                            format!("the Logs Ingestion API accepts only Entra ID tokens, not method {method}; use oauth, oauth_secret, oauth_cert, oauth_federated or managed_identity"),
                        );
                        return None;
                    }
                }
                Some(auth)
            }
            (Some(_), None) => None,
        }
    }

    /// A [`Cx::server_url`] that must be https (http only to a loopback test server): it carries a
    /// bearer token.
    fn https_server_url(&mut self, path: &str, text: &str, fix: &str) -> Option<Url> {
        if self.plain_http_refused(path, text, "the token and the events") {
            return None;
        }
        self.server_url(path, text, fix)
    }

    /// Whether `text` is an `http://` URL to a host that is not loopback, which would send `what`
    /// unencrypted: then an error (http:// is for loopback test servers only).
    fn plain_http_refused(&mut self, path: &str, text: &str, what: &str) -> bool {
        let plain = Url::parse(text.trim()).is_ok_and(|u| u.scheme() == "http" && !is_loopback(&u));
        if plain {
            self.error(
                path,
                format!(
                    "plain http:// would send {what} unencrypted; use https:// \
                     (http:// only to a loopback test server)"
                ),
            );
        }
        plain
    }

    /// An `object_store` sink: `url` (the store and the prefix), `endpoint` (https, or http to
    /// loopback), `[options]` (the provider's settings by the crate's names, held as secrets).
    fn object_store_sink(&mut self, p: &str, raw: &RawSink) -> Option<ObjectStoreConfig> {
        let at = |key: &str| join(p, key);
        let parsed = match raw.url.as_deref() {
            None => {
                self.error(
                    &at("url"),
                    "is required for an object_store sink; set where the archive goes, e.g. \
                     \"s3://bucket/msgtrace\", \"az://container/msgtrace\", \"gs://bucket/msgtrace\" \
                     or \"file:///var/lib/msgtrace-archive\"",
                );
                None
            }
            Some(text) => {
                let shown = self.quote(&at("url"), text);
                let url = Url::parse(text.trim()).map_err(|e| format!("is not a URL ({e})"));
                let parsed = url.and_then(|u| match archive::parse_url(&u) {
                    Ok((provider, prefix)) => Ok((u, provider, prefix)),
                    Err(e) => Err(e.to_string()),
                });
                match parsed {
                    Ok(parsed) => Some(parsed),
                    Err(e) => {
                        self.error(&at("url"), format!("{shown} {e}"));
                        None
                    }
                }
            }
        };
        let (url, provider, prefix) = parsed?;
        let endpoint = raw.endpoint.as_deref().and_then(|text| {
            if provider == StoreProvider::File {
                self.error(
                    &at("endpoint"),
                    "a file:// store has no endpoint; remove it",
                );
                return None;
            }
            if self.plain_http_refused(&at("endpoint"), text, "the credentials and the events") {
                return None;
            }
            self.url(&at("endpoint"), text)
        });
        if raw.endpoint.is_some() && endpoint.is_none() {
            return None;
        }
        let mut options = BTreeMap::new();
        let mut ok = true;
        for (key, value) in raw.options.iter().flatten() {
            match archive::check_option(provider, key) {
                Ok(()) => {
                    options.insert(key.clone(), Secret::new(value.clone()));
                }
                Err(e) => {
                    self.error(&join(&at("options"), key), e.to_string());
                    ok = false;
                }
            }
        }
        ok.then_some(ObjectStoreConfig {
            url,
            provider,
            prefix,
            endpoint,
            options,
        })
    }

    fn http_sink(&mut self, p: &str, raw: &RawSink) -> Option<HttpSinkConfig> {
        let at = |key: &str| join(p, key);
        let url = match raw.url.as_deref() {
            Some(text) => self.url(&at("url"), text),
            None => {
                self.error(
                    &at("url"),
                    "is required for an http sink; set the endpoint events are POSTed to",
                );
                None
            }
        };
        let formats = [
            ("ndjson", HttpFormat::Ndjson),
            ("json", HttpFormat::Json),
            ("splunk_hec", HttpFormat::SplunkHec),
            ("elasticsearch_bulk", HttpFormat::ElasticsearchBulk),
        ];
        let format = match raw.format.as_deref() {
            Some(f) => self.choice(&at("format"), Some(f), &formats),
            None => {
                self.error(&at("format"), "is required for an http sink; use ndjson, json, splunk_hec or elasticsearch_bulk");
                None
            }
        };
        let token = secret(raw.token.as_deref());
        if format == Some(HttpFormat::SplunkHec) && token.is_none() {
            self.warn(
                &at("token"),
                "a Splunk HEC endpoint normally needs a token; set token = \"${HEC_TOKEN}\"",
            );
        }
        let headers = self.headers(p, raw);
        let compression = self.compression(p, raw);
        let batch = self.batch(p, raw);
        Some(HttpSinkConfig {
            url: url?,
            format: format?,
            token,
            headers,
            compression: compression?,
            batch: batch?,
        })
    }

    /// `compression`: none (default) or gzip.
    fn compression(&mut self, p: &str, raw: &RawSink) -> Option<Compression> {
        match raw.compression.as_deref() {
            None => Some(Compression::None),
            Some(c) => self.choice(
                &join(p, "compression"),
                Some(c),
                &[("none", Compression::None), ("gzip", Compression::Gzip)],
            ),
        }
    }

    /// `headers` of an http sink: valid names, no line breaks; values held as secrets.
    fn headers(&mut self, p: &str, raw: &RawSink) -> BTreeMap<String, Secret> {
        let at = |key: &str| join(p, key);
        let mut headers = BTreeMap::new();
        for (name, value) in raw.headers.iter().flatten() {
            let hp = join(&at("headers"), name);
            let valid_name = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if !valid_name {
                self.error(
                    &hp,
                    "not a valid HTTP header name; use letters, digits and `-`",
                );
            } else if value.contains(['\r', '\n']) {
                self.error(&hp, "header values cannot contain line breaks");
            } else {
                headers.insert(name.clone(), Secret::new(value.clone()));
            }
        }
        headers
    }

    /// `batch` of an http sink: rows, bytes and time of a batch.
    fn batch(&mut self, p: &str, raw: &RawSink) -> Option<BatchConfig> {
        let at = |key: &str| join(p, key);
        let defaults = BatchConfig::default();
        match &raw.batch {
            None => Some(defaults),
            Some(b) => {
                let bp = at("batch");
                let max_rows = match b.max_rows {
                    None => Some(defaults.max_rows),
                    Some(n) => self.int_in(&join(&bp, "max_rows"), n, 1, i64::from(u32::MAX), ""),
                };
                let max_bytes = match b.max_bytes {
                    None => Some(defaults.max_bytes),
                    Some(n) => self.int_in(&join(&bp, "max_bytes"), n, 1, i64::from(u32::MAX), ""),
                };
                let timeout = match b.timeout_secs {
                    None => Some(defaults.timeout),
                    Some(n) => self
                        .int_in::<u64>(&join(&bp, "timeout_secs"), n, 0, 86_400, "")
                        .map(Duration::from_secs),
                };
                match (max_rows, max_bytes, timeout) {
                    (Some(max_rows), Some(max_bytes), Some(timeout)) => Some(BatchConfig {
                        max_rows,
                        max_bytes,
                        timeout,
                    }),
                    _ => None,
                }
            }
        }
    }
}

/// The sink type of the Azure Monitor Logs Ingestion API.
const AZURE: &str = "azure_logs_ingestion";

/// The sink type of the archive in an object store.
const OBJECT_STORE: &str = "object_store";

/// The spellings of `plan`.
const PLANS: &[(&str, Plan)] = &[
    ("enterprise", Plan::Enterprise),
    ("gcc", Plan::Gcc),
    ("gcc_high", Plan::GccHigh),
    ("dod", Plan::Dod),
];

/// Whether a URL's host is this machine (`127.0.0.0/8`, `::1`, `localhost`).
fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        Some(Host::Domain(d)) => d.eq_ignore_ascii_case("localhost") || d.ends_with(".localhost"),
        None => false,
    }
}

/// An optional secret; an empty string counts as unset.
fn secret(value: Option<&str>) -> Option<Secret> {
    value.filter(|v| !v.is_empty()).map(Secret::new)
}

/// A file sink's `mode`: an octal string such as `"0640"`; never writable by others (anyone
/// could then forge events), always read-write for the owner.
fn file_mode(text: &str) -> Result<u32, &'static str> {
    let digits = text.trim();
    let mode = (!digits.is_empty() && digits.len() <= 4)
        .then(|| u32::from_str_radix(digits, 8).ok())
        .flatten()
        .filter(|m| *m <= 0o777)
        .ok_or(
            "is not a file mode; write it in octal, e.g. \"0640\" (owner read-write, group read)",
        )?;
    if mode & 0o002 != 0 {
        return Err(
            "lets every user write the output; drop the write bit for others, e.g. \"0640\"",
        );
    }
    if mode & 0o600 != 0o600 {
        return Err("must let the owner read and write (the sink appends and repairs the file), e.g. \"0640\"");
    }
    Ok(mode)
}
