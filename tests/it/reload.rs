//! Reloads (issue 16): SIGHUP to `msgtrace run` reads the configuration again and reopens the
//! output files; `Started::reload` does the same for a host. Every test checks that no row is
//! lost or delivered twice across the reload.

use crate::common::*;
use msgtrace::actors::dialect::Api;
use msgtrace::storage::JobState;
use msgtrace_simulator::SimServer;
use std::collections::HashMap;
use std::path::Path;

/// The identities of the complete lines of `paths` (a line being written is not counted yet).
fn complete_ids(paths: &[&Path]) -> HashMap<(String, String), usize> {
    let (a, b) = Api::Graph.identity_fields();
    let mut m = HashMap::new();
    for path in paths {
        let text = std::fs::read(path).unwrap_or_default();
        let done = text.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        for line in text[..done]
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
        {
            let v: serde_json::Value = serde_json::from_slice(line).expect("a JSON line");
            let key = (
                v[a].as_str().unwrap().to_owned(),
                v[b].as_str().unwrap().to_owned(),
            );
            *m.entry(key).or_insert(0) += 1;
        }
    }
    m
}

/// The complete lines of `path` whose field `gen` is `value`.
fn lines_of_gen(path: &Path, value: &str) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["gen"] == value)
        .count()
}

/// The simulator's rows of the windows `(start, end)` (epoch seconds as config expressions).
fn expected(sim: &SimServer, windows: &[(&str, &str)]) -> Vec<(String, String)> {
    let at = |s: &str| chrono::DateTime::from_timestamp(s.parse().unwrap(), 0).unwrap();
    windows
        .iter()
        .flat_map(|(s, e)| sim.model().expected(at(s), at(e), chrono::Utc::now()))
        .collect()
}

/// Waits until every expected row is in `paths` while `run` runs.
fn wait_for_rows(run: &mut MsgtraceRun, paths: &[&Path], expected: &[(String, String)]) {
    run.wait_running(|| {
        let got = complete_ids(paths);
        expected.iter().all(|k| got.contains_key(k))
    });
}

/// A Graph tenant for sources of 29 hours in pages of 100, paced by a budget of 10 requests a
/// second ([`paced`]) so that a collection takes seconds whatever the machine.
fn setup() -> Harness {
    Harness::graph().rate(100).build()
}

const PACED: &str = "quota = { requests = 10, per_secs = 1 }";

/// The Graph sources `(id, start, end)` of `s`, paced, with `extra` in every source table.
fn paced(s: &Harness, sources: &[(&str, &str, &str)], extra: &str) -> String {
    s.sources_toml(sources, &format!("{PACED}\n{extra}"))
}

/// Issue 16, item 4: a changed source restarts at its checkpoint with its new settings, an
/// added source starts, and not a row is lost or doubled. On the old code the SIGHUP killed
/// the process (exit 129).
#[test]
fn sighup_restarts_a_changed_source_at_its_checkpoint_and_starts_an_added_one() {
    let s = setup();
    let (cfg, log) = (s.path("c.toml"), s.path("log.txt"));
    let src = (hours_ago(30), hours_ago(1));
    let added = (hours_ago(40), hours_ago(30));
    let one = [("src", src.0.as_str(), src.1.as_str())];
    std::fs::write(&cfg, paced(&s, &one, "fields = { gen = \"1\" }")).unwrap();
    let mut run = MsgtraceRun::spawn(&cfg, &log, &[]);
    run.wait_running(|| lines_of_gen(&s.out, "1") > 0);
    let both = [one[0], ("added", added.0.as_str(), added.1.as_str())];
    std::fs::write(&cfg, paced(&s, &both, "fields = { gen = \"2\" }")).unwrap();
    run.signal(libc::SIGHUP);
    let exp = expected(s.sim(), &[(&src.0, &src.1), (&added.0, &added.1)]);
    wait_for_rows(&mut run, &[&s.out], &exp);
    let status = run.stop();
    assert!(status.success(), "{status}");
    assert_eq!(
        compare(&complete_ids(&[&s.out]), &exp),
        (0, 0, 0),
        "missing, extra, duplicates"
    );
    let (first, second) = (lines_of_gen(&s.out, "1"), lines_of_gen(&s.out, "2"));
    assert!(first > 0 && second > 0, "gen 1: {first}, gen 2: {second}");
    let store = s.store();
    let jobs = store.jobs(Some("src")).unwrap();
    assert!(
        jobs.iter().any(|j| j.state == JobState::Cancelled),
        "the reload stopped the running job after its page in flight: {jobs:?}"
    );
    assert!(store.checkpoint("added").unwrap().is_some());
}

