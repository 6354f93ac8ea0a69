//! Helpers shared by the integration tests: the [`Harness`] most of them start from (a simulated
//! tenant or a fake API, a temporary directory, a configuration, its runs), the configurations
//! it is made of, the binary as a child process ([`MsgtraceRun`], [`crash_run`]), and readers
//! for the NDJSON output.

use msgtrace::actors::dialect::Api;
use msgtrace::actors::supervisor::RunReport;
use msgtrace::config::{self, Config};
use msgtrace::embed::EngineBuilder;
use msgtrace::engine::{EngineOptions, Mode};
use msgtrace_simulator::{SimConfig, SimServer, TenantModel, GRAPH_PATH, RWS_PATH};
use std::collections::HashMap;
use std::path::Path;

/// A simulated tenant with `messages_per_hour` and the given tweaks.
pub fn sim(messages_per_hour: u32, tweak: impl FnOnce(&mut SimConfig)) -> SimServer {
    let mut c = SimConfig {
        model: TenantModel {
            messages_per_hour,
            ..TenantModel::default()
        },
        ..SimConfig::default()
    };
    tweak(&mut c);
    SimServer::start(c, "127.0.0.1:0".parse().unwrap()).expect("simulator starts")
}

fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// One source `src` (OAuth against the simulator) feeding one file sink.
pub struct Scenario<'a> {
    /// Which API.
    pub api: Api,
    /// The state directory.
    pub state_dir: &'a Path,
    /// The NDJSON output.
    pub out: &'a Path,
    /// `start` of the source.
    pub start: &'a str,
    /// `end` of the source.
    pub end: &'a str,
    /// `page_size`.
    pub page_size: u32,
    /// More TOML lines for the source table.
    pub extra: &'a str,
}

/// The configuration of a scenario against `sim`: its source feeding the file sink `out` at
/// `s.out`.
pub fn config_toml(sim: &SimServer, s: &Scenario) -> String {
    let sink = format!(
        "[sinks.out]\ntype = \"file\"\ninputs = [\"src\"]\npath = {}\n",
        q(&s.out.to_string_lossy())
    );
    config_toml_with_sink(sim, s, &sink)
}

/// The configuration of a scenario against `sim` with `sink`, the TOML of its sink tables
/// (taking the source `src`), instead of the file sink (`s.out` is then unused).
pub fn config_toml_with_sink(sim: &SimServer, s: &Scenario, sink: &str) -> String {
    let path = match s.api {
        Api::Graph => GRAPH_PATH,
        Api::Reporting => RWS_PATH,
    };
    let api_name = match s.api {
        Api::Graph => "graph",
        Api::Reporting => "reporting",
    };
    format!(
        r#"
state_dir = {state}
log_level = "warn"

[sources.src]
api = "{api_name}"
url = {url}
start = {start}
end = {end}
page_size = {page_size}
{quota}
{extra}

[sources.src.auth]
method = "oauth"
tenant_id = "sim-tenant"
client_id = "sim-client"
client_secret = "sim-secret"
login_url = {base}

[sources.src.retry]
initial_interval_ms = 50

{sink}
"#,
        state = q(&s.state_dir.to_string_lossy()),
        url = q(&format!("{}{path}", sim.base_url())),
        start = q(s.start),
        end = q(s.end),
        page_size = s.page_size,
        // Tests are not throttled by default; quota tests set their own.
        quota = if s.extra.contains("quota") {
            ""
        } else {
            "quota = { requests = 100000, per_secs = 1 }"
        },
        extra = s.extra,
        base = q(&sim.base_url()),
    )
}

