//! The engine benchmark (issue 7): throughput, memory, scale, the cost of durability, resume and
//! a sink that is down for a while (issue 5), each beside a baseline measured in the same run,
//! printed as one table.
//!
//! ```sh
//! cargo bench --bench engine                      # the full run (release build, a few minutes)
//! cargo bench --bench engine -- --only scale,resume    # graph reporting static durability memory scale resume sinkdown quota
//! cargo bench --bench engine -- --rounds 1              # one throughput round instead of three
//! cargo bench --bench engine -- --rows 50000            # throughput rows (default 1,000,000)
//! ```
//!
//! Without `--bench` (that is, under `cargo test`) it runs a smoke version with tiny sizes that
//! takes seconds in a debug build: it keeps every measurement compiling and working, and checks
//! that each run delivered exactly the rows the simulator holds. Its figures mean nothing.
//!
//! The simulated tenant runs in this process on 127.0.0.1; every measured workload (the engine and
//! both baselines) runs in a child process (this binary again, `--child <json>`), so that CPU time
//! and peak RSS come from the kernel's `wait4` rusage of that child alone.

mod child;
mod measure;
mod nginx;
mod quota;
mod sinkdown;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use msgtrace::actors::dialect::Api;
use msgtrace::actors::window::inclusive_end;
use msgtrace::storage::Store;
use msgtrace_simulator::{SimConfig, SimServer, TenantModel};

use child::{Scale, Work};
use measure::{count_lines, Finished};
use sinkdown::SinkDownPlan;

// The allocator of the `msgtrace` binary (mimalloc, tuned), so that the engine measured in the
// child processes is the engine users run.
msgtrace::binary_allocator!();

/// The sizes of one run.
struct Plan {
    /// `cargo bench` (true) or the smoke run under `cargo test` (false).
    full: bool,
    /// Rows of the throughput measurement (both APIs).
    rows: u64,
    /// Rounds of the throughput measurement (each runs every workload once); the best is kept.
    rounds: usize,
    /// Row counts of the memory measurement (the middle one is the throughput run).
    memory_rows: [u64; 3],
    /// Sources of the scale measurements, with their targets: peak RSS (bytes) and how late the
    /// last poll may start (seconds).
    sources: [(usize, u64, f64); 2],
    /// Rows and page size of the resume measurement, and how many SIGKILLs it makes.
    resume_rows: u64,
    resume_page: u32,
    resume_kills: usize,
    /// The sink-down measurement.
    sinkdown: SinkDownPlan,
}

impl Plan {
    fn full() -> Plan {
        Plan {
            full: true,
            rows: 1_000_000,
            rounds: 3,
            memory_rows: [100_000, 1_000_000, 5_000_000],
            sources: [(1000, 256 << 20, 5.0), (10_000, 512 << 20, 10.0)],
            resume_rows: 200_000,
            resume_page: 5000,
            resume_kills: 5,
            sinkdown: SinkDownPlan {
                rows: 1_000_000,
                page_size: 5000,
                down_after_rows: 300_000,
                outage: Duration::from_secs(25),
                retry_initial_ms: None,
                time_limit: Duration::from_secs(600),
            },
        }
    }

    fn smoke() -> Plan {
        Plan {
            full: false,
            rows: 10_000,
            rounds: 1,
            memory_rows: [2_000, 10_000, 20_000],
            sources: [(10, 256 << 20, 5.0), (20, 512 << 20, 10.0)],
            resume_rows: 6_000,
            resume_page: 500,
            resume_kills: 1,
            sinkdown: SinkDownPlan {
                rows: 6_000,
                page_size: 500,
                down_after_rows: 1_500,
                outage: Duration::from_millis(600),
                retry_initial_ms: Some(50),
                time_limit: Duration::from_secs(60),
            },
        }
    }
}

