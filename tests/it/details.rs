//! Per-recipient details (`details`): every detail record of every row not delivered exactly
//! once across SIGKILLs of the binary, zero 429s under the budget, the summary first and no
//! later than without details, re-reads that emit only the records a status change added,
//! faults of the detail endpoint retried, and `details` refused for the Reporting Web Service.

use crate::common::*;
use msgtrace::actors::dialect::details::DetailsMode;
use msgtrace::actors::dialect::Api;
use msgtrace_simulator::{FaultSchedule, LateRows, SimFault, SimQuota, SimServer};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

/// A detail record's identity: (`id`, `recipientAddress`, `dateTime`, `event`).
type DetailId = (String, String, String, String);

/// Counts each detail event's identity in an NDJSON output (summary rows are left out). Only
/// whole lines count: the file may be read while the engine writes it, and a line still being
/// written has no newline yet.
fn detail_ids(out: &std::path::Path) -> HashMap<DetailId, usize> {
    let mut m = HashMap::new();
    let text = std::fs::read_to_string(out).unwrap_or_default();
    let whole = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    for line in whole.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if v["_detail"] != true {
            continue;
        }
        let s = |k: &str| {
            v[k].as_str()
                .unwrap_or_else(|| panic!("{k}: {v}"))
                .to_owned()
        };
        let id = (s("id"), s("recipientAddress"), s("dateTime"), s("event"));
        *m.entry(id).or_insert(0) += 1;
    }
    m
}

/// The detail records the simulator holds for the rows of `window` that `mode` wants.
fn expected_details(
    sim: &SimServer,
    (start, end): (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>),
    mode: DetailsMode,
    late: Option<&LateRows>,
) -> HashSet<DetailId> {
    sim.model()
        .expected_details(start, end, chrono::Utc::now(), late, |s| mode.wants(s))
        .iter()
        .map(|d| d.identity())
        .collect()
}

/// Every data request's path and query, in the order they arrived.
fn record_requests(sim: &SimServer) -> Arc<Mutex<Vec<String>>> {
    let log = Arc::new(Mutex::new(Vec::new()));
    let into = log.clone();
    sim.on_data_request(move |uri| into.lock().unwrap().push(uri.to_owned()));
    log
}

fn is_detail(uri: &str) -> bool {
    uri.contains("getDetailsByRecipient")
}

#[test]
fn every_detail_record_of_every_row_not_delivered_exactly_once_across_sigkills() {
    // Zero 429s under the budget: the engine's budget is the simulator's.
    let sim = sim(50, |c| {
        c.page_latency_ms = 20;
        c.quota = Some(SimQuota {
            requests: 300,
            per_secs: 1,
        });
    });
    let crashed = crash_collect(
        &sim,
        &Crash {
            api: Api::Graph,
            kills_wanted: 12,
            start: "-25h@h",
            end: "-1h@h",
            page_size: 100,
            extra: "details = \"not_delivered\"\nquota = { requests = 300, per_secs = 1 }",
            sink: None,
        },
    );
    let expected = expected_details(&sim, crashed.window, DetailsMode::NotDelivered, None);
    let got = detail_ids(&crashed.out);
    let missing = expected.iter().filter(|id| !got.contains_key(*id)).count();
    let extra = got.keys().filter(|id| !expected.contains(*id)).count();
    let dups: usize = got.values().map(|n| n - 1).sum();
    eprintln!(
        "details crash test: {} SIGKILLs, {} detail records expected, {missing} missing, {extra} extra, {dups} twice",
        crashed.kills,
        expected.len()
    );
    assert!(expected.len() > 500, "a busy day: {}", expected.len());
    assert_eq!((missing, extra), (0, 0));
    // None twice: the records of the request whose acknowledgement a kill beat to the backlog
    // are past the file's last committed position, and matched when they are delivered again.
    assert_eq!(dups, 0, "{dups} twice");
    let store = open_store(&crashed.state);
    assert_eq!(store.details_backlog("src"), 0, "the backlog is drained");
    assert_eq!(sim.stats().throttled, 0, "no 429 under the budget");
    // Each detail event comes after its summary row.
    let text = std::fs::read_to_string(&crashed.out).unwrap();
    let mut rows_seen = HashSet::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let key = (v["id"].to_string(), v["recipientAddress"].to_string());
        if v["_detail"] == true {
            assert!(rows_seen.contains(&key), "a detail before its row: {v}");
        } else {
            rows_seen.insert(key);
        }
    }
}

