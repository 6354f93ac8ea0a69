//! Counters and gauges the engine reports through the [`metrics`] facade. The library only
//! records; whoever installs a recorder (the `msgtrace` binary's `metrics_listen` endpoint, or a
//! host application's own) decides where they go. Without a recorder they cost nothing.
//!
//! | name | type | labels | meaning |
//! |---|---|---|---|
//! | `msgtrace_rows_total` | counter | `source` | events delivered to every sink and checkpointed |
//! | `msgtrace_pages_total` | counter | `source` | pages delivered and checkpointed |
//! | `msgtrace_response_bytes_total` | counter | `source` | bytes of API response bodies received |
//! | `msgtrace_quota_remaining` | gauge | `source` | requests left in the tenant's budget after the last one |
//! | `msgtrace_quota_effective_limit` | gauge | `tenant` | requests per span the engine lets itself send: the budget, lowered while other applications of the tenant spend part of it |
//! | `msgtrace_quota_unpredicted_429_total` | counter | `tenant` | 429s the engine's own count did not predict (each lowers the limit, unless it belongs to an overshoot already answered) |
//! | `msgtrace_retries_total` | counter | `source` | API requests retried |
//! | `msgtrace_throttled_total` | counter | `source` | API answers 429 |
//! | `msgtrace_jobs_total` | counter | `source`, `state` | jobs ended, by outcome |
//! | `msgtrace_sink_refusals_total` | counter | `source` | pages a sink refused (after its own retries) and that were held to be given again |
//! | `msgtrace_last_page_timestamp_seconds` | gauge | `source` | when the last page was checkpointed |
//! | `msgtrace_last_success_timestamp_seconds` | gauge | `source` | when the last job succeeded |
//! | `msgtrace_broken_rows_total` | counter | `source` | rows delivered flagged `__isBroken` (no readable time or identity, or bytes that were not UTF-8) |
//! | `msgtrace_poisoned_links_total` | counter | `source` | next links abandoned (another origin, a loop, endless pages, failing) and their slice re-queried |
//! | `msgtrace_details_backlog` | gauge | `source` | summary rows whose per-recipient details are still to be fetched (`details`) |
//! | `msgtrace_detail_events_total` | counter | `source` | detail events delivered to every sink (their rows then leave the backlog) |
//! | `msgtrace_cluster_etcd_up` | gauge | | `[cluster]`: 1 while the agent's last round reached etcd, 0 while it does not answer |
//! | `msgtrace_cluster_members` | gauge | | `[cluster]`: live members of the deployment, as last read |
//! | `msgtrace_cluster_owned_sources` | gauge | | `[cluster]`: sources this instance holds the claim of |
//! | `msgtrace_cluster_ownership_changes_total` | counter | `change` | `[cluster]`: claims this instance `gained` or `lost` (released, or given up with a lease that ended) |
//! | `msgtrace_cluster_fenced_refusals_total` | counter | `source` | `[cluster]`: checkpoint commits etcd refused because this instance's claim had ended |

use metrics::{counter, describe_counter, describe_gauge, gauge};
use msgtrace_storage::JobState;

/// Whether a metric counts up or goes up and down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only ever increases (Prometheus `counter`).
    Counter,
    /// A value that is set (Prometheus `gauge`).
    Gauge,
}