/// Graph sources of the one simulated tenant (OAuth), each `(id, start, end)`, all feeding the
/// file sink `out`; `extra` goes into every source table. Tests are not throttled unless `extra`
/// sets a `quota`.
pub fn graph_sources_toml(
    sim: &SimServer,
    state_dir: &Path,
    out: &Path,
    sources: &[(&str, &str, &str)],
    extra: &str,
) -> String {
    let url = q(&format!("{}{GRAPH_PATH}", sim.base_url()));
    let base = q(&sim.base_url());
    let quota = if extra.contains("quota") {
        ""
    } else {
        "quota = { requests = 100000, per_secs = 1 }"
    };
    let mut t = format!(
        "state_dir = {}\nlog_level = \"warn\"\n",
        q(&state_dir.to_string_lossy())
    );
    for (id, start, end) in sources {
        t.push_str(&format!(
            r#"
[sources.{id}]
url = {url}
start = {start}
end = {end}
page_size = 100
{quota}
{extra}
[sources.{id}.auth]
method = "oauth"
tenant_id = "sim-tenant"
client_id = "sim-client"
client_secret = "sim-secret"
login_url = {base}
[sources.{id}.retry]
initial_interval_ms = 100
limit = 10
"#,
            start = q(start),
            end = q(end),
        ));
    }
    let inputs: Vec<String> = sources.iter().map(|s| q(s.0)).collect();
    t.push_str(&format!(
        "[sinks.out]\ntype = \"file\"\ninputs = [{}]\npath = {}\n",
        inputs.join(", "),
        q(&out.to_string_lossy())
    ));
    t
}

/// A port on 127.0.0.1 that nothing listens on (bound once by the OS, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until `done` holds, checking every 20 ms, for at most 60 s: a bound for a broken
/// engine, not a timing. Returns whether it held.
pub fn wait_for(mut done: impl FnMut() -> bool) -> bool {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !done() {
        if std::time::Instant::now() >= until {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    true
}

/// Runs a future of the embedding API (which works from any runtime) to its end on a
/// current-thread tokio runtime.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// Opens a state directory an engine of this process used: waiting, as the engine's own start
/// does, up to 5 s for the lock that the engine's last threads may hold for a moment after its
/// run returned (a test that opened it at once failed now and then with `Locked`).
pub fn open_store(dir: impl AsRef<Path>) -> msgtrace::storage::Store {
    msgtrace::storage::Store::open_waiting(dir, std::time::Duration::from_secs(5)).unwrap()
}

/// Starts an embedded engine, runs it once to its end and shuts it down: its report.
pub fn run_embedded(builder: msgtrace::embed::EngineBuilder) -> RunReport {
    let engine = builder.start().unwrap();
    block_on(async {
        let report = engine.run_once().await.unwrap();
        engine.shutdown().await.unwrap();
        report
    })
}

/// `GET path` on `addr` over one HTTP/1.1 connection: (status, body), or `None` if nobody
/// answers.
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .ok()?;
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

/// Parses a configuration or panics with its errors.
pub fn parse(toml: &str) -> Config {
    config::from_str(toml).unwrap_or_else(|e| panic!("config invalid:\n{e}"))
}

/// Runs the engine once on a fresh actix System.
pub fn run_once(config: &Config, opts: EngineOptions) -> RunReport {
    init_logs();
    let config = config.clone();
    actix_rt::System::new()
        .block_on(async move {
            // Nothing tells it to stop: a run once ends by itself.
            let (_, controls) = tokio::sync::mpsc::unbounded_channel();
            EngineBuilder::new(config)
                .options(opts)
                .run(Mode::Once, controls)
                .await
        })
        .expect("engine runs")
}

/// Options for tests (the engine never handles signals: tests run in threads).
pub fn opts() -> EngineOptions {
    EngineOptions::default()
}

/// Counts each (trace id, recipient) identity of the summary rows in an NDJSON file (detail
/// events, `_detail: true`, are not rows). Every line must be JSON: a torn line fails the test.
pub fn identities(path: &Path, api: Api) -> HashMap<(String, String), usize> {
    count_identities(&std::fs::read_to_string(path).unwrap_or_default(), api)
}

/// [`identities`] of a file an engine may be writing: only its whole lines (a line still being
/// written has no newline yet).
pub fn identities_so_far(path: &Path, api: Api) -> HashMap<(String, String), usize> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    count_identities(&text[..text.rfind('\n').map_or(0, |i| i + 1)], api)
}

fn count_identities(text: &str, api: Api) -> HashMap<(String, String), usize> {
    let (a, b) = api.identity_fields();
    let mut m = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("line {} not JSON: {e}", i + 1));
        if v["_detail"] == true {
            continue;
        }
        let key = (
            v[a].as_str().expect("identity field").to_owned(),
            v[b].as_str().expect("identity field").to_owned(),
        );
        *m.entry(key).or_insert(0) += 1;
    }
    m
}