/// Messages per hour of the throughput tenant: about 50,000 rows an hour (1 to 3 recipients).
const MESSAGES_PER_HOUR: u32 = 25_000;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--child") {
        child::main(args.get(1).expect("--child <json>"));
        return;
    }
    let mut plan = if args.iter().any(|a| a == "--bench") {
        Plan::full()
    } else {
        Plan::smoke()
    };
    if let Some(n) = args
        .iter()
        .position(|a| a == "--rounds")
        .and_then(|i| args.get(i + 1)?.parse().ok())
    {
        plan.rounds = n;
    }
    if let Some(n) = args
        .iter()
        .position(|a| a == "--rows")
        .and_then(|i| args.get(i + 1)?.parse().ok())
    {
        plan.rows = n;
    }
    let only: Option<Vec<String>> = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(|s| s.split(',').map(str::to_owned).collect());
    let wanted = |name: &str| match &only {
        None => true,
        Some(o) => o.iter().any(|x| x == name),
    };
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut table = Table::default();
    let started = Instant::now();

    let sim = SimServer::start(
        SimConfig {
            model: TenantModel {
                messages_per_hour: MESSAGES_PER_HOUR,
                ..TenantModel::default()
            },
            ..SimConfig::default()
        },
        "127.0.0.1:0".parse().expect("address"),
    )
    .expect("simulator starts");

    let mut graph_engine_rss = None;
    for (name, api) in [("graph", Api::Graph), ("reporting", Api::Reporting)] {
        if wanted(name) || (api == Api::Graph && (wanted("durability") || wanted("memory"))) {
            let t = throughput(&sim, &plan, dir.path(), api, api == Api::Graph);
            if api == Api::Graph {
                graph_engine_rss = Some((t.engine.max_rss, t.engine.settled_rss));
            }
            t.report(&mut table, name, wanted(name), wanted("durability"));
        }
    }
    if wanted("static") {
        nginx::section(&sim, &plan, dir.path(), &mut table);
    }
    if wanted("memory") {
        memory(&sim, &plan, dir.path(), graph_engine_rss, &mut table);
    }
    if wanted("scale") {
        scale(&plan, dir.path(), &mut table);
    }
    if wanted("resume") {
        resume(&sim, &plan, dir.path(), &mut table);
    }
    if wanted("sinkdown") {
        sinkdown::sinkdown(&sim, &plan.sinkdown, dir.path(), &mut table);
    }
    if wanted("quota") {
        quota::quota(plan.full, dir.path(), &mut table);
    }
    sim.stop();

    println!();
    if plan.full {
        println!("msgtrace engine benchmark (release, {} cores)", cores());
    } else {
        println!("msgtrace engine benchmark: SMOKE run (tiny sizes; figures are not meaningful; `cargo bench --bench engine` for the real one)");
    }
    println!("{}", table.render());
    println!("total {:.0} s", started.elapsed().as_secs_f64());
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

// ---------------------------------------------------------------------------------------------
// Windows and configurations

