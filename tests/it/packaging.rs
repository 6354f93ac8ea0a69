//! What a packager and a new operator get: shell completions and man pages generated from the
//! CLI definition, the ready configurations of `examples/` and `deploy/`, and the configuration
//! `msgtrace simulate` prints at start.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_msgtrace");

fn msgtrace(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("msgtrace runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Whether `tool` runs here (for checks that need a program CI may not have).
fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The user-facing subcommands: every completion script and the man pages must know them all.
const COMMANDS: &[&str] = &[
    "demo", "run", "backfill", "validate", "secrets", "jobs", "simulate",
];

#[test]
fn completions_generate_for_every_shell_and_know_every_command() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let o = msgtrace(&["completions", shell]);
        let script = text(&o.stdout);
        assert!(o.status.success(), "{shell}: {}", text(&o.stderr));
        for command in COMMANDS {
            assert!(
                script.contains(command),
                "{shell} completions lack `{command}`"
            );
        }
        // fish writes `-l once`, the others `--once`.
        assert!(script.contains("once"), "{shell}: no options of `run`");
    }
    // The bash script is a script bash accepts.
    if have("bash") {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("msgtrace.bash");
        std::fs::write(&path, msgtrace(&["completions", "bash"]).stdout).unwrap();
        let o = Command::new("bash").arg("-n").arg(&path).output().unwrap();
        assert!(o.status.success(), "bash -n: {}", text(&o.stderr));
    }
    let o = msgtrace(&["completions", "tcsh"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
}

#[test]
fn man_pages_generate_one_per_command_and_render_without_warnings() {
    let o = msgtrace(&["man"]);
    let page = text(&o.stdout);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(page.contains(".TH msgtrace 1"), "{page}");
    for command in COMMANDS {
        assert!(
            page.contains(&format!("msgtrace\\-{command}(1)")),
            "msgtrace(1) does not list {command}"
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("man1");
    let o = msgtrace(&["man", "--dir", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let mut pages: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    pages.sort();
    for command in COMMANDS {
        assert!(
            pages.contains(&format!("msgtrace-{command}.1")),
            "{pages:?}"
        );
    }
    for page in ["msgtrace.1", "msgtrace-secrets-set.1"] {
        assert!(pages.contains(&page.to_string()), "{pages:?}");
    }
    for hidden in ["msgtrace-man.1", "msgtrace-completions.1"] {
        assert!(!pages.contains(&hidden.to_string()), "{pages:?}");
    }
    // groff (what man(1) renders with) finds nothing to warn about.
    if have("groff") {
        for page in &pages {
            let o = Command::new("groff")
                .args(["-man", "-Tutf8", "-ww", "-z"])
                .arg(out.join(page))
                .output()
                .unwrap();
            assert!(
                o.status.success() && o.stderr.is_empty(),
                "groff on {page}: {}",
                text(&o.stderr)
            );
        }
    } else {
        eprintln!("note: groff not installed; man pages not rendered");
    }
}

/// Every variable the ready configurations read, with a stand-in value.
const EXAMPLE_ENV: &[(&str, &str)] = &[
    ("O365_CLIENT_SECRET", "client-secret-from-the-environment"),
    ("SPLUNK_HEC_TOKEN", "00000000-0000-0000-0000-000000000000"),
    ("ES_API_KEY", "ZXhhbXBsZTprZXk="),
    ("DCR_CLIENT_SECRET", "dcr-writer-secret"),
    ("MSGTRACE_SIM_SECRET", "sim-secret"),
    ("POD_IP", "127.0.0.1"),
];

/// The ready configurations: `examples/*.toml` and the ones the Kubernetes manifests mount (one
/// instance, and the cluster example's).
fn ready_configurations() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files.push(root.join("deploy/kubernetes/msgtrace.toml"));
    files.push(root.join("deploy/kubernetes-cluster/msgtrace.toml"));
    files
}

fn validate(file: &Path, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.arg("validate").arg("-c").arg(file);
    for (name, _) in EXAMPLE_ENV {
        cmd.env_remove(name);
    }
    cmd.envs(env.iter().copied());
    cmd.output().expect("msgtrace runs")
}

#[test]
fn every_ready_configuration_is_valid_and_takes_its_secrets_from_the_environment() {
    let files = ready_configurations();
    let names: Vec<String> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for expected in [
        "graph-to-file.toml",
        "graph-to-splunk.toml",
        "graph-to-elasticsearch.toml",
        "graph-to-sentinel.toml",
        "graph-to-archive.toml",
        "simulate.toml",
        "msgtrace.toml",
    ] {
        assert!(names.iter().any(|n| n == expected), "{names:?}");
    }
    for file in &files {
        let o = validate(file, EXAMPLE_ENV);
        let (out, err) = (text(&o.stdout), text(&o.stderr));
        assert!(
            o.status.success() && out.contains(": valid ("),
            "{}: {out}{err}",
            file.display()
        );
        // No secret is written into the file: without the environment it is not valid.
        let o = validate(file, &[]);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{}: {err}", file.display());
        assert!(err.contains("is not set"), "{}: {err}", file.display());
    }
}

/// Kills the child when the test ends, passed or not.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn simulate_prints_a_configuration_that_collects_from_it() {
    let secret = "a-secret-of-this-test";
    let mut sim = Killed(
        Command::new(BIN)
            .args(["simulate", "--listen", "127.0.0.1:0"])
            .env("MSGTRACE_SIM_SECRET", secret)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("msgtrace simulate starts"),
    );
    // The banner: the addresses, then the configuration, whose last line is the sink's path.
    // Read on a thread, so that a banner without a configuration fails the test instead of
    // waiting for a line that never comes.
    let stdout = sim.0.stdout.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let mut banner = String::new();
    let mut config = None;
    while let Ok(line) = lines.recv_timeout(std::time::Duration::from_secs(60)) {
        banner.push_str(&line);
        banner.push('\n');
        if line.starts_with("path = ") {
            let start = banner.find("# Collects from").expect("a configuration");
            config = Some(banner[start..].to_string());
            break;
        }
    }
    let config = config.unwrap_or_else(|| panic!("no configuration in the banner:\n{banner}"));
    assert!(!config.contains(secret), "the banner shows the secret");
    let base = banner
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("simulated tenant listening on "))
        .expect("the banner's first line")
        .to_string();
    assert!(!base.ends_with(":0"), "{base}");
    assert!(
        config.contains(&format!("login_url = \"{base}\"")),
        "the configuration is not for this simulator's address {base}:\n{config}"
    );

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("simulate.toml"), &config).unwrap();
    let o = Command::new(BIN)
        .args(["run", "-c", "simulate.toml", "--once"])
        .current_dir(dir.path())
        .env("MSGTRACE_SIM_SECRET", secret)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let events = std::fs::read_to_string(dir.path().join("sim-events.ndjson")).unwrap();
    assert!(
        events.lines().count() > 100,
        "{} events",
        events.lines().count()
    );
    let first: serde_json::Value = serde_json::from_str(events.lines().next().unwrap()).unwrap();
    assert!(first.get("recipientAddress").is_some(), "{first}");
}
