//! The embedding API: run the engine inside a host application.
//!
//! [`EngineBuilder`] takes a validated [`Config`] (from a file, a string or built in code), the
//! host's own sinks and pipeline hooks, and [`start`](EngineBuilder::start)s the engine on a
//! thread of its own with its own actix System (actors and awc need one; the host's runtime,
//! tokio or none, is left alone). It hands back an [`EngineHandle`]: `Send + Sync`, cheap to
//! share in an `Arc`, whose methods are plain futures that work from any runtime.
//!
//! Lifecycle: `start` (state directory opened, actors started, nothing collected) →
//! [`run_once`](EngineHandle::run_once) as often as wanted, and/or schedules
//! ([`EngineBuilder::scheduled`]) → [`shutdown`](EngineHandle::shutdown) (pages in flight finish,
//! sinks and state flushed, the engine thread ends, the state directory is released). Dropping
//! the handle without `shutdown` shuts the engine down in the background.
//!
//! Delivery: a page is acknowledged, and its checkpoint written, only after every sink that takes
//! its source (configured or host) has returned `Ok` from [`Sink::deliver`]. So delivery is at
//! least once; after a crash at most the page in flight is delivered again. See
//! `docs/embedding.md`.
//!
//! # Examples
//!
//! See the crate documentation and `examples/embed.rs`.

use crate::config::{self, Config, ConfigErrors};
use crate::engine::{self, Control, EngineOptions, HostSink, Mode};
use msgtrace_actors::hook::Hook;
use msgtrace_actors::sink::Sink;
use msgtrace_actors::supervisor::{GetStatus, RunAll, RunReport, SourceStatus};
use msgtrace_storage::{JobKind, JobRecord};
use std::future::Future;
use std::path::Path;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

/// Why an embedded engine could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// The configuration is invalid (every error, one line each).
    #[error("invalid configuration:\n{0}")]
    Config(#[from] ConfigErrors),
    /// The engine could not start (state directory locked or unreadable, a secret or certificate
    /// missing...), or failed while it ran.
    #[error(transparent)]
    Engine(#[from] engine::EngineError),
    /// The engine's thread could not be started.
    #[error("cannot start the engine thread: {0}")]
    Thread(std::io::Error),
    /// A new configuration was not applied ([`EngineHandle::reload`]): every problem, one line
    /// each. The running configuration stays.
    #[error("configuration not reloaded:\n{0}")]
    Reload(#[from] crate::reload::ReloadError),
    /// The engine was shut down (or its thread ended).
    #[error("the engine is shut down")]
    Stopped,
}

/// Builds an embedded engine. See the [module documentation](self).
pub struct EngineBuilder {
    config: Config,
    sinks: Vec<HostSink>,
    options: EngineOptions,
    scheduled: bool,
}

impl EngineBuilder {
    /// A builder for a validated configuration (e.g. from [`config::from_str`] or built in code).
    pub fn new(config: Config) -> EngineBuilder {
        EngineBuilder {
            config,
            sinks: Vec::new(),
            options: EngineOptions::default(),
            scheduled: false,
        }
    }

    /// Reads and validates a configuration file (`${VAR}` expanded from the environment).
    pub fn from_file(path: impl AsRef<Path>) -> Result<EngineBuilder, EmbedError> {
        Ok(EngineBuilder::new(config::load(path.as_ref())?))
    }

    /// Parses and validates configuration text (`${VAR}` expanded from the environment).
    pub fn from_toml(toml: &str) -> Result<EngineBuilder, EmbedError> {
        Ok(EngineBuilder::new(config::from_str(toml)?))
    }

    /// Adds a host sink taking the events of `inputs` (source ids; empty: every source), besides
    /// the configured `[sinks]`.
    pub fn sink(mut self, sink: Box<dyn Sink>, inputs: &[&str]) -> EngineBuilder {
        self.sinks.push(HostSink {
            sink,
            inputs: inputs.iter().map(|s| (*s).to_owned()).collect(),
        });
        self
    }

    /// Adds a pipeline hook; hooks run in the order added, after the built-in `normalize`.
    pub fn hook(mut self, hook: Hook) -> EngineBuilder {
        self.options.hooks.push(hook);
        self
    }

    /// Runs every source on its schedule (as `msgtrace run` does), besides
    /// [`EngineHandle::run_once`]. Off by default: the host decides when to collect.
    pub fn scheduled(mut self, on: bool) -> EngineBuilder {
        self.scheduled = on;
        self
    }

    /// How long [`EngineHandle::shutdown`] waits for pages in flight (default 30 s).
    pub fn grace(mut self, grace: Duration) -> EngineBuilder {
        self.options.grace = grace;
        self
    }

    /// Replaces the other engine knobs (durability, page hook, sink retries). Hooks added with
    /// [`EngineBuilder::hook`] are kept.
    pub fn options(mut self, options: EngineOptions) -> EngineBuilder {
        let hooks = std::mem::take(&mut self.options.hooks);
        self.options = options;
        self.options.hooks.extend(hooks);
        self
    }

    /// Runs the engine inside the current actix System (the caller's thread) until `mode` is
    /// done (`Once`, `Backfill`) or, for `Continuous`, until `controls` says
    /// [`Control::Stop`]; a [`Control::Reload`] applies the configuration file again
    /// ([`EngineOptions::config_file`]). No signal handler is installed: `msgtrace run` sends
    /// these for its signals. Returns the jobs' outcomes. For an engine on a thread of its
    /// own, driven from any runtime, see [`EngineBuilder::start`].
    pub async fn run(
        self,
        mode: Mode,
        controls: mpsc::UnboundedReceiver<Control>,
    ) -> Result<RunReport, EmbedError> {
        let EngineBuilder {
            config,
            sinks,
            options,
            scheduled: _,
        } = self;
        Ok(engine::run(&config, mode, options, sinks, controls).await?)
    }

    /// Starts the engine on its own thread and actix System. Blocks only until the state
    /// directory is open and the actors are started; fails if that fails.
    pub fn start(self) -> Result<EngineHandle, EmbedError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("msgtrace-engine".into())
            .spawn(move || engine_thread(self, rx, ready_tx))
            .map_err(EmbedError::Thread)?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(EngineHandle { commands: tx }),
            Ok(Err(e)) => Err(EmbedError::Engine(e)),
            Err(_) => Err(EmbedError::Stopped),
        }
    }
}

