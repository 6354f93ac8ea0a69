//! msgtrace: collects Office 365 / Exchange Online message trace through an actor engine.
//!
//! - [`config`]: the TOML model (raw, then validated with every error at once).
//! - [`engine`]: builds the actors from a configuration and runs them.
//! - [`sinks`]: the built-in `stdout`, `file` and `http` sinks.
//! - [`reload`]: configuration reloads (`SIGHUP`): what changes live, what needs a restart.
//! - [`preflight`]: checks of the state directory and file sink paths before a run.
//! - [`normalize`]: `normalize = "ecs"`, rows mapped to Elastic Common Schema names.
//! - [`secrets`]: the encrypted secret store (`msgtrace secrets`, `oauth_secret`, `basic_secret`).
//! - [`embed`]: the engine's API: [`embed::EngineBuilder`], run on the caller's thread or on its
//!   own behind a `Send + Sync` handle.
//!
//! The simulated tenant (token endpoints, Graph, Reporting Web Service) of the tests, the demo
//! and the benchmarks is the `msgtrace-simulator` crate; the library does not carry it (the
//! binaries do, through the default feature `cli`).
//!
//! The actors and the plain logic they wrap live in the `msgtrace-actors` crate; sled state in
//! `msgtrace-storage`.
//!
//! # Embedding
//!
//! A host application builds the engine from a validated configuration, adds its own sinks and
//! pipeline hooks, and drives it from its own runtime (guide: `docs/embedding.md`; a fuller
//! example: `examples/embed.rs`). Here against the built-in simulated tenant:
//!
//! ```
//! use msgtrace::actors::{event::Batch, hook::Hook, sink::{Sink, SinkError}};
//! use msgtrace::embed::EngineBuilder;
//! use msgtrace_simulator::{SimConfig, SimServer, GRAPH_PATH};
//! use std::sync::{atomic::{AtomicU64, Ordering}, Arc};
//!
//! /// The host's own sink: counts events.
//! struct Count(Arc<AtomicU64>);
//!
//! impl Sink for Count {
//!     fn name(&self) -> &str { "count" }
//!     fn deliver<'a>(&'a mut self, batch: &'a Batch)
//!         -> futures_util::future::LocalBoxFuture<'a, Result<(), SinkError>> {
//!         self.0.fetch_add(batch.events.len() as u64, Ordering::Relaxed);
//!         Box::pin(async { Ok(()) }) // Ok = delivered: the checkpoint may move past the page
//!     }
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let sim = SimServer::start(SimConfig::default(), "127.0.0.1:0".parse()?)?;
//! let state = tempfile::tempdir()?;
//! let config = msgtrace::config::from_str(&format!(
//!     r#"
//!     state_dir = {state:?}
//!     [sources.contoso]
//!     url = "{base}{GRAPH_PATH}"
//!     start = "-2h@h"
//!     end = "-1h@h"
//!     [sources.contoso.auth]
//!     method = "oauth"
//!     tenant_id = "sim-tenant"
//!     client_id = "sim-client"
//!     client_secret = "sim-secret"
//!     login_url = "{base}"
//!     "#,
//!     state = state.path().to_string_lossy(),
//!     base = sim.base_url(),
//! ))?;
//! // A pipeline hook: sees each page's events (with `meta.input_id`, `is_final`, ...) first.
//! let tag: Hook = Arc::new(|events| {
//!     for e in events.iter_mut() {
//!         e.fields.insert("site".into(), "hq".into());
//!     }
//! });
//! let count = Arc::new(AtomicU64::new(0));
//! let engine = EngineBuilder::new(config)
//!     .sink(Box::new(Count(count.clone())), &["contoso"])
//!     .hook(tag)
//!     .start()?;
//!
//! // Any runtime will do; the engine runs its own actix System on its own thread.
//! let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
//! rt.block_on(async {
//!     let report = engine.run_once().await?;
//!     assert!(report.all_succeeded());
//!     assert_eq!(count.load(Ordering::Relaxed), report.jobs[0].1.rows);
//!     engine.shutdown().await?;
//!     Ok::<_, msgtrace::embed::EmbedError>(())
//! })?;
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

#[cfg(feature = "mimalloc")]
pub mod allocator;
pub mod cluster;
pub mod config;
pub mod control;
pub mod embed;
pub mod engine;
pub mod listener;
pub mod metrics;
pub mod normalize;
pub mod preflight;
pub mod reload;
pub mod secrets;
pub mod sinks;

pub use msgtrace_actors as actors;
pub use msgtrace_storage as storage;

/// Without the `mimalloc` feature the binaries keep the system allocator.
#[cfg(not(feature = "mimalloc"))]
#[macro_export]
macro_rules! binary_allocator {
    () => {};
}