/// Issue 16, item 4 (`--watch-config`, new): the same reload when the file changes, no signal.
#[test]
fn watch_config_reloads_when_the_file_changes() {
    let s = setup();
    let (cfg, log) = (s.path("c.toml"), s.path("log.txt"));
    let src = (hours_ago(50), hours_ago(1));
    let one = [("src", src.0.as_str(), src.1.as_str())];
    std::fs::write(&cfg, paced(&s, &one, "fields = { gen = \"1\" }")).unwrap();
    let mut run = MsgtraceRun::spawn(&cfg, &log, &["--watch-config"]);
    run.wait_running(|| lines_of_gen(&s.out, "1") > 0);
    std::fs::write(&cfg, paced(&s, &one, "fields = { gen = \"2\" }")).unwrap();
    run.wait_running(|| lines_of_gen(&s.out, "2") > 0);
    let exp = expected(s.sim(), &[(&src.0, &src.1)]);
    wait_for_rows(&mut run, &[&s.out], &exp);
    let status = run.stop();
    assert!(status.success(), "{status}");
    assert_eq!(
        compare(&complete_ids(&[&s.out]), &exp),
        (0, 0, 0),
        "missing, extra, duplicates"
    );
    assert!(
        lines_of_gen(&s.out, "2") > 0,
        "the new settings are in effect"
    );
}

/// Issue 16, "done when": logrotate renames the output file and sends SIGHUP; new events go to
/// a new file at the configured path, the process keeps running, and the two files together
/// hold every row exactly once. On the old code the SIGHUP killed the process.
#[test]
fn logrotate_rename_and_sighup_continue_in_a_new_file_every_row_once() {
    let s = setup();
    let (cfg, log) = (s.path("c.toml"), s.path("log.txt"));
    let window = (hours_ago(30), hours_ago(1));
    let toml = paced(&s, &[("src", &window.0, &window.1)], "");
    std::fs::write(&cfg, toml).unwrap();
    let mut run = MsgtraceRun::spawn(&cfg, &log, &[]);
    run.wait_running(|| !complete_ids(&[&s.out]).is_empty());
    let rotated = s.out.with_extension("ndjson.1");
    std::fs::rename(&s.out, &rotated).unwrap();
    run.signal(libc::SIGHUP);
    run.wait_running(|| !complete_ids(&[&s.out]).is_empty());
    // From the new file's first line on, the renamed one is never written again.
    let rotated_bytes = std::fs::read(&rotated).unwrap();
    let exp = expected(s.sim(), &[(&window.0, &window.1)]);
    wait_for_rows(&mut run, &[&rotated, &s.out], &exp);
    let status = run.stop();
    assert!(status.success(), "{status}");
    assert_eq!(std::fs::read(&rotated).unwrap(), rotated_bytes);
    assert_eq!(
        compare(&complete_ids(&[&rotated, &s.out]), &exp),
        (0, 0, 0),
        "missing, extra, duplicates"
    );
    assert!(!complete_ids(&[&rotated]).is_empty());
}

/// Issue 16, item 4: an invalid configuration at SIGHUP changes nothing: every error is logged
/// and the collection goes on as configured. On the old code the SIGHUP killed the process.
#[test]
fn an_invalid_configuration_at_sighup_is_logged_and_the_running_one_stays() {
    let s = setup();
    let (cfg, log) = (s.path("c.toml"), s.path("log.txt"));
    let window = (hours_ago(30), hours_ago(1));
    let good = paced(&s, &[("src", &window.0, &window.1)], "");
    std::fs::write(&cfg, &good).unwrap();
    let mut run = MsgtraceRun::spawn(&cfg, &log, &[]);
    run.wait_running(|| !complete_ids(&[&s.out]).is_empty());
    let log = || std::fs::read_to_string(&log).unwrap_or_default();
    let rejected = |n: usize| move || log().matches("configuration not reloaded").count() >= n;
    // Two errors of the configuration itself.
    let bad = good.replace("page_size = 100", "page_size = 0\npage_sise = 5");
    std::fs::write(&cfg, bad).unwrap();
    run.signal(libc::SIGHUP);
    run.wait_running(rejected(1));
    // A pre-run check (`validate`'s): the file sink's path is a directory.
    let dir_path = s.state.parent().unwrap().join("a-directory");
    std::fs::create_dir(&dir_path).unwrap();
    let bad = good.replace(
        &serde_json::to_string(&s.out.to_string_lossy()).unwrap(),
        &serde_json::to_string(&dir_path.to_string_lossy()).unwrap(),
    );
    std::fs::write(&cfg, bad).unwrap();
    run.signal(libc::SIGHUP);
    run.wait_running(rejected(2));
    let exp = expected(s.sim(), &[(&window.0, &window.1)]);
    wait_for_rows(&mut run, &[&s.out], &exp);
    let status = run.stop();
    assert!(status.success(), "{status}");
    let log = log();
    for wanted in ["page_size", "page_sise", "is a directory"] {
        assert!(
            log.lines()
                .any(|l| l.contains("reload") && l.contains(wanted)),
            "{wanted} not logged:\n{log}"
        );
    }
    assert_eq!(
        compare(&complete_ids(&[&s.out]), &exp),
        (0, 0, 0),
        "missing, extra, duplicates"
    );
}

