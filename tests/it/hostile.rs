//! What a hostile or broken API server can do, and what it can no longer: send a credential to
//! another host, pass a cut body for a whole page, fill memory with rows never asked for, loop
//! its next links, stall a tenant with a long `Retry-After`, or block a source with one bad row.
//! Each test reproduces a defect of the hardening issue (they failed before its fixes).

use crate::common::*;
use actix_web::HttpResponse;
use msgtrace::actors::dialect::format_timestamp;
use msgtrace::storage::JobState;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

/// Quick retries, and a failed task not rescheduled, so that requests can be counted.
const FAST_RETRY: &str =
    "reschedule_tasks = false\n[sources.src.retry]\ninitial_interval_ms = 10\nlimit = 1";

/// The window: an hour two days ago (within what the API keeps).
fn window() -> (i64, i64) {
    let start: i64 = hours_ago(48).parse().unwrap();
    (start, start + 3600)
}

/// `n` Graph rows `{prefix}-{i}`, newest first, the first `age` seconds before the window ends.
fn rows(prefix: &str, n: usize, age: i64) -> Vec<serde_json::Value> {
    let (_, end) = window();
    (0..n)
        .map(|i| {
            let t = chrono::DateTime::from_timestamp(end - age - i as i64, 0).unwrap();
            serde_json::json!({
                "id": format!("{prefix}-{i}"),
                "recipientAddress": "a@contoso.com",
                "receivedDateTime": format_timestamp(t),
                "status": "Delivered",
            })
        })
        .collect()
}

fn page(rows: Vec<serde_json::Value>, next: Option<String>) -> String {
    let mut p = serde_json::json!({ "value": rows });
    if let Some(n) = next {
        p["@odata.nextLink"] = n.into();
    }
    p.to_string()
}

/// The page number of a `p=N` query (1 without one).
fn page_number(query: &str) -> u32 {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix("p="))
        .and_then(|p| p.parse().ok())
        .unwrap_or(1)
}

fn json(body: String) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(body)
}

/// The one job of a run's report.
fn the_job(
    report: &msgtrace::actors::supervisor::RunReport,
) -> &msgtrace::actors::fetcher::JobSummary {
    assert_eq!(report.jobs.len(), 1, "{report:?}");
    &report.jobs[0].1
}

fn ids(out: &std::path::Path) -> Vec<String> {
    if !out.exists() {
        return Vec::new();
    }
    output_ids(out)
}

/// A raw HTTP/1.1 server on `bind`: each request's head is recorded, and `answer(method,
/// target)` gives the bytes to send back and whether to close the connection after them, so
/// that a test can send what no well-behaved server would.
fn raw_server(
    bind: &str,
    answer: impl Fn(&str, &str) -> (Vec<u8>, bool) + Send + Sync + 'static,
) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind(bind).unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let heads: Arc<Mutex<Vec<String>>> = Arc::default();
    let answer = Arc::new(answer);
    let recorded = heads.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let (heads, answer) = (recorded.clone(), answer.clone());
            std::thread::spawn(move || serve_raw(conn, &heads, &*answer));
        }
    });
    (base, heads)
}

/// What a raw server sends for (method, target): the bytes, and whether to close after them.
type Answer = dyn Fn(&str, &str) -> (Vec<u8>, bool);

fn serve_raw(mut conn: TcpStream, heads: &Mutex<Vec<String>>, answer: &Answer) {
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match conn.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        while buf.len() < head_end + length {
            let mut chunk = [0u8; 4096];
            match conn.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..head_end + length);
        let mut first = head.lines().next().unwrap_or("").split(' ');
        let (method, target) = (
            first.next().unwrap_or("").to_owned(),
            first.next().unwrap_or("").to_owned(),
        );
        heads.lock().unwrap().push(head);
        let (bytes, close) = answer(&method, &target);
        if conn.write_all(&bytes).is_err() || close {
            let _ = conn.shutdown(std::net::Shutdown::Both);
            return;
        }
    }
}

