//! msgtrace actors and the plain logic they wrap.
//!
//! The actors ([`supervisor::Supervisor`], [`scheduler::Scheduler`], [`auth::AuthToken`],
//! [`fetcher::Fetcher`], [`sink::SinkActor`]) only wire, time and supervise; the decisions live in
//! plain modules with their own tests: [`window`] (what to collect), [`dialect`] (the two APIs),
//! [`retry`], [`token`], [`time`] (relative time expressions).
#![deny(missing_docs)]

pub mod aimd;
pub mod assertion;
pub mod auth;
pub mod buffers;
pub mod cluster;
pub mod dialect;
pub mod eof;
pub mod event;
pub mod fetcher;
pub mod hook;
pub mod http;
pub mod identity;
pub mod link_guard;
pub mod proxy;
pub mod quota;
pub mod retry;
pub mod scheduler;
pub mod secret;
pub mod sink;
pub mod spec;
pub mod supervisor;
pub mod telemetry;
pub mod time;
pub mod token;
pub mod window;
