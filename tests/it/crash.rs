//! Crash test: the collector runs as a child process and is killed with SIGKILL at random
//! moments, then restarted, many times over one collection. At the end every expected row is
//! present; duplicates come only from pages in flight at a kill (at most one page per kill).
//! The machinery ([`crash_run`], [`crash_collect`], [`kill_repeatedly`]) is in `common.rs`:
//! the details test runs it too, and `archive.rs` runs the same collection into an object store,
//! where even the pages in flight at a kill are overwritten, not doubled.

use crate::common::*;
use msgtrace::actors::dialect::Api;

fn crash_test(api: Api, kills_wanted: u32) {
    let sim = sim(200, |c| c.page_latency_ms = 40);
    crash_collect(&sim, &Crash::two_days(api, kills_wanted));
}

#[test]
fn sigkill_at_random_moments_loses_no_row_graph() {
    crash_test(Api::Graph, 20);
}

#[test]
fn sigkill_at_random_moments_loses_no_row_reporting() {
    crash_test(Api::Reporting, 10);
}
