//! The API request budget: sources of one tenant share it and never trip a 429; a 429 that
//! comes anyway is waited out as told.

use crate::common::*;
use msgtrace::actors::dialect::Api;
use msgtrace_simulator::SimQuota;

fn two_sources(sim: &msgtrace_simulator::SimServer, dir: &std::path::Path, quota: &str) -> String {
    graph_sources_toml(
        sim,
        &dir.join("state"),
        &dir.join("out.ndjson"),
        &[("a", "-1d@h", "-12h@h"), ("b", "-12h@h", "-1h@h")],
        quota,
    )
}

#[test]
fn sources_of_one_tenant_share_the_budget_and_never_trip_a_429() {
    // The simulated tenant enforces 8 requests per 2 s; msgtrace is told the same budget.
    let sim = sim(40, |c| {
        c.quota = Some(SimQuota {
            requests: 8,
            per_secs: 2,
        })
    });
    let dir = tempfile::tempdir().unwrap();
    let cfg = parse(&two_sources(
        &sim,
        dir.path(),
        "quota = { requests = 8, per_secs = 2 }",
    ));
    let report = run_once(&cfg, opts());
    let stats = sim.stats();
    assert!(
        stats.data_requests > 16,
        "enough requests to need the budget: {stats:?}"
    );
    assert_eq!(stats.throttled, 0, "{stats:?}");
    assert_exactly_once(&sim, &report, &dir.path().join("out.ndjson"), Api::Graph);
}

#[test]
fn without_the_budget_429s_come_and_are_waited_out() {
    let sim = sim(40, |c| {
        c.quota = Some(SimQuota {
            requests: 8,
            per_secs: 2,
        })
    });
    let dir = tempfile::tempdir().unwrap();
    let cfg = parse(&two_sources(
        &sim,
        dir.path(),
        "quota = { requests = 100000, per_secs = 1 }",
    ));
    let report = run_once(&cfg, opts());
    let stats = sim.stats();
    assert!(stats.throttled > 0, "{stats:?}");
    assert_exactly_once(&sim, &report, &dir.path().join("out.ndjson"), Api::Graph);
}