enum Command {
    RunOnce(oneshot::Sender<Result<RunReport, EmbedError>>),
    Status(oneshot::Sender<Vec<SourceStatus>>),
    Jobs(
        Option<String>,
        oneshot::Sender<Result<Vec<JobRecord>, EmbedError>>,
    ),
    Reload(
        Box<Config>,
        oneshot::Sender<Result<crate::reload::ReloadPlan, EmbedError>>,
    ),
    Shutdown(oneshot::Sender<Result<RunReport, EmbedError>>),
}

fn engine_thread(
    builder: EngineBuilder,
    mut commands: mpsc::UnboundedReceiver<Command>,
    ready: std::sync::mpsc::Sender<Result<(), engine::EngineError>>,
) {
    let system = actix_rt::System::new();
    let (report, reply) = system.block_on(async move {
        let mut engine = match engine::start(&builder.config, &builder.options, builder.sinks) {
            Ok(e) => e,
            Err(e) => {
                let _ = ready.send(Err(e));
                return (None, None);
            }
        };
        let _ = ready.send(Ok(()));
        if builder.scheduled {
            engine.schedule();
        }
        let mut reply = None;
        while let Some(cmd) = commands.recv().await {
            let supervisor = engine.supervisor.clone();
            match cmd {
                Command::RunOnce(tx) => {
                    // With `[cluster]`, this instance's share is known once the agent has had its
                    // first round (as `msgtrace run --once` waits for it).
                    let owned = engine.cluster.as_ref().map(|c| c.handle.owned.clone());
                    actix_rt::spawn(async move {
                        if let Err(e) = crate::cluster::live(owned).await {
                            let _ = tx.send(Err(engine::EngineError::from(e).into()));
                            return;
                        }
                        let r = supervisor.send(RunAll {
                            kind: JobKind::Once,
                        });
                        let _ = tx.send(r.await.map_err(|_| EmbedError::Stopped));
                    });
                }
                Command::Status(tx) => {
                    actix_rt::spawn(async move {
                        if let Ok(s) = supervisor.send(GetStatus).await {
                            let _ = tx.send(s);
                        }
                    });
                }
                Command::Jobs(source, tx) => {
                    let r = engine
                        .store
                        .jobs(source.as_deref())
                        .map_err(|e| EmbedError::Engine(e.into()));
                    let _ = tx.send(r);
                }
                Command::Reload(config, tx) => {
                    let _ = tx.send(engine.reload(&config).await.map_err(EmbedError::from));
                }
                Command::Shutdown(tx) => {
                    reply = Some(tx);
                    break;
                }
            }
        }
        // Shut down on request, or when every handle is gone.
        let report = engine.stop().await.map_err(EmbedError::from);
        if let Err(e) = &report {
            warn!(error = %e, "embedded engine shutdown failed");
        }
        (Some(report), reply)
    });
    // The System, its actors and the state directory are released before the host hears back.
    drop(system);
    if let (Some(report), Some(tx)) = (report, reply) {
        let _ = tx.send(report);
    }
}

