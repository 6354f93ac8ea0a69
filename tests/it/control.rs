//! The control API against a running `msgtrace run`: the job inspector, the secret list and the
//! dump answer while the engine holds the state directory, and print what they print once it
//! stopped; no endpoint shows a secret; the status page renders in headless Chromium.

use crate::common::*;
use msgtrace::storage::{JobRecord, JobState};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

fn msgtrace(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_msgtrace"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn dump(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_msgtrace-dump"))
        .args(args)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Stores a secret with `msgtrace secrets set` (the key file is made beside the state dir).
fn set_secret(cfg: &str, name: &str, kind: &str, value: &str) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_msgtrace"))
        .args(["secrets", "set", name, "-c", cfg, "--kind", kind])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(value.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
}

/// `msgtrace run -c cfg` as a child; killed when dropped, stopped with SIGTERM by [`stop`].
struct Running {
    child: Child,
}

impl Running {
    /// Starts the engine and waits until it serves its control socket.
    fn start(cfg: &Path, state: &Path) -> Running {
        let child = Command::new(env!("CARGO_BIN_EXE_msgtrace"))
            .args(["run", "-c"])
            .arg(cfg)
            .env("MSGTRACE_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("msgtrace starts");
        let mut running = Running { child };
        let socket = state.join("control.sock");
        assert!(
            wait_for(|| socket.exists() || running.child.try_wait().unwrap().is_some()),
            "no control socket"
        );
        assert!(
            running.child.try_wait().unwrap().is_none(),
            "the engine exited"
        );
        running
    }

    /// SIGTERM, then waits for a clean exit.
    fn stop(mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{status:?}");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn jobs_json(cfg: &str) -> Vec<JobRecord> {
    let o = msgtrace(&["jobs", "-c", cfg, "--json"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// A GET on 127.0.0.1 over TCP: (status line, body).
fn get(addr: &str, path: &str) -> (String, String) {
    get_as(addr, addr, path)
}

/// A GET to `addr` with the `Host` header `host`.
fn get_as(addr: &str, host: &str, path: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

/// One Graph source `src` of a tenant of `rate` messages an hour (collecting for a few seconds
/// when the simulator waits `latency_ms` before each page) whose schedule fires only once a year
/// after the run at start, so that nothing changes once its first job ended.
fn scheduled(rate: u32, latency_ms: u64) -> Harness {
    Harness::graph()
        .rate(rate)
        .sim(move |c| c.page_latency_ms = latency_ms)
        .extra("schedule = \"0 0 1 1 *\"")
        .build()
}

/// The harness's configuration file (`c.toml`) with `top` before it.
fn config_file(h: &Harness, top: &str) -> PathBuf {
    let cfg = h.path("c.toml");
    std::fs::write(&cfg, format!("{top}\n{}", h.toml)).unwrap();
    cfg
}

#[test]
fn jobs_secrets_and_dump_answer_while_the_engine_runs_and_match_after_it_stopped() {
    let h = scheduled(600, 100);
    let (cfg, state) = (config_file(&h, ""), &h.state);
    let c = cfg.to_str().unwrap();
    let s = state.to_str().unwrap();
    set_secret(
        c,
        "rws-creds",
        "credentials",
        "someone\nhunter2-not-shown\n",
    );
    let engine = Running::start(&cfg, state);

    // While the job runs: the tools answer (before this change: "in use by another msgtrace
    // process", exit 1), with the live records.
    let mut seen_running = false;
    let mut seen_pages_moving = Vec::new();
    assert!(wait_for(|| {
        let jobs = jobs_json(c);
        match jobs.as_slice() {
            [job] if job.state == JobState::Running => {
                seen_running = true;
                seen_pages_moving.push(job.pages);
                false
            }
            [job] => job.state == JobState::Succeeded,
            _ => false,
        }
    }));
    assert!(
        seen_running,
        "the running job was seen live: {seen_pages_moving:?}"
    );
    let o = dump(&[s, "--tree", "checkpoints"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).starts_with("== tree checkpoints (1 records)"));

    // Every view, live.
    let views = |s: &str| -> Vec<(String, Output)> {
        let filtered = [
            "jobs",
            "-c",
            c,
            "--source",
            "src",
            "--state",
            "succeeded",
            "--last",
            "1",
        ];
        vec![
            ("jobs --json".into(), msgtrace(&["jobs", "-c", c, "--json"])),
            ("jobs".into(), msgtrace(&["jobs", "-c", c])),
            ("jobs filtered".into(), msgtrace(&filtered)),
            (
                "secrets list".into(),
                msgtrace(&["secrets", "list", "-c", c]),
            ),
            ("dump".into(), dump(&[s])),
            ("dump --json".into(), dump(&[s, "--json"])),
            ("dump --tree jobs".into(), dump(&[s, "--tree", "jobs"])),
            ("dump --tree nope".into(), dump(&[s, "--tree", "nope"])),
        ]
    };
    let live = views(s);
    let live_jobs: Vec<JobRecord> = serde_json::from_slice(&live[0].1.stdout).unwrap();
    engine.stop();
    assert!(
        !state.join("control.sock").exists(),
        "the socket is removed"
    );
    let stopped = views(s);

    // Jobs that ended in between would differ; this schedule has none, so every record the
    // live view showed as finished is there unchanged, and nothing else.
    let stopped_jobs: Vec<JobRecord> = serde_json::from_slice(&stopped[0].1.stdout).unwrap();
    assert_eq!(live_jobs.len(), 1);
    assert!(live_jobs.iter().all(|j| j.state.is_finished()));
    assert_eq!(live_jobs, stopped_jobs);
    for ((what, l), (_, st)) in live.iter().zip(&stopped) {
        assert_eq!(
            l.status.code(),
            st.status.code(),
            "{what}: {}",
            text(&l.stderr)
        );
        assert_eq!(text(&l.stdout), text(&st.stdout), "{what}");
        assert_eq!(text(&l.stderr), text(&st.stderr), "{what}");
    }
    let by = |what: &str| &live.iter().find(|(w, _)| w == what).unwrap().1;
    assert_eq!(text(&by("secrets list").stdout), "rws-creds\tcredentials\n");
    assert_eq!(by("dump --tree nope").status.code(), Some(2));
    assert!(text(&by("dump").stdout).contains("== tree checkpoints"));
    let table = text(&by("jobs filtered").stdout);
    assert!(table.starts_with("SOURCE"), "{table}");
    assert_eq!(table.lines().filter(|l| l.starts_with("src ")).count(), 1);
    for output in [&live, &stopped] {
        for (what, o) in output {
            assert!(!text(&o.stdout).contains("hunter2"), "{what}");
        }
    }
}

#[test]
fn no_endpoint_shows_a_secret() {
    const STORED: &str = "Zq8-stored-client-secret-841";
    const INLINE: &str = "Wx3-inline-wrong-secret-552";
    const PASSWORD: &str = "Pv7-stored-password-913";
    let h = Harness::graph()
        .rate(120)
        .sim(|c| c.client_secret = STORED.into())
        .build();
    let addr = format!("127.0.0.1:{}", free_port());
    // control_listen on metrics_listen's address: one listener serves both.
    let top = format!("metrics_listen = \"{addr}\"\ncontrol_listen = \"{addr}\"");
    let state = &h.state;
    let (start, end) = (hours_ago(3), hours_ago(1));
    let toml = h.sources_toml(
        &[("src", &start, &end), ("bad", &start, &end)],
        "schedule = \"0 0 1 1 *\"",
    );
    // `src` takes its secret from the store; `bad` (another application: tokens are shared
    // per application) has a wrong one inline, and fails.
    let (src, bad) = toml.split_once("[sources.bad]").unwrap();
    let src = src
        .replace("method = \"oauth\"", "method = \"oauth_secret\"")
        .replace(
            "client_secret = \"sim-secret\"",
            "client_secret_ref = \"graph-app\"",
        );
    let bad = bad
        .replace("client_id = \"sim-client\"", "client_id = \"other-client\"")
        .replace(
            "client_secret = \"sim-secret\"",
            &format!("client_secret = \"{INLINE}\""),
        );
    let toml = format!("{src}[sources.bad]{bad}");
    let cfg = h.path("c.toml");
    std::fs::write(&cfg, format!("{top}\n{toml}")).unwrap();
    let c = cfg.to_str().unwrap();
    set_secret(c, "graph-app", "text", STORED);
    set_secret(
        c,
        "rws-creds",
        "credentials",
        &format!("someone\n{PASSWORD}\n"),
    );
    let o = msgtrace(&["validate", "-c", c]);
    assert!(o.status.success(), "{}\n{toml}", text(&o.stderr));
    let key = std::fs::read_to_string(h.path("state.key")).unwrap();
    let engine = Running::start(&cfg, state);
    assert!(wait_for(|| {
        let jobs = jobs_json(c);
        jobs.len() == 2 && jobs.iter().all(|j| j.state.is_finished())
    }));

    let mut seen = String::new();
    for path in [
        "/",
        "/api/sources",
        "/api/jobs",
        "/api/secrets",
        "/api/dump",
        "/api/dump?format=text",
        "/api/dump?tree=secrets",
        "/metrics",
        "/health",
    ] {
        let (status, body) = get(&addr, path);
        assert!(
            status.contains(" 200 ") || (path == "/health" && status.contains(" 503 ")),
            "{path}: {status}"
        );
        for secret in [STORED, INLINE, PASSWORD, key.trim()] {
            assert!(!body.contains(secret), "{path} shows a secret:\n{body}");
        }
        seen.push_str(&body);
    }
    // A page of another site that made a browser resolve its name to 127.0.0.1 (DNS
    // rebinding) gets nothing.
    for path in ["/", "/api/jobs", "/api/dump", "/nope"] {
        let (status, body) = get_as(&addr, "rebind.example:80", path);
        assert!(status.contains(" 421 "), "{path}: {status}");
        assert!(!body.contains("src"), "{path}: {body}");
    }
    assert!(get(&addr, "/nope").0.contains(" 404 "));
    // The endpoints did show the things around the secrets.
    assert!(seen.contains("graph-app") && seen.contains("rws-creds"));
    assert!(seen.contains("<redacted>"));
    assert!(seen.contains("msgtrace_rows_total"));
    let jobs = jobs_json(c);
    let state_of = |id: &str| jobs.iter().find(|j| j.source == id).unwrap().state;
    assert_eq!(state_of("src"), JobState::Succeeded, "{jobs:?}");
    assert_eq!(state_of("bad"), JobState::Failed, "{jobs:?}");
    let (_, sources) = get(&addr, "/api/sources");
    let sources: serde_json::Value = serde_json::from_str(&sources).unwrap();
    let bad = sources
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["source"] == "bad")
        .unwrap();
    assert_eq!(bad["state"], "failing", "{sources}");
    assert!(bad["last_error"].is_string(), "{sources}");
    engine.stop();
}

#[test]
fn a_taken_control_port_stops_the_start_with_one_line_naming_it() {
    let h = scheduled(60, 0);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let cfg = config_file(&h, &format!("control_listen = \"{addr}\""));
    let c = cfg.to_str().unwrap();
    let o = msgtrace(&["run", "--once", "-c", c]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].contains(&format!("control_listen: cannot listen on {addr}"))
            && lines[0].contains("choose another port"),
        "{err}"
    );
    assert!(!h.out.exists(), "nothing collected");
    let o = msgtrace(&["validate", "-c", c]);
    assert!(
        text(&o.stderr)
            .lines()
            .any(|l| l.starts_with("msgtrace: warning: control_listen: cannot listen on")),
        "{}",
        text(&o.stderr)
    );
    drop(taken);
}

#[test]
fn a_locked_state_directory_without_an_engine_is_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, format!("state_dir = {:?}\n", state.to_str().unwrap())).unwrap();
    // Another process (here: this one) holds the directory, and no engine answers.
    let _held = msgtrace::storage::Store::open(&state).unwrap();
    for o in [
        msgtrace(&["jobs", "-c", cfg.to_str().unwrap()]),
        msgtrace(&["secrets", "list", "-c", cfg.to_str().unwrap()]),
    ] {
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains("in use by another msgtrace process")
                && err.contains("no engine answers on")
                && err.contains("control.sock"),
            "{err}"
        );
    }
}

/// The Chromium binary, if installed.
fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| {
            std::env::var_os("PATH")
                .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
                .unwrap_or_default()
                .into_iter()
                .map(move |d| d.join(name))
        })
        .find(|p| p.is_file())
}

