//! The binaries as a user runs them: demo, validate, run, jobs, msgtrace-dump.

use crate::common::*;
use msgtrace::actors::dialect::Api;
use std::process::{Command, Output};

fn msgtrace(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_msgtrace"))
        .args(args)
        .output()
        .expect("msgtrace runs")
}

fn dump(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_msgtrace-dump"))
        .args(args)
        .output()
        .expect("msgtrace-dump runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn demo_collects_the_simulated_window_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo.ndjson");
    let o = msgtrace(&["demo", "--hours", "3", "--out", out.to_str().unwrap()]);
    let stdout = text(&o.stdout);
    assert!(o.status.success(), "{stdout}\n{}", text(&o.stderr));
    assert!(stdout.contains("OK: every row exactly once"), "{stdout}");
    let lines = std::fs::read_to_string(&out).unwrap().lines().count();
    assert!(
        stdout.contains(&format!("{lines} rows written")),
        "{stdout}"
    );
    assert!(lines > 1000);
}

const BROKEN: &str = r#"
bogus_top_level = 1

[sources.a]
poll_interval_mins = 45
start = "-3x"
page_size = 100
surprise = true

[sources.a.auth]
method = "oauth"
tenant_id = "t"
client_id = "c"

[sinks.out]
type = "file"
inputs = ["a", "nope"]
path = "/tmp/x.ndjson"
"#;

#[test]
fn validate_reports_every_error_with_its_key_path_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, BROKEN).unwrap();
    let o = msgtrace(&["validate", "-c", cfg.to_str().unwrap()]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    for needle in [
        "bogus_top_level",
        "sources.a.surprise",
        "sources.a.poll_interval_mins",
        "sources.a.start",
        "sources.a.auth.client_secret",
        "sinks.out.inputs",
    ] {
        assert!(
            err.lines().any(|l| l.contains(needle)),
            "no line names {needle}:\n{err}"
        );
    }
}

