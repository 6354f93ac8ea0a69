//! Assembles the actors from a validated [`Config`] and runs them.
//!
//! ```text
//!  Scheduler ──Due──▶ Supervisor ──RunJob──▶ Fetcher (one per source) ──GetAuthHeader──▶ AuthToken
//!                        ▲   │                  │ Deliver(page)                          (shared)
//!                        │   └─watchdog─────────┤
//!                        └────JobFinished───────┘──▶ SinkActor (one per sink, own thread)
//! ```

use crate::config::{AuthConfig, Config, OAuthApp, Schedule, Secret, SinkKind, SourceConfig};
use crate::secrets::SecretStore;
use crate::sinks::{ArchiveSink, AzureLogsSink, FileSink, HttpSink, StdoutSink};
use actix::prelude::*;
use msgtrace_actors::assertion::ClientCertificate;
use msgtrace_actors::auth::AuthToken;
use msgtrace_actors::proxy::Proxy;
use msgtrace_actors::retry::RetryPolicy;
use msgtrace_actors::scheduler;
use msgtrace_actors::sink::{Sink, SinkActor};
use msgtrace_actors::spec::{AuthSpec, ClientCredential, SourceSpec, TokenSpec, WindowSpec};
use msgtrace_actors::supervisor::{
    PageHook, RunAll, RunBackfill, RunReport, Shutdown, SinkEntry, SourceEntry, StartSchedules,
    Supervisor,
};
use msgtrace_storage::{JobKind, JobState, Store};
use std::time::Duration;
use tracing::{info, warn};

/// How the engine runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Collect what is due now for every source, then stop.
    Once,
    /// Run every source on its schedule until a shutdown signal.
    Continuous,
    /// Collect a past range of one source with its own resumable checkpoint, then stop.
    Backfill {
        /// The source id.
        source: String,
        /// The range.
        backfill: msgtrace_actors::fetcher::Backfill,
    },
}

/// What tells a running engine ([`crate::embed::EngineBuilder::run`]) to stop or reload. The
/// engine installs no signal handler: the `msgtrace` binary sends these for SIGINT/SIGTERM and
/// SIGHUP (and when `--watch-config` sees the file change); a host sends its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// Shut down gracefully: pages in flight finish, sinks and state are flushed.
    Stop,
    /// Read [`EngineOptions::config_file`] again and apply it ([`crate::reload`]); without a
    /// file, or with an invalid one, only the sinks reopen. The reason is logged.
    Reload(&'static str),
}

