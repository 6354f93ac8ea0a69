//! The `msgtrace` binary: parses arguments, installs logging, maps signals, calls the library.

mod ask;
mod demo;
mod progress;
mod signals;

use anyhow::{anyhow, Context};
use clap::{CommandFactory as _, Parser, Subcommand};
use msgtrace::actors::supervisor::RunReport;
use msgtrace::cluster::ClusterView;
use msgtrace::config::{self, Config, LogFormat};
use msgtrace::control::client::StateDir;
use msgtrace::control::jobs::JobFilter;
use msgtrace::embed::{EmbedError, EngineBuilder};
use msgtrace::engine::{EngineOptions, Mode};
use msgtrace::secrets::{KeySource, SecretKind, SecretStore, SecretValue};
use msgtrace::storage::{JobState, StorageError, Store};
use msgtrace_simulator::{
    FaultSchedule, LateRows, SimConfig, SimFault, SimQuota, SimServer, TenantModel,
};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

// mimalloc, tuned (feature `mimalloc`, on by default): see `msgtrace::allocator`.
msgtrace::binary_allocator!();

#[derive(Parser)]
#[command(
    name = "msgtrace",
    version,
    about = "Collects Office 365 / Exchange Online message trace"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Collect a day of simulated message trace through the full engine into ./demo-events.ndjson.
    Demo {
        /// Output file.
        #[arg(long, default_value = "demo-events.ndjson")]
        out: PathBuf,
        /// Hours of mail flow to collect.
        #[arg(long, default_value_t = 24)]
        hours: u32,
        /// Rows per page.
        #[arg(long, default_value_t = 1000)]
        page_size: u32,
    },
    /// Run every source on its schedule until SIGINT/SIGTERM; SIGHUP reloads the configuration
    /// file and reopens the output files.
    Run {
        /// Configuration file.
        #[arg(short, long)]
        config: PathBuf,
        /// Collect what is due now for every source, then exit (0 if all succeeded, 1 if not).
        #[arg(long)]
        once: bool,
        /// Reload also when the configuration file changes (looked at every 2 seconds), as on
        /// SIGHUP.
        #[arg(long)]
        watch_config: bool,
    },
    /// Collect a past range of one source once, resumably, without moving its continuous cursor.
    Backfill {
        /// Configuration file.
        #[arg(short, long)]
        config: PathBuf,
        /// The source (input id).
        #[arg(long)]
        source: String,
        /// Range start: relative time (`-7d@d`) or epoch seconds.
        #[arg(long, allow_hyphen_values = true)]
        start: String,
        /// Range end (exclusive): relative time (`-1d@d`) or epoch seconds.
        #[arg(long, allow_hyphen_values = true)]
        end: String,
        /// With `[cluster]`: ask for the backfill and exit at once, instead of following it
        /// until the instance holding the source has run it.
        #[arg(long)]
        detach: bool,
    },
    /// Check a configuration file and report every error.
    Validate {
        /// Configuration file.
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Manage the secret store in the state directory (values are read from stdin or a prompt).
    Secrets {
        #[command(subcommand)]
        action: SecretsCommand,
    },
    /// Show jobs and their tasks.
    Jobs {
        /// Configuration file (for the state directory).
        #[arg(short, long)]
        config: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Only this source's jobs.
        #[arg(long, value_name = "ID")]
        source: Option<String>,
        /// Only jobs in this state.
        #[arg(long, value_parser = msgtrace::control::jobs::parse_state)]
        state: Option<msgtrace::storage::JobState>,
        /// Only the newest N jobs (of those the other filters keep).
        #[arg(long, value_name = "N")]
        last: Option<usize>,
    },
    /// Run the simulated tenant as a standalone server.
    Simulate(SimulateArgs),
    /// Print a shell completion script for SHELL to stdout (for packagers; see the README).
    #[command(hide = true)]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page msgtrace(1) to stdout, or write one page per command into --dir.
    #[command(hide = true)]
    Man {
        /// Directory for msgtrace.1, msgtrace-run.1, ... (created if missing).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// `msgtrace simulate`'s flags.
#[derive(clap::Args)]
struct SimulateArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8465")]
    listen: std::net::SocketAddr,
    /// Seed of the deterministic data.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Messages per hour.
    #[arg(long, default_value_t = 600)]
    messages_per_hour: u32,
    /// Most recipients per message.
    #[arg(long, default_value_t = 3)]
    max_recipients: u32,
    /// Lifetime of issued tokens, seconds.
    #[arg(long, default_value_t = 3599)]
    token_lifetime_secs: u64,
    /// Latency added to every data page, milliseconds.
    #[arg(long, default_value_t = 0)]
    page_latency_ms: u64,
    /// A request budget on the data endpoints: this many requests per --quota-per-secs
    /// (sliding window; beyond it they answer 429). Graph documents 100 per 300 s.
    #[arg(long, requires = "quota_per_secs")]
    quota_requests: Option<u32>,
    /// The budget's window, seconds.
    #[arg(long, requires = "quota_requests")]
    quota_per_secs: Option<u64>,
    /// Per cent of the budget (0..=100) that another application of the tenant spends,
    /// evenly spread: Graph's budget is per tenant, shared by every app.
    #[arg(long, default_value_t = 0, requires = "quota_requests")]
    other_app_percent: u32,
    /// Tenant id accepted.
    #[arg(long, default_value = "sim-tenant")]
    tenant_id: String,
    /// Client id accepted.
    #[arg(long, default_value = "sim-client")]
    client_id: String,
    /// Client secret accepted (read from the environment variable MSGTRACE_SIM_SECRET when set).
    #[arg(
        long,
        default_value = "sim-secret",
        env = "MSGTRACE_SIM_SECRET",
        hide_env_values = true
    )]
    client_secret: String,
    /// PEM certificate registered for the application: client assertions signed with its
    /// key are accepted (repeatable).
    #[arg(long)]
    client_cert: Vec<PathBuf>,
    /// Basic-auth user accepted by the Reporting Web Service (with --password).
    #[arg(long, requires = "password")]
    username: Option<String>,
    /// Basic-auth password (read from the environment variable MSGTRACE_SIM_PASSWORD when set).
    #[arg(long, env = "MSGTRACE_SIM_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// Per mille of rows published late, 0..=1000 (0 with --changing-per-mille 0 = every row
    /// at once).
    #[arg(long, default_value_t = 0)]
    late_per_mille: u32,
    /// A late row becomes visible 1..=this many milliseconds after its received time.
    #[arg(long, default_value_t = 600_000)]
    max_delay_ms: u64,
    /// Per mille of rows shown Pending first, then with their final status, 0..=1000.
    #[arg(long, default_value_t = 0)]
    changing_per_mille: u32,
    /// Milliseconds after its received time at which a changing row gets its final status.
    #[arg(long, default_value_t = 300_000)]
    status_change_after_ms: u64,
    /// Faults to serve in turn, comma-separated: status codes (429 with Retry-After, 400 =
    /// poisoned next link, 500, 503...), stall, invalid-json, html, wrong-shape, truncated.
    #[arg(long, value_delimiter = ',')]
    faults: Vec<String>,
    /// Serve the next fault of --faults on every N-th data request.
    #[arg(long, default_value_t = 10)]
    fault_every: u64,
}