/// Checks an output against the simulator's expected identities: returns (missing, extra,
/// duplicated rows).
pub fn compare(
    got: &HashMap<(String, String), usize>,
    expected: &[(String, String)],
) -> (usize, usize, usize) {
    let exp: std::collections::HashSet<_> = expected.iter().cloned().collect();
    assert_eq!(exp.len(), expected.len(), "simulator identities are unique");
    let missing = exp.iter().filter(|k| !got.contains_key(*k)).count();
    let extra = got.keys().filter(|k| !exp.contains(*k)).count();
    let dups = got.values().map(|n| n - 1).sum();
    (missing, extra, dups)
}

/// Logs to the test output when `MSGTRACE_LOG` is set (e.g. `MSGTRACE_LOG=debug`).
pub fn init_logs() {
    if let Ok(filter) = std::env::var("MSGTRACE_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}

/// Epoch seconds of the current hour minus `hours`, as a config time expression: tests that
/// compare runs use absolute bounds so that an hour turning mid-test changes nothing.
pub fn hours_ago(hours: i64) -> String {
    let now = chrono::Utc::now().timestamp();
    (now - now.rem_euclid(3600) - hours * 3600).to_string()
}

/// Asserts that `out` holds exactly the simulator's rows of every job's window of `report`: none
/// missing, none extra, none twice.
pub fn assert_exactly_once(sim: &SimServer, report: &RunReport, out: &Path, api: Api) {
    assert!(report.all_succeeded(), "{report:?}");
    let now = chrono::Utc::now();
    let mut expected = Vec::new();
    for (_, job) in &report.jobs {
        if let Some((s, e)) = job.window {
            expected.extend(sim.model().expected(s, e, now));
        }
    }
    assert_eq!(
        compare(&identities(out, api), &expected),
        (0, 0, 0),
        "missing, extra, duplicates"
    );
}

/// xorshift64*: enough randomness for kill timings and fault choices, seeded from the clock (or
/// `CRASH_SEED`) and printed so that a failure can be reproduced.
pub struct Rng(pub u64);

impl Rng {
    /// A generator seeded from `CRASH_SEED` or the clock; prints the seed under `label`.
    pub fn seeded(label: &str) -> Rng {
        let seed = std::env::var("CRASH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        eprintln!("{label} seed {seed} (set CRASH_SEED to reproduce)");
        Rng(seed)
    }

    /// The next number.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}

/// A collection of source `src` (one file sink) under SIGKILLs ([`crash_collect`]).
pub struct Crash<'a> {
    /// Which API.
    pub api: Api,
    /// SIGKILLs before the run left alone.
    pub kills_wanted: u32,
    /// `start` of the source.
    pub start: &'a str,
    /// `end` of the source.
    pub end: &'a str,
    /// `page_size`.
    pub page_size: u32,
    /// More TOML lines for the source table ([`Scenario::extra`]).
    pub extra: &'a str,
    /// The sink tables ([`config_toml_with_sink`]); `None`: the file sink at `out.ndjson`.
    pub sink: Option<&'a str>,
}

impl Crash<'_> {
    /// The crash test's collection: two days of `api` in pages of 100, into the file sink.
    pub fn two_days(api: Api, kills_wanted: u32) -> Crash<'static> {
        Crash {
            api,
            kills_wanted,
            start: "-2d@h",
            end: "-1h@h",
            page_size: 100,
            extra: "",
            sink: None,
        }
    }
}

/// What a [`crash_collect`] left: its directory (state in `state`, output in `out`), the kills,
/// and the window collected.
pub struct Crashed {
    /// Holds the state directory and the output.
    pub dir: tempfile::TempDir,
    /// The state directory.
    pub state: std::path::PathBuf,
    /// The NDJSON output.
    pub out: std::path::PathBuf,
    /// SIGKILLs made.
    pub kills: u32,
    /// The window collected over every run: the first job's start to the cursor.
    pub window: (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>),
}

/// Collects `c` from `sim` with the `msgtrace` binary killed at random moments
/// ([`kill_repeatedly`]), and finds the window collected (the first job's start to the cursor
/// the last run left, with no slice in flight).
pub fn crash_run(sim: &SimServer, c: &Crash) -> Crashed {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.ndjson");
    let state = dir.path().join("state");
    let cfg_path = dir.path().join("msgtrace.toml");
    let scenario = Scenario {
        api: c.api,
        state_dir: &state,
        out: &out,
        start: c.start,
        end: c.end,
        page_size: c.page_size,
        extra: c.extra,
    };
    let toml = match c.sink {
        Some(sink) => config_toml_with_sink(sim, &scenario, sink),
        None => config_toml(sim, &scenario),
    };
    std::fs::write(&cfg_path, toml).unwrap();
    let kills = kill_repeatedly(&cfg_path, c.kills_wanted, "crash test");

    let store = open_store(&state);
    let cp = store.checkpoint("src").unwrap().expect("checkpoint");
    assert!(cp.in_flight.is_none());
    let start = store
        .jobs(Some("src"))
        .unwrap()
        .iter()
        .filter_map(|j| j.window_start)
        .min()
        .expect("a job had a window");
    let end = cp.cursor.expect("cursor");
    drop(store);
    Crashed {
        dir,
        state,
        out,
        kills,
        window: (start, end),
    }
}

impl Crashed {
    /// The simulator's rows of the window collected.
    pub fn expected(&self, sim: &SimServer) -> Vec<(String, String)> {
        sim.model()
            .expected(self.window.0, self.window.1, chrono::Utc::now())
    }
}

/// The crash test: [`crash_run`] into the file sink, then every row of the window is in the
/// output, none extra, and none twice: the pages in flight at a kill, which the file holds past
/// its last commit, are matched when they are delivered again ([`msgtrace::sinks::replay`]).
/// Into another sink, at most one page twice per kill.
pub fn crash_collect(sim: &SimServer, c: &Crash) -> Crashed {
    let crashed = crash_run(sim, c);
    let expected = crashed.expected(sim);
    let got = identities(&crashed.out, c.api);
    let (missing, extra, dups) = compare(&got, &expected);
    eprintln!(
        "crash test ({:?}): {} SIGKILLs, {} expected rows, {missing} missing, {extra} extra, {dups} duplicates (pages in flight at a kill)",
        c.api,
        crashed.kills,
        expected.len(),
    );
    assert_eq!((missing, extra), (0, 0));
    if c.sink.is_none() {
        assert_eq!(
            dups, 0,
            "the pages delivered again after a kill are matched, not appended"
        );
    }
    assert!(
        dups <= crashed.kills as usize * c.page_size as usize,
        "{dups} duplicates is more than one page per kill"
    );
    crashed
}

/// The crash test's run: `msgtrace run --once -c cfg` as a child process, killed with SIGKILL
/// 80 to 400 ms after each start (seeded under `label`, see [`Rng`]) until `kills_wanted` kills
/// (or two minutes), then run once more, left alone, to finish the collection. Returns the
/// kills; fails when a run fails on its own, or the collection ends before the kills.
pub fn kill_repeatedly(cfg: &Path, kills_wanted: u32, label: &str) -> u32 {
    use std::time::{Duration, Instant};
    let mut rng = Rng::seeded(label);
    let started = Instant::now();
    let mut kills = 0;
    let mut finished_early = 0;
    while kills < kills_wanted && started.elapsed() < Duration::from_secs(120) {
        let mut child = spawn_run_once(cfg);
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
    let status = spawn_run_once(cfg).wait().unwrap();
    assert!(status.success(), "final run failed: {status}");
    assert_eq!(
        finished_early, 0,
        "collection ended before {kills_wanted} kills; make it longer"
    );
    assert!(kills >= kills_wanted, "only {kills} kills");
    kills
}

/// Starts `msgtrace run --once -c cfg` as a child process, quiet.
pub fn spawn_run_once(cfg: &Path) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_msgtrace"))
        .args(["run", "--once", "-c"])
        .arg(cfg)
        .env("MSGTRACE_LOG", "error")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("msgtrace starts")
}

/// An API that is not the simulator, on 127.0.0.1: a v2 token endpoint at `/t/oauth2/v2.0/token`
/// and `page(query)` answering `GET /graph?{query}`. Returns the base URL and the server's
/// handle (stop it with `block_on(handle.stop(false))`).
pub fn fake_api(
    page: impl Fn(&str) -> actix_web::HttpResponse + Send + Sync + Clone + 'static,
) -> (String, actix_web::dev::ServerHandle) {
    use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        actix_rt::System::new().block_on(async move {
            let server = HttpServer::new(move || {
                let page = page.clone();
                App::new()
                    .route(
                        "/t/oauth2/v2.0/token",
                        web::post().to(|| async {
                            HttpResponse::Ok().json(serde_json::json!({"token_type": "Bearer", "expires_in": 3600, "access_token": "tok"}))
                        }),
                    )
                    .route(
                        "/graph",
                        web::get().to(move |req: HttpRequest| {
                            let response = page(req.query_string());
                            async move { response }
                        }),
                    )
            })
            .workers(1)
            .disable_signals()
            .bind("127.0.0.1:0")
            .unwrap();
            let addr = server.addrs()[0];
            let server = server.run();
            tx.send((format!("http://{addr}"), server.handle())).unwrap();
            let _ = server.await;
        });
    });
    rx.recv().unwrap()
}

