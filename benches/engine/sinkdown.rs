//! Section `sinkdown` (issue 5): an `http` sink that is down for a while in the middle of a
//! collection. Memory must stay bounded while it is down, and every row must arrive once it is back.
//!
//! The receiver is an HTTP server on 127.0.0.1 in the bench process. It accepts (200) and appends
//! what it gets to a file, counting every row's identity; once it has accepted `down_after_rows`
//! rows it goes down the way a restarting collector does: it answers 503 ("Server is busy", as
//! Splunk HEC does) for the moment the bench takes to close its listener, then refuses connections
//! (listener closed) for the first half of the outage, then listens again but answers 503 (up but not
//! ready) for the second half, then accepts again.
//!
//! The engine runs as a user runs it: `msgtrace run` without `--once` (continuous: the source
//! catches up at once, then waits for its schedule), the `http` sink with its default retry
//! policy (1 s, doubling, 5 retries: about 31 s), until SIGTERM, which the bench sends once the
//! receiver holds every row of the window. The same collection with the receiver up throughout is
//! the baseline. The bench samples the child's `VmRSS` every 100 ms during both runs.

use std::borrow::Cow;
use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::{BufWriter, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpResponse, HttpServer};
use chrono::{DateTime, Utc};
use msgtrace::actors::dialect::Api;
use msgtrace::storage::{JobState, Store};
use msgtrace_simulator::SimServer;
use serde::Deserialize;

use crate::child::Work;
use crate::measure::{self, count_lines, Finished, RssSampler};
use crate::{mib, q, thousands, window_for, write_config_with_sink, EngineFiles, Table};

/// Sizes of the section.
pub struct SinkDownPlan {
    /// Rows of the collection.
    pub rows: u64,
    /// `page_size` of the source.
    pub page_size: u32,
    /// Rows the receiver accepts before it goes down.
    pub down_after_rows: u64,
    /// How long it stays down (half refusing connections, half answering 503).
    pub outage: Duration,
    /// First delay of the sink's retry policy, ms; `None`: the default policy (1 s), as users
    /// run it. The smoke run shortens it to keep its outage short.
    pub retry_initial_ms: Option<u64>,
    /// A run that has not delivered every row this long after its start is stopped and reported.
    pub time_limit: Duration,
}

/// How often the child's RSS is sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// Retries of the `http` sink's default policy (`msgtrace::sinks::http::default_retry`).
const SINK_RETRIES: u32 = 5;

