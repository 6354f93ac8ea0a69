//! Engine lifecycle: graceful shutdown on SIGTERM, and jobs that outlive their tokens.

use crate::common::*;
use msgtrace::actors::dialect::Api;
use msgtrace::storage::Store;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn sigterm_finishes_the_page_in_flight_flushes_state_and_exits_0() {
    let api = Api::Graph;
    let sim = sim(100, |c| c.page_latency_ms = 50);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.ndjson");
    let state = dir.path().join("state");
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        config_toml(
            &sim,
            &Scenario {
                api,
                state_dir: &state,
                out: &out,
                start: "-2d@h",
                end: "-1h@h",
                page_size: 50,
                extra: "",
            },
        ),
    )
    .unwrap();
    let bin = env!("CARGO_BIN_EXE_msgtrace");
    let mut child = Command::new(bin)
        .args(["run", "-c"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(child.try_wait().unwrap().is_none(), "still collecting");
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    // The page in flight was finished: the file and the checkpoint agree exactly.
    let lines = std::fs::read_to_string(&out).unwrap().lines().count() as u64;
    {
        let store = Store::open(&state).unwrap();
        let cp = store.checkpoint("src").unwrap().unwrap();
        assert!(cp.in_flight.is_some(), "stopped mid-window");
        assert_eq!(cp.rows_total, lines);
        let jobs = store.jobs(Some("src")).unwrap();
        assert_eq!(
            jobs[0].state,
            msgtrace::storage::JobState::Cancelled,
            "{jobs:?}"
        );
    }
    // A later run completes the window: every row exactly once.
    let o = Command::new(bin)
        .args(["run", "--once", "-c"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let store = Store::open(&state).unwrap();
    let jobs = store.jobs(Some("src")).unwrap();
    let start = jobs.iter().filter_map(|j| j.window_start).min().unwrap();
    let end = store.checkpoint("src").unwrap().unwrap().cursor.unwrap();
    let expected = sim.model().expected(start, end, chrono::Utc::now());
    assert_eq!(compare(&identities(&out, api), &expected), (0, 0, 0));
}

#[test]
fn a_job_spanning_many_token_lifetimes_completes_with_refreshes_not_failures() {
    let api = Api::Graph;
    let sim = sim(60, |c| {
        c.token_lifetime_secs = 1;
        c.page_latency_ms = 120;
    });
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.ndjson");
    let cfg = parse(&config_toml(
        &sim,
        &Scenario {
            api,
            state_dir: &dir.path().join("state"),
            out: &out,
            start: "-1d@h",
            end: "-1h@h",
            page_size: 60,
            extra: "",
        },
    ));
    let t0 = Instant::now();
    let report = run_once(&cfg, opts());
    let took = t0.elapsed();
    assert!(report.all_succeeded(), "{report:?}");
    assert_exactly_once(&sim, &report, &out, api);
    let stats = sim.stats();
    assert!(
        took >= Duration::from_secs(5),
        "the job spans 5+ token lifetimes ({took:?})"
    );
    assert!(stats.tokens_issued >= 5, "{stats:?}");
    assert_eq!(
        stats.client_errors, 0,
        "no 401 ever reached the API: {stats:?}"
    );
}

#[test]
fn a_tick_that_arrives_while_the_previous_run_is_going_is_skipped() {
    use msgtrace::actors::scheduler::Due;
    use msgtrace::actors::supervisor::{GetStatus, RunAll};
    let api = Api::Graph;
    let sim = sim(60, |c| c.page_latency_ms = 40);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.ndjson");
    let state = dir.path().join("state");
    let cfg = parse(&config_toml(
        &sim,
        &Scenario {
            api,
            state_dir: &state,
            out: &out,
            start: "-1d@h",
            end: "-1h@h",
            page_size: 100,
            extra: "",
        },
    ));
    let report = actix_rt::System::new().block_on(async move {
        let engine = msgtrace::engine::start(&cfg, &opts(), Vec::new()).unwrap();
        let sup = engine.supervisor.clone();
        let run = sup.send(RunAll {
            kind: msgtrace::storage::JobKind::Once,
        });
        let run = actix_rt::spawn(run);
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let status = sup.send(GetStatus).await.unwrap();
        assert!(status[0].running, "the first run is going");
        // Two ticks while it runs: both skipped.
        for _ in 0..2 {
            sup.send(Due {
                source: "src".into(),
                scheduled_for: chrono::Utc::now(),
            })
            .await
            .unwrap();
        }
        let report = run.await.unwrap().unwrap();
        engine.stop().await.unwrap();
        report
    });
    assert_eq!(report.jobs.len(), 1);
    let jobs = msgtrace::storage::Store::open(&state)
        .unwrap()
        .jobs(Some("src"))
        .unwrap();
    assert_eq!(jobs.len(), 1, "no second job was started: {jobs:?}");
    assert_exactly_once(&sim, &report, &out, api);
}
