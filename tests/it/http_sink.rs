//! The `http` sink end to end: a collection from the simulated tenant delivered to receivers on
//! 127.0.0.1 that check the request format the way Splunk HEC and Elasticsearch `_bulk` do.

use crate::common::*;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use msgtrace::actors::retry::{RetryKind, RetryPolicy};
use msgtrace::engine::EngineOptions;
use msgtrace::sinks::http::event_identity;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One request as the receiver saw it, body decompressed.
#[derive(Clone, Debug)]
struct Req {
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

/// What the receiver answers to the n-th request (0-based): status and body.
type Answer = Arc<dyn Fn(usize, &Req) -> (u16, String) + Send + Sync>;

/// An HTTP receiver on 127.0.0.1 that records every request.
struct Receiver {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Req>>>,
    handle: actix_web::dev::ServerHandle,
}

impl Receiver {
    fn start(addr: SocketAddr, answer: Answer) -> Receiver {
        let requests: Arc<Mutex<Vec<Req>>> = Arc::default();
        let seen = requests.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let system = actix_rt::System::new();
            let server = HttpServer::new(move || {
                let seen = seen.clone();
                let answer = answer.clone();
                App::new()
                    .app_data(web::PayloadConfig::new(64 << 20))
                    .default_service(web::to(move |req: HttpRequest, body: web::Bytes| {
                        let seen = seen.clone();
                        let answer = answer.clone();
                        async move {
                            let headers: HashMap<String, String> = req
                                .headers()
                                .iter()
                                .map(|(k, v)| {
                                    (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned())
                                })
                                .collect();
                            let body = if headers.get("content-encoding").map(String::as_str)
                                == Some("gzip")
                            {
                                let mut out = Vec::new();
                                flate2::read::GzDecoder::new(&body[..])
                                    .read_to_end(&mut out)
                                    .expect("a gzip body");
                                out
                            } else {
                                body.to_vec()
                            };
                            let r = Req { headers, body };
                            let n = {
                                let mut s = seen.lock().unwrap();
                                s.push(r.clone());
                                s.len() - 1
                            };
                            let (status, text) = answer(n, &r);
                            HttpResponse::build(
                                actix_web::http::StatusCode::from_u16(status).unwrap(),
                            )
                            .content_type("application/json")
                            .body(text)
                        }
                    }))
            })
            .workers(1)
            .bind(addr)
            .expect("receiver binds");
            let addr = server.addrs()[0];
            let server = server.run();
            tx.send((addr, server.handle())).unwrap();
            system.block_on(server).unwrap();
        });
        let (addr, handle) = rx.recv().unwrap();
        Receiver {
            addr,
            requests,
            handle,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn requests(&self) -> Vec<Req> {
        self.requests.lock().unwrap().clone()
    }

    fn stop(&self) {
        actix_rt::System::new().block_on(self.handle.stop(false));
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop();
    }
}

fn ok() -> Answer {
    Arc::new(|_, _| (200, "{}".into()))
}

/// Answers 503 "Server is busy" (as Splunk HEC does) to the requests `busy` picks by number
/// (0-based), 200 to the others.
fn busy_when(busy: impl Fn(usize) -> bool + Send + Sync + 'static) -> Answer {
    Arc::new(move |n, _| {
        if busy(n) {
            (503, r#"{"text":"Server is busy","code":9}"#.into())
        } else {
            (200, "{}".into())
        }
    })
}

/// Answers like Splunk HEC: the token, then every event object with `time` and `event`.
fn hec() -> Answer {
    Arc::new(|_, r: &Req| {
        if r.headers.get("authorization").map(String::as_str) != Some("Splunk hec-token") {
            return (401, r#"{"text":"Invalid token","code":4}"#.into());
        }
        for v in serde_json::Deserializer::from_slice(&r.body).into_iter::<Value>() {
            let Ok(v) = v else {
                return (400, r#"{"text":"Invalid data format","code":6}"#.into());
            };
            if !v["event"].is_object() {
                return (
                    400,
                    r#"{"text":"Event field is required","code":12}"#.into(),
                );
            }
            if !v["time"].is_number() {
                return (400, r#"{"text":"Invalid time","code":6}"#.into());
            }
        }
        (200, r#"{"text":"Success","code":0}"#.into())
    })
}

/// Answers like Elasticsearch `_bulk`: action line + document line pairs; `refuse(n)` makes the
/// n-th request's first item fail with a mapping error.
fn bulk(refuse: impl Fn(usize) -> bool + Send + Sync + 'static) -> Answer {
    Arc::new(move |n, r: &Req| {
        let text = std::str::from_utf8(&r.body).unwrap();
        if !text.ends_with('\n') {
            return (400, r#"{"error":{"type":"illegal_argument_exception","reason":"The bulk request must be terminated by a newline [\n]"},"status":400}"#.into());
        }
        let lines: Vec<&str> = text.lines().collect();
        if lines.len() & 1 == 1 {
            return (
                400,
                r#"{"error":{"reason":"Malformed action/metadata line"},"status":400}"#.into(),
            );
        }
        let mut items = Vec::new();
        for pair in lines.chunks(2) {
            let action: Value = serde_json::from_str(pair[0]).unwrap();
            let doc: Value = serde_json::from_str(pair[1]).unwrap();
            assert!(doc.is_object() && action["index"].is_object(), "{pair:?}");
            let id = action["index"]["_id"].as_str().unwrap_or_default();
            if refuse(n) && items.is_empty() {
                items.push(json!({"index": {"_id": id, "status": 400, "error": {"type": "mapper_parsing_exception", "reason": "failed to parse field [size]"}}}));
            } else {
                items.push(json!({"index": {"_id": id, "status": 201, "result": "created"}}));
            }
        }
        let errors = items.iter().any(|i| i["index"]["status"] != 201);
        (
            200,
            json!({"took": 1, "errors": errors, "items": items}).to_string(),
        )
    })
}

/// The events a receiver got, per format.
fn received_events(reqs: &[Req], format: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for r in reqs {
        match format {
            "json" => {
                let v: Vec<Value> = serde_json::from_slice(&r.body).expect("a JSON array");
                out.extend(v);
            }
            _ => {
                for v in serde_json::Deserializer::from_slice(&r.body).into_iter::<Value>() {
                    out.push(v.unwrap());
                }
            }
        }
    }
    out
}

fn identity(v: &Value) -> (String, String) {
    event_identity(v.as_object().unwrap()).expect("an identity")
}

/// A Graph tenant of 40 messages an hour over the seven hours before the current one, in pages
/// of 50, into the file sink `out` and (by [`config`]) an http sink `web`.
fn setup() -> Harness {
    Harness::graph()
        .rate(40)
        .window(&hours_ago(8), &hours_ago(1))
        .page_size(50)
        .build()
}

/// The harness's configuration (a file sink `out`) plus an http sink `web`.
fn config(s: &Harness, sink: &str) -> msgtrace::config::Config {
    config_with(s, sink, "")
}

/// [`config`] with more TOML lines for the source.
fn config_with(s: &Harness, sink: &str, extra: &str) -> msgtrace::config::Config {
    parse(&format!(
        "{}\n[sinks.web]\ntype = \"http\"\ninputs = [\"src\"]\n{sink}\n",
        s.toml_with(extra)
    ))
}

fn fast_retry(limit: u32) -> EngineOptions {
    EngineOptions {
        sink_retry: Some(RetryPolicy {
            kind: RetryKind::Backoff,
            initial: Duration::from_millis(20),
            limit,
            multiplier: 2.0,
            codes: vec![429, 500, 502, 503, 504],
            honor_retry_after: true,
            retry_connect_timeout: true,
            retry_connect_reset: true,
        }),
        ..opts()
    }
}

/// Every expected identity exactly once, the same set the file sink wrote.
fn assert_exactly_once(got: &[Value], s: &Harness) {
    let mut count: HashMap<(String, String), usize> = HashMap::new();
    for v in got {
        *count.entry(identity(v)).or_default() += 1;
    }
    let expected = s.expected();
    assert!(expected.len() > 150, "several pages: {}", expected.len());
    assert_eq!(
        compare(&count, &expected),
        (0, 0, 0),
        "missing, extra, duplicates"
    );
    let file = s.identities();
    assert_eq!(file.len(), expected.len());
}

#[test]
fn ndjson_in_batches_with_headers_and_bearer_token() {
    let s = setup();
    let rx = Receiver::start("127.0.0.1:0".parse().unwrap(), ok());
    let cfg = config(&s, &format!(
        "url = \"{}\"\nformat = \"ndjson\"\ntoken = \"t0k\"\nheaders = {{ \"X-Team\" = \"secops\" }}\nbatch = {{ max_rows = 20 }}",
        rx.url("/ingest")
    ));
    let report = run_once(&cfg, opts());
    assert!(report.all_succeeded(), "{report:?}");
    let reqs = rx.requests();
    for r in &reqs {
        assert_eq!(r.headers["content-type"], "application/x-ndjson");
        assert_eq!(r.headers["authorization"], "Bearer t0k");
        assert_eq!(r.headers["x-team"], "secops");
        assert!(!r.headers.contains_key("content-encoding"));
        let lines = r
            .body
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .count();
        assert!((1..=20).contains(&lines), "{lines} rows in one batch");
    }
    let events = received_events(&reqs, "ndjson");
    // Pages of 50 rows in batches of at most 20: three requests per full page.
    assert!(reqs.len() >= events.len() / 20, "{} requests", reqs.len());
    assert!(events.iter().all(|e| e["_time"].is_number()));
    assert!(events.iter().all(|e| e.get("__inputId").is_none()));
    assert_exactly_once(&events, &s);
}

#[test]
fn json_arrays_gzip_compressed() {
    let s = setup();
    let rx = Receiver::start("127.0.0.1:0".parse().unwrap(), ok());
    let cfg = config(&s, &format!(
        "url = \"{}\"\nformat = \"json\"\ncompression = \"gzip\"\nbatch = {{ max_rows = 1000, max_bytes = 20000 }}",
        rx.url("/ingest")
    ));
    let report = run_once(&cfg, opts());
    assert!(report.all_succeeded(), "{report:?}");
    let reqs = rx.requests();
    for r in &reqs {
        assert_eq!(r.headers["content-encoding"], "gzip");
        assert_eq!(r.headers["content-type"], "application/json");
        assert!(
            r.body.len() <= 20000 + 2000,
            "max_bytes holds: {}",
            r.body.len()
        );
    }
    assert_exactly_once(&received_events(&reqs, "json"), &s);
}

#[test]
fn splunk_hec_envelopes_with_token() {
    let s = setup();
    let rx = Receiver::start("127.0.0.1:0".parse().unwrap(), hec());
    let cfg = config(
        &s,
        &format!(
            "url = \"{}\"\nformat = \"splunk_hec\"\ntoken = \"hec-token\"",
            rx.url("/services/collector/event")
        ),
    );
    let report = run_once(&cfg, opts());
    assert!(report.all_succeeded(), "{report:?}");
    let envelopes = received_events(&rx.requests(), "hec");
    for v in &envelopes {
        assert_eq!(v["sourcetype"], "o365:messagetrace");
        assert_eq!(v["source"], "src");
        let t = v["time"].as_f64().unwrap();
        let received =
            chrono::DateTime::parse_from_rfc3339(v["event"]["receivedDateTime"].as_str().unwrap())
                .unwrap();
        assert!((t - received.timestamp_millis() as f64 / 1000.0).abs() < 0.001);
    }
    let events: Vec<Value> = envelopes.iter().map(|v| v["event"].clone()).collect();
    assert_exactly_once(&events, &s);

    // A wrong token is refused at once (no retries on 401), and the run fails.
    let s2 = setup();
    let cfg = config(
        &s2,
        &format!(
            "url = \"{}\"\nformat = \"splunk_hec\"\ntoken = \"wrong\"",
            rx.url("/services/collector/event")
        ),
    );
    let report = run_once(&cfg, opts());
    assert!(!report.all_succeeded());
    let err = report.jobs[0].1.error.clone().unwrap();
    assert!(err.contains("HTTP 401") && err.contains("token"), "{err}");
    assert!(!err.contains("wrong"), "the token is never shown: {err}");
}

#[test]
fn elasticsearch_bulk_ids_make_a_repeated_page_an_overwrite() {
    let s = setup();
    // The 4th request (a batch in the middle of the second page) is refused for good once:
    // the first run fails after delivering part of that page.
    let rx = Receiver::start("127.0.0.1:0".parse().unwrap(), bulk(|n| n == 3));
    let cfg = config_with(
        &s,
        &format!(
            "url = \"{}\"\nformat = \"elasticsearch_bulk\"\nbatch = {{ max_rows = 20 }}",
            rx.url("/msgtrace/_bulk")
        ),
        // The failed page waits for the next run instead of being retried within this one.
        "reschedule_tasks = false",
    );
    let first = run_once(&cfg, opts());
    assert!(!first.all_succeeded(), "{first:?}");
    let err = first.jobs[0].1.error.clone().unwrap();
    assert!(err.contains("mapper_parsing_exception"), "{err}");
    let second = run_once(&cfg, opts());
    assert!(second.all_succeeded(), "{second:?}");

    let mut docs: HashMap<String, Value> = HashMap::new();
    let mut actions = 0;
    for r in rx.requests() {
        assert_eq!(r.headers["content-type"], "application/x-ndjson");
        let text = String::from_utf8(r.body).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        for pair in lines.chunks(2) {
            actions += 1;
            let id = pair[0]["index"]["_id"].as_str().expect("an _id").to_owned();
            if let Some(before) = docs.insert(id.clone(), pair[1].clone()) {
                assert_eq!(identity(&before), identity(&pair[1]), "one _id, one row");
            }
        }
    }
    let expected = s.expected();
    assert!(actions > expected.len(), "part of a page was sent twice");
    let got: Vec<Value> = docs.into_values().collect();
    assert_exactly_once(&got, &s);
    let ids: HashSet<(String, String)> = got.iter().map(identity).collect();
    assert_eq!(ids.len(), expected.len());
}

#[test]
fn a_receiver_down_fails_the_run_and_the_next_run_delivers_every_row() {
    let s = setup();
    let port: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let cfg = config_with(
        &s,
        &format!(
            "url = \"http://{port}/ingest\"\nformat = \"ndjson\"\nbatch = {{ max_rows = 30 }}"
        ),
        "reschedule_tasks = false",
    );
    // Nobody listens: connection refused, retried, then the delivery fails.
    let down = run_once(&cfg, fast_retry(2));
    assert!(!down.all_succeeded(), "{down:?}");
    assert_eq!(down.jobs[0].1.pages, 0);
    let err = down.jobs[0].1.error.clone().unwrap();
    assert!(err.contains("after 2 retries"), "{err}");

    // Up, but answering 503 to its first three requests: retried within the run.
    let rx = Receiver::start(
        port,
        Arc::new(|n, _| {
            if n < 3 {
                (503, "{}".into())
            } else {
                (200, "{}".into())
            }
        }),
    );
    let up = run_once(&cfg, fast_retry(4));
    assert!(up.all_succeeded(), "{up:?}");
    let reqs = rx.requests();
    let events = received_events(&reqs[3..], "ndjson");
    assert_exactly_once(&events, &s);
}

#[test]
fn a_receiver_down_mid_collection_is_ridden_out_and_every_row_arrives() {
    let s = setup();
    let page_size = 50;
    // Pages of 50 rows in batches of 30: two requests per page. The receiver goes down twice
    // (503, by request number, 0-based):
    // - requests 4 and 5, the first batch of page 3: the sink's own retries (limit 2) ride it out;
    // - requests 13 to 16: the second batch of page 6 is refused three times, the sink gives up and
    //   the task fails; it is rescheduled (the default: once) from its checkpoint, so page 6 is
    //   fetched and sent again: its first batch is refused once more (16), then accepted.
    let down = |n: usize| (4..=5).contains(&n) || (13..=16).contains(&n);
    let rx = Receiver::start("127.0.0.1:0".parse().unwrap(), busy_when(down));
    let cfg = config(
        &s,
        &format!(
            "url = \"{}\"\nformat = \"ndjson\"\nbatch = {{ max_rows = 30 }}",
            rx.url("/ingest")
        ),
    );
    // After every commit: the rows the job has committed, and the distinct rows the receiver had
    // accepted by then.
    let commits: Arc<Mutex<Vec<(u64, usize)>>> = Arc::default();
    let hook: msgtrace::actors::supervisor::PageHook = {
        let (commits, requests) = (commits.clone(), rx.requests.clone());
        Arc::new(move |_, _, rows| {
            let accepted: Vec<Req> = requests
                .lock()
                .unwrap()
                .iter()
                .enumerate()
                .filter(|(n, _)| !down(*n))
                .map(|(_, r)| r.clone())
                .collect();
            let distinct: HashSet<(String, String)> = received_events(&accepted, "ndjson")
                .iter()
                .map(identity)
                .collect();
            commits.lock().unwrap().push((rows, distinct.len()));
        })
    };
    let report = run_once(
        &cfg,
        EngineOptions {
            page_hook: Some(hook),
            ..fast_retry(2)
        },
    );
    assert!(report.all_succeeded(), "{report:?}");

    let expected = s.expected();
    assert!(
        expected.len() > 8 * page_size,
        "pages after the outage: {} rows",
        expected.len()
    );
    // The checkpoint never moved past a row the receiver had not accepted.
    let commits = commits.lock().unwrap().clone();
    assert!(commits.len() > 8, "{commits:?}");
    for (committed, accepted) in &commits {
        assert!(
            *committed as usize <= *accepted,
            "committed {committed} rows, the receiver had {accepted}: {commits:?}"
        );
    }
    // The second outage went through the task's reschedule, and the job ended at the window's end.
    let store = s.store();
    let jobs = store.jobs(Some("src")).unwrap();
    let reschedules: u32 = jobs
        .iter()
        .flat_map(|j| &j.tasks)
        .map(|t| t.reschedules)
        .sum();
    assert_eq!(reschedules, 1, "{jobs:?}");
    let cp = store.checkpoint("src").unwrap().unwrap();
    assert!(cp.in_flight.is_none(), "{cp:?}");
    assert_eq!(
        cp.cursor.map(|c| c.timestamp().to_string()),
        Some(s.window().1.timestamp().to_string())
    );

    // Every row arrived. Rows sent twice are only the batch of page 6 accepted before its page
    // failed: the page is acknowledged as a whole, so the rescheduled task sends it again whole.
    let reqs = rx.requests();
    let accepted: Vec<Req> = reqs
        .iter()
        .enumerate()
        .filter(|(n, _)| !down(*n))
        .map(|(_, r)| r.clone())
        .collect();
    let mut count: HashMap<(String, String), usize> = HashMap::new();
    for v in received_events(&accepted, "ndjson") {
        *count.entry(identity(&v)).or_default() += 1;
    }
    let rows_of = |r: &Req| received_events(std::slice::from_ref(r), "ndjson").len();
    let (missing, extra, twice) = compare(&count, &expected);
    assert_eq!((missing, extra), (0, 0), "missing, extra");
    assert_eq!(twice, rows_of(&reqs[12]), "the first batch of page 6");
    assert!(twice <= page_size);
    // The file sink got page 6 twice too: a page goes to every sink together, and is committed only
    // when all of them have it.
    let file = s.identities();
    let (missing, extra, twice) = compare(&file, &expected);
    assert_eq!((missing, extra), (0, 0), "file: missing, extra");
    assert_eq!(
        twice,
        rows_of(&reqs[12]) + rows_of(&reqs[13]),
        "file: page 6"
    );
}

#[test]
fn a_scheduled_run_holds_a_refused_page_and_gives_it_again_only_to_the_sink_that_failed() {
    let s = setup();
    // Pages of 50 rows in batches of 30: two requests per page. Requests 5 to 10 (0-based) are
    // refused: the second batch of page 3, then (the sink retrying once) its own retry, then two
    // more deliveries of the held page. No task reschedule: the hold alone rides it out.
    let down = |n: usize| (5..=10).contains(&n);
    let rx = Receiver::start("127.0.0.1:0".parse().unwrap(), busy_when(down));
    let cfg = config_with(
        &s,
        &format!(
            "url = \"{}\"\nformat = \"ndjson\"\nbatch = {{ max_rows = 30 }}",
            rx.url("/ingest")
        ),
        "reschedule_tasks = false",
    );
    let expected = s.expected();
    let accepted = || -> Vec<Value> {
        let reqs = rx.requests();
        let ok: Vec<Req> = reqs
            .iter()
            .enumerate()
            .filter(|(n, _)| !down(*n))
            .map(|(_, r)| r.clone())
            .collect();
        received_events(&ok, "ndjson")
    };
    // `msgtrace run`: the schedule's first job starts at once.
    let handle = msgtrace::embed::EngineBuilder::new(cfg)
        .options(fast_retry(1))
        .scheduled(true)
        .start()
        .expect("engine starts");
    // The held page is given again within a second.
    wait_for(|| accepted().len() >= expected.len());
    block_on(handle.shutdown()).expect("shutdown");

    // All six refusals were served (the sink's try and retry, three times), and more after them.
    assert!(rx.requests().len() > 11, "{}", rx.requests().len());
    // The receiver has every row once: the batch of page 3 it had accepted was not sent again.
    assert_exactly_once(&accepted(), &s);
    // The file sink, which took page 3 at once, was not given it again either.
    let file = s.identities();
    assert_eq!(
        compare(&file, &expected),
        (0, 0, 0),
        "file: missing, extra, twice"
    );
    // One job, not failed, not rescheduled, its cursor at the window's end, the refusal recorded.
    let store = s.store();
    let jobs = store.jobs(Some("src")).unwrap();
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0].state, msgtrace::storage::JobState::Succeeded);
    assert_eq!(jobs[0].tasks.iter().map(|t| t.reschedules).sum::<u32>(), 0);
    assert!(
        jobs[0].errors.iter().any(|e| e.contains("held")),
        "{:?}",
        jobs[0].errors
    );
    let cp = store.checkpoint("src").unwrap().unwrap();
    assert_eq!(
        cp.cursor.map(|c| c.timestamp().to_string()),
        Some(s.window().1.timestamp().to_string())
    );
}

#[test]
fn shutdown_ends_the_hold_of_a_refused_page_and_the_next_run_delivers_it() {
    let s = setup();
    let up = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let is_up = up.clone();
    let rx = Receiver::start(
        "127.0.0.1:0".parse().unwrap(),
        busy_when(move |_| !is_up.load(std::sync::atomic::Ordering::SeqCst)),
    );
    let cfg = config(
        &s,
        &format!(
            "url = \"{}\"\nformat = \"ndjson\"\nbatch = {{ max_rows = 30 }}",
            rx.url("/ingest")
        ),
    );
    let handle = msgtrace::embed::EngineBuilder::new(cfg.clone())
        .options(fast_retry(1))
        .scheduled(true)
        .start()
        .expect("engine starts");
    // The first page refused, held and given again: the sink's try and retry, three times.
    wait_for(|| rx.requests().len() >= 6);
    assert!(
        rx.requests().len() >= 6,
        "the page was held and given again"
    );
    block_on(handle.shutdown()).expect("shutdown");
    let refused = rx.requests().len();

    // The job was cancelled with its first page not checkpointed.
    let store = s.store();
    let jobs = store.jobs(Some("src")).unwrap();
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0].state, msgtrace::storage::JobState::Cancelled);
    assert_eq!(jobs[0].pages, 0, "{jobs:?}");
    assert!(no_page_checkpointed(
        store.checkpoint("src").unwrap().as_ref()
    ));
    drop(store);

    // The receiver is back: the next run delivers every row, the refused page included, once.
    up.store(true, std::sync::atomic::Ordering::SeqCst);
    let report = run_once(&cfg, fast_retry(1));
    assert!(report.all_succeeded(), "{report:?}");
    assert_exactly_once(&received_events(&rx.requests()[refused..], "ndjson"), &s);
}

#[test]
fn a_sink_down_for_good_does_not_starve_a_source_feeding_another_sink() {
    let h = Harness::graph().rate(40).build();
    let rx = Receiver::start("127.0.0.1:0".parse().unwrap(), busy_when(|_| true));
    // Source `a` feeds the http sink, down for the whole test; source `b` feeds the file sink.
    // The rows-in-flight budget is three pages. Were `a`'s pages fetched ahead kept during its
    // hold, `a` would hold all three whenever they took the budget before `b`'s next page (which
    // depends on the order the two jobs' requests come back in), and `b` would never get one.
    let (a0, a1, b0, b1) = (hours_ago(8), hours_ago(5), hours_ago(4), hours_ago(1));
    let toml = h
        .sources_toml(&[("a", &a0, &a1), ("b", &b0, &b1)], "")
        .replace("inputs = [\"a\", \"b\"]", "inputs = [\"b\"]");
    let toml = format!(
        "{toml}\n[sinks.web]\ntype = \"http\"\ninputs = [\"a\"]\nurl = \"{}\"\nformat = \"ndjson\"\n",
        rx.url("/ingest")
    );
    let expected_b = {
        let t = |s: &str| chrono::DateTime::from_timestamp(s.parse().unwrap(), 0).unwrap();
        h.sim().model().expected(t(&b0), t(&b1), chrono::Utc::now())
    };
    assert!(
        expected_b.len() > 200,
        "several pages: {}",
        expected_b.len()
    );
    let handle = msgtrace::embed::EngineBuilder::new(parse(&toml))
        .options(EngineOptions {
            rows_in_flight: 300,
            ..fast_retry(0)
        })
        .scheduled(true)
        .start()
        .expect("engine starts");
    wait_for(|| identities_so_far(&h.out, h.api).len() >= expected_b.len());
    // Taken while `a` still holds its page (the shutdown would free the budget).
    let b_delivered = h.identities();
    let a_refused = rx.requests().len();
    block_on(handle.shutdown()).expect("shutdown");
    assert!(a_refused >= 1, "`a`'s page was refused by then");
    assert_eq!(
        compare(&b_delivered, &expected_b),
        (0, 0, 0),
        "b: missing, extra, twice, while `a` was held"
    );
}