/// Sources `a` (window `wa`) and `b` (window `wb`) of one paced tenant, `a` feeding the file
/// sink `fa` (`out_a`), `b` the file sink `fb` (`out_b`).
fn two_sinks(
    s: &Harness,
    wa: &(String, String),
    wb: &(String, String),
) -> msgtrace::config::Config {
    let mut c = parse(&paced(s, &[("a", &wa.0, &wa.1), ("b", &wb.0, &wb.1)], ""));
    let out = c.sinks.remove("out").unwrap();
    for (id, source) in [("fa", "a"), ("fb", "b")] {
        let mut sink = out.clone();
        sink.id = id.into();
        sink.inputs = vec![source.into()];
        if let msgtrace::config::SinkKind::File { path, .. } = &mut sink.kind {
            *path = s.out.with_file_name(format!("{source}.ndjson"));
        }
        c.sinks.insert(id.into(), sink);
    }
    c
}

/// Issue 16, item 4, through the embedding API (`EngineHandle::reload`, new): a removed source
/// stops after its page in flight (what its file holds is exactly what its checkpoint counts),
/// a sink whose settings changed is rebuilt and the source feeding it restarts at its
/// checkpoint, and a later run with the source back completes it: every row exactly once.
#[test]
fn a_removed_source_stops_after_its_page_in_flight_and_a_rebuilt_sink_loses_nothing() {
    use msgtrace::embed::EngineBuilder;
    let s = setup();
    let (wa, wb) = (
        (hours_ago(30), hours_ago(1)),
        (hours_ago(60), hours_ago(31)),
    );
    let config = two_sinks(&s, &wa, &wb);
    let (out_a, out_b) = (
        s.out.with_file_name("a.ndjson"),
        s.out.with_file_name("b.ndjson"),
    );
    let engine = EngineBuilder::new(config.clone())
        .scheduled(true)
        .start()
        .unwrap();
    assert!(wait_for(
        || !complete_ids(&[&out_a]).is_empty() && !complete_ids(&[&out_b]).is_empty()
    ));
    let mut new = config.clone();
    new.sources.remove("b");
    new.sinks.remove("fb");
    if let msgtrace::config::SinkKind::File { mode, .. } =
        &mut new.sinks.get_mut("fa").unwrap().kind
    {
        *mode = 0o600;
    }
    let plan = block_on(engine.reload(new)).unwrap();
    assert_eq!(
        (
            plan.removed,
            plan.sinks_removed,
            plan.sinks_rebuilt,
            plan.restarted
        ),
        (
            vec!["b".into()],
            vec!["fb".into()],
            vec!["fa".into()],
            vec!["a".into()]
        )
    );
    let exp_a = expected(s.sim(), &[(&wa.0, &wa.1)]);
    assert!(wait_for(|| {
        let got = complete_ids(&[&out_a]);
        exp_a.iter().all(|k| got.contains_key(k))
    }));
    let status = block_on(engine.status()).unwrap();
    assert_eq!(
        status.iter().map(|s| s.source.as_str()).collect::<Vec<_>>(),
        ["a"]
    );
    block_on(engine.shutdown()).unwrap();
    {
        let store = s.store();
        let b = store.checkpoint("b").unwrap().unwrap();
        let lines = std::fs::read_to_string(&out_b).unwrap().lines().count() as u64;
        assert_eq!(
            b.rows_total, lines,
            "the page in flight was delivered and checkpointed"
        );
        let exp_b = expected(s.sim(), &[(&wb.0, &wb.1)]);
        assert!(lines < exp_b.len() as u64, "stopped inside its window");
        let jobs = store.jobs(Some("b")).unwrap();
        assert_eq!(jobs[0].state, JobState::Cancelled, "{jobs:?}");
    }
    // Back in the configuration, `b` resumes where it stopped.
    let report = run_once(&config, opts());
    assert!(report.all_succeeded(), "{report:?}");
    let exp_b = expected(s.sim(), &[(&wb.0, &wb.1)]);
    assert_eq!(compare(&complete_ids(&[&out_b]), &exp_b), (0, 0, 0), "b");
    assert_eq!(compare(&complete_ids(&[&out_a]), &exp_a), (0, 0, 0), "a");
}

