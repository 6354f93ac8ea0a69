//! `msgtrace backfill` with `[cluster]`, with the real binary against a real etcd on loopback:
//! the backfill is asked for through etcd by a third process that never joins, run by the
//! instance holding the source (no source moves), once however often it is asked for; and when
//! that instance is killed mid-backfill, the source's next owner finishes it from the
//! backfill's checkpoint of record. A request that is not one is passed over, with one warning.
//!
//! Where etcd is not installed these print "SKIPPED: etcd not installed" and pass, unless
//! `MSGTRACE_REQUIRE_ETCD` is set (`.ci/run` installs `etcd-server` and sets it).

use crate::cluster_failover::*;
use crate::common::*;
use msgtrace::actors::cluster::backfill::{self, State};
use msgtrace::actors::cluster::etcd::Etcd;
use msgtrace::actors::cluster::fence;
use msgtrace::actors::cluster::ownership;
use msgtrace::actors::fetcher::{Backfill, PREFETCH_PAGES};
use msgtrace_simulator::SimServer;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

/// The instances' lease: short, so that the kill is noticed in seconds, and long enough that a
/// busy 2-core CI machine does not let one lapse (the first test checks that no source moves).
const LEASE: u32 = 4;

/// Two `msgtrace run` instances sharing two tenants, and the configuration of a third that
/// only asks (`asker`).
struct Deployment {
    /// First: dropped (killed) before etcd, the simulator and the directory go.
    instances: Vec<Instance>,
    etcd: EtcdServer,
    sim: SimServer,
    dir: tempfile::TempDir,
    prefix: &'static str,
    sources: Vec<Window>,
    asker: PathBuf,
    /// The range backfilled of `tenant00`: the hour before its window, collected by no source.
    range: Window,
}

impl Deployment {
    fn start(prefix: &'static str) -> Option<Deployment> {
        let etcd = EtcdServer::start()?;
        let sources = windows(2, 20);
        // 300 rows an hour, pages of 10, 200 ms a page: the backfill's hour is 30 pages.
        let sim = tenants_sim(&sources, 300, 200);
        let dir = tempfile::tempdir().unwrap();
        let toml = |name: &str| {
            let home = dir.path().join(name);
            let metrics = format!("127.0.0.1:{}", free_port());
            let toml = instance_toml(
                &sim,
                &home,
                &sources,
                &etcd.endpoint(),
                (prefix, name, LEASE),
                &metrics,
            );
            (home, toml, metrics)
        };
        let instances = ["c-0", "c-1"]
            .iter()
            .map(|name| {
                let (home, toml, metrics) = toml(name);
                Instance::start(name, home, &toml, metrics)
            })
            .collect();
        let (home, asker, _) = toml("asker");
        std::fs::create_dir_all(&home).unwrap();
        std::fs::write(home.join("msgtrace.toml"), asker).unwrap();
        let range = Window {
            id: "backfill".into(),
            start: sources[0].start - 3600,
            end: sources[0].start,
        };
        Some(Deployment {
            etcd,
            sim,
            dir,
            prefix,
            sources,
            instances,
            asker: home.join("msgtrace.toml"),
            range,
        })
    }

    fn client(&self) -> Etcd {
        client_of(&self.etcd.endpoint())
    }

    /// `msgtrace backfill` of the range of `tenant00` from the asker's configuration, its
    /// output in `<asker>/ask.out` and `ask.err`.
    fn ask(&self) -> Asking {
        let home = self.asker.parent().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_msgtrace"))
            .args(["backfill", "-c"])
            .arg(&self.asker)
            .args(["--source", "tenant00", "--start"])
            .arg(self.range.start.to_string())
            .arg("--end")
            .arg(self.range.end.to_string())
            .stdout(std::fs::File::create(home.join("ask.out")).unwrap())
            .stderr(std::fs::File::create(home.join("ask.err")).unwrap())
            .spawn()
            .expect("msgtrace starts");
        Asking(child)
    }

    /// What the last [`Deployment::ask`] printed: (stdout, stderr).
    fn asked(&self) -> (String, String) {
        let home = self.asker.parent().unwrap();
        let read = |f: &str| std::fs::read_to_string(home.join(f)).unwrap_or_default();
        (read("ask.out"), read("ask.err"))
    }