/// A whole 200 response with this JSON body, keeping the connection.
fn raw_ok(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The token endpoint of `fake_api_toml`'s configuration, raw.
fn raw_token(method: &str, target: &str) -> Option<(Vec<u8>, bool)> {
    (method == "POST" && target.starts_with("/t/oauth2/v2.0/token")).then(|| {
        (
            raw_ok(r#"{"token_type":"Bearer","expires_in":3600,"access_token":"tok"}"#),
            false,
        )
    })
}

fn query_of(target: &str) -> &str {
    target.split_once('?').map_or("", |(_, q)| q)
}

#[test]
fn a_next_link_to_another_origin_is_never_requested_and_gets_no_credential() {
    // The foreign host: any request that reaches it is recorded.
    let (foreign, foreign_heads) =
        raw_server("127.0.0.2:0", |_, _| (raw_ok(r#"{"value":[]}"#), false));
    for api in ["graph", "reporting"] {
        let foreign = foreign.clone();
        let (base, handle) = fake_api(move |query| {
            let rows = rows(&format!("p{}", page_number(query)), 100, 10);
            json(page(
                rows,
                Some(format!("{foreign}/graph?p=2&$skiptoken=x")),
            ))
        });
        let mut h = Harness::fake(&base, window(), FAST_RETRY);
        if api == "reporting" {
            // The same server, as the Reporting Web Service with a password.
            let toml = h
                .toml
                .replace("[sources.src]\n", "[sources.src]\napi = \"reporting\"\n")
                .replace(
                    "method = \"oauth\"\ntenant_id = \"t\"\nclient_id = \"c\"\nclient_secret = \"s\"\n",
                    "method = \"basic\"\nusername = \"user@contoso.com\"\npassword = \"hunter2\"\n",
                );
            h.toml = toml
                .lines()
                .filter(|l| !l.starts_with("login_url"))
                .collect::<Vec<_>>()
                .join("\n");
        }
        let report = h.run_once();
        block_on(handle.stop(false));
        let job = the_job(&report);
        assert_eq!(job.state, JobState::Failed, "{api}: {job:?}");
        let error = job.error.clone().unwrap_or_default();
        assert!(error.contains("leads away from"), "{api}: {error}");
        assert!(
            !error.contains("skiptoken"),
            "{api}: the link's query is not shown: {error}"
        );
        assert!(
            foreign_heads.lock().unwrap().is_empty(),
            "{api}: the foreign host was asked: {:?}",
            foreign_heads.lock().unwrap()
        );
        let cp = h.store().checkpoint("src").unwrap();
        assert!(
            cp.as_ref().is_none_or(|c| c.cursor.is_none()),
            "{api}: the cursor must not move past rows never collected: {cp:?}"
        );
    }
}

/// A 200 whose body is valid JSON without a next link, but shorter than its Content-Length (the
/// server closed the connection), then the real page on the next try.
#[test]
fn a_body_cut_short_is_retried_not_taken_for_the_last_page() {
    cut_body_then_whole(|body| {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len() + 4096
        )
        .into_bytes()
    });
}

/// The same with a chunked body whose last (empty) chunk never comes (awc ends such a body
/// without an error when the connection closes: see `actors/src/eof.rs`).
#[test]
fn a_chunked_body_without_its_last_chunk_is_retried() {
    cut_body_then_whole(|body| {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n",
            body.len()
        )
        .into_bytes()
    });
}

fn cut_body_then_whole(cut: fn(&str) -> Vec<u8>) {
    let asked = Arc::new(Mutex::new(0u32));
    let counter = asked.clone();
    let base: Arc<Mutex<String>> = Arc::default();
    let link_base = base.clone();
    let (url, _heads) = raw_server("127.0.0.1:0", move |method, target| {
        if let Some(t) = raw_token(method, target) {
            return t;
        }
        let n = page_number(query_of(target));
        let rows = rows(&format!("p{n}"), 100, i64::from(n) * 200);
        if n == 1 {
            let mut asked = counter.lock().unwrap();
            *asked += 1;
            if *asked == 1 {
                // What arrived parses, and has no next link: the trap.
                return (cut(&page(rows, None)), true);
            }
        }
        let next = (n < 3).then(|| format!("{}/graph?p={}", link_base.lock().unwrap(), n + 1));
        (raw_ok(&page(rows, next)), false)
    });
    *base.lock().unwrap() = url.clone();
    let h = Harness::fake(&url, window(), FAST_RETRY);
    let report = h.run_once();
    assert!(report.all_succeeded(), "{report:?}");
    assert_eq!(*asked.lock().unwrap(), 2, "the cut page is asked again");
    let mut got = ids(&h.out);
    got.sort();
    let mut want: Vec<String> = (1..=3)
        .flat_map(|n| (0..100).map(move |i| format!("p{n}-{i}")))
        .collect();
    want.sort();
    assert_eq!(got, want, "every row of the three pages exactly once");
}

#[test]
fn a_page_of_more_rows_than_asked_for_is_refused() {
    // page_size 100; the server sends 200,000 empty rows (`{}`), as in the report of the defect
    // (there 22 million of them took 16 GB and were delivered as events).
    let body = Arc::new(format!(
        r#"{{"value":[{}]}}"#,
        vec!["{}"; 200_000].join(",")
    ));
    let (base, handle) = fake_api(move |_| json(body.to_string()));
    let h = Harness::fake(&base, window(), &format!("page_size = 100\n{FAST_RETRY}"));
    let report = h.run_once();
    block_on(handle.stop(false));
    let job = the_job(&report);
    assert_eq!(job.state, JobState::Failed, "{job:?}");
    let error = job.error.clone().unwrap_or_default();
    assert!(
        error.contains("more rows than the 100 asked for"),
        "{error}"
    );
    assert!(ids(&h.out).is_empty(), "no event was made of it");
}

/// Page 1 → 2 → 3 → 2 → …: each link of a query is followed once. The server ignores the filter,
/// so each re-query sends the same pages again; rows already delivered are not delivered again.
#[test]
fn a_next_link_cycle_ends_with_every_row_once() {
    let asked = Arc::new(Mutex::new(0u32));
    let counter = asked.clone();
    let base: Arc<Mutex<String>> = Arc::default();
    let link_base = base.clone();
    let (url, handle) = fake_api(move |query| {
        *counter.lock().unwrap() += 1;
        // The first page leads to 2, 2 to 3, and 3 back to 2.
        let n = page_number(query);
        let next = if n == 3 { 2 } else { n + 1 };
        let rows = rows(&format!("p{n}"), 100, i64::from(n) * 200);
        json(page(
            rows,
            Some(format!("{}/graph?p={next}", link_base.lock().unwrap())),
        ))
    });
    *base.lock().unwrap() = url.clone();
    // Bounded for the code before the fix, which looped until the job's time ran out.
    let h = Harness::fake(
        &url,
        window(),
        &format!("job_timeout = \"30s\"\n{FAST_RETRY}"),
    );
    let report = h.run_once();
    block_on(handle.stop(false));
    let job = the_job(&report);
    assert_eq!(job.state, JobState::Failed, "{job:?}");
    assert!(
        job.error.as_deref().unwrap_or("").contains("abandoned"),
        "{job:?}"
    );
    let got = ids(&h.out);
    let distinct: std::collections::HashSet<_> = got.iter().collect();
    assert_eq!(distinct.len(), 300, "the three pages' rows");
    assert_eq!(got.len(), 300, "each once: {} lines", got.len());
    assert!(
        *asked.lock().unwrap() < 40,
        "{} requests",
        asked.lock().unwrap()
    );
}

#[test]
fn endless_distinct_links_to_empty_pages_end() {
    let asked = Arc::new(Mutex::new(0u32));
    let counter = asked.clone();
    let base: Arc<Mutex<String>> = Arc::default();
    let link_base = base.clone();
    let (url, handle) = fake_api(move |query| {
        *counter.lock().unwrap() += 1;
        let n = page_number(query);
        json(page(
            Vec::new(),
            Some(format!("{}/graph?p={}", link_base.lock().unwrap(), n + 1)),
        ))
    });
    *base.lock().unwrap() = url.clone();
    let h = Harness::fake(
        &url,
        window(),
        &format!("job_timeout = \"60s\"\n{FAST_RETRY}"),
    );
    let report = h.run_once();
    block_on(handle.stop(false));
    let job = the_job(&report);
    assert_eq!(job.state, JobState::Failed, "{job:?}");
    assert!(
        job.error.as_deref().unwrap_or("").contains("abandoned"),
        "{job:?}"
    );
    let asked = *asked.lock().unwrap();
    // Four queries (the first and three re-queries) of 100 pages, and the pages fetched ahead.
    assert!(asked <= 4 * (100 + 3), "{asked} requests");
}

/// `Retry-After: 100000` (27.8 hours) once held the tenant that long after one request, while the
/// log said "retrying page delay_ms=200". One rule now: up to 20 s it is honoured, longer it is
/// ignored, by the page's retries and by the tenant's budget alike, so the run ends.
#[test]
fn a_long_retry_after_does_not_stall_the_tenant() {
    let asked = Arc::new(Mutex::new(0u32));
    let counter = asked.clone();
    let (url, handle) = fake_api(move |_| {
        *counter.lock().unwrap() += 1;
        HttpResponse::TooManyRequests()
            .insert_header(("Retry-After", "100000"))
            .content_type("application/json")
            .body(r#"{"error":{"code":"TooManyRequests","message":"slow down"}}"#)
    });
    // The job's time bounds the code before the fix, which waited for the Retry-After.
    let h = Harness::fake(
        &url,
        window(),
        "job_timeout = \"30s\"\nreschedule_tasks = false\n[sources.src.retry]\ninitial_interval_ms = 20\nlimit = 3",
    );
    let report = h.run_once();
    block_on(handle.stop(false));
    let job = the_job(&report);
    assert_eq!(
        job.state,
        JobState::Failed,
        "the page's retries end the job, not its timeout: {job:?}"
    );
    assert!(
        job.error.as_deref().unwrap_or("").contains("429"),
        "{job:?}"
    );
    assert_eq!(*asked.lock().unwrap(), 4, "the first try and three retries");
}

/// One byte that is not UTF-8, a row without a date and a row without an identity, among good
/// rows: the page is delivered, those rows flagged `__isBroken`, the others as they are.
#[test]
fn bad_rows_are_delivered_flagged_and_never_block_the_rows_around_them() {
    let mut good = rows("g", 3, 10);
    let mut no_date = good[1].clone();
    no_date["id"] = "no-date".into();
    no_date["receivedDateTime"] = serde_json::Value::Null;
    let mut no_id = good[1].clone();
    no_id.as_object_mut().unwrap().remove("id");
    no_id["subject"] = "no id".into();
    good.insert(1, no_date);
    good.insert(2, no_id);
    let mut bad_byte = good[0].clone();
    bad_byte["id"] = "bad-byte".into();
    bad_byte["subject"] = "caf@".into();
    good.push(bad_byte);
    let text = page(good, None);
    let body: Vec<u8> = {
        let at = text.find("caf@").unwrap() + 3;
        let mut b = text.into_bytes();
        b[at] = 0xE9; // Latin-1 é: not UTF-8
        b
    };
    let (url, handle) = fake_api(move |_| {
        HttpResponse::Ok()
            .content_type("application/json")
            .body(body.clone())
    });
    let h = Harness::fake(&url, window(), "");
    let report = h.run_once();
    block_on(handle.stop(false));
    assert!(report.all_succeeded(), "{report:?}");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&h.out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 6, "{lines:?}");
    for line in &lines {
        let id = line["id"].as_str().unwrap_or("(none)");
        let broken = line.get("__isBroken") == Some(&serde_json::Value::Bool(true));
        let should = matches!(id, "no-date" | "(none)" | "bad-byte");
        assert_eq!(broken, should, "{line}");
        if id == "bad-byte" {
            assert_eq!(line["subject"], "caf\u{FFFD}");
        }
    }
}

#[test]
fn a_backfill_older_than_the_api_keeps_fails() {
    let (url, handle) = fake_api(|_| json(page(Vec::new(), None)));
    let h = Harness::fake(&url, window(), "");
    let cfg = h.write_config();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_msgtrace"))
        .args(["backfill", "-c"])
        .arg(&cfg)
        .args(["--source", "src", "--start", "-120d@d", "--end", "-100d@d"])
        .env("MSGTRACE_LOG", "error")
        .output()
        .unwrap();
    block_on(handle.stop(false));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("older than the API keeps"), "{stderr}");
}

/// SIGTERM while the only sink's receiver is down: the page it holds is abandoned (not
/// checkpointed, delivered by the next run) within seconds, not after the sink's 31 s of
/// retries: Kubernetes' grace is 30 s.
#[test]
fn sigterm_during_a_sink_outage_exits_within_seconds() {
    let (api, handle) = fake_api(|_| json(page(rows("p", 10, 10), None)));
    let (receiver, posts) = raw_server("127.0.0.1:0", |_, _| {
        (
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n".to_vec(),
            false,
        )
    });
    let mut h = Harness::fake(&api, window(), "");
    h.toml = h
        .toml
        .replace(
            "[sinks.out]\ntype = \"file\"\ninputs = [\"src\"]\n",
            &format!(
                "[sinks.out]\ntype = \"http\"\ninputs = [\"src\"]\nformat = \"ndjson\"\nurl = \"{receiver}/ingest\"\n"
            ),
        )
        .lines()
        .filter(|l| !l.starts_with("path = "))
        .collect::<Vec<_>>()
        .join("\n");
    let cfg = h.write_config();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_msgtrace"))
        .args(["run", "-c"])
        .arg(&cfg)
        .env("MSGTRACE_LOG", "error")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started =
        wait_for(|| !posts.lock().unwrap().is_empty() || child.try_wait().unwrap().is_some());
    assert!(
        started && child.try_wait().unwrap().is_none(),
        "the sink never posted"
    );
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let sent = std::time::Instant::now();
    // The sink alone would retry for about 31 s; well within 20 s is "within seconds".
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if sent.elapsed() > std::time::Duration::from_secs(20) {
            let _ = child.kill();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    block_on(handle.stop(false));
    assert!(status.is_some(), "still running 20 s after SIGTERM");
    let cp = h.store().checkpoint("src").unwrap();
    assert!(
        cp.as_ref().is_none_or(|c| c.cursor.is_none()),
        "the page no sink took must not be checkpointed: {cp:?}"
    );
}