pub fn sinkdown(sim: &SimServer, plan: &SinkDownPlan, dir: &Path, table: &mut Table) {
    let window = window_for(sim.model(), plan.rows);
    let (start, end, rows) = window;
    let policy = msgtrace::sinks::http::default_retry();
    assert_eq!(
        policy.limit, SINK_RETRIES,
        "the sink's default retry policy"
    );
    let initial = plan
        .retry_initial_ms
        .map_or(policy.initial, Duration::from_millis);
    eprintln!(
        "bench: sinkdown: {rows} rows in pages of {}, receiver down for {:.1} s after {} rows",
        plan.page_size,
        plan.outage.as_secs_f64(),
        plan.down_after_rows
    );
    let expected: HashSet<u64> = sim
        .model()
        .expected(start, end, Utc::now())
        .iter()
        .map(|(id, recipient)| identity_hash(id, recipient))
        .collect();
    assert_eq!(expected.len() as u64, rows, "sinkdown: distinct identities");

    let up = collect(sim, plan, dir, window, None);
    let down = collect(sim, plan, dir, window, Some(plan.outage));
    let up_check = up.check(&expected);
    let down_check = down.check(&expected);
    for (name, c) in [("sink up", &up_check), ("sink down", &down_check)] {
        assert_eq!(c.missing, 0, "sinkdown ({name}): rows never delivered");
        assert_eq!(c.extra, 0, "sinkdown ({name}): rows not in the window");
    }
    let (down_at, up_at) = down.outage.expect("the outage happened");
    if let Ok(path) = std::env::var("BENCH_SINKDOWN_TRACE") {
        // The RSS samples of both runs, for a closer look: run, seconds since down, MiB.
        let mut csv = String::from("run,secs_since_down,rss_mib\n");
        for (run, r) in [("up", &up), ("down", &down)] {
            let zero = r.outage.map_or(r.samples[0].0, |(d, _)| d);
            for (t, rss) in &r.samples {
                let secs = if *t >= zero {
                    (*t - zero).as_secs_f64()
                } else {
                    -(zero - *t).as_secs_f64()
                };
                csv.push_str(&format!("{run},{secs:.2},{:.2}\n", *rss as f64 / 1048576.0));
            }
        }
        std::fs::write(&path, csv).expect("trace written");
        eprintln!("bench: sinkdown: RSS samples in {path}");
    }

    // RSS while the receiver was down: the samples between its going down and coming back. The
    // first sample can fall between two pages (the page in flight and the next one are still being
    // fetched and parsed): the outage's start and end are the peaks of its first and last quarter.
    let during: Vec<u64> = down
        .samples
        .iter()
        .filter(|(t, _)| *t >= down_at && *t <= up_at)
        .map(|(_, rss)| *rss)
        .collect();
    assert!(during.len() >= 4, "sinkdown: RSS samples during the outage");
    let quarter = during.len() / 4;
    let first = during[..quarter].iter().copied().max().unwrap_or(0);
    let last = during[during.len() - quarter..]
        .iter()
        .copied()
        .max()
        .unwrap_or(0);
    let peak_during = during.iter().copied().max().unwrap_or(0);
    let up_sampled = up.samples.iter().map(|(_, r)| *r).max().unwrap_or(0);
    let growth = last as f64 - first as f64;
    let flat = growth <= (first as f64 * 0.05).max(1024.0 * 1024.0);
    let secs = plan.outage.as_secs_f64();
    let secs = if secs < 10.0 {
        format!("{secs:.1}")
    } else {
        format!("{secs:.0}")
    };
    table.row(
        &format!("sinkdown: RSS during a {secs} s outage, first → last quarter (peak)"),
        &format!("{} → {} (peak {})", mib(first), mib(last), mib(peak_during)),
        &format!("sink up, same rows: peak {} (sampled)", mib(up_sampled)),
        last as f64 / first as f64,
        "bounded: ≤ 64 MiB and not growing during the outage",
        peak_during <= 64 << 20 && flat,
    );
    let ratio = down.finished.max_rss as f64 / up.finished.max_rss as f64;
    table.row(
        &format!(
            "sinkdown: peak RSS overall ({} rows, {secs} s outage)",
            thousands(rows as f64)
        ),
        &mib(down.finished.max_rss),
        &format!("sink up: {}", mib(up.finished.max_rss)),
        ratio,
        "≤ 64 MiB, ≤ 1.25 × sink up",
        down.finished.max_rss <= 64 << 20 && ratio <= 1.25,
    );

    // The sink retries 1, 2, 4, 8, 16 s after its first failure (the next page, right after the
    // receiver went down): delivery resumes at the first retry after the receiver is back.
    let retry_at: Vec<Duration> = (1..=SINK_RETRIES)
        .map(|k| initial * ((1u32 << k) - 1))
        .collect();
    let longest_step = initial * (1u32 << (SINK_RETRIES - 1));
    let next_retry = retry_at
        .iter()
        .find(|at| **at >= plan.outage)
        .map(|at| *at - plan.outage);
    let back = down
        .pages
        .iter()
        .find(|t| **t >= up_at)
        .map(|t| *t - up_at)
        .expect("a page delivered after the receiver came back");
    table.row(
        "sinkdown: receiver back → next delivered page",
        &format!("{:.2} s", back.as_secs_f64()),
        &match next_retry {
            Some(d) => format!(
                "the sink's next retry: ≈ {:.2} s after (backoff from {} ms)",
                d.as_secs_f64(),
                initial.as_millis()
            ),
            None => "the sink's retries ran out before (task rescheduled)".into(),
        },
        back.as_secs_f64() / next_retry.unwrap_or(longest_step).as_secs_f64().max(1e-3),
        &format!("≤ one retry step ({:.1} s)", longest_step.as_secs_f64()),
        back <= longest_step,
    );
    let pages_twice = down_check.duplicates as f64 / f64::from(plan.page_size);
    table.row(
        &format!(
            "sinkdown: rows delivered after the outage ({} rows)",
            thousands(rows as f64)
        ),
        &format!(
            "missing {}, {} delivered twice; {}",
            down_check.missing, down_check.duplicates, down.jobs
        ),
        &format!(
            "sink up: missing {}, {} delivered twice",
            up_check.missing, up_check.duplicates
        ),
        pages_twice,
        "none missing, ≤ 1 page twice",
        down_check.missing == 0 && down_check.duplicates <= u64::from(plan.page_size),
    );
    eprintln!(
        "bench: sinkdown: during the outage the receiver answered 503 {} times; with the sink up a page was delivered every {:.3} s (median)",
        down.busy_answers,
        median_gap(&up.pages).as_secs_f64()
    );
}