/// Issue 16, item 4: a reload that is not valid changes nothing, through the embedding API
/// too: the error lists every problem.
#[test]
fn an_invalid_reload_through_the_handle_lists_every_problem_and_changes_nothing() {
    use msgtrace::embed::{EmbedError, EngineBuilder};
    let s = setup();
    let w = (hours_ago(3), hours_ago(1));
    let config = two_sinks(&s, &w, &w);
    let engine = EngineBuilder::new(config.clone()).start().unwrap();
    let mut bad = config.clone();
    let dir = s.out.with_file_name("a-directory");
    std::fs::create_dir(&dir).unwrap();
    for sink in bad.sinks.values_mut() {
        if let msgtrace::config::SinkKind::File { path, .. } = &mut sink.kind {
            *path = dir.clone();
        }
    }
    bad.sources.remove("b");
    match block_on(engine.reload(bad)) {
        Err(EmbedError::Reload(e)) => {
            assert_eq!(e.problems.len(), 2, "{:?}", e.problems);
            assert!(
                e.problems.iter().all(|p| p.contains("is a directory")),
                "{e}"
            );
        }
        other => panic!("{other:?}"),
    }
    let status = block_on(engine.status()).unwrap();
    assert_eq!(status.len(), 2, "both sources are still there");
    block_on(engine.shutdown()).unwrap();
}

/// A host sink whose first delivery waits until the test opens `gate`; `entered` counts the
/// deliveries begun.
struct GateSink {
    gate: tokio::sync::watch::Receiver<bool>,
    entered: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl msgtrace::actors::sink::Sink for GateSink {
    fn name(&self) -> &str {
        "gate"
    }

    fn deliver<'a>(
        &'a mut self,
        _: &'a msgtrace::actors::event::Batch,
    ) -> futures_util::future::LocalBoxFuture<'a, Result<(), msgtrace::actors::sink::SinkError>>
    {
        self.entered
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Box::pin(async move {
            let _ = self.gate.wait_for(|open| *open).await;
            Ok(())
        })
    }
}

/// Issue 16, item 4: a source removed and added back while its job is still stopping (its page
/// in flight held in a sink) is restarted, not left to be removed nor run by two fetchers at
/// once: every row of both sources exactly once.
#[test]
fn a_source_removed_and_added_back_while_stopping_resumes_every_row_once() {
    use msgtrace::embed::EngineBuilder;
    use std::sync::atomic::{AtomicU64, Ordering};
    let s = setup();
    let (wa, wb) = (
        (hours_ago(20), hours_ago(1)),
        (hours_ago(40), hours_ago(21)),
    );
    let config = two_sinks(&s, &wa, &wb);
    let (out_a, out_b) = (
        s.out.with_file_name("a.ndjson"),
        s.out.with_file_name("b.ndjson"),
    );
    let (open, gate) = tokio::sync::watch::channel(false);
    let entered = std::sync::Arc::new(AtomicU64::new(0));
    let held = GateSink {
        gate,
        entered: entered.clone(),
    };
    let engine = EngineBuilder::new(config.clone())
        .sink(Box::new(held), &["b"])
        .scheduled(true)
        .start()
        .unwrap();
    // `b`'s first page is in flight, held by the gate: its job cannot end before it opens.
    assert!(wait_for(|| entered.load(Ordering::SeqCst) > 0));
    let mut without_b = config.clone();
    without_b.sources.remove("b");
    without_b.sinks.remove("fb");
    let removed = block_on(engine.reload(without_b)).unwrap();
    assert_eq!(removed.removed, ["b"]);
    let back = block_on(engine.reload(config)).unwrap();
    assert_eq!(back.added, ["b"]);
    open.send(true).unwrap();
    let exp = expected(s.sim(), &[(&wa.0, &wa.1), (&wb.0, &wb.1)]);
    assert!(wait_for(|| {
        let got = complete_ids(&[&out_a, &out_b]);
        exp.iter().all(|k| got.contains_key(k))
    }));
    block_on(engine.shutdown()).unwrap();
    assert_eq!(
        compare(&complete_ids(&[&out_a, &out_b]), &exp),
        (0, 0, 0),
        "missing, extra, duplicates"
    );
    let jobs = s.store().jobs(Some("b")).unwrap();
    assert_eq!(
        jobs.iter().map(|j| j.state).collect::<Vec<_>>(),
        [JobState::Cancelled, JobState::Succeeded],
        "stopped once, then resumed"
    );
}