/// The windows of [`two_sources`], in epoch seconds: `a` one hour, `b` eight.
type Windows = ((String, String), (String, String));

/// Two sources of one tenant under a budget that binds: `a` with details, `b` without and a
/// longer window. Returns the request log, the detail events and the harness.
fn two_sources(
    a_details: &str,
    (a, b): &Windows,
) -> (Vec<String>, HashMap<DetailId, usize>, Harness) {
    let h = Harness::graph()
        .sim(|c| {
            c.page_latency_ms = 5;
            c.quota = Some(SimQuota {
                requests: 40,
                per_secs: 2,
            });
        })
        .build();
    let log = record_requests(h.sim());
    let toml = h
        .sources_toml(
            &[("a", &a.0, &a.1), ("b", &b.0, &b.1)],
            "quota = { requests = 40, per_secs = 2 }",
        )
        .replace(
            "[sources.a]\n",
            &format!("[sources.a]\ndetails = \"{a_details}\"\n"),
        )
        .replace("page_size = 100", "page_size = 30");
    let report = run_once(&parse(&toml), opts());
    assert!(report.all_succeeded(), "{report:?}");
    let log = log.lock().unwrap().clone();
    let got = detail_ids(&h.out);
    (log, got, h)
}

fn epoch(s: &str) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp(s.parse().unwrap(), 0).unwrap()
}

#[test]
fn the_summary_keeps_its_priority_and_finishes_no_later_than_without_details() {
    // Absolute bounds, taken once: an hour turning between the runs changes nothing.
    let windows = ((hours_ago(3), hours_ago(2)), (hours_ago(9), hours_ago(1)));
    let (plain, none, plain_run) = two_sources("none", &windows);
    let (with, got, run) = two_sources("not_delivered", &windows);
    let (plain_sim, sim) = (plain_run.sim(), run.sim());
    let b_start = msgtrace::actors::dialect::format_timestamp(epoch(&windows.1 .0));
    assert!(none.is_empty());
    let summary_of_b = |log: &[String]| -> Vec<String> {
        log.iter()
            .filter(|u| u.contains(&b_start))
            .cloned()
            .collect()
    };
    // The same summary requests, in the same order, with details as without.
    assert!(summary_of_b(&plain).len() > 10, "{plain:?}");
    assert_eq!(summary_of_b(&with), summary_of_b(&plain));
    // And none of them after a detail request: the summary finished first.
    let last_summary = with.iter().rposition(|u| !is_detail(u)).unwrap();
    let first_detail = with
        .iter()
        .position(|u| is_detail(u))
        .expect("details asked for");
    assert!(
        last_summary < first_detail,
        "a detail request (#{first_detail}) went before the summary's last (#{last_summary})"
    );
    // More requests than one span allows: the budget bound, and no 429 came of it.
    assert!(with.len() > 40, "{}", with.len());
    assert_eq!((sim.stats().throttled, plain_sim.stats().throttled), (0, 0));
    let window = (epoch(&windows.0 .0), epoch(&windows.0 .1));
    let expected = expected_details(sim, window, DetailsMode::NotDelivered, None);
    assert_eq!(got.keys().cloned().collect::<HashSet<_>>(), expected);
    assert!(got.values().all(|n| *n == 1));
}