#[derive(Subcommand)]
enum SecretsCommand {
    /// Store a secret: the value is read from stdin, or prompted for without echo on a terminal
    /// (credentials: username on the first line, password on the second). Never from arguments.
    Set {
        /// The secret's name (letters, digits, `.`, `_`, `-`).
        name: String,
        /// Configuration file (for the state directory).
        #[arg(short, long)]
        config: PathBuf,
        /// What the secret holds.
        #[arg(long, default_value = "text", value_parser = ["text", "credentials"])]
        kind: String,
    },
    /// List the secrets' names and kinds (never their values).
    List {
        /// Configuration file (for the state directory).
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Remove a secret.
    Rm {
        /// The secret's name.
        name: String,
        /// Configuration file (for the state directory).
        #[arg(short, long)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("msgtrace: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn load(path: &Path) -> Result<Config, ExitCode> {
    config::load(path).map_err(|errors| {
        for e in &errors.errors {
            eprintln!("msgtrace: {e}");
        }
        eprintln!(
            "msgtrace: {} configuration error(s) in {}",
            errors.errors.len(),
            path.display()
        );
        ExitCode::from(2)
    })
}

/// The configuration file's `state_dir` alone (all that `jobs` and `secrets` read), with the
/// same messages and exit code as [`load`].
fn load_state_dir(path: &Path) -> Result<PathBuf, ExitCode> {
    config::load_state_dir(path).map_err(|errors| {
        for e in &errors.errors {
            eprintln!("msgtrace: {e}");
        }
        ExitCode::from(2)
    })
}

/// Logging for a configuration: its `log_level`, plus each source's own `log_level` applied to
/// everything logged inside that source's jobs. Then logs the configuration's warnings.
fn init_config_logging(cfg: &Config) {
    // sled's own log lines ("created using a sled version earlier than 0.29") are replaced by
    // the state directory's one-line errors.
    let mut directives = format!(
        "{},actix_server=warn,actix_web=warn,sled=off",
        cfg.log_level.as_str()
    );
    for s in cfg.sources.values() {
        if let Some(level) = s.log_level {
            directives.push_str(&format!(",[job{{source={}}}]={}", s.id, level.as_str()));
        }
    }
    init_logging(&directives, cfg.log_format == LogFormat::Json);
    for w in &cfg.warnings {
        tracing::warn!("{w}");
    }
}

/// Whether log lines get ANSI colours: only on a terminal, and never when `NO_COLOR` is set to
/// anything but the empty string (<https://no-color.org>). A file, a pipe or journald gets plain
/// text.
fn colour(stderr_is_terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

fn init_logging(directives: &str, json: bool) {
    use std::io::IsTerminal as _;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("MSGTRACE_LOG").unwrap_or_else(|_| {
        EnvFilter::try_new(directives)
            .unwrap_or_else(|_| EnvFilter::new("info,actix_server=warn,actix_web=warn"))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR"),
        ))
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Demo {
            out,
            hours,
            page_size,
        } => demo(&out, hours, page_size),
        Command::Validate { config } => validate(&config),
        Command::Backfill {
            config,
            source,
            start,
            end,
            detach,
        } => backfill(&config, &source, &start, &end, detach),
        Command::Run {
            config,
            once,
            watch_config,
        } => run(&config, once, watch_config),
        Command::Secrets { action } => secrets_command(action),
        Command::Completions { shell } => {
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "msgtrace", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { dir } => man_pages(dir.as_deref()),
        Command::Jobs {
            config,
            json,
            source,
            state,
            last,
        } => jobs(
            &config,
            json,
            JobFilter {
                source,
                state,
                last,
            },
        ),
        Command::Simulate(args) => simulate(args),
    }
}

/// `msgtrace demo`: a simulated day through the whole engine, checked row by row.
fn demo(out: &Path, hours: u32, page_size: u32) -> anyhow::Result<ExitCode> {
    init_logging("warn,actix_server=warn,actix_web=warn", false);
    eprintln!(
        "msgtrace demo: starting the simulated tenant on 127.0.0.1 and collecting {hours} hours of mail flow"
    );
    let summary = demo::run(&demo::DemoOptions {
        out: out.to_path_buf(),
        hours,
        page_size,
        progress: true,
    })?;
    println!(
        "window {} .. {}: {} pages, {} rows written to {} ({} distinct), simulator holds {}",
        summary.window.0,
        summary.window.1,
        summary.pages,
        summary.written,
        out.display(),
        summary.distinct,
        summary.expected
    );
    if summary.written == summary.expected && summary.distinct == summary.expected {
        println!("OK: every row exactly once");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("MISMATCH: the output does not match the simulator");
        Ok(ExitCode::from(1))
    }
}

/// `msgtrace backfill`: one source's past range, once, on its own checkpoint.
/// With `[cluster]`, it is asked for through etcd and run by the instance holding the source
/// (`ask`).
fn backfill(
    config: &Path,
    source: &str,
    start: &str,
    end: &str,
    detach: bool,
) -> anyhow::Result<ExitCode> {
    let cfg = match load(config) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    init_config_logging(&cfg);
    if !cfg.sources.contains_key(source) {
        let known: Vec<&str> = cfg.sources.keys().map(String::as_str).collect();
        eprintln!(
            "msgtrace: --source {source}: no such source in {}; known sources: {}",
            config.display(),
            known.join(", ")
        );
        return Ok(ExitCode::from(2));
    }
    let now = chrono::Utc::now();
    let parse = |what: &str, e: &str| {
        msgtrace::actors::time::TimeExpr::parse(e)
            .map(|t| t.resolve(now))
            .map_err(|err| format!("--{what}: {err}"))
    };
    let (s, e) = match (parse("start", start), parse("end", end)) {
        (Ok(s), Ok(e)) if s < e => (s, e),
        (Ok(s), Ok(e)) => {
            eprintln!("msgtrace: --start ({s}) must be before --end ({e})");
            return Ok(ExitCode::from(2));
        }
        (Err(m), _) | (_, Err(m)) => {
            eprintln!("msgtrace: {m}");
            return Ok(ExitCode::from(2));
        }
    };
    let backfill = msgtrace::actors::fetcher::Backfill { start: s, end: e };
    match &cfg.cluster {
        Some(cluster) => return Ok(ask::ask(cluster, source, backfill, detach)),
        None if detach => {
            eprintln!("msgtrace: --detach asks a cluster to run the backfill, and {} has no [cluster]; leave --detach out to run it here", config.display());
            return Ok(ExitCode::from(2));
        }
        None => {}
    }
    eprintln!(
        "msgtrace: backfilling {source} from {s} to {e} (checkpoint {}; run the same command again to resume)",
        backfill.cursor_name(source)
    );
    let progress = progress::Progress::stderr();
    let opts = EngineOptions {
        page_hook: Some(progress.hook()),
        ..EngineOptions::default()
    };
    let mode = Mode::Backfill {
        source: source.to_owned(),
        backfill,
    };
    let report = run_engine(cfg, mode, opts, false);
    progress.finish();
    let report = match report {
        Ok(r) => r,
        Err(code) => return Ok(code),
    };
    for (_, job) in &report.jobs {
        match &job.error {
            Some(err) => eprintln!(
                "msgtrace: backfill job {} {:?}: {err}",
                job.job_id, job.state
            ),
            None => println!(
                "backfill {}: {:?}, {} pages, {} rows",
                job.job_id, job.state, job.pages, job.rows
            ),
        }
    }
    Ok(if report.all_succeeded() && !report.jobs.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `msgtrace run`: every source on its schedule (or once), until a signal.
fn run(config: &Path, once: bool, watch_config: bool) -> anyhow::Result<ExitCode> {
    let cfg = match load(config) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    init_config_logging(&cfg);
    let mode = if once { Mode::Once } else { Mode::Continuous };
    // SIGHUP reads the file again (reload).
    let opts = EngineOptions {
        config_file: Some(config.to_path_buf()),
        ..EngineOptions::default()
    };
    let report = match run_engine(cfg, mode, opts, watch_config) {
        Ok(r) => r,
        Err(code) => return Ok(code),
    };
    for (source, job) in &report.jobs {
        if report.handed_over.contains(source) && job.state == JobState::Cancelled {
            eprintln!(
                "msgtrace: source {source}: job {} stopped after {} pages: the source is another instance's now (one joined the cluster), which collects the rest",
                job.job_id, job.pages
            );
        } else if let Some(e) = &job.error {
            eprintln!(
                "msgtrace: source {source}: job {} {:?}: {e}",
                job.job_id, job.state
            );
        }
    }
    if once && !report.all_succeeded() {
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// `msgtrace jobs`: the job records, from the running engine's control socket or the state
/// directory.
fn jobs(config: &Path, json: bool, filter: JobFilter) -> anyhow::Result<ExitCode> {
    let (state_dir, cluster_config) = match config::load_state_dir_and_cluster(config) {
        Ok(d) => d,
        Err(errors) => {
            for e in &errors.errors {
                eprintln!("msgtrace: {e}");
            }
            return Ok(ExitCode::from(2));
        }
    };
    // A running engine holds the directory: its control socket answers instead.
    let read = StateDir::open(&state_dir)
        .and_then(|d| Ok((d.jobs()?, d.details_backlogs()?, d.cluster()?)));
    let (jobs, backlogs, cluster) = match read {
        Ok(all) => all,
        Err(e) => return Ok(report_failure(&e.into())),
    };
    let jobs = filter.apply(jobs);
    // No engine answers for the cluster (stopped, or a release before `/api/cluster`): etcd does.
    let cluster = match (cluster, cluster_config) {
        (None, Some(c)) => Some(actix_rt::System::new().block_on(ClusterView::read(&c))),
        (view, _) => view,
    };
    let owners = cluster.as_ref().map(|c| &c.owners);
    if json {
        print!(
            "{}",
            msgtrace::control::jobs::to_json_with_owners(&jobs, owners)
        );
    } else {
        let backlogs: Vec<_> = backlogs
            .into_iter()
            .filter(|b| filter.source.as_ref().is_none_or(|s| *s == b.source))
            .collect();
        print!("{}", msgtrace::control::jobs::render_text(&jobs));
        print!("{}", msgtrace::control::jobs::render_backlogs(&backlogs));
        if let Some(view) = &cluster {
            print!("{}", msgtrace::control::jobs::render_owners(view));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `msgtrace simulate`: the simulated tenant on its own, until Ctrl-C.
fn simulate(args: SimulateArgs) -> anyhow::Result<ExitCode> {
    init_logging("info,actix_server=warn,actix_web=warn", false);
    let config = sim_config(&args)?;
    let sim = SimServer::start(config, args.listen)
        .with_context(|| format!("listening on {}", args.listen))?;
    println!("simulated tenant listening on {}", sim.base_url());
    println!("  token (v2): {}", sim.token_url_v2());
    println!("  graph:      {}", sim.graph_url());
    println!("  reporting:  {}", sim.rws_url());
    println!("a configuration that collects from it (save it as simulate.toml):\n");
    println!(
        "{}",
        msgtrace_simulator::example_config(&sim.base_url(), &args.tenant_id, &args.client_id)
    );
    actix_rt::System::new().block_on(async {
        let _ = tokio::signal::ctrl_c().await;
    });
    sim.stop();
    Ok(ExitCode::SUCCESS)
}

/// The simulator's settings from `msgtrace simulate`'s flags (checked).
fn sim_config(args: &SimulateArgs) -> anyhow::Result<SimConfig> {
    let a = args;
    let faults = a
        .faults
        .iter()
        .map(|f| SimFault::by_name(f))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("--faults: {e}"))?;
    if !faults.is_empty() && a.fault_every == 0 {
        return Err(anyhow!("--fault-every must be at least 1"));
    }
    if a.messages_per_hour == 0 || a.max_recipients == 0 {
        return Err(anyhow!(
            "--messages-per-hour and --max-recipients must be at least 1"
        ));
    }
    if a.late_per_mille > 1000 || a.changing_per_mille > 1000 {
        return Err(anyhow!(
            "--late-per-mille and --changing-per-mille must be at most 1000"
        ));
    }
    if a.quota_requests == Some(0) || a.quota_per_secs == Some(0) || a.other_app_percent > 100 {
        return Err(anyhow!(
            "--quota-requests and --quota-per-secs must be at least 1 and --other-app-percent at most 100"
        ));
    }
    let late = (a.late_per_mille > 0 || a.changing_per_mille > 0).then_some(LateRows {
        late_per_mille: a.late_per_mille,
        max_delay_ms: a.max_delay_ms,
        changing_per_mille: a.changing_per_mille,
        status_change_after_ms: a.status_change_after_ms,
    });
    let mut config = SimConfig {
        model: TenantModel {
            seed: a.seed,
            messages_per_hour: a.messages_per_hour,
            max_recipients: a.max_recipients,
            ..TenantModel::default()
        },
        tenant_id: a.tenant_id.clone(),
        client_id: a.client_id.clone(),
        client_secret: a.client_secret.clone(),
        token_lifetime_secs: a.token_lifetime_secs,
        page_latency_ms: a.page_latency_ms,
        quota: a
            .quota_requests
            .zip(a.quota_per_secs)
            .map(|(requests, per_secs)| SimQuota { requests, per_secs }),
        other_app_percent: a.other_app_percent,
        password: a.password.clone().filter(|_| a.username.is_some()),
        username: a.username.clone(),
        late,
        fault_schedule: (!faults.is_empty()).then_some(FaultSchedule {
            every: a.fault_every,
            faults,
        }),
        ..SimConfig::default()
    };
    for path in &a.client_cert {
        let pem = std::fs::read_to_string(path)
            .with_context(|| format!("reading --client-cert {}", path.display()))?;
        if config.register_certificate_pem(&pem) == 0 {
            return Err(anyhow!(
                "--client-cert {}: no -----BEGIN CERTIFICATE----- block in it",
                path.display()
            ));
        }
    }
    Ok(config)
}

/// `msgtrace validate`: the file's errors, then every check a run makes before it starts.
fn validate(config: &Path) -> anyhow::Result<ExitCode> {
    let cfg = match load(config) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let found = msgtrace::preflight::validate(&cfg);
    for problem in &found.problems {
        eprintln!("msgtrace: {problem}");
    }
    for note in &found.notes {
        eprintln!("msgtrace: note: {note}");
    }
    for w in &found.warnings {
        eprintln!("msgtrace: warning: {w}");
    }
    if !found.problems.is_empty() {
        return Ok(ExitCode::from(2));
    }
    println!(
        "{}: valid ({} source(s), {} sink(s))",
        config.display(),
        cfg.sources.len(),
        cfg.sinks.len()
    );
    Ok(ExitCode::SUCCESS)
}

/// Runs the engine on this thread until `mode` is done or a signal stops it (SIGHUP, and with
/// `watch` a change of the configuration file, reload it). The handlers are installed before
/// the engine starts. An error is reported ([`report_failure`]) and becomes the exit code.
fn run_engine(
    cfg: Config,
    mode: Mode,
    opts: EngineOptions,
    watch: bool,
) -> Result<RunReport, ExitCode> {
    let watch = opts.config_file.clone().filter(|_| watch);
    actix_rt::System::new()
        .block_on(async move {
            let controls = signals::forward(watch)?;
            let engine = EngineBuilder::new(cfg).options(opts);
            anyhow::Ok(engine.run(mode, controls).await?)
        })
        .map_err(|e| report_failure(&e))
}

/// Prints an error that ends a command, one `msgtrace:` line per line, and picks the exit code:
/// 2 when the state directory or a file sink's path is unusable (the configuration or the
/// machine must change), 1 otherwise.
fn report_failure(e: &anyhow::Error) -> ExitCode {
    for line in format!("{e:#}").lines() {
        eprintln!("msgtrace: {line}");
    }
    let unusable = e.chain().any(|c| {
        matches!(c.downcast_ref::<EmbedError>(), Some(EmbedError::Engine(e)) if e.is_unusable_state())
            || c.is::<StorageError>()
            || c.is::<msgtrace::preflight::PreflightError>()
            || matches!(
                c.downcast_ref::<msgtrace::control::client::AccessError>(),
                Some(msgtrace::control::client::AccessError::Storage(_))
            )
    });
    ExitCode::from(if unusable { 2 } else { 1 })
}

/// The man pages, generated from the same definition as `--help`: msgtrace(1) to stdout, or
/// every page (msgtrace.1 and one per visible subcommand, msgtrace-run.1, ...) into `dir`.
fn man_pages(dir: Option<&Path>) -> anyhow::Result<ExitCode> {
    let cmd = Cli::command();
    match dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .and_then(|()| clap_mangen::generate_to(cmd, dir))
                .with_context(|| format!("writing man pages into {}", dir.display()))?;
            println!("man pages written to {}", dir.display());
        }
        None => clap_mangen::Man::new(cmd).render(&mut std::io::stdout())?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Opens the secret store of a configuration's state directory (creating the directory).
fn open_secrets(config: &Path) -> Result<SecretStore, ExitCode> {
    match Store::open(load_state_dir(config)?) {
        Ok(store) => Ok(SecretStore::new(store)),
        Err(e) => Err(report_failure(&e.into())),
    }
}

/// Reads a secret's value: stdin, or a prompt without echo when stdin is a terminal.
fn read_secret_value(name: &str, kind: SecretKind) -> anyhow::Result<SecretValue> {
    use std::io::{IsTerminal as _, Read as _};
    let input = if std::io::stdin().is_terminal() {
        match kind {
            SecretKind::Text => {
                let v = rpassword::prompt_password(format!("value of secret {name}: "))?;
                zeroize::Zeroizing::new(v)
            }
            SecretKind::Credentials => {
                eprint!("username for secret {name}: ");
                let mut user = String::new();
                std::io::stdin().read_line(&mut user)?;
                let pass = zeroize::Zeroizing::new(rpassword::prompt_password(format!(
                    "password for secret {name}: "
                ))?);
                zeroize::Zeroizing::new(format!("{}\n{}", user.trim(), pass.as_str()))
            }
        }
    } else {
        let mut v = zeroize::Zeroizing::new(String::new());
        std::io::stdin().read_to_string(&mut v)?;
        v
    };
    SecretValue::parse(kind, &input).map_err(|e| anyhow!("secret {name}: {e}"))
}

fn secrets_command(action: SecretsCommand) -> anyhow::Result<ExitCode> {
    init_logging("warn", false);
    match action {
        SecretsCommand::Set { name, config, kind } => {
            let kind: SecretKind = kind.parse()?;
            if let Err(e) = msgtrace::secrets::check_name(&name) {
                eprintln!("msgtrace: {e}");
                return Ok(ExitCode::from(2));
            }
            let secrets = match open_secrets(&config) {
                Ok(s) => s,
                Err(code) => return Ok(code),
            };
            let value = read_secret_value(&name, kind)?;
            let new_key = matches!(secrets.key_source(), KeySource::File(p) if !p.exists());
            secrets.set(&name, &value)?;
            println!(
                "secret {name} ({kind}) stored, encrypted with {}{}",
                secrets.key_source().describe(),
                if new_key {
                    " (created, mode 0600: keep it, and back it up apart from the state directory)"
                } else {
                    ""
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        SecretsCommand::List { config } => {
            let state_dir = match load_state_dir(&config) {
                Ok(d) => d,
                Err(code) => return Ok(code),
            };
            // A running engine holds the directory: its control socket answers instead.
            let list = match StateDir::open(&state_dir).and_then(|d| d.secrets()) {
                Ok(list) => list,
                Err(e) => return Ok(report_failure(&e.into())),
            };
            if list.is_empty() {
                eprintln!("msgtrace: the secret store is empty");
            }
            for (name, kind) in list {
                println!("{name}\t{kind}");
            }
            Ok(ExitCode::SUCCESS)
        }
        SecretsCommand::Rm { name, config } => {
            let secrets = match open_secrets(&config) {
                Ok(s) => s,
                Err(code) => return Ok(code),
            };
            if secrets.remove(&name)? {
                println!("secret {name} removed");
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("msgtrace: no secret named `{name}`; `msgtrace secrets list -c FILE` shows the names");
                Ok(ExitCode::from(1))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::colour;

    #[test]
    fn colour_only_on_a_terminal_and_never_with_no_color() {
        assert!(colour(true, None));
        assert!(colour(true, Some("".into())), "an empty NO_COLOR is unset");
        assert!(!colour(true, Some("1".into())));
        assert!(!colour(false, None), "a file, pipe or journald");
        assert!(!colour(false, Some("1".into())));
    }
}
