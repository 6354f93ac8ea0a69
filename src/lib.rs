//! msgtrace: collects Office 365 / Exchange Online message trace through an actor engine.
//!
//! - [`config`]: the TOML model (raw, then validated with every error at once).
//! - [`engine`]: builds the actors from a configuration and runs them.
//! - [`sinks`]: the built-in `stdout`, `file` and `http` sinks.
//! - [`normalize`]: `normalize = "ecs"`, rows mapped to Elastic Common Schema names.
//! - [`secrets`]: the encrypted secret store (`msgtrace secrets`, `oauth_secret`, `basic_secret`).
//! - [`simulator`]: the simulated tenant (token endpoints, Graph, Reporting Web Service).
//! - [`demo`]: `msgtrace demo`, the whole engine against the simulator.
//!
//! The actors and the plain logic they wrap live in the `msgtrace-actors` crate; sled state in
//! `msgtrace-storage`.
#![deny(missing_docs)]

pub mod config;
pub mod demo;
pub mod engine;
pub mod normalize;
pub mod secrets;
pub mod simulator;
pub mod sinks;

pub use msgtrace_actors as actors;
pub use msgtrace_storage as storage;