/// One collection of the window through the `http` sink, the receiver down for `outage` (or up
/// throughout).
fn collect(
    sim: &SimServer,
    plan: &SinkDownPlan,
    dir: &Path,
    (start, end, rows): (DateTime<Utc>, DateTime<Utc>, u64),
    outage: Option<Duration>,
) -> Run {
    let name = if outage.is_some() {
        "sinkdown-down"
    } else {
        "sinkdown-up"
    };
    let files = EngineFiles::new(dir, name);
    let mut receiver = Receiver::start(&files.out, outage.map(|_| plan.down_after_rows));
    let sink = format!(
        "type = \"http\"\ninputs = [\"src\"]\nurl = {}\nformat = \"ndjson\"\n",
        q(&format!("http://{}/ingest", receiver.addr))
    );
    let one = [("src".to_string(), "sim-tenant".to_string())];
    write_config_with_sink(
        &files,
        sim,
        Api::Graph,
        (start, end),
        plan.page_size,
        &one,
        &sink,
    );
    let child = measure::spawn(&Work::Engine {
        config: files.config.clone(),
        durable: true,
        prefetch: msgtrace::actors::fetcher::PREFETCH_PAGES,
        print_pages: true,
        scale: None,
        continuous: true,
        sink_retry_initial_ms: plan.retry_initial_ms,
        commit_group: None,
    });
    let sampler = RssSampler::start(child.pid(), SAMPLE_EVERY);
    let deadline = child.spawned + plan.time_limit;
    let mut window = None;
    if let Some(outage) = outage {
        let down_at = receiver
            .went_down
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("sinkdown: the receiver never went down (is the collection long enough?)");
        receiver.close();
        std::thread::sleep((down_at + outage / 2).saturating_duration_since(Instant::now()));
        receiver.open();
        std::thread::sleep((down_at + outage).saturating_duration_since(Instant::now()));
        receiver.set_busy(false);
        window = Some((down_at, Instant::now()));
    }
    while receiver.distinct() < rows && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if receiver.distinct() < rows {
        eprintln!(
            "bench: sinkdown: {} of {rows} rows after {} s: stopping the engine",
            receiver.distinct(),
            plan.time_limit.as_secs()
        );
    }
    let pages: Vec<Instant> = child
        .lines
        .try_iter()
        .filter(|(_, l)| l == "page")
        .map(|(t, _)| t)
        .collect();
    // As `msgtrace run` is stopped: the page in flight is committed, then the engine exits.
    child.terminate();
    let finished = child.wait();
    let samples = sampler.finish();
    assert!(finished.success, "{name}: the engine did not exit cleanly");
    receiver.close();
    let got = receiver.take();
    assert_eq!(
        count_lines(&files.out),
        got.lines,
        "{name}: rows the receiver wrote"
    );
    // Every page committed: the cursor at the window's end, nothing in flight.
    let store = Store::open(&files.state).expect("state opens");
    let cp = store
        .checkpoint("src")
        .expect("checkpoint reads")
        .expect("a checkpoint");
    assert_eq!(
        cp.cursor,
        Some(end),
        "{name}: the checkpoint reached the end"
    );
    assert!(cp.in_flight.is_none(), "{name}: nothing left in flight");
    let jobs = store.jobs(Some("src")).expect("jobs");
    let failed = jobs.iter().filter(|j| j.state == JobState::Failed).count();
    let reschedules: u32 = jobs
        .iter()
        .flat_map(|j| &j.tasks)
        .map(|t| t.reschedules)
        .sum();
    drop(store);
    files.remove();
    Run {
        finished,
        samples,
        pages,
        outage: window,
        ids: got.ids,
        busy_answers: got.busy_answers,
        jobs: format!("{failed} jobs failed, {reschedules} task reschedules"),
    }
}

struct Run {
    finished: Finished,
    /// The child's RSS, sampled.
    samples: Vec<(Instant, u64)>,
    /// When each committed page was reported.
    pages: Vec<Instant>,
    /// When the receiver went down and came back.
    outage: Option<(Instant, Instant)>,
    /// Rows received per identity.
    ids: HashMap<u64, u32>,
    /// Requests answered 503.
    busy_answers: u64,
    /// Failed jobs and task reschedules, from the job records.
    jobs: String,
}

struct Check {
    missing: u64,
    extra: u64,
    duplicates: u64,
}

impl Run {
    fn check(&self, expected: &HashSet<u64>) -> Check {
        Check {
            missing: expected
                .iter()
                .filter(|h| !self.ids.contains_key(h))
                .count() as u64,
            extra: self.ids.keys().filter(|h| !expected.contains(h)).count() as u64,
            duplicates: self.ids.values().map(|n| u64::from(n - 1)).sum(),
        }
    }
}

fn median_gap(pages: &[Instant]) -> Duration {
    let mut gaps: Vec<Duration> = pages.windows(2).map(|w| w[1] - w[0]).collect();
    gaps.sort();
    gaps.get(gaps.len() / 2).copied().unwrap_or_default()
}