/// A one-source config (Graph at `{base}/graph`, OAuth against `fake_api`'s token endpoint, the
/// window `start..end` in epoch seconds, one file sink at `out`), with `extra` source keys.
pub fn fake_api_toml(
    base: &str,
    (start, end): (i64, i64),
    state: &Path,
    out: &Path,
    extra: &str,
) -> String {
    let q = |s: &str| serde_json::to_string(s).unwrap();
    format!(
        r#"
state_dir = {state}
[sources.src]
url = {url}
start = "{start}"
end = "{end}"
quota = {{ requests = 1000, per_secs = 1 }}
{extra}
[sources.src.auth]
method = "oauth"
tenant_id = "t"
client_id = "c"
client_secret = "s"
login_url = {base}
[sinks.out]
type = "file"
inputs = ["src"]
path = {out}
"#,
        state = q(&state.to_string_lossy()),
        url = q(&format!("{base}/graph")),
        base = q(base),
        out = q(&out.to_string_lossy()),
    )
}

/// The `id` field of every line of an NDJSON output file, in order.
pub fn output_ids(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

/// Whether no page was checkpointed: no cursor, and no slice in flight past its first page (a
/// slice is recorded as started before its first page is asked for).
pub fn no_page_checkpointed(cp: Option<&msgtrace::storage::Checkpoint>) -> bool {
    cp.is_none_or(|c| {
        c.cursor.is_none()
            && c.in_flight
                .as_ref()
                .is_none_or(|f| f.pages == 0 && f.next_link.is_none())
    })
}

/// A one-member etcd on 127.0.0.1 (free client and peer ports, a temporary data directory),
/// stopped when dropped; for the `[cluster]` tests.
pub struct EtcdServer {
    child: std::process::Child,
    client_port: u16,
    /// Its data directory, and its log (`etcd.log`) for a failing test to show.
    pub dir: tempfile::TempDir,
}

impl EtcdServer {
    /// Starts etcd and waits until it answers; `None` (after printing "SKIPPED: etcd not
    /// installed") where it cannot run, which fails instead when `MSGTRACE_REQUIRE_ETCD` is set
    /// (`.ci/run` installs `etcd-server` and sets it, so CI cannot skip these tests).
    pub fn start() -> Option<EtcdServer> {
        use std::process::{Command, Stdio};
        let dir = tempfile::tempdir().unwrap();
        let (client_port, peer_port) = (free_port(), free_port());
        let client = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let log = std::fs::File::create(dir.path().join("etcd.log")).unwrap();
        let spawned = Command::new("etcd")
            .arg("--name=test")
            .arg(format!("--data-dir={}", dir.path().join("data").display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=test={peer}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn();
        let mut server = match spawned {
            Ok(child) => EtcdServer {
                child,
                client_port,
                dir,
            },
            Err(e) => return skip_etcd(&format!("cannot start etcd: {e}")),
        };
        let up = wait_for(|| server.exited() || server.answers());
        if server.exited() {
            let log =
                std::fs::read_to_string(server.dir.path().join("etcd.log")).unwrap_or_default();
            let last = log.lines().last().unwrap_or("").to_owned();
            return skip_etcd(&format!("etcd exited at start: {last}"));
        }
        assert!(up, "etcd did not answer on 127.0.0.1:{client_port}");
        Some(server)
    }

    /// Its client URL.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Whether `GET /version` answers 200.
    fn answers(&self) -> bool {
        use std::io::{Read as _, Write as _};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.client_port)) else {
            return false;
        };
        let request = format!(
            "GET /version HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
            self.client_port
        );
        let mut answer = String::new();
        s.write_all(request.as_bytes()).is_ok()
            && s.read_to_string(&mut answer).is_ok()
            && answer.starts_with("HTTP/1.1 200")
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Says why a test that needs `tool` does not run, or fails it when CI requires the tool
/// (`require`, e.g. `MSGTRACE_REQUIRE_ETCD`, is set); `install` is how to get it.
pub fn skip_without<T>(tool: &str, require: &str, install: &str, why: &str) -> Option<T> {
    assert!(
        std::env::var_os(require).is_none(),
        "{require} is set but {tool} cannot run ({why}); {install}"
    );
    eprintln!("SKIPPED: {tool} not installed ({why})");
    None
}

/// Says why an etcd test does not run, or fails it when CI requires etcd.
fn skip_etcd(why: &str) -> Option<EtcdServer> {
    skip_without(
        "etcd",
        "MSGTRACE_REQUIRE_ETCD",
        "apt-get install etcd-server",
        why,
    )
}

/// The set-up most engine tests share: a simulated tenant (or a fake API, [`Harness::fake`]), a
/// temporary directory holding the state directory (`state`) and the NDJSON output (`out`), and
/// the configuration of one source `src` feeding a file sink there ([`config_toml`],
/// [`fake_api_toml`]).
///
/// ```ignore
/// let h = Harness::graph().rate(60).window("-1d@h", "-1h@h").page_size(200).build();
/// let report = h.run_once();
/// h.assert_exactly_once(&report);
/// ```
pub struct Harness {
    sim: Option<std::sync::Arc<SimServer>>,
    /// Holds the state directory, the output and any file a test writes.
    pub dir: tempfile::TempDir,
    /// The state directory (`dir/state`, not created).
    pub state: std::path::PathBuf,
    /// The file sink's output (`dir/out.ndjson`).
    pub out: std::path::PathBuf,
    /// Which API the source speaks.
    pub api: Api,
    /// The configuration; a test may edit it before it runs or writes it.
    pub toml: String,
    source: HarnessSource,
}

/// What the configuration of a [`Harness`] is made of, to make it again with other keys.
enum HarnessSource {
    Sim {
        start: String,
        end: String,
        page_size: u32,
        extra: String,
        sink: Option<String>,
    },
    Fake {
        base: String,
        window: (i64, i64),
    },
}

/// A change to the simulator's configuration, made when a [`HarnessBuilder`] starts it.
type SimTweak = Box<dyn FnOnce(&mut SimConfig)>;

/// Builds a [`Harness`] against the simulator: [`Harness::graph`], [`Harness::reporting`].
pub struct HarnessBuilder {
    api: Api,
    messages_per_hour: u32,
    tweaks: Vec<SimTweak>,
    start: String,
    end: String,
    page_size: u32,
    extra: String,
    sink: Option<String>,
}

impl Harness {
    /// A Graph source of the simulator: 60 messages an hour, the two hours before the current
    /// one (absolute bounds), 100 rows a page, unless the builder says otherwise.
    pub fn graph() -> HarnessBuilder {
        Harness::simulated(Api::Graph)
    }

    /// The same as [`Harness::graph`] for the Reporting Web Service.
    pub fn reporting() -> HarnessBuilder {
        Harness::simulated(Api::Reporting)
    }

    /// A source of `api` against the simulator (see [`Harness::graph`]).
    pub fn simulated(api: Api) -> HarnessBuilder {
        HarnessBuilder {
            api,
            messages_per_hour: 60,
            tweaks: Vec::new(),
            start: hours_ago(3),
            end: hours_ago(1),
            page_size: 100,
            extra: String::new(),
            sink: None,
        }
    }

    /// A Graph source against a server that is not the simulator ([`fake_api`] at `base`), over
    /// `window` (epoch seconds), with `extra` source keys ([`fake_api_toml`]).
    pub fn fake(base: &str, window: (i64, i64), extra: &str) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let (state, out) = (dir.path().join("state"), dir.path().join("out.ndjson"));
        let toml = fake_api_toml(base, window, &state, &out, extra);
        Harness {
            sim: None,
            dir,
            state,
            out,
            api: Api::Graph,
            toml,
            source: HarnessSource::Fake {
                base: base.to_owned(),
                window,
            },
        }
    }

    /// The simulated tenant (a [`Harness::fake`] has none).
    pub fn sim(&self) -> &SimServer {
        self.sim.as_deref().expect("a harness of the simulator")
    }

    /// The simulated tenant, for a hook that outlives the borrow (a page hook injecting faults).
    pub fn shared_sim(&self) -> std::sync::Arc<SimServer> {
        self.sim.clone().expect("a harness of the simulator")
    }

    /// A file of the temporary directory.
    pub fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    /// The same configuration with `extra` instead of the source keys it was built with.
    pub fn toml_with(&self, extra: &str) -> String {
        match &self.source {
            HarnessSource::Sim { sink, .. } => self.sim_toml(extra, sink.as_deref()),
            HarnessSource::Fake { base, window } => {
                fake_api_toml(base, *window, &self.state, &self.out, extra)
            }
        }
    }

    /// The configuration with `sink`, the TOML of its sink tables (taking the source `src`),
    /// instead of the file sink ([`config_toml_with_sink`]).
    pub fn toml_with_sink(&self, sink: &str) -> String {
        let HarnessSource::Sim { extra, .. } = &self.source else {
            panic!("a fake API's harness has its file sink");
        };
        self.sim_toml(extra, Some(sink))
    }

    /// The simulated source's configuration with `extra` keys, into `sink`'s tables or the
    /// file sink.
    fn sim_toml(&self, extra: &str, sink: Option<&str>) -> String {
        let HarnessSource::Sim {
            start,
            end,
            page_size,
            ..
        } = &self.source
        else {
            panic!("only a simulated source has a scenario");
        };
        let scenario = Scenario {
            api: self.api,
            state_dir: &self.state,
            out: &self.out,
            start,
            end,
            page_size: *page_size,
            extra,
        };
        match sink {
            Some(sink) => config_toml_with_sink(self.sim(), &scenario, sink),
            None => config_toml(self.sim(), &scenario),
        }
    }

    /// Makes the configuration again with the source's `start` and `end` changed.
    pub fn set_window(&mut self, new_start: &str, new_end: &str) {
        let HarnessSource::Sim {
            start, end, extra, ..
        } = &mut self.source
        else {
            panic!("a fake API's window is given to Harness::fake");
        };
        (*start, *end) = (new_start.to_owned(), new_end.to_owned());
        let extra = extra.clone();
        self.toml = self.toml_with(&extra);
    }

    /// Makes the configuration again with another state directory and output.
    pub fn set_paths(&mut self, state: &Path, out: &Path) {
        (self.state, self.out) = (state.to_owned(), out.to_owned());
        let extra = match &self.source {
            HarnessSource::Sim { extra, .. } => extra.clone(),
            HarnessSource::Fake { .. } => {
                panic!("set the paths of a fake API's harness in its toml")
            }
        };
        self.toml = self.toml_with(&extra);
    }

    /// Graph sources `(id, start, end)` of the simulator, all feeding the file sink at `out`,
    /// `extra` in every source table ([`graph_sources_toml`]).
    pub fn sources_toml(&self, sources: &[(&str, &str, &str)], extra: &str) -> String {
        graph_sources_toml(self.sim(), &self.state, &self.out, sources, extra)
    }

    /// The configuration, parsed.
    pub fn config(&self) -> Config {
        parse(&self.toml)
    }

    /// Writes the configuration to `dir/msgtrace.toml` (for the binary) and returns its path.
    pub fn write_config(&self) -> std::path::PathBuf {
        let path = self.path("msgtrace.toml");
        std::fs::write(&path, &self.toml).unwrap();
        path
    }

    /// Runs the engine once with the test options ([`run_once`]).
    pub fn run_once(&self) -> RunReport {
        run_once(&self.config(), opts())
    }

    /// Runs the engine once with `opts`.
    pub fn run_once_with(&self, opts: EngineOptions) -> RunReport {
        run_once(&self.config(), opts)
    }

    /// Opens the state directory (no engine may hold it).
    pub fn store(&self) -> msgtrace::storage::Store {
        open_store(&self.state)
    }

    /// The source's window as configured: `start` and `end` must be epoch seconds (as the
    /// builder's default and [`hours_ago`] give them).
    pub fn window(&self) -> (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>) {
        let HarnessSource::Sim { start, end, .. } = &self.source else {
            panic!("a fake API's window is given to Harness::fake");
        };
        let at = |s: &str| {
            let secs = s.parse().expect("the window in epoch seconds");
            chrono::DateTime::from_timestamp(secs, 0).unwrap()
        };
        (at(start), at(end))
    }

    /// The simulator's rows of the [`window`](Harness::window).
    pub fn expected(&self) -> Vec<(String, String)> {
        let (start, end) = self.window();
        self.sim().model().expected(start, end, chrono::Utc::now())
    }

    /// The summary rows of the output, each identity counted ([`identities`]).
    pub fn identities(&self) -> HashMap<(String, String), usize> {
        identities(&self.out, self.api)
    }

    /// Every row of every job's window of `report` in the output exactly once
    /// ([`assert_exactly_once`]).
    pub fn assert_exactly_once(&self, report: &RunReport) {
        assert_exactly_once(self.sim(), report, &self.out, self.api);
    }
}

impl HarnessBuilder {
    /// The simulator's messages an hour.
    pub fn rate(mut self, messages_per_hour: u32) -> Self {
        self.messages_per_hour = messages_per_hour;
        self
    }

    /// A change to the simulator's configuration (latency, faults, quota, ...).
    pub fn sim(mut self, tweak: impl FnOnce(&mut SimConfig) + 'static) -> Self {
        self.tweaks.push(Box::new(tweak));
        self
    }

    /// The source's `start` and `end`.
    pub fn window(mut self, start: &str, end: &str) -> Self {
        (self.start, self.end) = (start.to_owned(), end.to_owned());
        self
    }

    /// The source's `page_size`.
    pub fn page_size(mut self, rows: u32) -> Self {
        self.page_size = rows;
        self
    }

    /// More TOML lines for the source table ([`Scenario::extra`]).
    pub fn extra(mut self, toml: &str) -> Self {
        self.extra = toml.to_owned();
        self
    }

    /// The sink tables instead of the file sink ([`config_toml_with_sink`]).
    pub fn sink(mut self, toml: &str) -> Self {
        self.sink = Some(toml.to_owned());
        self
    }

    /// Starts the simulator and makes the directory and the configuration.
    pub fn build(self) -> Harness {
        let tweaks = self.tweaks;
        let sim = sim(self.messages_per_hour, move |c| {
            for tweak in tweaks {
                tweak(c);
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let (state, out) = (dir.path().join("state"), dir.path().join("out.ndjson"));
        let mut h = Harness {
            sim: Some(std::sync::Arc::new(sim)),
            dir,
            state,
            out,
            api: self.api,
            toml: String::new(),
            source: HarnessSource::Sim {
                start: self.start,
                end: self.end,
                page_size: self.page_size,
                extra: self.extra.clone(),
                sink: self.sink,
            },
        };
        h.toml = h.toml_with(&self.extra);
        h
    }
}

/// `msgtrace run` as a child process, its log (stderr) in a file; killed when dropped if it
/// still runs (a test that failed before stopping it).
pub struct MsgtraceRun(pub std::process::Child);

impl MsgtraceRun {
    /// `msgtrace run ARGS -c cfg`, its log in `log`.
    pub fn spawn(cfg: &Path, log: &Path, args: &[&str]) -> MsgtraceRun {
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_msgtrace"))
            .arg("run")
            .args(args)
            .arg("-c")
            .arg(cfg)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        MsgtraceRun(child)
    }

    /// Whether it has exited.
    pub fn exited(&mut self) -> bool {
        self.0.try_wait().unwrap().is_some()
    }

    /// Waits until `done` holds while the process runs; fails if it died.
    pub fn wait_running(&mut self, mut done: impl FnMut() -> bool) {
        assert!(wait_for(|| self.exited() || done()), "timed out");
        assert!(!self.exited(), "msgtrace run died");
    }

    /// Sends it `sig`.
    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.0.id() as i32, sig);
        }
    }

    /// SIGTERM, then the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.signal(libc::SIGTERM);
        assert!(wait_for(|| self.exited()), "no exit after SIGTERM");
        self.0.wait().unwrap()
    }
}

impl Drop for MsgtraceRun {
    fn drop(&mut self) {
        if !self.exited() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