/// A running embedded engine. `Send + Sync`; share it in an `Arc`. Every method is a future that
/// works on any runtime.
#[derive(Debug)]
pub struct EngineHandle {
    commands: mpsc::UnboundedSender<Command>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Command")
    }
}

impl EngineHandle {
    /// Collects everything that is due now for every source (catch-up included) and returns the
    /// jobs' outcomes. A source whose job is already running (schedule) is waited for.
    pub async fn run_once(&self) -> Result<RunReport, EmbedError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::RunOnce(tx))
            .map_err(|_| EmbedError::Stopped)?;
        rx.await.map_err(|_| EmbedError::Stopped)?
    }

    /// What each source is doing: running or not, the last job's outcome, fetcher restarts.
    pub async fn status(&self) -> Result<Vec<SourceStatus>, EmbedError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Status(tx))
            .map_err(|_| EmbedError::Stopped)?;
        rx.await.map_err(|_| EmbedError::Stopped)
    }

    /// The job records kept in the state directory (the job inspector's data), of one source or
    /// all.
    pub async fn jobs(&self, source: Option<&str>) -> Result<Vec<JobRecord>, EmbedError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Jobs(source.map(str::to_owned), tx))
            .map_err(|_| EmbedError::Stopped)?;
        rx.await.map_err(|_| EmbedError::Stopped)?
    }

    /// Applies a new configuration while the engine runs, as `SIGHUP` does to `msgtrace run`
    /// (see [`crate::reload`]): checked first (an invalid one changes nothing and the error
    /// lists every problem); then sources added start (at once when the engine runs
    /// [`scheduled`](EngineBuilder::scheduled)), removed ones stop after their page in flight,
    /// changed ones restart from their checkpoint, and every sink reopens (host sinks through
    /// [`Sink::reopen`]). Host sinks and hooks are kept. Returns what changed, including the
    /// changes that need a restart (`needs_restart`), which are not applied.
    pub async fn reload(&self, config: Config) -> Result<crate::reload::ReloadPlan, EmbedError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Reload(Box::new(config), tx))
            .map_err(|_| EmbedError::Stopped)?;
        rx.await.map_err(|_| EmbedError::Stopped)?
    }

    /// Starts a graceful shutdown now and returns a future that resolves once the engine thread
    /// has ended: pages in flight delivered and checkpointed (or abandoned after the grace
    /// period), sinks and state flushed, the state directory released. The report lists the jobs
    /// that ended during the shutdown. Later calls (and the other methods) get
    /// [`EmbedError::Stopped`].
    pub fn shutdown(&self) -> impl Future<Output = Result<RunReport, EmbedError>> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        let sent = self.commands.send(Command::Shutdown(tx)).is_ok();
        async move {
            if !sent {
                return Err(EmbedError::Stopped);
            }
            rx.await.map_err(|_| EmbedError::Stopped)?
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn the_handle_is_send_and_sync() {
        assert_send_sync::<EngineHandle>();
        assert_send_sync::<EmbedError>();
    }
}