/// Why the engine could not start, or failed while it ran.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The state directory or a file sink's path cannot be used ([`crate::preflight::check`]).
    #[error(transparent)]
    Preflight(#[from] crate::preflight::PreflightError),
    /// The state directory could not be opened, read or written.
    #[error(transparent)]
    State(#[from] msgtrace_storage::StorageError),
    /// Sources that cannot run as configured (secrets, certificates, proxies): one line each.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Sources(Vec<SpecError>),
    /// `metrics_listen` or `control_listen` cannot be bound.
    #[error(transparent)]
    Listen(#[from] crate::listener::ListenError),
    /// The bound sockets could not be served.
    #[error("metrics_listen, control_listen: cannot serve on the bound sockets: {0}")]
    Serve(std::io::Error),
    /// `[cluster]`: this instance could not join (etcd unreachable, its name taken).
    #[error(transparent)]
    Cluster(#[from] crate::cluster::JoinError),
    /// The supervisor stopped before it answered.
    #[error("supervisor stopped: {0}")]
    Supervisor(#[from] actix::MailboxError),
}

impl EngineError {
    /// The state directory or a file sink's path is unusable: the configuration or the
    /// machine must change (the binary exits with 2).
    pub fn is_unusable_state(&self) -> bool {
        matches!(self, EngineError::Preflight(_) | EngineError::State(_))
    }
}

/// Knobs that are not configuration keys.
#[derive(Clone)]
pub struct EngineOptions {
    /// Flush sled after every page (the durability guarantee). Off only for benchmarks.
    pub durable: bool,
    /// Pages each source fetches ahead while the page before them is delivered and committed
    /// (default [`msgtrace_actors::fetcher::PREFETCH_PAGES`]); 0 only to measure what it gains.
    pub prefetch: usize,
    /// The most pages that arrive back to back committed together, with one sink `fsync` and
    /// one checkpoint flush (default [`msgtrace_actors::fetcher::COMMIT_GROUP_PAGES`], 1: every
    /// page committed on its own). For sinks whose `fsync` is slow beside the fetch; a crash
    /// delivers again at most one group's pages.
    pub commit_group: usize,
    /// Called after every committed page: (source, pages, rows) of the running job.
    pub page_hook: Option<PageHook>,
    /// How long a shutdown waits for pages in flight.
    pub grace: Duration,
    /// The file the configuration was read from: a [`Control::Reload`] reads it again and
    /// reloads. Without it a reload only reopens the sinks (logrotate).
    pub config_file: Option<std::path::PathBuf>,
    /// Retry policy of `http`, `azure_logs_ingestion` and `object_store` sinks; `None` is
    /// [`crate::sinks::http::default_retry`].
    pub sink_retry: Option<RetryPolicy>,
    /// The host's pipeline hooks, run in order on every page's events before the sinks (after
    /// the built-in `normalize`).
    pub hooks: Vec<msgtrace_actors::hook::Hook>,
    /// Largest API response body accepted (64 MiB: a 5000-row page is a few MiB).
    pub max_body_bytes: usize,
    /// Rows that may be between fetch and commit in the whole engine, all sources together
    /// (default [`msgtrace_actors::fetcher::ROWS_IN_FLIGHT`]): what bounds memory when many
    /// sources are due at once or a sink is slow. A page takes `page_size` of it (all of it when
    /// `page_size` is larger).
    pub rows_in_flight: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            durable: true,
            prefetch: msgtrace_actors::fetcher::PREFETCH_PAGES,
            commit_group: msgtrace_actors::fetcher::COMMIT_GROUP_PAGES,
            page_hook: None,
            grace: Duration::from_secs(30),
            config_file: None,
            sink_retry: None,
            hooks: Vec::new(),
            max_body_bytes: MAX_BODY_BYTES,
            rows_in_flight: msgtrace_actors::fetcher::ROWS_IN_FLIGHT,
        }
    }
}

/// Largest response body accepted from the API: a 5000-row page is a few MiB.
const MAX_BODY_BYTES: usize = 64 << 20;

/// Where [`source_spec`] takes the values of store secrets (`oauth_secret`, `basic_secret`) from.
#[derive(Clone, Copy, Debug)]
pub enum SecretAccess<'a> {
    /// Read them from the secret store (engine start; `validate` when the state directory is free).
    Store(&'a SecretStore),
    /// Do not read them: such sources get an empty placeholder. Only for `validate` while a
    /// running engine holds the state directory; never run a spec built so.
    Skip,
}

/// A source that cannot run as configured: the key at fault and what is wrong with it (one line
/// that names the fix).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {problem}")]
pub struct SpecError {
    /// The configuration key (`sources.<id>.auth`, `sources.<id>.proxy_url`, ...).
    pub key: String,
    /// What is wrong, and what to do.
    pub problem: String,
}

/// Builds the engine-side description of a source: resolves store secrets and loads and checks
/// certificates (unreadable file, bad key, wrong passphrase, key not matching the certificate,
/// expired certificate: one line each, naming the file and the fix).
pub fn source_spec(
    src: &SourceConfig,
    durable: bool,
    secrets: SecretAccess<'_>,
) -> Result<SourceSpec, SpecError> {
    let at = |key: &str| {
        let key = format!("sources.{}{key}", src.id);
        move |problem: String| SpecError { key, problem }
    };
    let from_env = |e: msgtrace_actors::proxy::ProxyError| format!("{e} (from the environment)");
    let mut auth = auth_spec(&src.auth, secrets).map_err(|e| at(".auth")(e.to_string()))?;
    let proxy = match &src.proxy_url {
        Some(p) => Some(Proxy::from_url(p.url()).map_err(|e| at(".proxy_url")(e.to_string()))?),
        None => Proxy::from_env(&src.url, &|k| std::env::var(k).ok())
            .map_err(|e| at("")(from_env(e)))?,
    };
    // The instance metadata endpoint is on the host: never through a proxy.
    let via_proxy = |c: &ClientCredential| !matches!(c, ClientCredential::ManagedIdentity { .. });
    if let AuthSpec::OAuth { token, credential } = &mut auth {
        token.proxy = match &src.proxy_url {
            _ if !via_proxy(credential) => None,
            Some(_) => proxy.clone(),
            None => Proxy::from_env(&token.login_url, &|k| std::env::var(k).ok())
                .map_err(|e| at("")(from_env(e)))?,
        };
    }
    let cron = match &src.schedule {
        Schedule::Interval { mins } => scheduler::cron_for_interval(*mins),
        Schedule::Cron { expr, .. } => expr.clone(),
    };
    scheduler::parse_cron(&cron).map_err(|e| at(".schedule")(e.to_string()))?;
    Ok(SourceSpec {
        id: src.id.clone(),
        api: src.api,
        url: src.url.clone(),
        page_size: src.page_size,
        window: WindowSpec {
            start: src.start.clone(),
            end: src.end.clone(),
            max_slice: src.api.max_window(),
            reread: (!src.reread.is_zero())
                .then(|| chrono::Duration::from_std(src.reread).ok())
                .flatten(),
        },
        auth,
        retry: src.retry.clone(),
        request_timeout: src.request_timeout,
        max_body_bytes: MAX_BODY_BYTES,
        fields: src.fields.clone().into_iter().collect(),
        disable_time_filter: src.disable_time_filter,
        details: src.details,
        cron,
        durable,
        prefetch: msgtrace_actors::fetcher::PREFETCH_PAGES,
        commit_group: msgtrace_actors::fetcher::COMMIT_GROUP_PAGES,
        link_limits: Default::default(),
        reschedule_limit: src.reschedule_tasks.then_some(src.task_reschedule_limit),
        proxy,
        quota: src.quota.map(|q| msgtrace_actors::quota::QuotaSpec {
            requests: q.requests,
            per: q.per,
        }),
    })
}

fn token_spec(app: &OAuthApp) -> TokenSpec {
    TokenSpec {
        login_url: app.login_url.clone(),
        tenant_id: app.tenant_id.clone(),
        client_id: app.client_id.clone(),
        audience: app.resource.clone(),
        endpoint: app.token_endpoint,
        proxy: None,
    }
}

/// Why an `[auth]` table cannot be made ready to run: a store secret or a certificate (the
/// key named first, then the reason, which says what to do).
#[derive(Debug, thiserror::Error)]
pub enum AuthLoadError {
    /// A store secret cannot be read.
    #[error("{key}: {error}")]
    Secret {
        /// `credentials_secret` or `client_secret_ref`.
        key: &'static str,
        /// Why.
        error: crate::secrets::SecretError,
    },
    /// The certificate or its key cannot be used.
    #[error("{at}: {error}")]
    Certificate {
        /// `cert_path`, or `certificate ([certificates.NAME])`.
        at: String,
        /// Why.
        error: msgtrace_actors::assertion::CertError,
    },
}

/// The certificate and key of an `oauth_cert` method, loaded and checked now (a warning when it
/// expires within 30 days); an error names the key it came from.
fn load_certificate(
    certificate: &crate::config::CertificateConfig,
    name: Option<&str>,
) -> Result<ClientCertificate, AuthLoadError> {
    let loaded = ClientCertificate::load(
        &certificate.cert_path,
        &certificate.key_path,
        certificate.passphrase.as_ref(),
        chrono::Utc::now(),
    )
    .map_err(|error| AuthLoadError::Certificate {
        at: match name {
            Some(name) => format!("certificate ([certificates.{name}])"),
            None => "cert_path".to_string(),
        },
        error,
    })?;
    let days_left = (loaded.not_after() - chrono::Utc::now()).num_days();
    if days_left < 30 {
        warn!(
            certificate = %certificate.cert_path.display(),
            days_left,
            "certificate expires soon: renew it and upload the new one to the app registration"
        );
    }
    Ok(loaded)
}

/// The engine-side authentication of one source (see [`source_spec`]).
fn auth_spec(auth: &AuthConfig, secrets: SecretAccess<'_>) -> Result<AuthSpec, AuthLoadError> {
    let secret = |key| move |error| AuthLoadError::Secret { key, error };
    Ok(match auth {
        AuthConfig::Basic { username, password } => AuthSpec::Basic {
            username: username.clone(),
            password: password.clone(),
        },
        AuthConfig::BasicSecret { credentials_secret } => {
            let (username, password) = match secrets {
                SecretAccess::Store(store) => store
                    .credentials(credentials_secret)
                    .map_err(secret("credentials_secret"))?,
                SecretAccess::Skip => (String::new(), Secret::default()),
            };
            AuthSpec::Basic { username, password }
        }
        AuthConfig::OAuthFederated { app, token_file } => AuthSpec::OAuth {
            token: token_spec(app),
            credential: ClientCredential::Federated {
                token_file: token_file.clone(),
            },
        },
        AuthConfig::ManagedIdentity {
            client_id,
            resource,
            imds_url,
        } => AuthSpec::OAuth {
            token: TokenSpec {
                login_url: imds_url.clone(),
                tenant_id: String::new(),
                client_id: client_id.clone().unwrap_or_default(),
                audience: resource.clone(),
                endpoint: msgtrace_actors::spec::TokenEndpoint::Imds,
                proxy: None,
            },
            credential: ClientCredential::ManagedIdentity {
                app_role_required: true,
            },
        },
        AuthConfig::OAuth { app, client_secret } => AuthSpec::OAuth {
            token: token_spec(app),
            credential: ClientCredential::Secret(client_secret.clone()),
        },
        AuthConfig::OAuthSecret {
            app,
            client_secret_ref,
        } => {
            let secret = match secrets {
                SecretAccess::Store(store) => store
                    .text(client_secret_ref)
                    .map_err(secret("client_secret_ref"))?,
                SecretAccess::Skip => Secret::default(),
            };
            AuthSpec::OAuth {
                token: token_spec(app),
                credential: ClientCredential::Secret(secret),
            }
        }
        AuthConfig::OAuthCert {
            app,
            certificate,
            certificate_name,
            assertion_alg,
        } => AuthSpec::OAuth {
            token: token_spec(app),
            credential: ClientCredential::Certificate {
                certificate: std::sync::Arc::new(load_certificate(
                    certificate,
                    certificate_name.as_deref(),
                )?),
                alg: *assertion_alg,
            },
        },
    })
}

/// The token request of an `azure_logs_ingestion` sink (`None` for the other types): store
/// secrets resolved and certificates loaded as for a source ([`source_spec`]), token requests
/// through the environment's proxy for the login host.
pub fn sink_auth_spec(
    sink: &crate::config::SinkConfig,
    secrets: SecretAccess<'_>,
) -> Result<Option<AuthSpec>, SpecError> {
    let SinkKind::AzureLogsIngestion(c) = &sink.kind else {
        return Ok(None);
    };
    let at = |problem: String| SpecError {
        key: format!("sinks.{}.auth", sink.id),
        problem,
    };
    let mut auth = auth_spec(&c.auth, secrets).map_err(|e| at(e.to_string()))?;
    match &mut auth {
        // Azure Monitor authorizes a managed identity by an Azure role on the rule, not by an
        // app role in its token; and the metadata endpoint is on the host, never behind a proxy.
        AuthSpec::OAuth {
            credential: ClientCredential::ManagedIdentity { app_role_required },
            ..
        } => *app_role_required = false,
        AuthSpec::OAuth { token, .. } => {
            token.proxy = Proxy::from_env(&token.login_url, &|k| std::env::var(k).ok())
                .map_err(|e| at(format!("{e} (from the environment)")))?;
        }
        AuthSpec::Basic { .. } => {}
    }
    Ok(Some(auth))
}

/// [`sink_auth_spec`] of every sink of `config` that has one, by sink id; every problem, one
/// line each.
pub(crate) fn sink_auths(
    config: &Config,
    secrets: &SecretStore,
) -> Result<std::collections::HashMap<String, AuthSpec>, Vec<SpecError>> {
    let mut auths = std::collections::HashMap::new();
    let mut errors = Vec::new();
    for s in config.sinks.values() {
        match sink_auth_spec(s, SecretAccess::Store(secrets)) {
            Ok(Some(auth)) => {
                auths.insert(s.id.clone(), auth);
            }
            Ok(None) => {}
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(auths)
    } else {
        Err(errors)
    }
}

/// The pipeline hooks of a run: the built-in `normalize` first, then the host's.
pub(crate) fn pipeline_hooks(
    config: &Config,
    opts: &EngineOptions,
) -> Vec<msgtrace_actors::hook::Hook> {
    let ecs: std::collections::HashMap<String, crate::normalize::EcsOptions> = config
        .sources
        .values()
        .filter(|s| s.normalize == Some(crate::config::Normalize::Ecs))
        .map(|s| {
            let opts = crate::normalize::EcsOptions {
                api: s.api,
                local_domains: s.local_domains.clone(),
                keep: s.fields.keys().cloned().collect(),
            };
            (s.id.clone(), opts)
        })
        .collect();
    let mut hooks = Vec::new();
    if !ecs.is_empty() {
        hooks.push(crate::normalize::ecs_hook(ecs));
    }
    hooks.extend(opts.hooks.iter().cloned());
    hooks
}

/// How long a start waits for the state directory's lock: an engine that just stopped in this
/// process may still be releasing it on one of its threads; another process holding it is
/// refused after that.
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// Builds the sink for a sink configuration (`auth`: its [`sink_auth_spec`]).
fn build_sink(
    id: &str,
    kind: &SinkKind,
    auth: Option<&AuthSpec>,
    opts: &EngineOptions,
    (state_dir, replay): (&std::path::Path, Option<crate::sinks::replay::Replay>),
) -> Box<dyn Sink> {
    match kind {
        SinkKind::Stdout => Box::new(StdoutSink::new(id)),
        SinkKind::File { path, rotate, mode } => Box::new(
            FileSink::new(id, path)
                .with_rotation(*rotate)
                .with_mode(*mode)
                .with_marks(state_dir)
                .with_replay(replay),
        ),
        SinkKind::Http(http) => {
            let sink = HttpSink::new(id, http);
            Box::new(match &opts.sink_retry {
                Some(r) => sink.with_retry(r.clone()),
                None => sink,
            })
        }
        SinkKind::AzureLogsIngestion(c) => {
            let auth =
                auth.expect("the engine resolves the auth of every azure_logs_ingestion sink");
            let sink = AzureLogsSink::new(id, c, auth.clone());
            Box::new(match &opts.sink_retry {
                Some(r) => sink.with_retry(r.clone()),
                None => sink,
            })
        }
        SinkKind::ObjectStore(c) => {
            let sink = ArchiveSink::new(id, c);
            Box::new(match &opts.sink_retry {
                Some(r) => sink.with_retry(r.clone()),
                None => sink,
            })
        }
    }
}

/// Marks jobs left `running` by a process that died as `interrupted`, and applies the TTL.
fn tidy_jobs(store: &Store, config: &Config) -> Result<(), EngineError> {
    let now = chrono::Utc::now();
    for job in store.jobs(None)? {
        if job.state == JobState::Running {
            let mut j = job.clone();
            j.finish(JobState::Interrupted, now);
            j.errors
                .push("the process stopped while this job ran; the next job resumed it".into());
            store.put_job(&j)?;
        }
    }
    for s in config.sources.values() {
        let ttl = chrono::Duration::from_std(s.ttl).unwrap_or(chrono::Duration::hours(4));
        let removed = store.sweep_jobs(&s.id, now - ttl)?;
        if removed > 0 {
            info!(source = %s.id, removed, "expired job records removed (ttl)");
        }
    }
    // Pages kept for cursors that never resumed (a backfill given up, a source removed).
    match crate::storage::spool::sweep_all(store.dir(), crate::storage::spool::KEEP_FOR) {
        Ok(0) => {}
        Ok(removed) => info!(removed, "pages kept in the spool for over a day removed"),
        Err(e) => {
            warn!(error = %e, "could not sweep the spool; it is swept again at the next start")
        }
    }
    Ok(())
}

/// Runs the engine inside the current actix System until done (`Once`, `Backfill`) or until
/// told to stop (`Continuous`), reloading when told to (`controls`). Returns the jobs'
/// outcomes. Public through [`crate::embed::EngineBuilder::run`].
pub(crate) async fn run(
    config: &Config,
    mode: Mode,
    opts: EngineOptions,
    host_sinks: Vec<HostSink>,
    mut controls: tokio::sync::mpsc::UnboundedReceiver<Control>,
) -> Result<RunReport, EngineError> {
    let mut engine = start(config, &opts, host_sinks)?;
    let supervisor = engine.supervisor.clone();
    if mode == Mode::Continuous {
        engine.schedule();
    }
    let owned = engine.cluster.as_ref().map(|c| c.handle.owned.clone());
    let work = async {
        // A run that ends collects this instance's share: known once the agent has had its
        // first round.
        if mode != Mode::Continuous {
            crate::cluster::live(owned).await?;
        }
        match &mode {
            Mode::Backfill { source, backfill } => Ok(supervisor
                .send(RunBackfill {
                    source: source.clone(),
                    backfill: backfill.clone(),
                })
                .await?),
            Mode::Once => Ok(supervisor
                .send(RunAll {
                    kind: JobKind::Once,
                })
                .await?),
            Mode::Continuous => std::future::pending::<Result<RunReport, EngineError>>().await,
        }
    };
    let mut work = std::pin::pin!(work);
    // Open until every sender is gone: then nothing will tell the engine anything any more.
    let mut open = true;
    let once_report = loop {
        tokio::select! {
            r = &mut work => break Some(r?),
            c = controls.recv(), if open => match c {
                None => open = false,
                Some(Control::Stop) => {
                    info!("told to stop");
                    break None;
                }
                Some(Control::Reload(why)) => {
                    let file = opts.config_file.as_deref();
                    crate::reload::from_file(&mut engine, file, why).await
                }
            },
        }
    };
    let shutdown_report = engine.stop().await?;
    Ok(match once_report {
        Some(mut r) if mode != Mode::Continuous => {
            r.restarts = r.restarts.max(shutdown_report.restarts);
            r
        }
        _ => shutdown_report,
    })
}

/// A sink supplied by the host application (embedding), with the source ids it takes.
pub struct HostSink {
    /// The sink.
    pub sink: Box<dyn Sink>,
    /// Source ids whose events it takes; empty: every source.
    pub inputs: Vec<String>,
}

/// A running engine: the actors are started and idle until told to collect (through
/// [`Started::supervisor`]); [`Started::stop`] shuts it down.
///
/// Not the engine's API ([`crate::embed::EngineBuilder`] is): public only for the integration
/// tests that talk to the supervisor's actors directly.
#[doc(hidden)]
pub struct Started {
    /// The Supervisor: send it `RunAll`, `StartSchedules`, `GetStatus`.
    pub supervisor: Addr<Supervisor>,
    /// The state directory.
    pub store: Store,
    /// The sinks running, configured and the host's.
    pub(crate) sinks: Vec<RunningSink>,
    /// The configuration running (what a reload compares the new one with).
    pub(crate) config: Config,
    pub(crate) opts: EngineOptions,
    grace: Duration,
    /// The metrics endpoint and the control API.
    listeners: crate::control::Servers,
    /// Tells the sinks that the engine shuts down (a delivery still retrying is abandoned).
    pub(crate) stopping: tokio::sync::watch::Sender<bool>,
    /// `[cluster]`: the agent keeping this instance's lease and claims.
    pub(crate) cluster: Option<crate::cluster::ClusterRun>,
}

impl Started {
    /// Continuous mode: every source on its schedule (from now: catch-up first), and with
    /// `[cluster]` the backfills asked for through etcd of the sources this instance holds.
    pub fn schedule(&mut self) {
        self.supervisor.do_send(StartSchedules);
        if let Some(c) = &mut self.cluster {
            c.serve_backfills(self.supervisor.clone());
        }
    }

    /// Graceful shutdown: pages in flight finish (or are abandoned after the grace period), sinks
    /// and state are flushed, the sink threads stop. Returns the jobs that ended meanwhile.
    pub async fn stop(self) -> Result<RunReport, EngineError> {
        let _ = self.stopping.send(true);
        let report = self.supervisor.send(Shutdown { grace: self.grace }).await?;
        if let Some(cluster) = self.cluster {
            cluster.stop().await;
        }
        for s in self.sinks {
            s.arbiter.stop();
        }
        self.store.flush().await?;
        self.listeners.stop().await;
        Ok(report)
    }
}

/// The sources of a configuration as the supervisor runs them: store secrets resolved and
/// certificates loaded and checked. Every problem, one line each.
pub(crate) fn source_entries(
    config: &Config,
    opts: &EngineOptions,
    secrets: &SecretStore,
) -> Result<Vec<SourceEntry>, Vec<SpecError>> {
    let mut sources = Vec::new();
    let mut errors = Vec::new();
    for s in config.sources.values() {
        match source_spec(s, opts.durable, SecretAccess::Store(secrets)) {
            Ok(spec) => sources.push(SourceEntry {
                spec: SourceSpec {
                    max_body_bytes: opts.max_body_bytes,
                    prefetch: opts.prefetch,
                    commit_group: opts.commit_group.max(1),
                    ..spec
                },
                job_timeout: s.job_timeout,
            }),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(sources)
    } else {
        Err(errors)
    }
}

/// Checks the state directory and the file sinks' paths ([`crate::preflight::check`]), opens the
/// state directory and starts the actors (inside the current actix System), with the
/// configured sinks plus `host_sinks`. Nothing is collected until the supervisor is told to.
#[doc(hidden)]
pub fn start(
    config: &Config,
    opts: &EngineOptions,
    host_sinks: Vec<HostSink>,
) -> Result<Started, EngineError> {
    msgtrace_actors::http::install_crypto();
    crate::preflight::check(config)?;
    // The one place the engine opens the state directory: checkpoints, jobs and the secret store.
    // Its errors name the directory and the fix.
    let store = Store::open_waiting(&config.state_dir, LOCK_WAIT)?;
    let secrets = SecretStore::new(store.clone());
    let sources = source_entries(config, opts, &secrets).map_err(EngineError::Sources)?;
    let sink_auth = sink_auths(config, &secrets).map_err(EngineError::Sources)?;
    tidy_jobs(&store, config)?;
    // Before any actor starts: a port that is taken stops the start here, with one line (once
    // actors are spawned, an early return would drop them unpolled outside the runtime).
    let listener = config
        .metrics_listen
        .map(crate::metrics::bind)
        .transpose()?;
    let control = crate::control::bind(config)?;
    if listener.is_some() {
        crate::metrics::install_recorder();
    }
    describe_sources(config, &store)?;

    let replays = find_replays(config, &store)?;
    let (stopping, stop_rx) = tokio::sync::watch::channel(false);
    let running = sink_actors(
        config,
        opts,
        (&store, replays),
        &sink_auth,
        host_sinks,
        &stop_rx,
    );
    let sinks = running.iter().map(|s| s.entry(config)).collect();
    // Restarted by actix if it ever stops; a panic of a token request is caught (auth::guarded).
    let auth = actix::Supervisor::start(|_| AuthToken::default());
    // `[cluster]` shares the sources out by their tenant's budget key.
    let source_keys: Vec<(String, String)> = sources
        .iter()
        .map(|e| (e.spec.id.clone(), e.spec.quota_key()))
        .collect();
    let supervisor = Supervisor::new(
        store.clone(),
        auth.clone(),
        sources,
        sinks,
        opts.page_hook.clone(),
    )
    .with_hooks(pipeline_hooks(config, opts))
    .with_rows_in_flight(opts.rows_in_flight);
    let mut cluster = config
        .cluster
        .as_ref()
        .map(|c| crate::cluster::ClusterRun::new(c, &source_keys));
    let supervisor = match &cluster {
        Some(c) => supervisor.with_cluster(c.handle.clone(), c.busy.clone()),
        None => supervisor,
    }
    .start();
    let listeners = crate::control::serve(
        control,
        listener,
        supervisor.clone(),
        auth,
        store.clone(),
        cluster.as_ref().map(|c| c.handle.clone()),
    )
    .map_err(EngineError::Serve)?;
    if let Some(c) = &mut cluster {
        c.spawn();
    }
    Ok(Started {
        cluster,
        supervisor,
        store,
        sinks: running,
        config: config.clone(),
        opts: opts.clone(),
        grace: opts.grace,
        listeners,
        stopping,
    })
}

/// The metrics described, and each source's registered with its last success (from the job
/// records, so that a restart does not report a source as never collected).
fn describe_sources(config: &Config, store: &Store) -> Result<(), msgtrace_storage::StorageError> {
    crate::metrics::describe();
    for id in config.sources.keys() {
        msgtrace_actors::telemetry::register_source(id);
        let succeeded = store
            .jobs(Some(id))?
            .into_iter()
            .filter(|j| j.state == JobState::Succeeded);
        if let Some(at) = succeeded.filter_map(|j| j.finished_at).max() {
            msgtrace_actors::telemetry::last_success(id, at);
        }
    }
    Ok(())
}

/// Before any sink opens its file: where each file sink's file holds pages past its last
/// commit ([`crate::sinks::replay`]), for the sink to compare the pages delivered again with;
/// the records of files no sink writes now are let go. With `[cluster]`, whose checkpoint of
/// record is etcd's, nothing is replayed and every record is let go (the fetchers' flushes do
/// not run behind there).
fn find_replays(config: &Config, store: &Store) -> Result<Replays, EngineError> {
    let mut keep = Vec::new();
    let mut replays = Replays::new();
    if config.cluster.is_none() {
        for s in config.sinks.values() {
            let SinkKind::File { path, .. } = &s.kind else {
                continue;
            };
            match crate::sinks::replay::uncommitted(store, &s.id, path) {
                Ok(found) => {
                    keep.extend(found.map(|f| (s.id.as_str(), f.file)));
                    replays.extend(found.and_then(|f| f.replay).map(|r| (s.id.clone(), r)));
                }
                Err(e) => tracing::warn!(error = %e, "file sink not replayed"),
            }
        }
    }
    store.keep_positions(&keep)?;
    Ok(replays)
}

/// Where each file sink's file holds pages past its last commit, by sink id.
type Replays = std::collections::HashMap<String, crate::sinks::replay::Replay>;

/// The sink actors: the configured sinks (one that panics is built again from its
/// configuration), then the host's (kept as they are).
fn sink_actors(
    config: &Config,
    opts: &EngineOptions,
    (store, mut replays): (&Store, Replays),
    sink_auth: &std::collections::HashMap<String, AuthSpec>,
    host_sinks: Vec<HostSink>,
    stop_rx: &tokio::sync::watch::Receiver<bool>,
) -> Vec<RunningSink> {
    let configured = config.sinks.values().map(|s| {
        let auth = sink_auth.get(&s.id).cloned();
        let replay = replays.remove(&s.id);
        RunningSink::configured(s, (auth, replay), opts, store.dir(), stop_rx.clone())
    });
    let hosted = host_sinks
        .into_iter()
        .map(|h| RunningSink::spawn(h.sink, None, h.inputs, stop_rx.clone(), None));
    configured.chain(hosted).collect()
}

/// A sink actor of a running engine, on its own thread.
pub(crate) struct RunningSink {
    /// Its configuration; `None` for a host's own sink.
    pub(crate) config: Option<crate::config::SinkConfig>,
    /// A host sink's inputs as given (empty: every source).
    pub(crate) host_inputs: Vec<String>,
    pub(crate) name: String,
    pub(crate) addr: Addr<SinkActor>,
    pub(crate) reads: msgtrace_actors::sink::SinkInput,
    pub(crate) arbiter: Arbiter,
}

impl RunningSink {
    /// Starts `sink` on a thread of its own; should it panic, `factory` builds it again (else
    /// it is kept).
    pub(crate) fn spawn(
        sink: Box<dyn Sink>,
        config: Option<crate::config::SinkConfig>,
        host_inputs: Vec<String>,
        stopping: tokio::sync::watch::Receiver<bool>,
        factory: Option<msgtrace_actors::sink::SinkFactory>,
    ) -> RunningSink {
        let arbiter = Arbiter::new();
        let reads = sink.input();
        let name = sink.name().to_owned();
        let addr = SinkActor::start_in_arbiter(&arbiter.handle(), move |_| {
            let actor = SinkActor::new(sink).with_shutdown(stopping);
            match factory {
                Some(f) => actor.with_factory(f),
                None => actor,
            }
        });
        RunningSink {
            config,
            host_inputs,
            name,
            addr,
            reads,
            arbiter,
        }
    }

    /// Starts the sink of configuration `c` (`auth`: its [`sink_auth_spec`]; `replay`: where a
    /// file sink's file holds pages past its last commit, given to the first sink built only),
    /// built again from it should it panic. The factory
    /// holds the state directory's path, not the store: a sink's thread may outlive the engine's
    /// stop, and an open store there would keep the directory locked.
    pub(crate) fn configured(
        c: &crate::config::SinkConfig,
        (auth, replay): (Option<AuthSpec>, Option<crate::sinks::replay::Replay>),
        opts: &EngineOptions,
        state_dir: &std::path::Path,
        stopping: tokio::sync::watch::Receiver<bool>,
    ) -> RunningSink {
        let (id, kind, opts, dir) = (
            c.id.clone(),
            c.kind.clone(),
            opts.clone(),
            state_dir.to_path_buf(),
        );
        let replay = std::sync::Mutex::new(replay);
        let factory: msgtrace_actors::sink::SinkFactory = Box::new(move || {
            let replay = replay.lock().ok().and_then(|mut r| r.take());
            build_sink(&id, &kind, auth.as_ref(), &opts, (&dir, replay))
        });
        RunningSink::spawn(
            factory(),
            Some(c.clone()),
            Vec::new(),
            stopping,
            Some(factory),
        )
    }

    /// What the supervisor routes to it, with the sources of `config`.
    pub(crate) fn entry(&self, config: &Config) -> SinkEntry {
        let inputs = match &self.config {
            Some(c) => c.inputs.clone(),
            None if self.host_inputs.is_empty() => config.sources.keys().cloned().collect(),
            None => self.host_inputs.clone(),
        };
        SinkEntry {
            name: self.name.clone(),
            addr: self.addr.clone(),
            inputs,
            reads: self.reads,
            // A file sink compares the pages delivered again after a restart with its file.
            replays: matches!(
                self.config.as_ref().map(|c| &c.kind),
                Some(SinkKind::File { .. })
            ),
        }
    }
}