    /// The request's key and the backfill's cursor.
    fn request_key(&self) -> (Vec<u8>, String) {
        let at = |t| chrono::DateTime::from_timestamp(t, 0).unwrap();
        let b = Backfill {
            start: at(self.range.start),
            end: at(self.range.end),
        };
        (
            backfill::request_key(self.prefix, "tenant00", &b),
            b.cursor_name("tenant00"),
        )
    }

    /// Waits until both members are live and each source is held by the member the hash gives
    /// it to (the first to start claims both, and gives one up once the other has joined); the
    /// owners.
    fn settled(&self) -> BTreeMap<String, String> {
        let client = self.client();
        // The key a source is shared by: its tenant's budget (`SourceSpec::quota_key`).
        let key = |id: &str| format!("{}/{id}", self.sim.addr());
        on_actix(async {
            watch_until(
                &client,
                self.prefix,
                &self.sources,
                Duration::from_secs(60),
                "two members hold the sources as the hash shares them",
                |seen| {
                    seen.members.len() == 2
                        && self.sources.iter().all(|w| {
                            seen.owners.get(&w.id).map(String::as_str)
                                == ownership::owner(&key(&w.id), &seen.members)
                        })
                },
            )
            .await
            .owners
        })
    }

    /// Waits until every source's window is collected.
    fn collected(&self) {
        let client = self.client();
        on_actix(watch_until(
            &client,
            self.prefix,
            &self.sources,
            Duration::from_secs(120),
            "every source collected",
            |seen| self.sources.iter().all(|w| seen.done(w)),
        ));
    }

    /// Every row of the sources' windows and the range: (missing, extra, twice by window).
    fn tally(&self) -> (usize, usize, BTreeMap<String, usize>) {
        let mut windows = self.sources.clone();
        windows.push(self.range.clone());
        let outs: Vec<PathBuf> = ["c-0", "c-1"]
            .iter()
            .map(|n| self.dir.path().join(n).join("out.ndjson"))
            .collect();
        tally(&self.sim, &windows, &outs)
    }
}

/// A `msgtrace backfill` child process, killed if the test ends before it does (it would
/// follow its request for ever).
struct Asking(Child);

