//! Crash test: the collector runs as a child process and is killed with SIGKILL at random
//! moments, then restarted, many times over one collection. At the end every expected row is
//! present; duplicates come only from pages in flight at a kill (at most one page per kill).

use crate::common::*;
use msgtrace::actors::dialect::Api;
use msgtrace::storage::Store;
use std::time::{Duration, Instant};

fn crash_run(api: Api, kills_wanted: u32) {
    let page_size = 100;
    let sim = sim(200, |c| c.page_latency_ms = 40);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.ndjson");
    let state = dir.path().join("state");
    let cfg_path = dir.path().join("msgtrace.toml");
    std::fs::write(
        &cfg_path,
        config_toml(
            &sim,
            &Scenario {
                api,
                state_dir: &state,
                out: &out,
                start: "-2d@h",
                end: "-1h@h",
                page_size,
                extra: "",
            },
        ),
    )
    .unwrap();
    let mut rng = Rng::seeded("crash test");
    let spawn = || spawn_run_once(&cfg_path);
    let started = Instant::now();
    let mut kills = 0;
    let mut finished_early = 0;
    while kills < kills_wanted && started.elapsed() < Duration::from_secs(120) {
        let mut child = spawn();
        std::thread::sleep(Duration::from_millis(rng.range(80, 400)));
        match child.try_wait().unwrap() {
            Some(status) => {
                // The collection finished before the kill: nothing left to interrupt.
                assert!(status.success(), "child failed on its own: {status}");
                finished_early += 1;
                break;
            }
            None => {
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
                kills += 1;
            }
        }
    }
    // The last run, left alone, finishes the collection.
    let status = spawn().wait().unwrap();
    assert!(status.success(), "final run failed: {status}");
    assert_eq!(
        finished_early, 0,
        "collection ended before {kills_wanted} kills; make it longer"
    );
    assert!(kills >= kills_wanted, "only {kills} kills");

    let store = Store::open(&state).unwrap();
    let cp = store.checkpoint("src").unwrap().expect("checkpoint");
    assert!(cp.in_flight.is_none());
    let jobs = store.jobs(Some("src")).unwrap();
    let start = jobs
        .iter()
        .filter_map(|j| j.window_start)
        .min()
        .expect("a job had a window");
    let end = cp.cursor.expect("cursor");
    let expected = sim.model().expected(start, end, chrono::Utc::now());
    let got = identities(&out, api);
    let (missing, extra, dups) = compare(&got, &expected);
    eprintln!(
        "crash test ({api:?}): {kills} SIGKILLs, {} expected rows, {missing} missing, {extra} extra, {dups} duplicates (pages in flight at a kill), {} jobs",
        expected.len(),
        jobs.len()
    );
    assert_eq!((missing, extra), (0, 0));
    assert!(
        dups <= kills as usize * page_size as usize,
        "{dups} duplicates is more than one page per kill"
    );
}

#[test]
fn sigkill_at_random_moments_loses_no_row_graph() {
    crash_run(Api::Graph, 20);
}

#[test]
fn sigkill_at_random_moments_loses_no_row_reporting() {
    crash_run(Api::Reporting, 10);
}
