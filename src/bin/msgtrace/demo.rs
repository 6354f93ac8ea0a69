//! `msgtrace demo`: a day of simulated message trace through the real engine, no network, no
//! configuration. The simulated tenant runs in-process on 127.0.0.1; the engine collects from it
//! with OAuth client credentials over Graph, exactly as it would from Microsoft, into an NDJSON
//! file; then the demo checks the file against the simulator's own count.

use anyhow::{anyhow, Context};
use msgtrace::config;
use msgtrace::embed::EngineBuilder;
use msgtrace::engine::{EngineOptions, Mode};
use msgtrace_simulator::{SimConfig, SimServer};
use std::io::BufRead;
use std::path::{Path, PathBuf};

/// What the demo collects.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// The NDJSON output file (replaced).
    pub out: PathBuf,
    /// Hours of mail flow to collect.
    pub hours: u32,
    /// Rows per page.
    pub page_size: u32,
    /// Print a line per page to stderr.
    pub progress: bool,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            out: PathBuf::from("demo-events.ndjson"),
            hours: 24,
            page_size: 1000,
            progress: true,
        }
    }
}

/// What the demo found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DemoSummary {
    /// Rows the simulator holds for the collected window.
    pub expected: u64,
    /// Lines in the output file.
    pub written: u64,
    /// Distinct (trace id, recipient) identities in the output.
    pub distinct: u64,
    /// Pages collected.
    pub pages: u64,
    /// The window, as RFC 3339.
    pub window: (String, String),
}

fn toml_str(s: &str) -> String {
    serde_json::to_string(s).expect("string serializes")
}

/// Runs the demo. Must not be called from inside an actix System.
///
/// The options are checked, and the configuration validated, before any file is touched: a
/// refused option leaves an existing output file as it was.
pub fn run(opts: &DemoOptions) -> anyhow::Result<DemoSummary> {
    if opts.hours == 0 {
        return Err(anyhow!("--hours must be at least 1"));
    }
    let sim = SimServer::start(SimConfig::default(), "127.0.0.1:0".parse()?)
        .context("starting the simulated tenant on 127.0.0.1")?;
    let base = sim.base_url();
    let state = tempfile::tempdir().context("creating a temporary state directory")?;
    let toml = format!(
        r#"
state_dir = {state}
log_level = "warn"

[sources.demo]
description = "the built-in simulated tenant"
api = "graph"
url = {url}
start = "-{start}h@h"
end = "-1h@h"
page_size = {page_size}

[sources.demo.auth]
method = "oauth"
tenant_id = "sim-tenant"
client_id = "sim-client"
client_secret = "sim-secret"
login_url = {base}

[sinks.out]
type = "file"
inputs = ["demo"]
path = {out}
"#,
        state = toml_str(&state.path().to_string_lossy()),
        url = toml_str(&format!("{base}{}", msgtrace_simulator::GRAPH_PATH)),
        start = opts.hours + 1,
        page_size = opts.page_size,
        base = toml_str(&base),
        out = toml_str(&opts.out.to_string_lossy()),
    );
    let config = config::from_str(&toml).map_err(|e| anyhow!("demo configuration: {e}"))?;
    if opts.out.exists() {
        std::fs::remove_file(&opts.out)
            .with_context(|| format!("replacing {}", opts.out.display()))?;
    }
    let progress = crate::progress::Progress::stderr();
    let options = EngineOptions {
        page_hook: opts.progress.then(|| progress.hook()),
        ..EngineOptions::default()
    };
    let report = actix_rt::System::new().block_on(async move {
        // Ctrl-C stops the demo gracefully.
        let controls = crate::signals::forward(None)?;
        let engine = EngineBuilder::new(config).options(options);
        anyhow::Ok(engine.run(Mode::Once, controls).await?)
    })?;
    if opts.progress {
        progress.finish();
    }
    let (_, job) = report
        .jobs
        .first()
        .ok_or_else(|| anyhow!("the demo source ran no job"))?;
    if let Some(e) = &job.error {
        return Err(anyhow!("the demo job failed: {e}"));
    }
    let (start, end) = job
        .window
        .ok_or_else(|| anyhow!("the demo job had no window"))?;
    let expected = sim.model().count(start, end, chrono::Utc::now());
    let (written, distinct) = count_rows(&opts.out)?;
    sim.stop();
    Ok(DemoSummary {
        expected,
        written,
        distinct,
        pages: job.pages,
        window: (start.to_rfc3339(), end.to_rfc3339()),
    })
}

/// Counts lines and distinct Graph identities in an NDJSON file.
pub fn count_rows(path: &Path) -> anyhow::Result<(u64, u64)> {
    let mut seen = std::collections::HashSet::new();
    let mut lines = 0;
    if !path.exists() {
        return Ok((0, 0));
    }
    let f = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    for line in std::io::BufReader::new(f).lines() {
        let line = line?;
        lines += 1;
        let v: serde_json::Value = serde_json::from_str(&line)
            .with_context(|| format!("{} line {lines} is not JSON", path.display()))?;
        seen.insert((
            v["id"].as_str().unwrap_or_default().to_owned(),
            v["recipientAddress"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        ));
    }
    Ok((lines, seen.len() as u64))
}
