//! The simulated tenant: an HTTP server on loopback that behaves like Microsoft's services
//! (Entra ID token endpoints, Graph message trace, the legacy Reporting Web Service), serving
//! deterministic rows derived from a seed and a rate.
//!
//! Used by integration tests, `msgtrace demo`, `msgtrace simulate` and the benchmarks. A test knows
//! exactly which rows a window holds through [`TenantModel::expected`] / [`TenantModel::count`].
//!
//! | path | what |
//! |---|---|
//! | `POST /{tenant}/oauth2/v2.0/token` | client credentials, `scope=<audience>/.default` |
//! | `POST /{tenant}/oauth2/token` | client credentials, `resource=<audience>` (v1: string fields) |
//! | `GET /v1.0/admin/exchange/tracing/messageTraces` (and `/beta/`) | Graph message trace |
//! | `GET …/messageTraces/{id}/getDetailsByRecipient(recipientAddress='…')` | Graph detail records of one row ([`SimDetail`], [`TenantModel::details`]) |
//! | `GET /ecp/reportingwebservice/reporting.svc/MessageTrace` | RWS (path case-insensitive) |
//! | `GET /health` | 200 |
//!
//! # Examples
//!
//! ```
//! use chrono::{Duration, Utc};
//! use msgtrace_simulator::{SimConfig, SimServer};
//!
//! let server = SimServer::start(SimConfig::default(), ([127, 0, 0, 1], 0).into())?;
//! assert!(server.graph_url().ends_with("/v1.0/admin/exchange/tracing/messageTraces"));
//! // What a collector of the last complete hour must deliver, exactly once:
//! let now = Utc::now();
//! let end = now - Duration::hours(1);
//! let rows = server.model().expected(end - Duration::hours(1), end, now);
//! assert_eq!(rows.len() as u64, server.model().count(end - Duration::hours(1), end, now));
//! server.stop();
//! # Ok::<(), std::io::Error>(())
//! ```

mod auth;
mod details;
mod details_endpoint;
mod example;
mod model;
mod query;
mod server;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_details;
#[cfg(test)]
mod tests_late;

pub use auth::{SimIdentity, FEDERATED_AUDIENCE};
pub use details::SimDetail;
pub use example::{example_config, SIM_SECRET_VAR};
pub use model::{
    format_7, format_7z, format_ms_date, format_window, from_ticks, ticks_ceil, ticks_floor,
    LateRows, Position, SimRow, SimRows, TenantModel, TICKS_PER_HOUR, TICKS_PER_SEC,
};
pub use server::{
    FaultSchedule, SimConfig, SimFault, SimQuota, SimServer, SimStats, UnknownFault, DEFAULT_TOP,
    DEFAULT_WINDOW_HOURS, GRAPH_MAX_AGE_DAYS, GRAPH_MAX_WINDOW_DAYS, GRAPH_PATH, RWS_PATH,
    RWS_RETENTION_DAYS,
};
