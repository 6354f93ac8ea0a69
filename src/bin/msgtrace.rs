//! The `msgtrace` binary: parses arguments, installs logging, maps signals, calls the library.

use anyhow::{anyhow, Context};
use clap::{Parser, Subcommand};
use msgtrace::config::{self, Config, LogFormat};
use msgtrace::engine::{self, EngineOptions, Mode};
use msgtrace::simulator::{SimConfig, SimServer, TenantModel};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

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
    /// Run every source on its schedule until SIGINT/SIGTERM.
    Run {
        /// Configuration file.
        #[arg(short, long)]
        config: PathBuf,
        /// Collect what is due now for every source, then exit (0 if all succeeded, 1 if not).
        #[arg(long)]
        once: bool,
    },
    /// Check a configuration file and report every error.
    Validate {
        /// Configuration file.
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Show jobs and their tasks.
    Jobs {
        /// Configuration file (for the state directory).
        #[arg(short, long)]
        config: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run the simulated tenant as a standalone server.
    Simulate {
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

fn init_logging(level: &str, json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("MSGTRACE_LOG")
        .unwrap_or_else(|_| EnvFilter::new(format!("{level},actix_server=warn,actix_web=warn")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
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
        } => {
            init_logging("warn", false);
            eprintln!(
                "msgtrace demo: starting the simulated tenant on 127.0.0.1 and collecting {hours} hours of mail flow"
            );
            let summary = msgtrace::demo::run(&msgtrace::demo::DemoOptions {
                out: out.clone(),
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
        Command::Validate { config } => {
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            let mut bad = false;
            for s in cfg.sources.values() {
                if let Err(e) = engine::source_spec(s, true) {
                    eprintln!("msgtrace: {e}");
                    bad = true;
                }
            }
            for w in cfg
                .warnings
                .iter()
                .chain(engine::unimplemented_warnings(&cfg).iter())
            {
                eprintln!("msgtrace: warning: {w}");
            }
            if bad {
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
        Command::Run { config, once } => {
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            init_logging(cfg.log_level.as_str(), cfg.log_format == LogFormat::Json);
            for w in &cfg.warnings {
                tracing::warn!("{w}");
            }
            let mode = if once { Mode::Once } else { Mode::Continuous };
            let report = actix_rt::System::new()
                .block_on(async { engine::run(&cfg, mode, EngineOptions::default()).await });
            let report = match report {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("msgtrace: {e:#}");
                    return Ok(ExitCode::from(1));
                }
            };
            for (source, job) in &report.jobs {
                if let Some(e) = &job.error {
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
        Command::Jobs { config, json } => {
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            let store = msgtrace::storage::Store::open(&cfg.state_dir)
                .with_context(|| format!("opening {}", cfg.state_dir.display()))?;
            let jobs = store.jobs(None)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&jobs)?);
            } else {
                println!(
                    "{:<40} {:<11} {:<26} {:<26} {:>6} {:>9} {:>7}",
                    "JOB", "STATE", "WINDOW START", "WINDOW END", "PAGES", "EVENTS", "ERRORS"
                );
                for j in &jobs {
                    let fmt = |t: Option<chrono::DateTime<chrono::Utc>>| {
                        t.map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
                            .unwrap_or_else(|| "-".into())
                    };
                    println!(
                        "{:<40} {:<11} {:<26} {:<26} {:>6} {:>9} {:>7}",
                        j.id,
                        format!("{:?}", j.state).to_lowercase(),
                        fmt(j.window_start),
                        fmt(j.window_end),
                        j.pages,
                        j.rows,
                        j.errors.len()
                    );
                    for e in &j.errors {
                        println!("    error: {e}");
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Simulate {
            listen,
            seed,
            messages_per_hour,
            max_recipients,
            token_lifetime_secs,
            page_latency_ms,
            tenant_id,
            client_id,
            client_secret,
        } => {
            init_logging("info", false);
            if messages_per_hour == 0 || max_recipients == 0 {
                return Err(anyhow!(
                    "--messages-per-hour and --max-recipients must be at least 1"
                ));
            }
            let config = SimConfig {
                model: TenantModel {
                    seed,
                    messages_per_hour,
                    max_recipients,
                    ..TenantModel::default()
                },
                tenant_id,
                client_id,
                client_secret,
                token_lifetime_secs,
                page_latency_ms,
                ..SimConfig::default()
            };
            let sim = SimServer::start(config, listen)
                .with_context(|| format!("listening on {listen}"))?;
            println!("simulated tenant listening on {}", sim.base_url());
            println!("  token (v2): {}", sim.token_url_v2());
            println!("  graph:      {}", sim.graph_url());
            println!("  reporting:  {}", sim.rws_url());
            actix_rt::System::new().block_on(async {
                let _ = tokio::signal::ctrl_c().await;
            });
            sim.stop();
            Ok(ExitCode::SUCCESS)
        }
    }
}
