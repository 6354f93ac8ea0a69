//! `msgtrace-dump STATE_DIR [--tree NAME] [--json]`: prints every tree and record of a state
//! directory, secrets redacted.

use clap::Parser;
use msgtrace::control::client::{AccessError, StateDir};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "msgtrace-dump",
    version,
    about = "Prints a msgtrace state directory"
)]
struct Cli {
    /// The state directory (`state_dir` of the configuration).
    state_dir: PathBuf,
    /// Only this tree (checkpoints, jobs, meta, ...).
    #[arg(long)]
    tree: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !cli.state_dir.join("conf").exists() && !cli.state_dir.join("db").exists() {
        eprintln!(
            "msgtrace-dump: {} is not a msgtrace state directory (no sled database in it)",
            cli.state_dir.display()
        );
        return ExitCode::from(2);
    }
    // A running engine holds the directory: its control socket answers instead.
    let printed =
        StateDir::open(&cli.state_dir).and_then(|d| d.dump(cli.tree.as_deref(), cli.json));
    match printed {
        Ok(Some(text)) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Ok(None) => {
            eprintln!(
                "msgtrace-dump: no tree named `{}`",
                cli.tree.unwrap_or_default()
            );
            ExitCode::from(2)
        }
        Err(e @ AccessError::NoEngine { .. }) => {
            eprintln!("msgtrace-dump: {e}; e.g. `cp -r {0} /tmp/msgtrace-copy && msgtrace-dump /tmp/msgtrace-copy`", cli.state_dir.display());
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("msgtrace-dump: {e}");
            ExitCode::from(1)
        }
    }
}