/// A row's identity (Graph: `id`, `recipientAddress`), hashed: a million of them fit in a few
/// MiB of the bench process.
fn identity_hash(id: &str, recipient: &str) -> u64 {
    let mut h = DefaultHasher::new();
    id.hash(&mut h);
    recipient.hash(&mut h);
    h.finish()
}

/// The identity fields of a Graph event; the rest of the line is skipped unparsed.
#[derive(Deserialize)]
struct GraphIdentity<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow, rename = "recipientAddress")]
    recipient: Cow<'a, str>,
}

// ---------------------------------------------------------------------------------------------
// The receiver

/// What the receiver has got.
struct Received {
    /// Rows accepted (lines written).
    lines: u64,
    /// Rows accepted per identity hash.
    ids: HashMap<u64, u32>,
    /// Requests answered 503.
    busy_answers: u64,
}

struct State {
    out: BufWriter<File>,
    received: Received,
    busy: bool,
    /// Go down (busy, and tell the bench) once this many rows are accepted.
    down_after_rows: Option<u64>,
    went_down: mpsc::Sender<Instant>,
}

/// An HTTP receiver on 127.0.0.1 whose listener the bench can close and open again (same port).
struct Receiver {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    server: Option<(actix_web::dev::ServerHandle, std::thread::JoinHandle<()>)>,
    /// When it went down by itself.
    went_down: mpsc::Receiver<Instant>,
}

impl Receiver {
    fn start(out: &Path, down_after_rows: Option<u64>) -> Receiver {
        let (tx, went_down) = mpsc::channel();
        let state = State {
            out: BufWriter::new(File::create(out).expect("receiver output")),
            received: Received {
                lines: 0,
                ids: HashMap::new(),
                busy_answers: 0,
            },
            busy: false,
            down_after_rows,
            went_down: tx,
        };
        let mut r = Receiver {
            addr: "127.0.0.1:0".parse().expect("address"),
            state: Arc::new(Mutex::new(state)),
            server: None,
            went_down,
        };
        r.open();
        r
    }

    /// Listens (again) on its address.
    fn open(&mut self) {
        let (state, addr) = (self.state.clone(), self.addr);
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let system = actix_rt::System::new();
            let server = HttpServer::new(move || {
                let state = state.clone();
                App::new()
                    .app_data(web::PayloadConfig::new(64 << 20))
                    .default_service(web::to(move |body: web::Bytes| {
                        let state = state.clone();
                        async move { receive(&state, &body) }
                    }))
            })
            .workers(1)
            .bind(addr)
            .expect("receiver binds");
            let addr = server.addrs()[0];
            let server = server.run();
            tx.send((addr, server.handle())).expect("bench waits");
            system.block_on(server).expect("receiver runs");
        });
        let (addr, handle) = rx.recv().expect("receiver starts");
        self.addr = addr;
        self.server = Some((handle, thread));
    }

    /// Closes the listener and every connection: connections are refused until [`Receiver::open`].
    fn close(&mut self) {
        if let Some((handle, thread)) = self.server.take() {
            actix_rt::System::new().block_on(handle.stop(false));
            thread.join().expect("receiver thread");
        }
    }

    fn set_busy(&self, busy: bool) {
        self.state.lock().expect("receiver state").busy = busy;
    }

    fn distinct(&self) -> u64 {
        self.state
            .lock()
            .expect("receiver state")
            .received
            .ids
            .len() as u64
    }

    /// What it got (its output file flushed).
    fn take(&self) -> Received {
        let mut s = self.state.lock().expect("receiver state");
        s.out.flush().expect("receiver output written");
        std::mem::replace(
            &mut s.received,
            Received {
                lines: 0,
                ids: HashMap::new(),
                busy_answers: 0,
            },
        )
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.close();
    }
}

fn receive(state: &Mutex<State>, body: &[u8]) -> HttpResponse {
    let mut s = state.lock().expect("receiver state");
    if s.busy {
        s.received.busy_answers += 1;
        return HttpResponse::ServiceUnavailable()
            .content_type("application/json")
            .body(r#"{"text":"Server is busy","code":9}"#);
    }
    s.out.write_all(body).expect("receiver output written");
    for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let id: GraphIdentity = serde_json::from_slice(line).expect("an event with an identity");
        *s.received
            .ids
            .entry(identity_hash(&id.id, &id.recipient))
            .or_default() += 1;
        s.received.lines += 1;
    }
    if s.down_after_rows.is_some_and(|n| s.received.lines >= n) {
        s.down_after_rows = None;
        s.busy = true;
        let _ = s.went_down.send(Instant::now());
    }
    HttpResponse::Ok()
        .content_type("application/json")
        .body(r#"{"text":"Success","code":0}"#)
}
