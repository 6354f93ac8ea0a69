//! `metrics_listen`: `/metrics` shows the counters moving during a run, `/health` answers.

mod common;

use common::*;
use msgtrace::actors::dialect::Api;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// `GET path` on `addr`: (status, body), or `None` if nobody answers.
fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n")?.1.to_owned();
    Some((status, body))
}

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
    let sim = sim(120, |c| c.page_latency_ms = 60);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let toml = format!(
        "metrics_listen = \"{addr}\"\n{}",
        config_toml(
            &sim,
            &Scenario {
                api: Api::Graph,
                state_dir: &dir.path().join("state"),
                out: &dir.path().join("out.ndjson"),
                start: &hours_ago(8),
                end: &hours_ago(1),
                page_size: 50,
                extra: "",
            },
        )
    );
    let cfg = parse(&toml);
    assert!(msgtrace::engine::unimplemented_warnings(&cfg).is_empty());
    let run = std::thread::spawn(move || run_once(&cfg, opts()));

    let rows = "msgtrace_rows_total{source=\"src\"}";
    let pages = "msgtrace_pages_total{source=\"src\"}";
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    let mut healthy = false;
    while !run.is_finished() && Instant::now() < deadline {
        if let Some((200, body)) = get(&addr, "/metrics") {
            let p = sample(&body, pages);
            if p > 0.0 && seen.last() != Some(&p) {
                seen.push(p);
                assert!(sample(&body, rows) > 0.0, "{body}");
                assert!(
                    sample(&body, "msgtrace_response_bytes_total{source=\"src\"}") > 0.0,
                    "{body}"
                );
                // The test config's budget is 100000 per second: plenty left.
                assert!(
                    sample(&body, "msgtrace_quota_remaining{source=\"src\"}") > 1000.0,
                    "{body}"
                );
                assert!(body.contains("msgtrace_token_requests_total 1"), "{body}");
                assert!(
                    body.contains("msgtrace_source_running{source=\"src\"} 1"),
                    "{body}"
                );
            }
        }
        if let Some((200, body)) = get(&addr, "/health") {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["status"], "ok");
            assert_eq!(v["sources"][0]["source"], "src");
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
    assert!(get(&addr, "/metrics").is_none());
}
