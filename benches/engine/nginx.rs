//! Section `static` (issue 18): the engine against the fastest real things this machine has,
//! in the same run. The window's pages, as the simulator answers them, are saved once and served
//! as static files by nginx on 127.0.0.1 (one worker), their next links rewritten to point at
//! nginx. Then, in interleaved rounds:
//!
//! - raw: `curl` fetches every page on one keep-alive connection, bodies to a file (the limit of
//!   this machine's HTTP: no parsing at all);
//! - plain parse: the page files parsed and written as NDJSON with `_time` by the fastest plain
//!   Rust we wrote (rows passed through as `RawValue`, only the received time read; CPU of the
//!   parse and the writing, not of reading the files);
//! - the Python peer (`peer.py`: `requests` + `json`, sequential, NDJSON out);
//! - the engine (`--once`, durable per-page commit, file sink), reading from nginx; and the same
//!   with commit groups of 4 (`commit_group = 4`: pages that arrive back to back committed
//!   together, one `fsync` for them), to measure what they gain.
//!
//! nginx is Debian's package: the full run installs it when it is missing and it runs as root;
//! the smoke run under `cargo test` skips the section without it (CI does not install it), and
//! skips the peer without Python's `requests`.

use std::io::Write as _;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use msgtrace::actors::dialect::Api;
use msgtrace::actors::window::inclusive_end;
use msgtrace_simulator::SimServer;

use crate::child::{next_link_span, Work};
use crate::measure::{self, count_lines, Finished, RssSampler};
use crate::{
    api_url, best, median, q, thousands, window_for, write_config, EngineFiles, Plan, Table,
};

/// The pages of one API served by nginx.
struct Site {
    api: Api,
    port: u16,
    nginx: Child,
    /// The page files, in order.
    pages: Vec<PathBuf>,
}

fn api_name(api: Api) -> &'static str {
    match api {
        Api::Graph => "graph",
        Api::Reporting => "reporting",
    }
}