/// Every metric this module records: name, kind, and the help text `/metrics` shows as `# HELP`.
pub const METRICS: &[(&str, Kind, &str)] = &[
    (
        "msgtrace_rows_total",
        Kind::Counter,
        "events delivered to every sink and checkpointed",
    ),
    (
        "msgtrace_pages_total",
        Kind::Counter,
        "pages delivered to every sink and checkpointed",
    ),
    (
        "msgtrace_response_bytes_total",
        Kind::Counter,
        "bytes of API response bodies received",
    ),
    (
        "msgtrace_quota_remaining",
        Kind::Gauge,
        "requests left in the tenant's budget after the last request (absent until the first one)",
    ),
    (
        "msgtrace_quota_effective_limit",
        Kind::Gauge,
        "requests per span the engine lets itself send to the tenant (tenant: API host/tenant): the budget, lowered while other applications of the tenant spend part of it",
    ),
    (
        "msgtrace_quota_unpredicted_429_total",
        Kind::Counter,
        "429s the engine's own count of the tenant's budget did not predict (another application spends it)",
    ),
    (
        "msgtrace_retries_total",
        Kind::Counter,
        "API requests retried",
    ),
    ("msgtrace_throttled_total", Kind::Counter, "API answers 429"),
    (
        "msgtrace_jobs_total",
        Kind::Counter,
        "jobs ended, by outcome (state)",
    ),
    (
        "msgtrace_sink_refusals_total",
        Kind::Counter,
        "pages a sink refused after its own retries, held to be given again",
    ),
    (
        "msgtrace_last_page_timestamp_seconds",
        Kind::Gauge,
        "when the last page was checkpointed, epoch seconds (absent until the first page)",
    ),
    (
        "msgtrace_last_success_timestamp_seconds",
        Kind::Gauge,
        "when the last job succeeded, epoch seconds (absent until a success is known)",
    ),
    (
        "msgtrace_broken_rows_total",
        Kind::Counter,
        "rows delivered flagged __isBroken (no readable time or identity, or bytes that were not UTF-8)",
    ),
    (
        "msgtrace_poisoned_links_total",
        Kind::Counter,
        "next links abandoned (another origin, a loop, endless pages, failing) and their slice re-queried",
    ),
    (
        "msgtrace_details_backlog",
        Kind::Gauge,
        "summary rows whose per-recipient details are still to be fetched (absent until the source's first details)",
    ),
    (
        "msgtrace_detail_events_total",
        Kind::Counter,
        "detail events delivered to every sink",
    ),
    (
        "msgtrace_cluster_etcd_up",
        Kind::Gauge,
        "[cluster]: 1 while the last round of the cluster agent reached etcd, 0 while etcd does not answer (absent without [cluster])",
    ),
    (
        "msgtrace_cluster_members",
        Kind::Gauge,
        "[cluster]: live members of the deployment, as last read",
    ),
    (
        "msgtrace_cluster_owned_sources",
        Kind::Gauge,
        "[cluster]: sources whose claim this instance holds",
    ),
    (
        "msgtrace_cluster_ownership_changes_total",
        Kind::Counter,
        "[cluster]: claims this instance gained or lost (change label)",
    ),
    (
        "msgtrace_cluster_fenced_refusals_total",
        Kind::Counter,
        "[cluster]: checkpoint commits etcd refused because this instance's claim had ended",
    ),
];

/// The metrics of `[cluster]` only: not created per source.
const CLUSTER_ONLY: &[&str] = &[
    "msgtrace_cluster_ownership_changes_total",
    "msgtrace_cluster_fenced_refusals_total",
];

/// The job outcomes `msgtrace_jobs_total` counts (its `state` label).
const ENDED: [JobState; 4] = [
    JobState::Succeeded,
    JobState::Failed,
    JobState::Cancelled,
    JobState::Interrupted,
];

fn state_label(state: JobState) -> String {
    format!("{state:?}").to_lowercase()
}

/// Gives every metric of [`METRICS`] its help text in the installed recorder. Call it after the
/// recorder is installed (descriptions go to the recorder of the moment).
pub fn describe() {
    for &(name, kind, help) in METRICS {
        match kind {
            Kind::Counter => describe_counter!(name, help),
            Kind::Gauge => describe_gauge!(name, help),
        }
    }
}

/// Creates the counters of `source` at zero, so that they exist from the start (a counter that
/// appears at its first increment loses that increment to `rate()`). The gauges appear with their
/// first value: a zero there would be a false reading (no budget left, a page at 1970).
pub fn register_source(source: &str) {
    for &(name, kind, _) in METRICS {
        match kind {
            Kind::Counter if name == "msgtrace_jobs_total" => {
                for state in ENDED {
                    counter!(name, "source" => source.to_owned(), "state" => state_label(state))
                        .increment(0);
                }
            }
            // Labelled by tenant, created with the tenant's gate.
            Kind::Counter if name == "msgtrace_quota_unpredicted_429_total" => {}
            // Created by the cluster agent, only with `[cluster]`.
            Kind::Counter if CLUSTER_ONLY.contains(&name) => {}
            Kind::Counter => counter!(name, "source" => source.to_owned()).increment(0),
            Kind::Gauge => {}
        }
    }
}

fn epoch_secs(t: chrono::DateTime<chrono::Utc>) -> f64 {
    t.timestamp() as f64 + f64::from(t.timestamp_subsec_millis()) / 1e3
}

fn now() -> f64 {
    epoch_secs(chrono::Utc::now())
}