/// A window `[start, end)` ending an hour before the current hour that holds at least `rows` rows,
/// and the exact number it holds.
fn window_for(model: &TenantModel, rows: u64) -> (DateTime<Utc>, DateTime<Utc>, u64) {
    let now = Utc::now();
    let end = now.duration_trunc(TimeDelta::hours(1)).expect("trunc") - TimeDelta::hours(1);
    let count = |secs: i64| model.count(end - TimeDelta::seconds(secs), end, now);
    let (mut lo, mut hi) = (1i64, 3600i64);
    while count(hi) < rows {
        hi *= 2;
    }
    while lo < hi {
        let mid = (lo + hi) / 2;
        if count(mid) >= rows {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    (end - TimeDelta::seconds(hi), end, count(hi))
}

fn q(s: &str) -> String {
    serde_json::to_string(s).expect("string serializes")
}

/// The URL of an API on the simulator.
fn api_url(sim: &SimServer, api: Api) -> String {
    match api {
        Api::Graph => sim.graph_url(),
        Api::Reporting => sim.rws_url(),
    }
}

/// Files of one engine run.
struct EngineFiles {
    config: PathBuf,
    state: PathBuf,
    out: PathBuf,
}

impl EngineFiles {
    fn new(dir: &Path, name: &str) -> EngineFiles {
        EngineFiles {
            config: dir.join(format!("{name}.toml")),
            state: dir.join(format!("{name}-state")),
            out: dir.join(format!("{name}.ndjson")),
        }
    }

    fn remove(&self) {
        let _ = std::fs::remove_file(&self.out);
        let _ = std::fs::remove_dir_all(&self.state);
        let _ = std::fs::remove_file(&self.config);
    }
}

/// Writes a configuration: `(source id, tenant id)` sources against `sim`, all into one file sink.
/// The request budget is lifted (Graph's default, 100 requests per 5 minutes per tenant, would
/// measure the budget, not the engine).
fn write_config(
    files: &EngineFiles,
    sim: &SimServer,
    api: Api,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    page_size: u32,
    sources: &[(String, String)],
) {
    let inputs: Vec<String> = sources.iter().map(|(id, _)| q(id)).collect();
    let sink = format!(
        "type = \"file\"\ninputs = [{}]\npath = {}\n",
        inputs.join(", "),
        q(&files.out.to_string_lossy())
    );
    write_config_with_sink(files, sim, api, (start, end), page_size, sources, &sink);
}

/// [`write_config`] with the sink `out` given as the body of its TOML table.
fn write_config_with_sink(
    files: &EngineFiles,
    sim: &SimServer,
    api: Api,
    (start, end): (DateTime<Utc>, DateTime<Utc>),
    page_size: u32,
    sources: &[(String, String)],
    sink: &str,
) {
    let api_name = match api {
        Api::Graph => "graph",
        Api::Reporting => "reporting",
    };
    let mut toml = format!(
        "state_dir = {}\nlog_level = \"error\"\n",
        q(&files.state.to_string_lossy())
    );
    for (id, tenant) in sources {
        write!(
            toml,
            r#"
[sources.{id}]
api = "{api_name}"
url = {url}
start = {start}
end = {end}
page_size = {page_size}
quota = {{ requests = 1000000, per_secs = 1 }}

[sources.{id}.auth]
method = "oauth"
tenant_id = {tenant}
client_id = "sim-client"
client_secret = "sim-secret"
login_url = {base}
"#,
            url = q(&api_url(sim, api)),
            start = start.timestamp(),
            end = end.timestamp(),
            tenant = q(tenant),
            base = q(&sim.base_url()),
        )
        .expect("string write");
    }
    write!(toml, "\n[sinks.out]\n{sink}").expect("string write");
    std::fs::write(&files.config, toml).expect("config written");
}

/// The engine options a run varies (the rest are the defaults).
#[derive(Clone, Copy)]
struct Knobs {
    /// `EngineOptions::durable`.
    durable: bool,
    /// `EngineOptions::prefetch`.
    prefetch: usize,
}

impl Knobs {
    /// What `msgtrace run` does.
    const DEFAULT: Knobs = Knobs {
        durable: true,
        prefetch: msgtrace::actors::fetcher::PREFETCH_PAGES,
    };
}

/// Runs the engine once (one source, Graph or Reporting) over `[start, end)` and checks that it
/// delivered exactly `rows` rows.
fn engine_once(
    sim: &SimServer,
    dir: &Path,
    name: &str,
    api: Api,
    (start, end, rows): (DateTime<Utc>, DateTime<Utc>, u64),
    page_size: u32,
    knobs: Knobs,
) -> Finished {
    let files = EngineFiles::new(dir, name);
    let one = [("src".to_string(), "sim-tenant".to_string())];
    write_config(&files, sim, api, start, end, page_size, &one);
    let child = measure::spawn(&Work::Engine {
        config: files.config.clone(),
        durable: knobs.durable,
        prefetch: knobs.prefetch,
        print_pages: false,
        scale: None,
        continuous: false,
        sink_retry_initial_ms: None,
        commit_group: None,
    });
    let sampler = measure::RssSampler::start(child.pid(), Duration::from_millis(100));
    let mut f = child.wait();
    f.settled_rss = measure::settled(&sampler.finish());
    assert!(
        f.success && f.result["ok"] == true,
        "{name}: engine run failed"
    );
    let written = count_lines(&files.out);
    assert_eq!(written, rows, "{name}: rows written vs rows in the window");
    files.remove();
    f
}

// ---------------------------------------------------------------------------------------------
// 1 and 4: throughput and the cost of durability

struct Throughput {
    rows: u64,
    /// Bytes of the API's response bodies (the same for every run over these pages).
    bytes: u64,
    raw: Finished,
    /// The least CPU of the parse-only runs, and that run's minor page faults.
    parse_cpu: f64,
    parse_faults: u64,
    /// Each round's engine CPU ÷ the mean CPU of the two parse-only runs on either side of it
    /// (seconds apart): the host's noise comes in phases that last minutes, and a pair measured
    /// together shares the phase. The verdict is their median.
    paired: Vec<f64>,
    engine: Finished,
    non_durable: Option<Finished>,
    /// The engine without prefetch (each page requested only after the one before it is
    /// committed): what the overlap gains.
    sequential: Finished,
}

fn throughput(sim: &SimServer, plan: &Plan, dir: &Path, api: Api, durability: bool) -> Throughput {
    let window = window_for(sim.model(), plan.rows);
    let (start, end, rows) = window;
    let page_size = api.max_page_size();
    let base = url::Url::parse(&api_url(sim, api)).expect("API URL");
    let first_url = api
        .first_page_url(&base, start, inclusive_end(end), page_size)
        .to_string();
    let name = format!("{api:?}").to_lowercase();
    eprintln!("bench: {name}: {rows} rows in pages of {page_size}");

    let bodies = dir.join(format!("{name}-bodies.bin"));
    let (mut raws, mut engines, mut non_durables, mut sequentials) =
        (vec![], vec![], vec![], vec![]);
    let (mut parse_cpus, mut paired) = (vec![], vec![]);
    let mut bytes = 0;
    // Interleaved rounds, so that a noisy neighbour hits every workload alike.
    for round in 1..=plan.rounds {
        eprintln!("bench: {name}: round {round} of {}", plan.rounds);
        let raw = measure::spawn(&Work::RawFetch {
            api,
            first_url: first_url.clone(),
            token_url: sim.token_url_v2(),
            scope: match api {
                Api::Graph => "https://graph.microsoft.com/.default".into(),
                Api::Reporting => "https://outlook.office365.com/.default".into(),
            },
            out: bodies.clone(),
        })
        .wait();
        assert!(raw.success, "{name}: raw fetch failed");
        bytes = raw.result["bytes"].as_u64().expect("bytes");
        raws.push(raw);
        let parse_only = || {
            let parse = measure::spawn(&Work::ParseOnly {
                api,
                request_url: first_url.clone(),
                bodies: bodies.clone(),
            })
            .wait();
            assert!(parse.success, "{name}: parse only failed");
            assert_eq!(
                parse.result["rows"].as_u64(),
                Some(rows),
                "{name}: parsed rows"
            );
            (
                parse.result["cpu_secs"].as_f64().expect("cpu_secs"),
                parse.result["minor_faults"].as_u64().expect("minor_faults"),
            )
        };
        // The parse-only baseline right before and right after the engine: both sides of the
        // ratio measured within seconds of each other.
        let before = parse_only();
        let engine_name = format!("{name}-engine");
        let engine = engine_once(
            sim,
            dir,
            &engine_name,
            api,
            window,
            page_size,
            Knobs::DEFAULT,
        );
        let after = parse_only();
        paired.push(engine.cpu.as_secs_f64() / ((before.0 + after.0) / 2.0));
        engines.push(engine);
        parse_cpus.extend([before, after]);
        if durability {
            let off_name = format!("{name}-not-durable");
            let knobs = Knobs {
                durable: false,
                ..Knobs::DEFAULT
            };
            non_durables.push(engine_once(
                sim, dir, &off_name, api, window, page_size, knobs,
            ));
        }
        let knobs = Knobs {
            prefetch: 0,
            ..Knobs::DEFAULT
        };
        let seq_name = format!("{name}-sequential");
        sequentials.push(engine_once(
            sim, dir, &seq_name, api, window, page_size, knobs,
        ));
    }
    let _ = std::fs::remove_file(&bodies);
    Throughput {
        rows,
        bytes,
        raw: best(raws),
        paired,
        parse_cpu: parse_cpus.iter().map(|p| p.0).fold(f64::INFINITY, f64::min),
        parse_faults: parse_cpus
            .iter()
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .map_or(0, |p| p.1),
        engine: best(engines),
        non_durable: durability.then(|| best(non_durables)),
        sequential: best(sequentials),
    }
}

/// The median of some figures (the mean of the middle two of an even count).
fn median(figures: &[f64]) -> f64 {
    let mut sorted = figures.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// The best of several runs of one workload: the shortest wall time, the least CPU (with that
/// run's page faults) and the highest peak RSS (each possibly from a different run).
fn best(runs: Vec<Finished>) -> Finished {
    let (cpu, minor_faults) = runs
        .iter()
        .map(|r| (r.cpu, r.minor_faults))
        .min()
        .expect("a run");
    let max_rss = runs.iter().map(|r| r.max_rss).max().expect("a run");
    let mut fastest = runs.into_iter().min_by_key(|r| r.wall).expect("a run");
    fastest.cpu = cpu;
    fastest.minor_faults = minor_faults;
    fastest.max_rss = max_rss;
    fastest
}

impl Throughput {
    fn rate(&self, f: &Finished) -> f64 {
        self.rows as f64 / f.wall.as_secs_f64()
    }

    fn describe(&self, f: &Finished) -> String {
        format!(
            "{} rows/s, {:.1} MB/s, CPU {:.2} s, RSS {}",
            thousands(self.rate(f)),
            self.bytes as f64 / 1e6 / f.wall.as_secs_f64(),
            f.cpu.as_secs_f64(),
            mib(f.max_rss)
        )
    }

    fn report(&self, table: &mut Table, name: &str, throughput: bool, durability: bool) {
        let per_row = |cpu: f64| cpu / self.rows as f64 * 1e6;
        if throughput {
            let ratio = self.rate(&self.engine) / self.rate(&self.raw);
            table.row(
                &format!(
                    "{name}: engine throughput ({} rows)",
                    thousands(self.rows as f64)
                ),
                &self.describe(&self.engine),
                &format!("raw fetch: {}", self.describe(&self.raw)),
                ratio,
                "≥ 0.5 × raw fetch",
                ratio >= 0.5,
            );
            let ratio = self.rate(&self.engine) / self.rate(&self.sequential);
            table.row(
                &format!("{name}: prefetch (pages fetched ahead during a commit)"),
                &format!("on: {} rows/s", thousands(self.rate(&self.engine))),
                &format!(
                    "off: {} rows/s, RSS {}",
                    thousands(self.rate(&self.sequential)),
                    mib(self.sequential.max_rss)
                ),
                ratio,
                "-",
                true,
            );
            let engine_cpu = per_row(self.engine.cpu.as_secs_f64());
            let parse_cpu = per_row(self.parse_cpu);
            let ratio = median(&self.paired);
            let faults = |n: u64| n as f64 / self.rows as f64;
            let paired: Vec<String> = self.paired.iter().map(|r| format!("{r:.2}")).collect();
            table.row(
                &format!("{name}: engine CPU per row (ratio: median of the rounds)"),
                &format!(
                    "{engine_cpu:.2} µs/row, {:.2} page faults/row; each round ÷ the parse only around it: {}; least ÷ least: {:.2}",
                    faults(self.engine.minor_faults),
                    paired.join(", "),
                    engine_cpu / parse_cpu,
                ),
                &format!(
                    "parse only: {parse_cpu:.2} µs/row, {:.2} page faults/row",
                    faults(self.parse_faults)
                ),
                ratio,
                "≤ 2 × parse only",
                ratio <= 2.0,
            );
        }
        if let (Some(off), true) = (&self.non_durable, durability) {
            let ratio = self.rate(&self.engine) / self.rate(off);
            table.row(
                &format!("{name}: durability (flush_async per page)"),
                &format!("on: {} rows/s", thousands(self.rate(&self.engine))),
                &format!("off: {} rows/s", thousands(self.rate(off))),
                ratio,
                "≥ 0.9 (costs ≤ 10 %)",
                ratio >= 0.9,
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 2: memory

fn memory(
    sim: &SimServer,
    plan: &Plan,
    dir: &Path,
    middle: Option<(u64, Option<u64>)>,
    table: &mut Table,
) {
    let mut rss = Vec::new();
    for (i, rows) in plan.memory_rows.into_iter().enumerate() {
        let measured = match middle {
            Some((peak, settled)) if i == 1 => (peak, settled.or(Some(peak))),
            _ => {
                eprintln!("bench: memory: {rows} rows");
                let window = window_for(sim.model(), rows);
                let f = engine_once(sim, dir, "memory", Api::Graph, window, 5000, Knobs::DEFAULT);
                (f.max_rss, f.settled_rss.or(Some(f.max_rss)))
            }
        };
        rss.push((rows, measured));
    }
    // Flat means: what the engine holds once settled does not grow with the rows (a leak or a
    // buffer that grows would); the peak, a transient of a few pages at once, stays under 64 MiB.
    let (base_rows, (_, base)) = rss[0];
    let base = base.unwrap_or(1);
    for (rows, (peak, settled)) in rss {
        let settled = settled.unwrap_or(0);
        let ratio = settled as f64 / base as f64;
        table.row(
            &format!(
                "memory: RSS at {} rows, settled (peak)",
                thousands(rows as f64)
            ),
            &format!("{} (peak {})", mib(settled), mib(peak)),
            &format!("at {} rows: {}", thousands(base_rows as f64), mib(base)),
            ratio,
            "peak ≤ 64 MiB; settled flat (≤ 1.25)",
            peak <= 64 << 20 && ratio <= 1.25,
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 3: scale

/// A scale run that does not end within this is a hang: it is killed and reported.
const SCALE_TIME_LIMIT: Duration = Duration::from_secs(300);

struct ScaleRun {
    rss: u64,
    /// Killed after [`SCALE_TIME_LIMIT`].
    hung: bool,
    cpu_per_poll: f64,
    last_start_late: f64,
    /// Seconds from the due instant until every source had delivered its page.
    all_delivered: f64,
}

fn scale(plan: &Plan, dir: &Path, table: &mut Table) {
    let most = plan.sources.iter().map(|s| s.0).max().unwrap_or(1);
    let tenants: Vec<String> = (1..=most).map(|i| format!("tenant-{i:05}")).collect();
    let sim = SimServer::start(
        SimConfig {
            other_tenant_ids: tenants.clone(),
            ..SimConfig::default()
        },
        "127.0.0.1:0".parse().expect("address"),
    )
    .expect("simulator starts");
    let one = scale_run(&sim, dir, &tenants[..1]);
    for &(n, rss_target, late_target) in &plan.sources {
        let all = scale_run(&sim, dir, &tenants[..n]);
        scale_rows(table, n, &one, &all, (rss_target, late_target));
    }
    sim.stop();
}

fn scale_rows(
    table: &mut Table,
    n: usize,
    one: &ScaleRun,
    all: &ScaleRun,
    (rss_target, late_target): (u64, f64),
) {
    let hung = |r: &ScaleRun, text: String| {
        if r.hung {
            format!("HUNG (killed after {} s)", SCALE_TIME_LIMIT.as_secs())
        } else {
            text
        }
    };
    table.row(
        &format!("scale: {n} sources due at once, peak RSS"),
        &if all.hung {
            format!(
                "{} when killed (HUNG after {} s)",
                mib(all.rss),
                SCALE_TIME_LIMIT.as_secs()
            )
        } else {
            mib(all.rss)
        },
        &format!("1 source: {}", hung(one, mib(one.rss))),
        all.rss as f64 / one.rss as f64,
        &format!("≤ {} MiB", rss_target >> 20),
        !all.hung && all.rss <= rss_target,
    );
    table.row(
        &format!("scale: {n} sources, CPU per source per poll"),
        &hung(all, format!("{:.2} ms", all.cpu_per_poll * 1e3)),
        &format!(
            "1 source: {}",
            hung(one, format!("{:.2} ms", one.cpu_per_poll * 1e3))
        ),
        all.cpu_per_poll / one.cpu_per_poll,
        "-",
        true,
    );
    table.row(
        &format!("scale: {n} sources, last poll starts after its due time"),
        &hung(
            all,
            format!(
                "{:.3} s (all {n} delivered after {:.1} s)",
                all.last_start_late, all.all_delivered
            ),
        ),
        &format!(
            "1 source: {}",
            hung(one, format!("{:.3} s", one.last_start_late))
        ),
        all.last_start_late / one.last_start_late.max(1e-3),
        &format!("≤ {late_target} s"),
        !all.hung && all.last_start_late <= late_target,
    );
}

/// One engine with a source per tenant, all due when it starts (`--once`): one 15-minute poll
/// each, one page per poll.
fn scale_run(sim: &SimServer, dir: &Path, tenants: &[String]) -> ScaleRun {
    let n = tenants.len();
    eprintln!("bench: scale: {n} sources");
    let now = Utc::now();
    let end = now.duration_trunc(TimeDelta::hours(1)).expect("trunc") - TimeDelta::hours(1);
    let start = end - TimeDelta::minutes(15);
    let per_source = sim.model().count(start, end, now);
    let page_size = 1000;
    assert!(per_source <= u64::from(page_size), "one page per poll");
    let sources: Vec<(String, String)> = tenants
        .iter()
        .enumerate()
        .map(|(i, t)| (format!("s{:04}", i + 1), t.clone()))
        .collect();
    let files = EngineFiles::new(dir, &format!("scale-{n}"));
    write_config(&files, sim, Api::Graph, start, end, page_size, &sources);
    let f = measure::spawn(&Work::Engine {
        config: files.config.clone(),
        durable: true,
        prefetch: msgtrace::actors::fetcher::PREFETCH_PAGES,
        print_pages: false,
        scale: Some(Scale { sources: n }),
        continuous: false,
        sink_retry_initial_ms: None,
        commit_group: None,
    })
    .wait_at_most(Some(SCALE_TIME_LIMIT));
    if f.hung {
        eprintln!(
            "bench: scale: {n} sources: no end after {} s: killed (a hang)",
            SCALE_TIME_LIMIT.as_secs()
        );
        files.remove();
        return ScaleRun {
            rss: f.max_rss,
            hung: true,
            cpu_per_poll: f64::NAN,
            last_start_late: f64::NAN,
            all_delivered: f64::NAN,
        };
    }
    assert!(
        f.success && f.result["ok"] == true,
        "scale run ({n} sources) failed"
    );
    assert_eq!(
        count_lines(&files.out),
        per_source * n as u64,
        "scale: rows written"
    );
    let jobs = Store::open(&files.state)
        .expect("state opens")
        .jobs(None)
        .expect("jobs");
    assert_eq!(jobs.len(), n, "one job per source");
    let due = DateTime::from_timestamp_micros(f.result["due_micros"].as_i64().expect("due"))
        .expect("due time");
    let last_start = jobs.iter().map(|j| j.started_at).max().expect("a job");
    files.remove();
    let secs = |key: &str| {
        f.result[key]
            .as_f64()
            .unwrap_or_else(|| panic!("scale: no {key} in {}", f.result))
    };
    ScaleRun {
        rss: f.max_rss,
        hung: false,
        cpu_per_poll: secs("poll_cpu_secs") / n as f64,
        last_start_late: (last_start - due).num_microseconds().unwrap_or(0) as f64 / 1e6,
        all_delivered: secs("all_delivered_after_due_secs"),
    }
}

// ---------------------------------------------------------------------------------------------
// 5: resume after SIGKILL

fn resume(sim: &SimServer, plan: &Plan, dir: &Path, table: &mut Table) {
    let (start, end, rows) = window_for(sim.model(), plan.resume_rows);
    let page = plan.resume_page;
    eprintln!(
        "bench: resume: {rows} rows in pages of {page}, {} SIGKILLs",
        plan.resume_kills
    );
    let files = EngineFiles::new(dir, "resume");
    let one = [("src".to_string(), "sim-tenant".to_string())];
    write_config(&files, sim, Api::Graph, start, end, page, &one);
    let work = Work::Engine {
        config: files.config.clone(),
        durable: true,
        prefetch: msgtrace::actors::fetcher::PREFETCH_PAGES,
        print_pages: true,
        scale: None,
        continuous: false,
        sink_retry_initial_ms: None,
        commit_group: None,
    };
    let first_page = |r: &measure::Running| -> Instant {
        match r.next_line() {
            Some((t, l)) if l == "page" => t,
            other => panic!("resume: expected a page, got {other:?}"),
        }
    };
    let served_before = sim.stats().pages_served;
    let mut rng = Rng::seeded();
    let mut child = measure::spawn(&work);
    let cold = first_page(&child) - child.spawned;
    let mut restarts = Vec::new();
    for _ in 0..plan.resume_kills {
        // Let it deliver a few pages, then kill it at a random moment inside the next one.
        let mut last = Instant::now();
        let mut gap = Duration::from_millis(50);
        for _ in 0..rng.range(2, 5) {
            let (t, line) = child.next_line().expect("child still running");
            assert_eq!(
                line, "page",
                "resume: the collection ended before the kill; make it longer"
            );
            gap = t - last;
            last = t;
        }
        std::thread::sleep(gap.mul_f64(rng.unit()));
        child.kill();
        child = measure::spawn(&work);
        restarts.push(first_page(&child) - child.spawned);
    }
    let f = child.wait();
    assert!(
        f.success && f.result["ok"] == true,
        "resume: final run failed"
    );
    let served = sim.stats().pages_served - served_before;
    let needed = rows.div_ceil(u64::from(page));
    let fetched_twice = served - needed;
    let duplicate_rows = count_lines(&files.out) - rows;
    files.remove();
    let worst = restarts.iter().max().copied().unwrap_or_default();
    let kills = plan.resume_kills as u64;
    table.row(
        &format!("resume: SIGKILL → restart → next delivered page (worst of {kills})"),
        &format!("{:.3} s", worst.as_secs_f64()),
        &format!("cold start → first page: {:.3} s", cold.as_secs_f64()),
        worst.as_secs_f64() / cold.as_secs_f64(),
        "≤ 1 s",
        worst <= Duration::from_secs(1),
    );
    // What a kill may repeat: the page being committed is delivered again; the page whose
    // request was outstanding is requested again (the others fetched before the kill are taken
    // from the spool).
    let one_page_each = kills * u64::from(page);
    table.row(
        &format!("resume: rows delivered twice ({kills} kills)"),
        &format!(
            "{duplicate_rows} rows ({:.2} pages of {page})",
            duplicate_rows as f64 / f64::from(page)
        ),
        &format!("one page per kill: {one_page_each} rows"),
        duplicate_rows as f64 / one_page_each as f64,
        "≤ 1 page per kill",
        duplicate_rows <= one_page_each,
    );
    let ahead = msgtrace::actors::fetcher::PREFETCH_PAGES as u64;
    table.row(
        &format!("resume: pages fetched twice ({kills} kills)"),
        &format!("{fetched_twice} pages"),
        &format!(
            "without the spool: committing + {ahead} fetched ahead, ≤ {} per kill",
            1 + ahead
        ),
        fetched_twice as f64 / kills as f64,
        "≤ 1 per kill (the one in flight)",
        fetched_twice <= kills,
    );
}

/// xorshift64*: kill timings, seeded from the clock and printed.
struct Rng(u64);

impl Rng {
    fn seeded() -> Rng {
        let seed = std::env::var("BENCH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| Utc::now().timestamp_nanos_opt().unwrap_or(1) as u64 | 1);
        eprintln!("bench: resume seed {seed} (BENCH_SEED reproduces it)");
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

// ---------------------------------------------------------------------------------------------
// The table

#[derive(Default)]
struct Table {
    rows: Vec<[String; 6]>,
}

impl Table {
    fn row(
        &mut self,
        what: &str,
        figure: &str,
        baseline: &str,
        ratio: f64,
        target: &str,
        met: bool,
    ) {
        eprintln!(
            "bench: {what}: {figure} | {baseline} | ratio {ratio:.2} | {target}{}",
            if met || target == "-" {
                ""
            } else {
                " | MISSED"
            }
        );
        self.rows.push([
            what.to_owned(),
            figure.to_owned(),
            baseline.to_owned(),
            format!("{ratio:.2}"),
            target.to_owned(),
            if target == "-" {
                "-".to_owned()
            } else if met {
                "met".to_owned()
            } else {
                "MISSED".to_owned()
            },
        ]);
    }

    /// A Markdown table, columns padded (paste it into docs/benchmarks.md as is).
    fn render(&self) -> String {
        let header = [
            "measurement",
            "figure",
            "baseline (same run)",
            "ratio",
            "target",
            "verdict",
        ]
        .map(str::to_owned);
        let all: Vec<&[String; 6]> = std::iter::once(&header).chain(&self.rows).collect();
        let width = |c: usize| all.iter().map(|r| r[c].chars().count()).max().unwrap_or(0);
        let widths: Vec<usize> = (0..6).map(width).collect();
        let line = |r: &[String; 6]| {
            let cells: Vec<String> = r
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count())))
                .collect();
            format!("| {} |", cells.join(" | "))
        };
        let mut out = line(&header);
        let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        write!(out, "\n|-{}-|", rule.join("-|-")).expect("string write");
        for r in &self.rows {
            write!(out, "\n{}", line(r)).expect("string write");
        }
        out
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

/// `1234567.8` → `1,234,568`.
fn thousands(x: f64) -> String {
    let s = format!("{:.0}", x);
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}