#[test]
fn validate_accepts_a_good_config_and_run_once_collects() {
    let h = Harness::reporting().window("-6h@h", "-1h@h").build();
    let (out, state, cfg) = (&h.out, &h.state, h.write_config());
    let c = cfg.to_str().unwrap();
    let o = msgtrace(&["validate", "-c", c]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("valid"));

    let o = msgtrace(&["run", "--once", "-c", c]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(std::fs::read_to_string(out).unwrap().lines().count() > 100);

    let o = msgtrace(&["jobs", "-c", c, "--json"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let jobs: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(jobs[0]["state"], "succeeded");
    let table = text(&msgtrace(&["jobs", "-c", c]).stdout);
    assert!(table.contains("succeeded"), "{table}");
    assert!(
        table.contains("    task "),
        "tasks are listed under their job: {table}"
    );

    let o = dump(&[state.to_str().unwrap()]);
    let t = text(&o.stdout);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(t.contains("== tree checkpoints (1 records)"), "{t}");
    assert!(t.contains("src [v1]"), "{t}");
    assert!(!t.contains("sim-secret"));
    let o = dump(&[state.to_str().unwrap(), "--json", "--tree", "jobs"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["name"], "jobs");
    assert_eq!(v[0]["records"][0]["version"], "1");

    // While an engine holds the database, the dump says so and offers a way that works.
    let _held = h.store();
    let o = dump(&[state.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let e = text(&o.stderr);
    assert!(
        e.contains("in use by another msgtrace process") && e.contains("cp -r"),
        "{e}"
    );
}

#[test]
fn run_once_exits_1_when_the_api_refuses() {
    let h = Harness::graph()
        .sim(|c| c.client_secret = "another".into())
        .window("-3h@h", "-1h@h")
        .build();
    let cfg = h.write_config();
    let o = msgtrace(&["run", "--once", "-c", cfg.to_str().unwrap()]);
    let e = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains("AADSTS7000215"), "{e}");
    assert!(e.contains("client secret"), "{e}");
    assert!(!e.contains("sim-secret"), "{e}");
}

#[test]
fn a_source_log_level_applies_inside_its_jobs() {
    let h = Harness::graph()
        .window("-3h@h", "-1h@h")
        .extra("log_level = \"debug\"")
        .build();
    let (cfg, toml) = (h.path("c.toml"), &h.toml);
    // Global level warn (from the template); the source says debug.
    std::fs::write(&cfg, toml).unwrap();
    let o = msgtrace(&["run", "--once", "-c", cfg.to_str().unwrap()]);
    let err = text(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("page committed"),
        "debug lines of the source's job: {err}"
    );
    // Without it, nothing below warn.
    std::fs::write(&cfg, toml.replace("log_level = \"debug\"", "")).unwrap();
    let o = msgtrace(&["run", "--once", "-c", cfg.to_str().unwrap()]);
    assert!(!text(&o.stderr).contains("page committed"));
}

#[test]
fn the_stdout_sink_writes_one_json_line_per_row() {
    let mut h = Harness::reporting().window("-4h@h", "-1h@h").build();
    h.toml = h
        .toml
        .replace("type = \"file\"", "type = \"stdout\"")
        .replace(
            &format!(
                "path = {}",
                serde_json::to_string(&h.out.to_string_lossy()).unwrap()
            ),
            "",
        );
    let cfg = h.write_config();
    let o = msgtrace(&["run", "--once", "-c", cfg.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let stdout = text(&o.stdout);
    let mut ids = std::collections::HashSet::new();
    for line in stdout.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(v["_time"].is_f64());
        ids.insert((
            v["MessageTraceId"].as_str().unwrap().to_owned(),
            v["RecipientAddress"].as_str().unwrap().to_owned(),
        ));
    }
    assert_eq!(ids.len(), stdout.lines().count(), "no row twice");
    assert!(ids.len() > 100);
    assert!(!h.out.exists());
}

#[test]
fn msgtrace_simulate_serves_a_fault_schedule_and_a_collection_still_completes() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut sim = Command::new(env!("CARGO_BIN_EXE_msgtrace"))
        .args([
            "simulate",
            "--listen",
            &listen,
            "--messages-per-hour",
            "120",
        ])
        .args([
            "--faults",
            "429,503,truncated,invalid-json,html,wrong-shape",
            "--fault-every",
            "3",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Ready once it prints its address.
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(sim.stdout.as_mut().unwrap()),
        &mut first,
    )
    .unwrap();
    assert!(first.contains(&listen), "{first}");
    let base = format!("http://{listen}");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.ndjson");
    let q = |s: &str| serde_json::to_string(s).unwrap();
    let (start, end) = (hours_ago(12), hours_ago(1));
    let toml = format!(
        r#"
state_dir = {state}
log_level = "warn"
[sources.src]
url = {url}
start = "{start}"
end = "{end}"
page_size = 100
quota = {{ requests = 100000, per_secs = 1 }}
[sources.src.auth]
method = "oauth"
tenant_id = "sim-tenant"
client_id = "sim-client"
client_secret = "sim-secret"
login_url = {base}
[sources.src.retry]
initial_interval_ms = 50
limit = 10
codes = [429, 502, 503]
[sinks.out]
type = "file"
inputs = ["src"]
path = {out}
"#,
        state = q(&dir.path().join("state").to_string_lossy()),
        url = q(&format!("{base}{}", msgtrace_simulator::GRAPH_PATH)),
        base = q(&base),
        out = q(&out.to_string_lossy()),
    );
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, toml).unwrap();
    let o = msgtrace(&["run", "--once", "-c", cfg.to_str().unwrap()]);
    sim.kill().unwrap();
    sim.wait().unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let model = msgtrace_simulator::TenantModel {
        messages_per_hour: 120,
        ..Default::default()
    };
    let at = |s: &str| chrono::DateTime::from_timestamp(s.parse().unwrap(), 0).unwrap();
    let expected = model.expected(at(&start), at(&end), chrono::Utc::now());
    assert_eq!(compare(&identities(&out, Api::Graph), &expected), (0, 0, 0));
    let jobs = msgtrace::storage::Store::open(dir.path().join("state"))
        .unwrap()
        .jobs(Some("src"))
        .unwrap();
    assert!(
        jobs[0].retries >= 5,
        "the schedule's faults were met and retried: {:?}",
        jobs[0]
    );
}

/// The binary's allocator tuning (`src/allocator.rs`) reaches mimalloc before `main`, by the
/// option numbers it uses, and an option set in the environment wins over it. mimalloc prints
/// every option's value as it reads it when `MIMALLOC_VERBOSE=1`.
#[cfg(all(feature = "mimalloc", target_os = "linux"))]
#[test]
fn the_binary_tunes_its_allocator_and_the_environment_wins() {
    let options = |env: &[(&str, &str)]| {
        let out = Command::new(env!("CARGO_BIN_EXE_msgtrace"))
            .arg("--version")
            .env("MIMALLOC_VERBOSE", "1")
            .envs(env.iter().copied())
            .output()
            .expect("msgtrace runs");
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stderr)
    };
    let tuned = options(&[]);
    for line in [
        "option 'arena_eager_commit': 0",
        "option 'purge_delay': 0",
        "option 'page_reclaim_on_free': 1",
    ] {
        assert!(tuned.contains(line), "{line:?} missing from:\n{tuned}");
    }
    let overridden = options(&[
        ("MIMALLOC_PAGE_RECLAIM_ON_FREE", "0"),
        ("MIMALLOC_PURGE_DELAY", "25"),
    ]);
    for line in [
        "option 'page_reclaim_on_free': 0",
        "option 'purge_delay': 25",
    ] {
        assert!(
            overridden.contains(line),
            "{line:?} missing from:\n{overridden}"
        );
    }
}

/// The harness's configuration file (`c.toml`), with `top` lines before it.
fn config_file(h: &Harness, top: &str) -> std::path::PathBuf {
    let cfg = h.path("c.toml");
    std::fs::write(&cfg, format!("{top}\n{}", h.toml)).unwrap();
    cfg
}

#[test]
fn a_taken_metrics_port_stops_the_start_with_one_line_naming_it() {
    let h = Harness::graph().build();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let cfg = config_file(&h, &format!("metrics_listen = \"{addr}\""));
    let c = cfg.to_str().unwrap();

    let o = msgtrace(&["run", "--once", "-c", c]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].contains(&format!("metrics_listen: cannot listen on {addr}"))
            && lines[0].contains("choose another port"),
        "{err}"
    );
    assert!(!h.out.exists(), "nothing collected");

    // validate says so too (a warning: it may be this configuration's own running engine).
    let o = msgtrace(&["validate", "-c", c]);
    let err = text(&o.stderr);
    assert!(
        err.lines().any(
            |l| l.starts_with("msgtrace: warning: metrics_listen: cannot listen on")
                && l.contains(&addr)
        ),
        "{err}"
    );
    drop(taken);
}

#[test]
fn jobs_and_secrets_need_only_the_state_dir() {
    let h = Harness::graph().build();
    let cfg = config_file(&h, "");
    let text_of = std::fs::read_to_string(&cfg).unwrap();
    // The collector's secret comes from a variable that is not set where the operator runs
    // `jobs` and `secrets`.
    std::fs::write(
        &cfg,
        text_of.replace(
            "client_secret = \"sim-secret\"",
            "client_secret = \"${MSGTRACE_TEST_NOT_SET}\"",
        ),
    )
    .unwrap();
    let c = cfg.to_str().unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_msgtrace"))
            .args(args)
            .env_remove("MSGTRACE_TEST_NOT_SET")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let o = run(&["jobs", "-c", c]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).starts_with("SOURCE"), "{}", text(&o.stdout));
    let o = run(&["secrets", "list", "-c", c]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    // What needs the whole configuration still says what is missing.
    let o = run(&["validate", "-c", c]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("MSGTRACE_TEST_NOT_SET"));
    // A broken state_dir is still reported, with its key.
    std::fs::write(&cfg, "state_dir = \"${MSGTRACE_TEST_NOT_SET}\"\n").unwrap();
    let o = run(&["jobs", "-c", c]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr)
            .contains("state_dir: environment variable `MSGTRACE_TEST_NOT_SET` is not set"),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn log_lines_carry_no_colour_codes_when_stderr_is_not_a_terminal() {
    let h = Harness::graph().build();
    let cfg = config_file(&h, "");
    // stderr is a pipe here, as it is for a file or journald.
    let o = Command::new(env!("CARGO_BIN_EXE_msgtrace"))
        .args(["run", "--once", "-c", cfg.to_str().unwrap()])
        .env("MSGTRACE_LOG", "info")
        .env_remove("NO_COLOR")
        .output()
        .unwrap();
    let err = text(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("INFO"), "{err}");
    assert!(!err.contains('\u{1b}'), "ANSI escape codes in {err:?}");
}

#[test]
fn demo_refuses_bad_options_before_touching_the_output() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo-events.ndjson");
    std::fs::write(&out, "an earlier run's line\n").unwrap();
    for args in [["--hours", "0"], ["--page-size", "0"]] {
        let o = msgtrace(&[&["demo", "--out", out.to_str().unwrap()], &args[..]].concat());
        let err = text(&o.stderr);
        assert!(!o.status.success(), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "an earlier run's line\n",
            "{args:?} left the file alone"
        );
    }
}

/// One Graph source of the simulator over the two hours before the current one.
fn graph() -> Harness {
    Harness::graph().window("-3h@h", "-1h@h").build()
}

/// Regression (issue 15, defect 9): `validate` accepted a `state_dir` that is not a directory
/// and a file sink whose directory cannot be created; `run` then failed with exit 1.
#[test]
fn an_unusable_state_dir_or_sink_path_is_a_configuration_error() {
    let mut h = graph();
    let file = h.path("a-file");
    std::fs::write(&file, b"x").unwrap();
    h.set_paths(&file, &file.join("out/e.ndjson"));
    let cfg = h.write_config();
    let c = cfg.to_str().unwrap();
    for args in [&["validate", "-c", c][..], &["run", "--once", "-c", c][..]] {
        let o = msgtrace(args);
        let e = text(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {e}");
        assert!(
            e.contains("msgtrace: state_dir:") && e.contains("is not a directory"),
            "{args:?}: {e}"
        );
        assert!(
            e.contains("msgtrace: sinks.out.path:") && e.contains("is a file, not a directory"),
            "{args:?}: {e}"
        );
    }
}

/// Regression (issue 15, defect 7): after `truncate -s 0 state/db; rm state/snap.*` the next
/// run started an empty database without a word and collected the whole window again.
#[test]
fn an_emptied_state_directory_is_refused_and_nothing_is_collected_twice() {
    let h = graph();
    let (state, out, cfg) = (&h.state, &h.out, h.write_config());
    let c = cfg.to_str().unwrap();
    let o = msgtrace(&["run", "--once", "-c", c]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let collected = std::fs::read_to_string(out).unwrap().lines().count();
    assert!(collected > 0);
    std::fs::File::options()
        .write(true)
        .open(state.join("db"))
        .unwrap()
        .set_len(0)
        .unwrap();
    for e in std::fs::read_dir(state).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with("snap.") {
            std::fs::remove_file(e.path()).unwrap();
        }
    }
    let o = msgtrace(&["run", "--once", "-c", c]);
    let e = text(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(e.contains("held a msgtrace database"), "{e}");
    assert_eq!(e.lines().count(), 1, "{e}");
    for args in [&["jobs", "-c", c][..], &["secrets", "list", "-c", c][..]] {
        let o = msgtrace(args);
        let e = text(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {e}");
        assert!(e.contains("held a msgtrace database"), "{args:?}: {e}");
    }
    assert_eq!(
        std::fs::read_to_string(out).unwrap().lines().count(),
        collected,
        "nothing collected again"
    );
}

/// Regression (issue 15, defect 9): damaged sled files said "created using a sled version
/// earlier than 0.29" (or `backtrace ()`), with no fix, and exited 1.
#[test]
fn a_damaged_state_directory_is_one_line_with_the_fix_and_exit_2() {
    let h = graph();
    let (state, cfg) = (&h.state, h.write_config());
    drop(msgtrace::storage::Store::open(state).unwrap());
    std::fs::write(state.join("conf"), [0xff_u8; 64]).unwrap();
    let o = msgtrace(&["run", "--once", "-c", cfg.to_str().unwrap()]);
    let e = text(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(e.contains("is damaged") && e.contains("backup"), "{e}");
    assert!(!e.contains("0.29") && !e.contains("IO error"), "{e}");
}

/// Regression (issue 15, defect 6): with `path` a symlink to a file whose last line had no
/// newline, the sink followed the link and cut that line.
#[cfg(unix)]
#[test]
fn a_symlinked_sink_path_is_refused_and_the_linked_file_untouched() {
    let h = graph();
    let target = h.path("notes.txt");
    std::fs::write(&target, b"line one\nline two, no newline").unwrap();
    std::os::unix::fs::symlink(&target, &h.out).unwrap();
    let cfg = h.write_config();
    let o = msgtrace(&["run", "--once", "-c", cfg.to_str().unwrap()]);
    let e = text(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(
        e.contains("sinks.out.path:") && e.contains("symbolic link"),
        "{e}"
    );
    assert_eq!(
        std::fs::read(&target).unwrap(),
        b"line one\nline two, no newline"
    );
}

/// Regression (issue 15, defect 10): with a permissive umask the state directory, the database
/// and the output were readable by every user (0755/0644 under umask 022).
#[cfg(unix)]
#[test]
fn state_and_output_are_private_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt as _;
    use std::os::unix::process::CommandExt as _;
    let h = graph();
    let (state, out, cfg) = (&h.state, &h.out, h.write_config());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_msgtrace"));
    cmd.args(["run", "--once", "-c", cfg.to_str().unwrap()]);
    // SAFETY: umask is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0);
            Ok(())
        });
    }
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(state), 0o700);
    for f in ["db", "conf"] {
        assert_eq!(mode(&state.join(f)), 0o600, "{f}");
    }
    assert_eq!(mode(out), 0o640);
}

/// Issue 15, defect 10: an existing state directory keeps its mode, but one every user may
/// enter is warned about at each start, with the fix.
#[cfg(unix)]
#[test]
fn an_existing_state_directory_open_to_everyone_is_warned_about() {
    use std::os::unix::fs::PermissionsExt as _;
    let h = graph();
    let (state, cfg) = (&h.state, h.write_config());
    std::fs::create_dir(state).unwrap();
    std::fs::set_permissions(state, std::fs::Permissions::from_mode(0o755)).unwrap();
    let o = msgtrace(&["run", "--once", "-c", cfg.to_str().unwrap()]);
    let e = text(&o.stderr);
    assert!(o.status.success(), "{e}");
    assert!(e.contains(&format!("chmod 700 {}", state.display())), "{e}");
    let mode = std::fs::metadata(state).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o755, "not changed behind the operator's back");
}

/// Regression (issue 15, defect 6): an output file the sink did not write, whose last line had
/// no newline, lost that line at the first run ("cut a partial last line left by an
/// interrupted write").
#[test]
fn an_existing_output_file_loses_no_byte() {
    let h = graph();
    let (out, cfg) = (&h.out, h.write_config());
    let theirs = "kept by the operator\nthe last line, no newline";
    std::fs::write(out, theirs).unwrap();
    let o = msgtrace(&["run", "--once", "-c", cfg.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let written = std::fs::read_to_string(out).unwrap();
    let ours = written
        .strip_prefix(theirs)
        .and_then(|rest| rest.strip_prefix('\n'))
        .unwrap_or_else(|| panic!("the file's own bytes, then a newline: {written:?}"));
    assert!(!ours.is_empty());
    for line in ours.lines() {
        serde_json::from_str::<serde_json::Value>(line).unwrap();
    }
}