/// The nginx binary: on the PATH or in Debian's place; installed when missing, if `install`.
fn nginx_binary(install: bool) -> Option<PathBuf> {
    let found = || {
        ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
    };
    if let Some(p) = found() {
        return Some(p);
    }
    // SAFETY: geteuid has no preconditions.
    if !install || unsafe { libc::geteuid() } != 0 {
        return None;
    }
    eprintln!("bench: installing nginx (apt-get install nginx-light)");
    let _ = Command::new("apt-get")
        .args(["install", "-y", "nginx-light"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status();
    found()
}

fn python_has_requests() -> bool {
    Command::new("python3")
        .args(["-c", "import requests"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn page_url(port: u16, api: Api, n: usize) -> String {
    format!("http://127.0.0.1:{port}/{}/page?n={n}", api_name(api))
}

impl Site {
    fn page_url(&self, n: usize) -> String {
        page_url(self.port, self.api, n)
    }

    /// The source `url` the engine is given: nginx answers its first query with page 0.
    fn api_url(&self) -> String {
        format!("http://127.0.0.1:{}/{}/page", self.port, api_name(self.api))
    }

    /// Saves the bodies of `bodies` (the raw fetch's file) as page files with their next links
    /// pointing at nginx, and starts nginx on them.
    fn publish(nginx: &Path, dir: &Path, api: Api, bodies: &Path) -> Site {
        let root = dir.join("site");
        let pages_dir = root.join(api_name(api));
        std::fs::create_dir_all(&pages_dir).expect("site directory");
        let port = free_port();
        let mut pages = Vec::new();
        let data = std::fs::read(bodies).expect("raw bodies");
        let mut at = 0;
        while at < data.len() {
            let len = u64::from_le_bytes(data[at..at + 8].try_into().expect("length")) as usize;
            let body = &data[at + 8..at + 8 + len];
            at += 8 + len;
            let n = pages.len();
            let page = match next_link_span(api, body) {
                Some((from, to)) => {
                    let mut page = body[..from].to_vec();
                    page.extend_from_slice(page_url(port, api, n + 1).as_bytes());
                    page.extend_from_slice(&body[to..]);
                    page
                }
                None => body.to_vec(),
            };
            let path = pages_dir.join(format!("{n}.json"));
            std::fs::write(&path, page).expect("page file");
            pages.push(path);
        }
        // SAFETY: geteuid has no preconditions.
        let user = if unsafe { libc::geteuid() } == 0 {
            "user root;\n"
        } else {
            ""
        };
        let conf = format!(
            "{user}worker_processes 1;\npid {dir}/nginx.pid;\nerror_log {dir}/nginx-error.log;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n  keepalive_requests 1000000;\n\
             \x20 keepalive_timeout 300s;\n  client_body_temp_path {dir}/tmp;\n  proxy_temp_path {dir}/tmp;\n\
             \x20 fastcgi_temp_path {dir}/tmp;\n  uwsgi_temp_path {dir}/tmp;\n  scgi_temp_path {dir}/tmp;\n\
             \x20 default_type application/json;\n\
             \x20 map $arg_n $page {{ \"\" 0; default $arg_n; }}\n\
             \x20 server {{\n    listen 127.0.0.1:{port};\n    root {root};\n\
             \x20   location /{name}/page {{ try_files /{name}/$page.json =404; }}\n  }}\n}}\n",
            dir = dir.display(),
            root = root.display(),
            name = api_name(api),
        );
        let conf_path = dir.join(format!("nginx-{}.conf", api_name(api)));
        std::fs::create_dir_all(dir.join("tmp")).expect("nginx temp directory");
        std::fs::write(&conf_path, conf).expect("nginx configuration");
        let nginx = Command::new(nginx)
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&conf_path)
            .args(["-g", "daemon off;"])
            // Not the bench's stdout and stderr: a worker that outlived the master would hold
            // them open (and `cargo test | tee` waited for it forever).
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx starts");
        let site = Site {
            api,
            port,
            nginx,
            pages,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nginx did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        site
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers, then exits (SIGKILL left the worker running).
        // SAFETY: kill(2) on the pid of our own unreaped child.
        unsafe {
            libc::kill(self.nginx.id() as libc::pid_t, libc::SIGTERM);
        }
        let _ = self.nginx.wait();
    }
}

/// One measured child of a program other than the bench, with its peak RSS sampled.
fn run_command(command: Command, stdout: Stdio) -> Finished {
    let child = measure::spawn_command(command, stdout);
    let sampler = RssSampler::start(child.pid(), Duration::from_millis(20));
    let mut f = child.wait();
    let peak = sampler.finish().iter().map(|s| s.1).max().unwrap_or(0);
    f.max_rss = f.max_rss.max(peak * 1024);
    f
}

/// The section's runs of one API, best of each.
struct Runs {
    rows: u64,
    curl: Finished,
    plain_cpu: f64,
    /// The least time of the durable I/O floor: each page's lines written and synced, then a
    /// checkpoint (see `child::DurableFloor`).
    floor_io: f64,
    python: Option<Finished>,
    engine: Finished,
    /// The engine with commit groups of up to 4 pages (`commit_group = 4`).
    grouped: Finished,
    /// Each round's engine CPU ÷ that round's plain parse CPU.
    paired: Vec<f64>,
}

pub fn section(sim: &SimServer, plan: &Plan, dir: &Path, table: &mut Table) {
    let Some(nginx) = nginx_binary(plan.full) else {
        eprintln!("bench: static: SKIPPED: nginx not installed (apt-get install nginx-light)");
        return;
    };
    let python = python_has_requests();
    if !python {
        eprintln!("bench: static: the Python peer SKIPPED: python3 has no requests (pip install requests)");
    }
    for api in [Api::Graph, Api::Reporting] {
        let runs = measure_api(sim, plan, dir, &nginx, api, python);
        report(table, api, &runs);
    }
}

fn measure_api(
    sim: &SimServer,
    plan: &Plan,
    dir: &Path,
    nginx: &Path,
    api: Api,
    python: bool,
) -> Runs {
    let name = api_name(api);
    let window = window_for(sim.model(), plan.rows);
    let (start, end, rows) = window;
    let page_size = api.max_page_size();
    let scope = match api {
        Api::Graph => "https://graph.microsoft.com/.default",
        Api::Reporting => "https://outlook.office365.com/.default",
    };
    let base = url::Url::parse(&api_url(sim, api)).expect("API URL");
    let first = |base: &url::Url| {
        api.first_page_url(base, start, inclusive_end(end), page_size)
            .to_string()
    };
    let bodies = dir.join(format!("static-{name}-bodies.bin"));
    let saved = measure::spawn(&Work::RawFetch {
        api,
        first_url: first(&base),
        token_url: sim.token_url_v2(),
        scope: scope.into(),
        out: bodies.clone(),
    })
    .wait();
    assert!(saved.success, "static {name}: saving the pages failed");
    let site_dir = dir.join(format!("static-{name}"));
    let site = Site::publish(nginx, &site_dir, api, &bodies);
    let _ = std::fs::remove_file(&bodies);
    let bytes: u64 = site
        .pages
        .iter()
        .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
        .sum();
    let nginx_first = first(&url::Url::parse(&site.api_url()).expect("site URL"));
    eprintln!(
        "bench: static {name}: {rows} rows, {} pages, {:.0} MB from nginx on port {}",
        site.pages.len(),
        bytes as f64 / 1e6,
        site.port
    );

    let curl_config = site_dir.join("curl.cfg");
    let mut cfg = std::fs::File::create(&curl_config).expect("curl config");
    writeln!(cfg, "header = \"Authorization: Bearer sim\"").expect("curl config");
    writeln!(cfg, "url = {}", q(&nginx_first)).expect("curl config");
    for n in 1..site.pages.len() {
        writeln!(cfg, "url = {}", q(&site.page_url(n))).expect("curl config");
    }
    drop(cfg);

    let (mut curls, mut pythons, mut engines, mut plains, mut paired) =
        (vec![], vec![], vec![], vec![], vec![]);
    let (mut groupeds, mut floors) = (vec![], vec![]);
    for round in 1..=plan.rounds {
        eprintln!("bench: static {name}: round {round} of {}", plan.rounds);
        let out = site_dir.join("curl.out");
        let mut curl = Command::new("curl");
        curl.arg("-s").arg("-K").arg(&curl_config);
        let f = run_command(
            curl,
            Stdio::from(std::fs::File::create(&out).expect("curl out")),
        );
        assert!(f.success, "static {name}: curl failed");
        let got = std::fs::metadata(&out).map_or(0, |m| m.len());
        assert!(
            got >= bytes,
            "static {name}: curl fetched {got} of {bytes} bytes"
        );
        let _ = std::fs::remove_file(&out);
        curls.push(f);

        let floor_dir = site_dir.join("floor");
        let plain = measure::spawn(&Work::PlainParse {
            api,
            pages: site.pages.clone(),
            durable_dir: Some(floor_dir.clone()),
        })
        .wait();
        let _ = std::fs::remove_dir_all(&floor_dir);
        assert!(plain.success, "static {name}: plain parse failed");
        assert_eq!(
            plain.result["rows"].as_u64(),
            Some(rows),
            "static {name}: plain rows"
        );
        let plain_cpu = plain.result["cpu_secs"].as_f64().expect("cpu_secs");
        plains.push(plain_cpu);
        floors.push(plain.result["io_secs"].as_f64().expect("io_secs"));

        if python {
            let out = site_dir.join("python.ndjson");
            let mut peer = Command::new("python3");
            peer.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/engine/peer.py"))
                .args([name, &nginx_first, &sim.token_url_v2(), scope])
                .arg(&out);
            let f = run_command(peer, Stdio::piped());
            assert!(f.success, "static {name}: the Python peer failed");
            assert_eq!(count_lines(&out), rows, "static {name}: Python peer rows");
            let _ = std::fs::remove_file(&out);
            pythons.push(f);
        }

        let engine = engine_at(sim, &site, dir, window, (page_size, None));
        paired.push(engine.cpu.as_secs_f64() / plain_cpu);
        engines.push(engine);
        groupeds.push(engine_at(sim, &site, dir, window, (page_size, Some(4))));
    }
    Runs {
        rows,
        curl: best(curls),
        plain_cpu: plains.iter().copied().fold(f64::INFINITY, f64::min),
        floor_io: floors.iter().copied().fold(f64::INFINITY, f64::min),
        python: (!pythons.is_empty()).then(|| best(pythons)),
        engine: best(engines),
        grouped: best(groupeds),
        paired,
    }
}

/// The engine (`--once`, durable, file sink) collecting the window from nginx; its token from
/// the simulator.
fn engine_at(
    sim: &SimServer,
    site: &Site,
    dir: &Path,
    (start, end, rows): (
        chrono::DateTime<chrono::Utc>,
        chrono::DateTime<chrono::Utc>,
        u64,
    ),
    (page_size, commit_group): (u32, Option<usize>),
) -> Finished {
    let name = format!("static-{}-engine", api_name(site.api));
    let files = EngineFiles::new(dir, &name);
    let one = [("src".to_string(), "sim-tenant".to_string())];
    write_config(&files, sim, site.api, start, end, page_size, &one);
    let text = std::fs::read_to_string(&files.config).expect("config");
    let sim_url = format!("url = {}", q(&api_url(sim, site.api)));
    assert!(text.contains(&sim_url), "write_config names the API URL");
    let text = text.replace(&sim_url, &format!("url = {}", q(&site.api_url())));
    std::fs::write(&files.config, text).expect("config");
    let child = measure::spawn(&Work::Engine {
        config: files.config.clone(),
        durable: true,
        prefetch: msgtrace::actors::fetcher::PREFETCH_PAGES,
        print_pages: false,
        scale: None,
        continuous: false,
        sink_retry_initial_ms: None,
        commit_group,
    });
    let f = child.wait();
    assert!(
        f.success && f.result["ok"] == true,
        "{name}: engine run failed"
    );
    assert_eq!(count_lines(&files.out), rows, "{name}: rows written");
    files.remove();
    f
}

fn report(table: &mut Table, api: Api, r: &Runs) {
    let name = api_name(api);
    let rate = |f: &Finished| r.rows as f64 / f.wall.as_secs_f64();
    let per_row = |cpu: f64| cpu / r.rows as f64 * 1e6;
    let describe = |f: &Finished| {
        format!(
            "{} rows/s, CPU {:.2} s ({:.2} µs/row)",
            thousands(rate(f)),
            f.cpu.as_secs_f64(),
            per_row(f.cpu.as_secs_f64())
        )
    };
    let ratio = rate(&r.engine) / rate(&r.curl);
    table.row(
        &format!("{name} from nginx: engine vs raw (curl)"),
        &describe(&r.engine),
        &format!("curl: {}", describe(&r.curl)),
        ratio,
        "≥ 0.5 × raw (nginx + curl)",
        ratio >= 0.5,
    );
    if let Some(py) = &r.python {
        let ratio = rate(&r.engine) / rate(py);
        table.row(
            &format!("{name} from nginx: engine vs the Python peer"),
            &format!("{} rows/s", thousands(rate(&r.engine))),
            &format!("Python (requests + json): {}", describe(py)),
            ratio,
            "≥ 10 × Python peer",
            ratio >= 10.0,
        );
    }
    let floor_rate = r.rows as f64 / r.floor_io;
    table.row(
        &format!("{name} from nginx: engine vs the durable I/O floor"),
        &format!("{} rows/s", thousands(rate(&r.engine))),
        &format!(
            "each page's lines written + fdatasync, then a checkpoint's (nothing else): {} rows/s, {:.2} × curl",
            thousands(floor_rate),
            floor_rate / rate(&r.curl)
        ),
        rate(&r.engine) / floor_rate,
        "-",
        true,
    );
    table.row(
        &format!("{name} from nginx: engine with commit groups of 4"),
        &format!("commit_group = 4: {}", describe(&r.grouped)),
        &format!(
            "default, every page on its own: {} rows/s",
            thousands(rate(&r.engine))
        ),
        rate(&r.grouped) / rate(&r.engine),
        "-",
        true,
    );
    let engine_us = per_row(r.engine.cpu.as_secs_f64());
    let paired: Vec<String> = r.paired.iter().map(|x| format!("{x:.2}")).collect();
    table.row(
        &format!("{name} from nginx: engine CPU per row"),
        &format!(
            "{engine_us:.2} µs/row (every thread, HTTP to fsync); ÷ plain parse per round: {}",
            paired.join(", ")
        ),
        &format!(
            "plain Rust parse + NDJSON: {:.2} µs/row",
            per_row(r.plain_cpu)
        ),
        median(&r.paired),
        "≤ 1.5 µs/row",
        engine_us <= 1.5,
    );
}
