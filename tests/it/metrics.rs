//! `metrics_listen`: `/metrics` shows the counters moving during a run, `/health` answers.

use crate::common::*;
use std::time::{Duration, Instant};

/// The value of one sample line (`name{labels} value`), 0 if absent.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

#[test]
fn metrics_move_during_a_run_and_health_answers() {
    let h = Harness::graph()
        .rate(120)
        .sim(|c| c.page_latency_ms = 60)
        .window(&hours_ago(8), &hours_ago(1))
        .page_size(50)
        .build();
    let (toml, addr) = served_config(&h, "moving");
    let cfg = parse(&toml);
    let run = std::thread::spawn(move || run_once(&cfg, opts()));

    let rows = "msgtrace_rows_total{source=\"moving\"}";
    let pages = "msgtrace_pages_total{source=\"moving\"}";
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    let mut healthy = false;
    while !run.is_finished() && Instant::now() < deadline {
        if let Some((200, body)) = http_get(&addr, "/metrics") {
            let p = sample(&body, pages);
            if p > 0.0 && seen.last() != Some(&p) {
                seen.push(p);
                assert!(sample(&body, rows) > 0.0, "{body}");
                assert!(
                    sample(&body, "msgtrace_response_bytes_total{source=\"moving\"}") > 0.0,
                    "{body}"
                );
                // The test config's budget is 100000 per second: plenty left.
                assert!(
                    sample(&body, "msgtrace_quota_remaining{source=\"moving\"}") > 1000.0,
                    "{body}"
                );
                // Process-wide, and the other tests of this file run engines of their own
                // meanwhile: at least this engine's one token.
                assert!(
                    sample(&body, "msgtrace_token_requests_total") >= 1.0,
                    "{body}"
                );
                assert!(
                    body.contains("msgtrace_source_running{source=\"moving\"} 1"),
                    "{body}"
                );
            }
        }
        if let Some((200, body)) = http_get(&addr, "/health") {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["status"], "ok");
            assert_eq!(v["sources"][0]["source"], "moving");
            healthy = true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let report = run.join().unwrap();
    assert!(report.all_succeeded(), "{report:?}");
    assert!(healthy);
    assert!(
        seen.len() >= 3,
        "the page counter moved during the run: {seen:?}"
    );
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
    assert!(
        seen.last().copied().unwrap() <= report.jobs[0].1.pages as f64,
        "{seen:?} {report:?}"
    );
    // The endpoint stops with the engine.
    assert!(http_get(&addr, "/metrics").is_none());
}

/// The harness's configuration with `metrics_listen` on a free port and the source renamed to
/// `id` (the Prometheus recorder is the process's, shared by every test of the binary: each uses its own source).
fn served_config(h: &Harness, id: &str) -> (String, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let toml = h
        .toml
        .replace("[sources.src", &format!("[sources.{id}"))
        .replace("inputs = [\"src\"]", &format!("inputs = [\"{id}\"]"));
    (format!("metrics_listen = \"{addr}\"\n{toml}"), addr)
}

#[test]
fn health_is_degraded_while_a_source_fails_and_names_it() {
    // Every token request of this source is refused: every job fails on authentication.
    let h = Harness::graph()
        .sim(|c| c.client_secret = "another".into())
        .build();
    let (toml, addr) = served_config(&h, "refused");
    let handle = msgtrace::embed::EngineBuilder::from_toml(&toml)
        .unwrap()
        .start()
        .unwrap();
    // Before any job: nothing has failed yet.
    let (status, body) = http_get(&addr, "/health").expect("health answers");
    assert_eq!(status, 200, "{body}");
    let report = block_on(handle.run_once()).unwrap();
    assert!(!report.all_succeeded(), "{report:?}");

    let (status, body) = http_get(&addr, "/health").expect("health answers");
    assert_eq!(status, 503, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "degraded", "{body}");
    assert_eq!(v["failing"], serde_json::json!(["refused"]), "{body}");
    assert_eq!(v["sources"][0]["last_job"], "failed", "{body}");
    assert!(
        v["sources"][0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("AADSTS7000215")),
        "{body}"
    );
    block_on(handle.shutdown()).unwrap();
}

#[test]
fn every_metric_is_described_documented_and_there_before_the_first_event() {
    let h = Harness::graph().build();
    let (toml, addr) = served_config(&h, "idle");
    let handle = msgtrace::embed::EngineBuilder::from_toml(&toml)
        .unwrap()
        .start()
        .unwrap();
    // No job has run: the source's counters are there, at zero.
    let (status, body) = http_get(&addr, "/metrics").expect("metrics answer");
    block_on(handle.shutdown()).unwrap();
    assert_eq!(status, 200, "{body}");
    for series in [
        "msgtrace_rows_total{source=\"idle\"}",
        "msgtrace_pages_total{source=\"idle\"}",
        "msgtrace_response_bytes_total{source=\"idle\"}",
        "msgtrace_retries_total{source=\"idle\"}",
        "msgtrace_throttled_total{source=\"idle\"}",
        "msgtrace_sink_refusals_total{source=\"idle\"}",
    ] {
        assert!(
            body.lines().any(|l| l == format!("{series} 0")),
            "{series} 0 missing:\n{body}"
        );
    }
    assert!(
        body.lines().any(|l| l.starts_with("msgtrace_jobs_total{")
            && l.contains("source=\"idle\"")
            && l.contains("state=\"failed\"")
            && l.ends_with(" 0")),
        "{body}"
    );
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        body.contains(&format!("msgtrace_build_info{{version=\"{version}\"}} 1")),
        "{body}"
    );
    // Every metric shown has its help line, and is in the operator's metrics table.
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md"))
        .unwrap();
    let names: std::collections::BTreeSet<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    assert!(names.len() >= 10, "{body}");
    for name in &names {
        assert!(
            body.lines()
                .any(|l| l.starts_with(&format!("# HELP {name} "))),
            "no # HELP for {name}:\n{body}"
        );
        assert!(
            docs.contains(&format!("`{name}`")),
            "{name} is not in docs/operations.md"
        );
    }
}

#[test]
fn the_last_success_is_shown_again_after_a_restart() {
    let h = Harness::graph().build();
    let (toml, addr) = served_config(&h, "restarted");
    // The first run in another process: this process's recorder never sees its job end.
    let cfg = h.path("c.toml");
    std::fs::write(&cfg, &toml).unwrap();
    assert!(spawn_run_once(&cfg).wait().unwrap().success());

    let handle = msgtrace::embed::EngineBuilder::from_toml(&toml)
        .unwrap()
        .start()
        .unwrap();
    let (_, body) = http_get(&addr, "/metrics").expect("metrics answer");
    let jobs = block_on(handle.jobs(Some("restarted"))).unwrap();
    block_on(handle.shutdown()).unwrap();
    let finished = jobs[0].finished_at.expect("the job finished");
    let expected = finished.timestamp_millis() as f64 / 1e3;
    let shown = sample(
        &body,
        "msgtrace_last_success_timestamp_seconds{source=\"restarted\"}",
    );
    assert!(
        (shown - expected).abs() < 0.002,
        "{shown} vs {expected}:\n{body}"
    );
}
