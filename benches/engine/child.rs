//! What a child process runs: the engine, or one of the two baselines. Each prints one
//! `RESULT {json}` line on stdout at the end; the engine also prints `page` after every committed
//! page when asked (the resume measurement stamps those lines as they arrive).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use msgtrace::actors::dialect::Api;
use msgtrace::actors::http;
use msgtrace::actors::retry::RetryPolicy;
use msgtrace::actors::supervisor::PageHook;
use msgtrace::embed::EngineBuilder;
use msgtrace::engine::{Control, EngineOptions, Mode};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::measure::{cpu_time, usage};

/// Largest body the baselines accept (the engine's own limit).
const MAX_BODY_BYTES: usize = 64 << 20;

/// One workload, passed to the child as JSON.
#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Work {
    /// The whole engine (`EngineBuilder::run`) on a configuration file.
    Engine {
        /// The configuration file.
        config: PathBuf,
        /// `EngineOptions.durable`: `flush_async` after every page.
        durable: bool,
        /// `EngineOptions.prefetch`: pages fetched ahead during a page's delivery and commit.
        #[serde(default = "prefetch_pages")]
        prefetch: usize,
        /// Print `page` after every committed page.
        print_pages: bool,
        /// The scale measurement: CPU from the start until every source has delivered its poll.
        scale: Option<Scale>,
        /// Run as `msgtrace run` does without `--once`: on schedule (every source catches up at
        /// once) until SIGTERM.
        #[serde(default)]
        continuous: bool,
        /// First delay of the `http` sinks' retry policy, milliseconds (the smoke run shortens
        /// it); `None` is the default policy (1 s, doubling, 5 retries).
        #[serde(default)]
        sink_retry_initial_ms: Option<u64>,
        /// `EngineOptions.commit_group`; `None` is the default.
        #[serde(default)]
        commit_group: Option<usize>,
    },
    /// Baseline (a): the same pages, the same awc client, bodies appended to a file unparsed.
    RawFetch {
        /// Which API (to find the next link).
        api: Api,
        /// The first page, exactly as the engine asks for it.
        first_url: String,
        /// The v2 token endpoint.
        token_url: String,
        /// `scope` of the token request.
        scope: String,
        /// Where the bodies go (each one as a little-endian u64 length, then the bytes).
        out: PathBuf,
    },
    /// Baseline (b): the bodies the raw fetch saved, parsed into rows and serialized to NDJSON in
    /// memory.
    ParseOnly {
        /// Which API.
        api: Api,
        /// The URL the first body came from (to resolve relative next links).
        request_url: String,
        /// The raw fetch's output.
        bodies: PathBuf,
    },
    /// Baseline of the static-site section: the page files nginx serves, each parsed and its rows
    /// written as NDJSON (with `_time`) in memory by the fastest plain Rust we could write: the
    /// rows are passed through as they are in the body (`RawValue`), only the received time is
    /// read of each.
    PlainParse {
        /// Which API (the received time's field and format).
        api: Api,
        /// The page files, in order.
        pages: Vec<PathBuf>,
        /// When given, the durable I/O floor as well: each page's NDJSON appended to a file in
        /// this directory and `fdatasync`ed, then a checkpoint record written and `fdatasync`ed
        /// (the engine's per-page commit, with nothing else), timed apart from the parse.
        #[serde(default)]
        durable_dir: Option<PathBuf>,
    },
}

fn prefetch_pages() -> usize {
    msgtrace::actors::fetcher::PREFETCH_PAGES
}

/// Many sources, all due at once (`--once` makes every source due when the engine starts).
#[derive(Serialize, Deserialize, Debug, Clone, Copy)]
pub struct Scale {
    /// Sources in the configuration (each commits exactly one page).
    pub sources: usize,
}