/// The DOM headless Chromium renders for `url`.
fn rendered_dom(browser: &Path, url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let o = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(["--dump-dom", url])
        .stdin(Stdio::null())
        .output()
        .expect("chromium runs");
    assert!(o.status.success(), "{}", text(&o.stderr));
    text(&o.stdout)
}

/// The text of every `<td class="{class}…">` of the row that starts with `row`.
fn cell(dom: &str, row: &str, class: &str) -> String {
    let tr = &dom[dom.find(row).unwrap_or_else(|| panic!("no {row} in {dom}"))..];
    let tr = &tr[..tr.find("</tr>").unwrap()];
    let td = &tr[tr
        .find(&format!("<td class=\"{class}"))
        .unwrap_or_else(|| panic!("no {class} in {tr}"))..];
    let start = td.find('>').unwrap() + 1;
    td[start..td.find("</td>").unwrap()].to_owned()
}

#[test]
fn the_status_page_renders_in_headless_chromium() {
    let Some(browser) = chromium() else {
        println!("SKIPPED: chromium not installed (apt-get install -y chromium; .ci/run does)");
        return;
    };
    let h = scheduled(600, 20);
    let addr = format!("127.0.0.1:{}", free_port());
    let (cfg, state) = (
        config_file(&h, &format!("control_listen = \"{addr}\"")),
        &h.state,
    );
    let c = cfg.to_str().unwrap();
    let engine = Running::start(&cfg, state);
    assert!(wait_for(|| jobs_json(c)
        .first()
        .is_some_and(|j| j.state == JobState::Succeeded)));
    let job = jobs_json(c).remove(0);
    assert!(job.rows > 0 && job.pages > 1, "{job:?}");

    let dom = rendered_dom(&browser, &format!("http://{addr}/"));
    assert!(dom.contains("<title>msgtrace status</title>"), "{dom}");
    assert!(dom.contains("http-equiv=\"refresh\""), "it reloads itself");
    // The source: idle after its job, its cursor at the window's end, its quota.
    let source = "<tr data-source=\"src\">";
    assert_eq!(cell(&dom, source, "state"), "idle");
    let cursor = job
        .window_end
        .unwrap()
        .format("%Y-%m-%d %H:%M:%SZ")
        .to_string();
    assert_eq!(cell(&dom, source, "cursor"), cursor);
    assert!(
        cell(&dom, source, "quota").ends_with("of 100000 per 1 s"),
        "{dom}"
    );
    assert_eq!(cell(&dom, source, "rows"), job.rows.to_string());
    let next_year = chrono::Datelike::year(&chrono::Utc::now()) + 1;
    assert_eq!(
        cell(&dom, source, "next-due"),
        format!("{next_year}-01-01 00:00:00Z")
    );
    // The job, with its pages and rows as `msgtrace jobs` has them.
    let row = format!("<tr data-job=\"{}\">", job.id);
    assert_eq!(cell(&dom, &row, "state"), "succeeded");
    assert_eq!(cell(&dom, &row, "pages"), job.pages.to_string());
    assert_eq!(cell(&dom, &row, "rows"), job.rows.to_string());
    engine.stop();
}