impl Drop for Asking {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits for `child` for at most `bound` (a bound for a broken command, not a timing), calling
/// `each` every 100 ms meanwhile.
fn wait_watching(child: &mut Asking, bound: Duration, mut each: impl FnMut()) -> bool {
    let end = Instant::now() + bound;
    loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            return status.success();
        }
        assert!(
            Instant::now() < end,
            "the command still runs after {bound:?}"
        );
        each();
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn run_ask_again(config: &Path, range: &Window) -> Output {
    Command::new(env!("CARGO_BIN_EXE_msgtrace"))
        .args(["backfill", "-c"])
        .arg(config)
        .args(["--source", "tenant00", "--start"])
        .arg(range.start.to_string())
        .arg("--end")
        .arg(range.end.to_string())
        .output()
        .unwrap()
}

#[test]
fn a_backfill_asked_from_a_third_process_runs_once_on_the_owner_and_no_source_moves() {
    let Some(mut d) = Deployment::start("/handoff") else {
        return;
    };
    let client = d.client();
    // Not a request: passed over, with one warning per instance however many rounds pass.
    on_actix(client.put(b"/handoff/backfills/tenant01/junk", b"{}", 0)).unwrap();
    let owners = d.settled();
    let owner = owners["tenant00"].clone();

    let mut asking = d.ask();
    let ok = wait_watching(&mut asking, Duration::from_secs(120), || {
        let seen = on_actix(look(&client, d.prefix, &d.sources));
        if let Some(seen) = seen {
            assert!(
                !seen.members.iter().any(|m| m == "asker"),
                "the asker joined: {seen:?}"
            );
            assert_eq!(seen.owners, owners, "a source moved while the backfill ran");
        }
    });
    let (out, err) = d.asked();
    eprintln!("msgtrace backfill said:\n{err}{out}");
    assert!(ok, "the backfill command failed: {out}{err}");
    assert!(
        out.contains(&format!("succeeded on {owner}")),
        "{out}\n{err}"
    );
    assert!(err.contains("asked for in etcd"), "{err}");
    let (key, cursor) = d.request_key();
    let found = on_actix(backfill::get(&client, &key)).unwrap().unwrap();
    assert_eq!(
        (found.request.state, found.request.by.as_deref()),
        (State::Succeeded, Some(owner.as_str()))
    );
    assert!(found.request.pages >= 30, "{found:?}");
    let committed = on_actix(fence::committed(&client, d.prefix, &cursor)).unwrap();
    assert!(committed.is_some(), "the backfill's checkpoint of record");

    // Asked again: it has run, and runs no more.
    let again = run_ask_again(&d.asker, &d.range);
    let (out2, err2) = (
        String::from_utf8_lossy(&again.stdout),
        String::from_utf8_lossy(&again.stderr),
    );
    assert!(again.status.success(), "{out2}{err2}");
    assert!(
        err2.contains("was asked for already") && out2.contains("succeeded"),
        "{out2}\n{err2}"
    );
    let after = on_actix(backfill::get(&client, &key)).unwrap().unwrap();
    assert_eq!(after.revision, found.revision, "not run again");

    d.collected();
    for i in d.instances.drain(..) {
        let (name, log) = (i.name.clone(), i.stop());
        let ran = log
            .matches("running a backfill asked for through etcd")
            .count();
        assert_eq!(ran, usize::from(name == owner), "{name}: {log}");
        assert_eq!(
            log.matches("a backfill request is passed over").count(),
            1,
            "{name}: one warning for the request that is not one: {log}"
        );
    }
    let (missing, extra, twice) = d.tally();
    assert_eq!((missing, extra), (0, 0), "missing, extra");
    assert!(twice.values().all(|n| *n == 0), "rows twice: {twice:?}");
}

#[test]
fn a_backfill_whose_owner_is_killed_is_finished_by_the_next_owner_from_its_checkpoint() {
    let Some(mut d) = Deployment::start("/handoff-kill") else {
        return;
    };
    let client = d.client();
    let owners = d.settled();
    let victim = owners["tenant00"].clone();
    let (key, cursor) = d.request_key();

    let mut asking = d.ask();
    // Killed once it has committed a few pages of the range.
    let end = Instant::now() + Duration::from_secs(120);
    let pages_at_kill = loop {
        let pages = on_actix(fence::committed(&client, d.prefix, &cursor))
            .unwrap()
            .map(|b| {
                msgtrace::storage::record::decode_checkpoint(&b)
                    .unwrap()
                    .pages_total
            });
        if pages.is_some_and(|p| p >= 3) {
            break pages.unwrap();
        }
        assert!(
            Instant::now() < end,
            "the backfill never got going: {:?}",
            d.asked()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let v = d.instances.iter().position(|i| i.name == victim).unwrap();
    d.instances[v].child.kill().unwrap(); // SIGKILL
    d.instances[v].child.wait().unwrap();
    let request = on_actix(backfill::get(&client, &key)).unwrap().unwrap();
    assert_eq!(request.request.state, State::Running, "{request:?}");

    let ok = wait_watching(&mut asking, Duration::from_secs(120), || {});
    let (out, err) = d.asked();
    eprintln!("msgtrace backfill said:\n{err}{out}");
    assert!(ok, "the backfill command failed: {out}{err}");
    let survivor = d.instances[1 - v].name.clone();
    assert!(
        out.contains(&format!("succeeded on {survivor}")),
        "{out}\n{err}"
    );
    let committed = on_actix(fence::committed(&client, d.prefix, &cursor))
        .unwrap()
        .map(|b| msgtrace::storage::record::decode_checkpoint(&b).unwrap())
        .unwrap();
    // Resumed, not restarted: the survivor's job delivered only what the victim had not
    // committed (a restart would deliver every page of the range again).
    let ended = on_actix(backfill::get(&client, &key)).unwrap().unwrap();
    assert_eq!(ended.request.by.as_deref(), Some(survivor.as_str()));
    assert!(
        ended.request.pages + pages_at_kill <= committed.pages_total,
        "resumed, not restarted: {pages_at_kill} pages at the kill, {} in the survivor's job, {} in all",
        ended.request.pages,
        committed.pages_total
    );

    d.collected();
    let survivor = d.instances.remove(1 - v);
    let log = survivor.stop();
    assert!(
        log.contains("running a backfill asked for through etcd"),
        "{log}"
    );
    // Rows twice: at most the pages in flight at the kill, of the range and of the sources the
    // victim was collecting.
    let (missing, extra, twice) = d.tally();
    eprintln!("rows twice by window: {twice:?}");
    assert_eq!((missing, extra), (0, 0), "missing, extra");
    let in_flight = (PREFETCH_PAGES + 1) * PAGE as usize;
    assert!(twice["backfill"] <= in_flight, "{twice:?}");
    assert!(twice.values().sum::<usize>() <= 3 * in_flight, "{twice:?}");
}