#[test]
fn a_reread_status_change_emits_only_the_records_it_added() {
    let late = LateRows {
        late_per_mille: 0,
        max_delay_ms: 0,
        changing_per_mille: 1000,
        status_change_after_ms: 4000,
    };
    let h = Harness::graph()
        .rate(36_000)
        .sim(move |c| c.late = Some(late))
        .window("-6s", "now")
        .page_size(500)
        .extra("details = \"not_delivered\"\nreread = \"1m\"")
        .build();
    let (sim, out) = (h.sim(), &h.out);
    // Most rows of the first run are still pending (their details end with Defer); the second
    // run, after their change, re-reads them with their final status.
    for pause_ms in [4500, 0] {
        let report = h.run_once();
        assert!(report.all_succeeded(), "{report:?}");
        std::thread::sleep(std::time::Duration::from_millis(pause_ms));
    }
    let got = detail_ids(out);
    assert!(got.values().all(|n| *n == 1), "a record twice: {got:?}");
    // Every record delivered is one the simulator has for its row.
    let now = chrono::Utc::now();
    let mut routes: HashMap<(String, String), Vec<String>> = HashMap::new();
    for (id, recipient, at, event) in got.keys() {
        let row = sim
            .model()
            .row_of(id, recipient)
            .expect("a row of the tenant");
        let real: HashSet<DetailId> = sim
            .model()
            .details(&row, now, Some(&late))
            .iter()
            .map(|d| d.identity())
            .collect();
        let this = (id.clone(), recipient.clone(), at.clone(), event.clone());
        assert!(real.contains(&this), "{this:?} is not a record of its row");
        routes
            .entry((id.clone(), recipient.clone()))
            .or_default()
            .push(event.clone());
    }
    // The rows delivered again with a status that still wants details (pending, then failed,
    // quarantined…): asked for twice, the second request added only the final event.
    let mut changed = 0;
    for line in std::fs::read_to_string(out).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let status = v["status"].as_str().unwrap_or_default();
        if v["_update"] != true || !DetailsMode::NotDelivered.wants(status) {
            continue;
        }
        let key = (
            v["id"].as_str().unwrap().to_owned(),
            v["recipientAddress"].as_str().unwrap().to_owned(),
        );
        let mut events = routes.get(&key).cloned().unwrap_or_default();
        events.sort();
        let mut want = vec!["Defer", "Receive", "Submit"];
        want.push(match status {
            "failed" => "Fail",
            "quarantined" => "Quarantine",
            "filteredAsSpam" => "Spam",
            other => panic!("a changed row ends {other}"),
        });
        want.sort();
        assert_eq!(events, want, "{key:?}");
        changed += 1;
    }
    assert!(changed > 0, "a status change was fetched again: {routes:?}");
}

#[test]
fn faults_of_the_detail_endpoint_are_retried() {
    let h = Harness::graph()
        .sim(|c| {
            c.detail_page_size = Some(2);
            c.fault_schedule = Some(FaultSchedule {
                every: 3,
                // The statuses the default retry policy retries (`codes = [429, 503]`).
                faults: ["503", "429", "truncated", "invalid-json"]
                    .iter()
                    .map(|f| SimFault::by_name(f).unwrap())
                    .collect(),
            });
        })
        .window(&hours_ago(2), &hours_ago(1))
        .extra("details = \"not_delivered\"")
        .build();
    let log = record_requests(h.sim());
    let report = h.run_once();
    h.assert_exactly_once(&report);
    let (s, e) = report.jobs[0].1.window.unwrap();
    let expected = expected_details(h.sim(), (s, e), DetailsMode::NotDelivered, None);
    let got = detail_ids(&h.out);
    assert_eq!(got.keys().cloned().collect::<HashSet<_>>(), expected);
    assert!(got.values().all(|n| *n == 1), "{got:?}");
    // Detail requests were answered with faults and asked again.
    let mut asked: HashMap<String, usize> = HashMap::new();
    for uri in log.lock().unwrap().iter().filter(|u| is_detail(u)) {
        *asked.entry(uri.clone()).or_insert(0) += 1;
    }
    let retried = asked.values().filter(|n| **n > 1).count();
    assert!(retried > 3, "detail requests asked again: {retried}");
    assert!(
        asked.keys().any(|u| u.contains("$skiptoken=")),
        "next links followed"
    );
}

#[test]
fn under_msgtrace_run_the_detail_worker_drains_the_backlog_beside_the_jobs() {
    let (start, end) = (hours_ago(2), hours_ago(1));
    let h = Harness::graph()
        .window(&start, &end)
        .extra("details = \"all\"\npoll_interval_mins = 60")
        .build();
    let out = &h.out;
    let window = (epoch(&start), epoch(&end));
    let expected = expected_details(h.sim(), window, DetailsMode::All, None);
    let handle = msgtrace::embed::EngineBuilder::from_toml(&h.toml)
        .unwrap()
        .scheduled(true)
        .start()
        .unwrap();
    let drained = wait_for(|| detail_ids(out).len() >= expected.len());
    let jobs = block_on(handle.jobs(Some("src"))).unwrap();
    block_on(handle.shutdown()).unwrap();
    assert!(
        drained,
        "{} of {} detail records",
        detail_ids(out).len(),
        expected.len()
    );
    let got = detail_ids(out);
    assert_eq!(got.keys().cloned().collect::<HashSet<_>>(), expected);
    assert!(got.values().all(|n| *n == 1));
    // The job ended with its summary: the worker, not the job, fetched the details.
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].detail_rows, 0);
    assert_eq!(h.store().details_backlog("src"), 0);
}