/// A page of `rows` events was delivered and checkpointed.
pub fn page_committed(source: &str, rows: u64) {
    let s = source.to_owned();
    counter!("msgtrace_pages_total", "source" => s.clone()).increment(1);
    counter!("msgtrace_rows_total", "source" => s.clone()).increment(rows);
    gauge!("msgtrace_last_page_timestamp_seconds", "source" => s).set(now());
}

/// An API response body of `bytes` was received.
pub fn response_bytes(source: &str, bytes: usize) {
    counter!("msgtrace_response_bytes_total", "source" => source.to_owned())
        .increment(bytes as u64);
}

/// Requests left in the tenant's budget right after one was taken.
pub fn quota_remaining(source: &str, left: u32) {
    gauge!("msgtrace_quota_remaining", "source" => source.to_owned()).set(f64::from(left));
}

/// The engine's limit within the budget of `tenant` (a quota key) is now `limit` per span.
pub fn quota_limit(tenant: &str, limit: u32) {
    gauge!("msgtrace_quota_effective_limit", "tenant" => tenant.to_owned()).set(f64::from(limit));
}

/// `n` more 429s the engine's own count of `tenant`'s budget did not predict (0 creates the
/// counter).
pub fn quota_unpredicted(tenant: &str, n: u64) {
    counter!("msgtrace_quota_unpredicted_429_total", "tenant" => tenant.to_owned()).increment(n);
}

/// An API request is retried.
pub fn retried(source: &str) {
    counter!("msgtrace_retries_total", "source" => source.to_owned()).increment(1);
}

/// The API answered 429.
pub fn throttled(source: &str) {
    counter!("msgtrace_throttled_total", "source" => source.to_owned()).increment(1);
}

/// A sink refused a page, which is held and given to it again.
pub fn page_held(source: &str) {
    counter!("msgtrace_sink_refusals_total", "source" => source.to_owned()).increment(1);
}

/// A job ended.
pub fn job_ended(source: &str, state: JobState) {
    counter!("msgtrace_jobs_total", "source" => source.to_owned(), "state" => state_label(state))
        .increment(1);
    if state == JobState::Succeeded {
        last_success(source, chrono::Utc::now());
    }
}

/// A job of `source` succeeded `at`: as it ends, or, at start, the last success the state
/// directory remembers (so that the gauge survives a restart).
pub fn last_success(source: &str, at: chrono::DateTime<chrono::Utc>) {
    gauge!("msgtrace_last_success_timestamp_seconds", "source" => source.to_owned())
        .set(epoch_secs(at));
}

/// Rows of a page were delivered flagged `__isBroken`.
pub fn broken_rows(source: &str, rows: u64) {
    counter!("msgtrace_broken_rows_total", "source" => source.to_owned()).increment(rows);
}

/// A next link was abandoned and its slice re-queried.
pub fn poisoned_link(source: &str) {
    counter!("msgtrace_poisoned_links_total", "source" => source.to_owned()).increment(1);
}

/// `source`'s details backlog holds `entries` summary rows now.
pub fn details_backlog(source: &str, entries: usize) {
    gauge!("msgtrace_details_backlog", "source" => source.to_owned()).set(entries as f64);
}

/// `events` detail events of `source` were delivered to every sink.
pub fn detail_events(source: &str, events: u64) {
    counter!("msgtrace_detail_events_total", "source" => source.to_owned()).increment(events);
}

/// `[cluster]`: what the agent's last round found (etcd reached or not, the live members, the
/// claims held). Also creates the counters of `[cluster]` at zero.
pub fn cluster_state(etcd_up: bool, members: usize, owned: usize) {
    gauge!("msgtrace_cluster_etcd_up").set(if etcd_up { 1.0 } else { 0.0 });
    gauge!("msgtrace_cluster_members").set(members as f64);
    gauge!("msgtrace_cluster_owned_sources").set(owned as f64);
    ownership_changed(0, 0);
}

/// `[cluster]`: this instance gained `gained` claims and lost `lost`.
pub fn ownership_changed(gained: u64, lost: u64) {
    counter!("msgtrace_cluster_ownership_changes_total", "change" => "gained").increment(gained);
    counter!("msgtrace_cluster_ownership_changes_total", "change" => "lost").increment(lost);
}

/// `[cluster]`: etcd refused a checkpoint commit of `source`: this instance's claim had ended.
pub fn fenced_refusal(source: &str) {
    counter!("msgtrace_cluster_fenced_refusals_total", "source" => source.to_owned()).increment(1);
}
