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
//! | `msgtrace_retries_total` | counter | `source` | API requests retried |
//! | `msgtrace_throttled_total` | counter | `source` | API answers 429 |
//! | `msgtrace_jobs_total` | counter | `source`, `state` | jobs ended, by outcome |
//! | `msgtrace_sink_refusals_total` | counter | `source` | pages a sink refused (after its own retries) and that were held to be given again |
//! | `msgtrace_last_page_timestamp_seconds` | gauge | `source` | when the last page was checkpointed |
//! | `msgtrace_last_success_timestamp_seconds` | gauge | `source` | when the last job succeeded |
//! | `msgtrace_broken_rows_total` | counter | `source` | rows delivered flagged `__isBroken` (no readable time or identity, or bytes that were not UTF-8) |
//! | `msgtrace_poisoned_links_total` | counter | `source` | next links abandoned (another origin, a loop, endless pages, failing) and their slice re-queried |

use metrics::{counter, gauge};
use msgtrace_storage::JobState;

fn now() -> f64 {
    let t = chrono::Utc::now();
    t.timestamp() as f64 + f64::from(t.timestamp_subsec_millis()) / 1e3
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
    let label = format!("{state:?}").to_lowercase();
    counter!("msgtrace_jobs_total", "source" => source.to_owned(), "state" => label).increment(1);
    if state == JobState::Succeeded {
        gauge!("msgtrace_last_success_timestamp_seconds", "source" => source.to_owned()).set(now());
    }
}

/// Rows of a page were delivered flagged `__isBroken`.
pub fn broken_rows(source: &str, rows: u64) {
    counter!("msgtrace_broken_rows_total", "source" => source.to_owned()).increment(rows);
}

/// A next link was abandoned and its slice re-queried.
pub fn poisoned_link(source: &str) {
    counter!("msgtrace_poisoned_links_total", "source" => source.to_owned()).increment(1);
}