#[test]
fn a_backlog_left_by_a_run_is_shown_by_jobs_and_the_dump_and_fetched_by_the_next_run() {
    // The budget lets the summary through and few details: `job_timeout` ends the run with
    // most rows still in the backlog.
    let slow = "details = \"all\"\nquota = { requests = 12, per_secs = 60 }\njob_timeout = \"3s\"";
    let h = Harness::graph()
        .window(&hours_ago(3), &hours_ago(2))
        .extra(slow)
        .build();
    let (state, cfg) = (&h.state, h.write_config());
    let status = spawn_run_once(&cfg).wait().unwrap();
    assert!(!status.success(), "the run ended by its job_timeout");
    let left = h.store().details_backlog("src");
    assert!(left > 10, "{left} rows left");
    let tool = |bin: &str, args: &[&std::ffi::OsStr]| {
        let o = std::process::Command::new(bin).args(args).output().unwrap();
        assert!(o.status.success(), "{o:?}");
        String::from_utf8(o.stdout).unwrap()
    };
    let jobs = tool(
        env!("CARGO_BIN_EXE_msgtrace"),
        &["jobs".as_ref(), "-c".as_ref(), cfg.as_os_str()],
    );
    let backlog = jobs
        .lines()
        .skip_while(|l| !l.starts_with("DETAILS BACKLOG"))
        .nth(1)
        .unwrap_or_else(|| panic!("{jobs}"));
    assert_eq!(
        backlog.split_whitespace().collect::<Vec<_>>(),
        ["src", left.to_string().as_str()]
    );
    let dump = tool(env!("CARGO_BIN_EXE_msgtrace-dump"), &[state.as_os_str()]);
    assert!(
        dump.ends_with(&format!("== details backlog per source\nsrc {left}\n")),
        "{dump}"
    );
    // The next run, with room in the budget, fetches the rest: every record once.
    std::fs::write(&cfg, h.toml_with("details = \"all\"")).unwrap();
    assert!(spawn_run_once(&cfg).wait().unwrap().success());
    let store = h.store();
    assert_eq!(store.details_backlog("src"), 0);
    let job = store.jobs(Some("src")).unwrap().pop().unwrap();
    assert_eq!(job.detail_rows, left as u64);
    let (s, e) = (job.window_start, job.window_end);
    assert_eq!(
        (s, e),
        (None, None),
        "the summary had nothing left to collect"
    );
    let window = store
        .jobs(Some("src"))
        .unwrap()
        .iter()
        .find_map(|j| j.window_start.zip(j.window_end))
        .unwrap();
    let expected = expected_details(h.sim(), window, DetailsMode::All, None);
    let got = detail_ids(&h.out);
    assert_eq!(got.keys().cloned().collect::<HashSet<_>>(), expected);
    assert!(got.values().all(|n| *n == 1));
}

#[test]
fn details_are_refused_for_the_reporting_web_service() {
    let h = Harness::reporting()
        .window("-3h@h", "-2h@h")
        .extra("details = \"not_delivered\"")
        .build();
    let toml = &h.toml;
    let err = msgtrace::config::from_str(toml).unwrap_err().to_string();
    let line = err
        .lines()
        .find(|l| l.contains("sources.src.details"))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(
        line.contains("api = \"graph\"") && line.contains("remove details"),
        "{line}"
    );
    // `none` is what a Reporting source has anyway; an unknown mode lists the modes.
    let none = toml.replace("details = \"not_delivered\"", "details = \"none\"");
    assert!(msgtrace::config::from_str(&none).is_ok());
    let odd = toml.replace("details = \"not_delivered\"", "details = \"failed\"");
    let err = msgtrace::config::from_str(&odd).unwrap_err().to_string();
    assert!(err.contains("none, not_delivered, all"), "{err}");
}
