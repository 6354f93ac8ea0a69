//! The API request budget: sources of one tenant share it and never trip a 429; a 429 that
//! comes anyway is waited out as told.

use crate::common::*;
use msgtrace_simulator::SimQuota;

/// Sources `a` and `b` of a tenant that enforces 8 requests per 2 s, msgtrace told `quota`.
fn two_sources(quota: &str) -> (Harness, msgtrace::config::Config) {
    let h = Harness::graph()
        .rate(40)
        .sim(|c| {
            c.quota = Some(SimQuota {
                requests: 8,
                per_secs: 2,
            })
        })
        .build();
    let sources = [("a", "-1d@h", "-12h@h"), ("b", "-12h@h", "-1h@h")];
    let cfg = parse(&h.sources_toml(&sources, quota));
    (h, cfg)
}

#[test]
fn sources_of_one_tenant_share_the_budget_and_never_trip_a_429() {
    // The simulated tenant enforces 8 requests per 2 s; msgtrace is told the same budget.
    let (h, cfg) = two_sources("quota = { requests = 8, per_secs = 2 }");
    let report = run_once(&cfg, opts());
    let stats = h.sim().stats();
    assert!(
        stats.data_requests > 16,
        "enough requests to need the budget: {stats:?}"
    );
    assert_eq!(stats.throttled, 0, "{stats:?}");
    h.assert_exactly_once(&report);
}

#[test]
fn without_the_budget_429s_come_and_are_waited_out() {
    let (h, cfg) = two_sources("quota = { requests = 100000, per_secs = 1 }");
    let report = run_once(&cfg, opts());
    let stats = h.sim().stats();
    assert!(stats.throttled > 0, "{stats:?}");
    h.assert_exactly_once(&report);
}
