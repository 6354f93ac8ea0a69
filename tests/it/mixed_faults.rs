//! Every fault class at once, plus SIGKILLs of the collector, over a multi-day collection: no row
//! is lost, and the figures (requests, retries, 429s, re-queried windows, duplicates) are printed.

use crate::common::*;
use msgtrace_simulator::{SimFault, SimQuota};
use std::time::{Duration, Instant};

const FAULTS: [SimFault; 7] = [
    SimFault::Status {
        status: 429,
        retry_after_secs: Some(1),
    },
    SimFault::Status {
        status: 503,
        retry_after_secs: None,
    },
    SimFault::Status {
        status: 400,
        retry_after_secs: None,
    },
    SimFault::Delay { ms: 1500 },
    SimFault::Body {
        status: 200,
        content_type: "application/json",
        body: "{\"value\": [",
    },
    SimFault::Body {
        status: 502,
        content_type: "text/html",
        body: "<html><title>502 Bad Gateway</title></html>",
    },
    SimFault::Truncated,
];

#[test]
fn all_fault_classes_and_sigkills_lose_no_row() {
    let page_size = 100;
    // The tenant also enforces a budget that msgtrace is not told about: real 429s come too.
    let h = Harness::graph()
        .rate(120)
        .sim(|c| {
            c.page_latency_ms = 20;
            c.quota = Some(SimQuota {
                requests: 40,
                per_secs: 2,
            });
        })
        .window("-3d@h", "-1h@h")
        .page_size(page_size)
        .extra("request_timeout_secs = 1\ntask_reschedule_limit = 3")
        .build();
    let (sim, cfg) = (h.sim(), h.write_config());
    let mut rng = Rng::seeded("mixed-fault");
    let spawn = || spawn_run_once(&cfg);
    let mut kills = 0;
    let mut injected = 0;
    let started = Instant::now();
    while kills < 10 && started.elapsed() < Duration::from_secs(90) {
        let mut child = spawn();
        let life = Instant::now() + Duration::from_millis(rng.range(300, 900));
        while Instant::now() < life {
            sim.inject_fault(FAULTS[rng.range(0, FAULTS.len() as u64) as usize]);
            injected += 1;
            std::thread::sleep(Duration::from_millis(rng.range(40, 160)));
        }
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            kills += 1;
        }
        child.wait().unwrap();
    }
    // Faults stop: those still queued are dropped (left to the next runs, they could outlast a
    // few runs' retry budgets, e.g. with CRASH_SEED=1795661765469882143). A run left alone
    // finishes (a retry or two for the tenant's own 429s and a killed run's leftovers).
    let left = sim.clear_faults();
    eprintln!("{injected} faults injected, {left} not served before the faults stopped");
    let mut status = spawn().wait().unwrap();
    for _ in 0..3 {
        if status.success() {
            break;
        }
        status = spawn().wait().unwrap();
    }
    assert!(status.success(), "final run failed: {status}");
    assert!(kills >= 5, "only {kills} kills");

    let store = h.store();
    let cp = store.checkpoint("src").unwrap().unwrap();
    assert!(cp.in_flight.is_none());
    let jobs = store.jobs(Some("src")).unwrap();
    let start = jobs.iter().filter_map(|j| j.window_start).min().unwrap();
    let expected = sim
        .model()
        .expected(start, cp.cursor.unwrap(), chrono::Utc::now());
    let (missing, extra, dups) = compare(&h.identities(), &expected);
    let stats = sim.stats();
    let retries: u64 = jobs.iter().map(|j| j.retries).sum();
    let requeries: u32 = jobs
        .iter()
        .flat_map(|j| j.tasks.iter())
        .map(|t| t.requeries)
        .sum();
    let reschedules: u32 = jobs
        .iter()
        .flat_map(|j| j.tasks.iter())
        .map(|t| t.reschedules)
        .sum();
    eprintln!(
        "mixed faults: {} expected rows, {missing} missing, {extra} extra, {dups} duplicates; {kills} SIGKILLs, {injected} faults injected, {} requests, {retries} retries, {} 429s, {requeries} re-queried windows, {reschedules} rescheduled tasks, {} jobs",
        expected.len(),
        stats.data_requests,
        stats.throttled,
        jobs.len()
    );
    assert_eq!((missing, extra), (0, 0));
    assert!(
        dups <= kills * page_size as usize,
        "{dups} duplicates: more than one page per kill"
    );
}