/// Entry point of a child process.
pub fn main(spec: &str) {
    let work: Work = serde_json::from_str(spec).expect("work spec is JSON");
    // `BENCH_CHILD_LOG=msgtrace_actors=debug` (a tracing filter) logs the child's work to stderr,
    // with microsecond times: where a page's time goes.
    if let Ok(filter) = std::env::var("BENCH_CHILD_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .with_thread_names(true)
            .init();
    }
    let result = match work {
        Work::Engine {
            config,
            durable,
            prefetch,
            print_pages,
            scale,
            continuous,
            sink_retry_initial_ms,
            commit_group,
        } => run_engine(
            &config,
            (durable, prefetch, commit_group),
            print_pages,
            scale,
            continuous,
            sink_retry_initial_ms,
        ),
        Work::RawFetch {
            api,
            first_url,
            token_url,
            scope,
            out,
        } => raw_fetch(api, &first_url, &token_url, &scope, &out),
        Work::ParseOnly {
            api,
            request_url,
            bodies,
        } => parse_only(api, &request_url, &bodies),
        Work::PlainParse {
            api,
            pages,
            durable_dir,
        } => plain_parse(api, &pages, durable_dir.as_deref()),
    };
    let mut result = result;
    result["peak_rss_kib"] = json!(crate::measure::peak_rss_kib(std::process::id()));
    println!("RESULT {result}");
}

/// Process CPU and time when the last source of a scale run committed its page.
type Delivered = (Duration, DateTime<Utc>);

fn run_engine(
    path: &std::path::Path,
    (durable, prefetch, commit_group): (bool, usize, Option<usize>),
    print_pages: bool,
    scale: Option<Scale>,
    continuous: bool,
    sink_retry_initial_ms: Option<u64>,
) -> serde_json::Value {
    let config = msgtrace::config::load(path).unwrap_or_else(|e| panic!("config: {e}"));
    let delivered: Arc<Mutex<Option<Delivered>>> = Arc::default();
    let pages = Arc::new(AtomicUsize::new(0));
    let hook: PageHook = {
        let pages = pages.clone();
        let delivered = delivered.clone();
        Arc::new(move |_source: &str, _pages: u64, _rows: u64| {
            let n = pages.fetch_add(1, Ordering::Relaxed) + 1;
            if print_pages {
                println!("page");
            }
            if scale.is_some_and(|s| n == s.sources) {
                *delivered.lock().unwrap() = Some((cpu_time(libc::RUSAGE_SELF), Utc::now()));
            }
        })
    };
    let opts = EngineOptions {
        durable,
        prefetch,
        commit_group: commit_group.unwrap_or(msgtrace::actors::fetcher::COMMIT_GROUP_PAGES),
        page_hook: Some(hook),
        sink_retry: sink_retry_initial_ms.map(|ms| RetryPolicy {
            initial: Duration::from_millis(ms),
            ..msgtrace::sinks::http::default_retry()
        }),
        ..EngineOptions::default()
    };
    let mode = if continuous {
        Mode::Continuous
    } else {
        Mode::Once
    };
    // `--once` makes every source due at this instant.
    let (due, cpu_at_due, started) = (Utc::now(), cpu_time(libc::RUSAGE_SELF), Instant::now());
    let report = actix_rt::System::new()
        .block_on(async {
            // A continuous run ends on SIGTERM, as `msgtrace run` does.
            let (stop, controls) = tokio::sync::mpsc::unbounded_channel();
            if continuous {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                        .expect("SIGTERM handler");
                actix_rt::spawn(async move {
                    term.recv().await;
                    let _ = stop.send(Control::Stop);
                });
            }
            EngineBuilder::new(config)
                .options(opts)
                .run(mode, controls)
                .await
        })
        .unwrap_or_else(|e| panic!("engine: {e:#}"));
    let secs = started.elapsed().as_secs_f64();
    let rows: u64 = report.jobs.iter().map(|(_, j)| j.rows).sum();
    let job_pages: u64 = report.jobs.iter().map(|(_, j)| j.pages).sum();
    let delivered = *delivered.lock().unwrap();
    json!({
        "ok": report.all_succeeded(),
        "jobs": report.jobs.len(),
        "rows": rows,
        "pages": job_pages,
        "engine_secs": secs,
        "due_micros": due.timestamp_micros(),
        "poll_cpu_secs": delivered.map(|(cpu, _)| cpu.saturating_sub(cpu_at_due).as_secs_f64()),
        "all_delivered_after_due_secs": delivered
            .map(|(_, at)| (at - due).num_microseconds().unwrap_or(0) as f64 / 1e6),
    })
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    actix_rt::System::new().block_on(f)
}

