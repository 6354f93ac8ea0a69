//! Engine lifecycle: graceful shutdown on SIGTERM, and jobs that outlive their tokens.

use crate::common::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn sigterm_finishes_the_page_in_flight_flushes_state_and_exits_0() {
    let h = Harness::graph()
        .rate(100)
        .sim(|c| c.page_latency_ms = 50)
        .window("-2d@h", "-1h@h")
        .page_size(50)
        .build();
    let (out, cfg) = (&h.out, h.write_config());
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
    let lines = std::fs::read_to_string(out).unwrap().lines().count() as u64;
    {
        let store = h.store();
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
    let store = h.store();
    let jobs = store.jobs(Some("src")).unwrap();
    let start = jobs.iter().filter_map(|j| j.window_start).min().unwrap();
    let end = store.checkpoint("src").unwrap().unwrap().cursor.unwrap();
    let expected = h.sim().model().expected(start, end, chrono::Utc::now());
    assert_eq!(compare(&h.identities(), &expected), (0, 0, 0));
}

#[test]
fn a_job_spanning_many_token_lifetimes_completes_with_refreshes_not_failures() {
    let h = Harness::graph()
        .sim(|c| {
            c.token_lifetime_secs = 1;
            c.page_latency_ms = 120;
        })
        .window("-1d@h", "-1h@h")
        .page_size(60)
        .build();
    let t0 = Instant::now();
    let report = h.run_once();
    let took = t0.elapsed();
    assert!(report.all_succeeded(), "{report:?}");
    h.assert_exactly_once(&report);
    let stats = h.sim().stats();
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
    let h = Harness::graph()
        .sim(|c| c.page_latency_ms = 40)
        .window("-1d@h", "-1h@h")
        .build();
    let cfg = h.config();
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
    let jobs = h.store().jobs(Some("src")).unwrap();
    assert_eq!(jobs.len(), 1, "no second job was started: {jobs:?}");
    h.assert_exactly_once(&report);
}

#[test]
fn a_backfill_asked_while_a_job_runs_waits_for_it_and_then_runs() {
    use msgtrace::actors::fetcher::Backfill;
    use msgtrace::actors::supervisor::{GetStatus, RunAll, RunBackfill};
    use msgtrace::storage::{JobKind, JobState};
    let h = Harness::graph()
        .sim(|c| c.page_latency_ms = 40)
        .window("-1d@h", "-1h@h")
        .build();
    let cfg = h.config();
    let now = chrono::Utc::now();
    let hour =
        |h: i64| chrono::DateTime::from_timestamp((now.timestamp() / 3600 - h) * 3600, 0).unwrap();
    let backfill = Backfill {
        start: hour(72),
        end: hour(48),
    };
    let (collected, backfilled) = actix_rt::System::new().block_on(async move {
        let engine = msgtrace::engine::start(&cfg, &opts(), Vec::new()).unwrap();
        let sup = engine.supervisor.clone();
        let run = actix_rt::spawn(sup.send(RunAll {
            kind: JobKind::Once,
        }));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            sup.send(GetStatus).await.unwrap()[0].running,
            "the first job runs"
        );
        let backfilled = sup
            .send(RunBackfill {
                source: "src".into(),
                backfill,
            })
            .await
            .unwrap();
        let collected = run.await.unwrap().unwrap();
        engine.stop().await.unwrap();
        (collected, backfilled)
    });
    assert!(collected.all_succeeded(), "{collected:?}");
    assert_eq!(collected.jobs.len(), 1, "{collected:?}");
    assert_eq!(backfilled.jobs.len(), 1, "{backfilled:?}");
    let (ran, job) = &backfilled.jobs[0];
    assert_eq!((ran.as_str(), job.state), ("src", JobState::Succeeded));
    assert_ne!(job.job_id, collected.jobs[0].1.job_id, "its own job");
    assert!(job.rows > 0, "{job:?}");
    let jobs = h.store().jobs(Some("src")).unwrap();
    let kinds: Vec<JobKind> = jobs.iter().map(|j| j.kind).collect();
    assert_eq!(kinds.len(), 2, "{jobs:?}");
    assert!(
        kinds.contains(&JobKind::Backfill) && kinds.contains(&JobKind::Once),
        "{kinds:?}"
    );
    assert!(
        jobs.iter().all(|j| j.state == JobState::Succeeded),
        "{jobs:?}"
    );
}

#[test]
fn a_tick_that_comes_while_a_backfill_runs_runs_its_job_once_the_backfill_ends() {
    use msgtrace::actors::fetcher::Backfill;
    use msgtrace::actors::scheduler::Due;
    use msgtrace::actors::supervisor::{RunBackfill, StartSchedules};
    use msgtrace::storage::{JobKind, JobState};
    let h = Harness::graph()
        .sim(|c| c.page_latency_ms = 40)
        .window("-1d@h", "-1h@h")
        // No tick of its own during the test: the one sent below is the only one.
        .extra("schedule = \"0 0 1 1 *\"")
        .build();
    let cfg = h.config();
    let now = chrono::Utc::now();
    let hour =
        |h: i64| chrono::DateTime::from_timestamp((now.timestamp() / 3600 - h) * 3600, 0).unwrap();
    let backfill = Backfill {
        start: hour(72),
        end: hour(48),
    };
    let jobs = actix_rt::System::new().block_on(async move {
        let engine = msgtrace::engine::start(&cfg, &opts(), Vec::new()).unwrap();
        let sup = engine.supervisor.clone();
        sup.send(StartSchedules).await.unwrap();
        let asked = actix_rt::spawn(sup.send(RunBackfill {
            source: "src".into(),
            backfill,
        }));
        let kind_running = |kind: JobKind| {
            let store = engine.store.clone();
            async move {
                let end = Instant::now() + Duration::from_secs(60);
                loop {
                    let jobs = store.jobs(Some("src")).unwrap();
                    if jobs
                        .iter()
                        .any(|j| j.kind == kind && j.state == JobState::Running)
                    {
                        return;
                    }
                    assert!(Instant::now() < end, "no {kind:?} job runs: {jobs:?}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        kind_running(JobKind::Backfill).await;
        sup.send(Due {
            source: "src".into(),
            scheduled_for: chrono::Utc::now(),
        })
        .await
        .unwrap();
        let report = asked.await.unwrap().unwrap();
        assert!(
            report.all_succeeded() && report.jobs.len() == 1,
            "{report:?}"
        );
        // The tick's job, after the backfill.
        let end = Instant::now() + Duration::from_secs(60);
        while engine.store.jobs(Some("src")).unwrap().len() < 3 {
            assert!(Instant::now() < end, "the tick's job never ran");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let store = engine.store.clone();
        engine.stop().await.unwrap();
        let mut jobs = store.jobs(Some("src")).unwrap();
        jobs.sort_by_key(|j| j.started_at);
        jobs
    });
    let kinds: Vec<JobKind> = jobs.iter().map(|j| j.kind).collect();
    assert_eq!(
        kinds,
        [JobKind::Scheduled, JobKind::Backfill, JobKind::Scheduled],
        "{jobs:?}"
    );
    assert!(
        jobs[2].started_at >= jobs[1].finished_at.unwrap(),
        "{jobs:?}"
    );
    assert!(
        jobs.iter().all(|j| j.state == JobState::Succeeded),
        "{jobs:?}"
    );
}
