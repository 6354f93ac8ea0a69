//! The tenant's budget is shared with other applications (issue 18, item 3): when another app
//! spends half of it, the engine lowers its own limit after the first 429 instead of retrying
//! into the wall, and the collection completes, every row exactly once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::common::*;
use msgtrace_simulator::SimQuota;

#[test]
fn with_another_app_spending_half_the_budget_the_engine_lowers_its_limit_and_no_job_fails() {
    // 30 requests per second for the tenant, 15 of them another application's; msgtrace is told
    // the whole budget (it cannot know of the other app).
    let h = Harness::graph()
        .rate(240)
        .sim(|c| {
            c.quota = Some(SimQuota {
                requests: 30,
                per_secs: 1,
            });
            c.other_app_percent = 50;
        })
        .build();
    let sim = h.shared_sim();
    let cfg = parse(&h.sources_toml(
        &[("a", "-1d@h", "-12h@h"), ("b", "-12h@h", "-1h@h")],
        "quota = { requests = 30, per_secs = 1 }",
    ));
    // The 429s counted once a third of the pages are in (counted, not timed): what the engine
    // learnt from the first ones keeps the rest away from the wall.
    let pages = Arc::new(AtomicU64::new(0));
    let at_a_third: Arc<Mutex<Option<u64>>> = Arc::default();
    let hook = {
        let (sim, pages, at_a_third) = (sim.clone(), pages.clone(), at_a_third.clone());
        move |_: &str, _: u64, _: u64| {
            if pages.fetch_add(1, Ordering::Relaxed) + 1 == 40 {
                *at_a_third.lock().unwrap() = Some(sim.stats().throttled);
            }
        }
    };
    let report = run_once(
        &cfg,
        msgtrace::engine::EngineOptions {
            page_hook: Some(Arc::new(hook)),
            ..opts()
        },
    );
    let stats = sim.stats();
    let pages = pages.load(Ordering::Relaxed);
    assert!(pages >= 100, "enough pages to need the budget: {pages}");
    assert!(stats.other_app_requests > 0, "{stats:?}");
    assert!(stats.throttled >= 1, "the engine met the wall: {stats:?}");
    let at_a_third = at_a_third.lock().unwrap().expect("40 pages");
    assert!(
        stats.throttled - at_a_third <= 1,
        "{} 429s after the first 40 of {pages} pages: {stats:?}",
        stats.throttled - at_a_third
    );
    h.assert_exactly_once(&report);
}