fn raw_fetch(
    api: Api,
    first_url: &str,
    token_url: &str,
    scope: &str,
    out: &std::path::Path,
) -> serde_json::Value {
    block_on(async {
        let form = [
            ("grant_type", "client_credentials".to_string()),
            ("client_id", "sim-client".to_string()),
            ("client_secret", "sim-secret".to_string()),
            ("scope", scope.to_string()),
        ];
        let token = http::post_form(token_url, &form, None, None)
            .await
            .expect("token request");
        assert_eq!(token.status, 200, "token endpoint refused");
        let token: serde_json::Value = serde_json::from_slice(&token.body).expect("token JSON");
        let auth = format!(
            "Bearer {}",
            token["access_token"].as_str().expect("access_token")
        );
        let mut file = std::fs::File::create(out).expect("raw output file");
        let mut url = url::Url::parse(first_url).expect("first URL");
        let (mut pages, mut bytes) = (0u64, 0u64);
        loop {
            let resp = http::get(url.as_str(), Some(&auth), None, MAX_BODY_BYTES, None)
                .await
                .expect("page request");
            assert_eq!(resp.status, 200, "page refused");
            file.write_all(&(resp.body.len() as u64).to_le_bytes())
                .and_then(|()| file.write_all(&resp.body))
                .expect("raw output written");
            pages += 1;
            bytes += resp.body.len() as u64;
            match next_link(api, &resp.body) {
                Some(link) => url = url.join(&link).expect("next link resolves"),
                None => break,
            }
        }
        json!({"pages": pages, "bytes": bytes})
    })
}

/// The next link without parsing the page: both simulated APIs write it after the rows, so a
/// search of the body's tail finds it (the raw fetch must not pay for JSON parsing).
fn next_link(api: Api, body: &[u8]) -> Option<String> {
    let (from, to) = next_link_span(api, body)?;
    Some(String::from_utf8_lossy(&body[from..to]).replace("\\/", "/"))
}

/// Where the next link's text is in `body` (between its quotes), found as [`next_link`] does.
pub fn next_link_span(api: Api, body: &[u8]) -> Option<(usize, usize)> {
    let key: &[u8] = match api {
        Api::Graph => b"\"@odata.nextLink\":\"",
        Api::Reporting => b"\"odata.nextLink\":\"",
    };
    let tail_at = body.len().saturating_sub(4096);
    let tail = &body[tail_at..];
    let at = tail.windows(key.len()).rposition(|w| w == key)? + key.len();
    let end = tail[at..].iter().position(|b| *b == b'"')? + at;
    Some((tail_at + at, tail_at + end))
}

fn parse_only(api: Api, request_url: &str, bodies: &std::path::Path) -> serde_json::Value {
    let request_url = url::Url::parse(request_url).expect("request URL");
    let mut file = std::io::BufReader::new(std::fs::File::open(bodies).expect("raw bodies"));
    let mut body = Vec::new();
    let mut ndjson = Vec::new();
    let (mut pages, mut rows, mut cpu, mut faults) = (0u64, 0u64, Duration::ZERO, 0u64);
    let mut wall = Duration::ZERO;
    loop {
        let mut len = [0u8; 8];
        if file.read_exact(&mut len).is_err() {
            break;
        }
        body.resize(u64::from_le_bytes(len) as usize, 0);
        file.read_exact(&mut body).expect("raw body");
        // Only the parse and the serialization are timed, not reading the file.
        let ((c0, f0), t0) = (usage(libc::RUSAGE_THREAD), Instant::now());
        let page = api.parse_page(&body, &request_url).expect("page parses");
        ndjson.clear();
        for row in &page.rows {
            serde_json::to_writer(&mut ndjson, row).expect("row serializes");
            ndjson.push(b'\n');
        }
        rows += page.rows.len() as u64;
        drop(page);
        let (c1, f1) = usage(libc::RUSAGE_THREAD);
        cpu += c1.saturating_sub(c0);
        faults += f1.saturating_sub(f0);
        wall += t0.elapsed();
        pages += 1;
    }
    json!({
        "pages": pages,
        "rows": rows,
        "cpu_secs": cpu.as_secs_f64(),
        "minor_faults": faults,
        "wall_secs": wall.as_secs_f64(),
    })
}

/// A page's rows, each as the bytes of the body.
#[derive(Deserialize)]
struct PlainPage<'a> {
    #[serde(borrow)]
    value: Vec<&'a serde_json::value::RawValue>,
}

/// The one field [`plain_parse`] reads of a Graph row.
#[derive(Deserialize)]
struct GraphTime<'a> {
    #[serde(rename = "receivedDateTime", borrow)]
    received: std::borrow::Cow<'a, str>,
}

/// The one field [`plain_parse`] reads of a Reporting row.
#[derive(Deserialize)]
struct ReportingTime<'a> {
    #[serde(rename = "Received", borrow)]
    received: std::borrow::Cow<'a, str>,
}

