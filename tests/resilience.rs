//! Bad days: failing next links, throttling, server errors. Each ends with every expected row
//! delivered exactly once.

mod common;

use common::*;
use msgtrace::actors::dialect::Api;
use msgtrace::simulator::SimFault;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

fn scenario<'a>(api: Api, dir: &'a std::path::Path, out: &'a std::path::Path) -> Scenario<'a> {
    Scenario {
        api,
        state_dir: dir,
        out,
        start: "-1d@h",
        end: "-1h@h",
        page_size: 100,
        extra: "",
    }
}

fn run_with_faults_after_page(api: Api, page: u64, faults: Vec<SimFault>) -> (u64, String) {
    let sim = Arc::new(sim(60, |_| {}));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.ndjson");
    let state = dir.path().join("state");
    let cfg = parse(&config_toml(&sim, &scenario(api, &state, &out)));
    let armed = Arc::new(AtomicBool::new(true));
    let (s, a) = (sim.clone(), armed.clone());
    let mut o = opts();
    o.page_hook = Some(Arc::new(move |_, pages, _| {
        if pages == page && a.swap(false, Ordering::SeqCst) {
            for f in &faults {
                s.inject_fault(*f);
            }
        }
    }));
    let report = run_once(&cfg, o);
    assert!(report.all_succeeded(), "{report:?}");
    let (ws, we) = report.jobs[0].1.window.unwrap();
    let expected = sim.model().expected(ws, we, chrono::Utc::now());
    assert_eq!(compare(&identities(&out, api), &expected), (0, 0, 0));
    let jobs = msgtrace::storage::Store::open(&state)
        .unwrap()
        .jobs(Some("src"))
        .unwrap();
    let requeries: u32 = jobs[0].tasks.iter().map(|t| t.requeries).sum();
    (requeries as u64, jobs[0].errors.join("\n"))
}

#[test]
fn a_next_link_that_keeps_failing_is_abandoned_and_the_slice_requeried_without_duplicates() {
    for api in [Api::Graph, Api::Reporting] {
        let poisoned = SimFault::Status {
            status: 400,
            retry_after_secs: None,
        };
        let (requeries, errors) = run_with_faults_after_page(api, 3, vec![poisoned; 3]);
        assert_eq!(requeries, 1, "{api:?}");
        assert!(errors.contains("next link abandoned"), "{errors}");
    }
}

#[test]
fn throttling_and_server_errors_are_retried_to_completion() {
    let faults = vec![
        SimFault::Status {
            status: 429,
            retry_after_secs: Some(1),
        },
        SimFault::Status {
            status: 503,
            retry_after_secs: None,
        },
        SimFault::Status {
            status: 503,
            retry_after_secs: None,
        },
    ];
    let (requeries, _) = run_with_faults_after_page(Api::Graph, 2, faults);
    assert_eq!(requeries, 0);
}
