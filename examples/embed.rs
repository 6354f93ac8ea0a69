//! msgtrace embedded in a tokio application, with a sink and a pipeline hook of its own.
//!
//! ```sh
//! cargo run --example embed
//! ```
//!
//! It starts the built-in simulated tenant on 127.0.0.1 (so it needs no Microsoft account and no
//! network), builds a configuration in code, adds a host sink that counts events per delivery
//! status and a hook that drops spam and tags every event, collects what is due with
//! `run_once`, shows the status and the job records, and shuts down.

use msgtrace::actors::event::Batch;
use msgtrace::actors::hook::Hook;
use msgtrace::actors::sink::{Sink, SinkError};
use msgtrace::embed::EngineBuilder;
use msgtrace_simulator::{SimConfig, SimServer, TenantModel, GRAPH_PATH};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// A host sink: counts events per delivery status (a stand-in for the host's own store).
pub struct StatusCounter {
    counts: Arc<Mutex<BTreeMap<String, u64>>>,
}

impl Sink for StatusCounter {
    fn name(&self) -> &str {
        "status-counter"
    }

    fn deliver<'a>(
        &'a mut self,
        batch: &'a Batch,
    ) -> futures_util::future::LocalBoxFuture<'a, Result<(), SinkError>> {
        let mut counts = self.counts.lock().unwrap();
        for event in batch.events.iter() {
            let status = event.fields.get("status").and_then(|s| s.as_str());
            *counts.entry(status.unwrap_or("?").to_owned()).or_default() += 1;
        }
        // Returning Ok acknowledges the page: make it durable first if it must survive a crash.
        Box::pin(async { Ok(()) })
    }
}

/// What the example saw.
#[derive(Debug)]
pub struct Outcome {
    /// Events the host sink received, per delivery status.
    pub counts: BTreeMap<String, u64>,
    /// Rows the engine collected (before the hook).
    pub rows: u64,
    /// Whether every source's job succeeded.
    pub succeeded: bool,
    /// Job records in the state directory after the run.
    pub jobs: usize,
}

/// Collects from a simulated tenant with the engine embedded in the caller's runtime.
pub async fn embed_demo(state_dir: &Path) -> anyhow::Result<Outcome> {
    let sim = SimServer::start(
        SimConfig {
            model: TenantModel {
                messages_per_hour: 60,
                ..TenantModel::default()
            },
            ..SimConfig::default()
        },
        "127.0.0.1:0".parse()?,
    )?;
    let toml = format!(
        r#"
        state_dir = {state:?}

        [sources.contoso]
        url = "{base}{GRAPH_PATH}"
        start = "-6h@h"
        end = "-1h@h"

        [sources.contoso.auth]
        method = "oauth"
        tenant_id = "sim-tenant"
        client_id = "sim-client"
        client_secret = "sim-secret"
        login_url = "{base}"
        "#,
        state = state_dir.join("state").to_string_lossy(),
        base = sim.base_url(),
    );
    let config = msgtrace::config::from_str(&toml)?;

    let counts = Arc::new(Mutex::new(BTreeMap::new()));
    let sink = StatusCounter {
        counts: counts.clone(),
    };
    // The hook sees each page's events with their metadata (`e.meta.input_id`, `is_final`...)
    // and edits the list: here it drops spam and tags what is left.
    let hook: Hook = Arc::new(|events| {
        events
            .retain(|e| e.fields.get("status").and_then(|s| s.as_str()) != Some("filteredAsSpam"));
        for e in events.iter_mut() {
            let input = e.meta.input_id.to_string();
            e.fields.insert("collected_by".into(), input.into());
        }
    });

    let engine = EngineBuilder::new(config)
        .sink(Box::new(sink), &["contoso"])
        .hook(hook)
        .start()?;
    let report = engine.run_once().await?;
    for status in engine.status().await? {
        println!(
            "source {}: running {}, last job {:?}",
            status.source,
            status.running,
            status.last.as_ref().map(|j| j.state)
        );
    }
    let jobs = engine.jobs(Some("contoso")).await?;
    engine.shutdown().await?;

    let counts = counts.lock().unwrap().clone();
    Ok(Outcome {
        counts,
        rows: report.jobs.iter().map(|(_, j)| j.rows).sum(),
        succeeded: report.all_succeeded(),
        jobs: jobs.len(),
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let outcome = embed_demo(dir.path()).await?;
    println!(
        "{} rows collected; delivered to the host sink by status: {:?}",
        outcome.rows, outcome.counts
    );
    Ok(())
}