/// Epoch microseconds of a received time: Graph's `…Z`, Reporting's without a zone (UTC).
fn plain_micros(received: &str) -> i64 {
    let text = received.trim_end_matches('Z');
    chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f")
        .expect("received time")
        .and_utc()
        .timestamp_micros()
}

fn plain_parse(api: Api, pages: &[PathBuf], durable_dir: Option<&Path>) -> serde_json::Value {
    let mut ndjson = Vec::new();
    let (mut rows, mut cpu, mut faults) = (0u64, Duration::ZERO, 0u64);
    let mut floor = durable_dir.map(DurableFloor::new);
    for path in pages {
        let body = std::fs::read(path).expect("page file");
        // Only the parse and the serialization are timed, not reading the file.
        let (c0, f0) = usage(libc::RUSAGE_THREAD);
        let page: PlainPage = serde_json::from_slice(&body).expect("page parses");
        ndjson.clear();
        for row in &page.value {
            let micros = match api {
                Api::Graph => {
                    serde_json::from_str::<GraphTime>(row.get()).map(|r| plain_micros(&r.received))
                }
                Api::Reporting => serde_json::from_str::<ReportingTime>(row.get())
                    .map(|r| plain_micros(&r.received)),
            }
            .expect("row has its received time");
            let text = row.get().trim_end();
            let (open, _) = text.split_at(text.len() - 1);
            ndjson.extend_from_slice(open.as_bytes());
            let mut secs = itoa::Buffer::new();
            let mut frac = itoa::Buffer::new();
            ndjson.extend_from_slice(b",\"_time\":");
            ndjson.extend_from_slice(secs.format(micros.div_euclid(1_000_000)).as_bytes());
            ndjson.push(b'.');
            let f = frac.format(micros.rem_euclid(1_000_000) + 1_000_000);
            ndjson.extend_from_slice(&f.as_bytes()[1..]);
            ndjson.extend_from_slice(b"}\n");
        }
        rows += page.value.len() as u64;
        drop(page);
        let (c1, f1) = usage(libc::RUSAGE_THREAD);
        cpu += c1.saturating_sub(c0);
        faults += f1.saturating_sub(f0);
        if let Some(floor) = &mut floor {
            floor.commit(&ndjson, rows);
        }
    }
    json!({
        "pages": pages.len(),
        "rows": rows,
        "cpu_secs": cpu.as_secs_f64(),
        "minor_faults": faults,
        "io_secs": floor.map(|f| f.spent.as_secs_f64()),
    })
}

/// The least a collector that commits durably page by page does per page on this disk: the
/// page's lines appended and synced, then a checkpoint written and synced, one after the other
/// (the checkpoint must not be durable before its rows). The checkpoint is rewritten in place in
/// a file of fixed size, which syncs cheaper than an append (no size to journal): the fastest
/// form of it, not the engine's sled.
struct DurableFloor {
    rows: std::fs::File,
    checkpoint: std::fs::File,
    spent: Duration,
}

impl DurableFloor {
    const CHECKPOINT_BYTES: usize = 1024;

    fn new(dir: &Path) -> DurableFloor {
        std::fs::create_dir_all(dir).expect("floor dir");
        let open = |name: &str| {
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(true)
                .read(true)
                .write(true)
                .open(dir.join(name))
                .expect("floor file")
        };
        let (rows, checkpoint) = (open("rows.ndjson"), open("checkpoint"));
        checkpoint
            .set_len(Self::CHECKPOINT_BYTES as u64)
            .expect("checkpoint size");
        checkpoint.sync_all().expect("checkpoint sync");
        DurableFloor {
            rows,
            checkpoint,
            spent: Duration::ZERO,
        }
    }

    fn commit(&mut self, lines: &[u8], rows_so_far: u64) {
        use std::os::unix::fs::FileExt;
        let t = Instant::now();
        self.rows.write_all(lines).expect("floor write");
        self.rows.sync_data().expect("floor fdatasync");
        let mut record = vec![b' '; Self::CHECKPOINT_BYTES];
        let text = format!("{{\"rows\":{rows_so_far}}}");
        record[..text.len()].copy_from_slice(text.as_bytes());
        self.checkpoint
            .write_all_at(&record, 0)
            .expect("checkpoint write");
        self.checkpoint.sync_data().expect("checkpoint fdatasync");
        self.spent += t.elapsed();
    }
}
