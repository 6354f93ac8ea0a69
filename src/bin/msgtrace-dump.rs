//! `msgtrace-dump STATE_DIR [--tree NAME] [--json]`: prints every tree and record of a state
//! directory, secrets redacted.

use clap::Parser;
use msgtrace::storage::{dump, StorageError, Store};
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
    let store = match Store::open(&cli.state_dir) {
        Ok(s) => s,
        Err(e @ StorageError::Locked { .. }) => {
            eprintln!("msgtrace-dump: {e}; e.g. `cp -r {0} /tmp/msgtrace-copy && msgtrace-dump /tmp/msgtrace-copy`", cli.state_dir.display());
            return ExitCode::from(1);
        }
        Err(e) => {
            eprintln!("msgtrace-dump: {e}");
            return ExitCode::from(1);
        }
    };
    let trees = match dump::dump(&store, cli.tree.as_deref()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("msgtrace-dump: {e}");
            return ExitCode::from(1);
        }
    };
    if let Some(t) = &cli.tree {
        if trees.is_empty() {
            eprintln!("msgtrace-dump: no tree named `{t}`");
            return ExitCode::from(2);
        }
    }
    if cli.json {
        match serde_json::to_string_pretty(&trees) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("msgtrace-dump: {e}");
                return ExitCode::from(1);
            }
        }
    } else {
        print!("{}", dump::render_text(&trees));
    }
    ExitCode::SUCCESS
}
