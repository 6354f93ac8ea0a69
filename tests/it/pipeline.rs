//! Pipeline hooks and `normalize = "ecs"` through the full engine.

use crate::common::*;
use msgtrace::actors::dialect::Api;
use msgtrace::actors::event::{Event, EventMeta};
use msgtrace::actors::hook::Hook;
use msgtrace::engine::EngineOptions;
use serde_json::Value;
use std::sync::{Arc, Mutex};

fn lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A Graph source of a tenant of 30 messages an hour, over the last six hours in pages of 40.
fn graph_harness(extra: &str) -> Harness {
    Harness::graph()
        .rate(30)
        .window(&hours_ago(6), &hours_ago(1))
        .page_size(40)
        .extra(extra)
        .build()
}

#[test]
fn ecs_normalization_of_both_dialects() {
    for api in [Api::Graph, Api::Reporting] {
        let h = Harness::simulated(api)
            .rate(30)
            .window(&hours_ago(6), &hours_ago(1))
            .extra("normalize = \"ecs\"\nlocal_domains = [\"contoso.com\"]\nfields = { env = \"test\" }")
            .build();
        let report = h.run_once();
        assert!(report.all_succeeded(), "{report:?}");
        let events = lines(&h.out);
        assert_eq!(events.len() as u64, report.jobs[0].1.rows);
        let mut directions = std::collections::HashSet::new();
        let (id_field, _) = api.identity_fields();
        for e in &events {
            assert!(e["@timestamp"].is_string(), "{e}");
            assert!(e["email"]["from"]["address"][0].is_string(), "{e}");
            assert!(e["email"]["to"]["address"][0].is_string(), "{e}");
            assert!(e["email"]["local_id"].is_string(), "{e}");
            assert!(e["email"]["message_id"].is_string(), "{e}");
            assert!(
                ["success", "failure", "unknown"]
                    .contains(&e["event"]["outcome"].as_str().unwrap()),
                "{e}"
            );
            assert_eq!(e["env"], "test");
            assert!(e["_time"].is_number());
            let original = &e["microsoft"]["online_message_trace"];
            assert_eq!(original[id_field], e["email"]["local_id"]);
            assert!(original.get("env").is_none());
            directions.insert(e["email"]["direction"].as_str().unwrap().to_owned());
        }
        assert!(
            directions.contains("inbound") && directions.contains("outbound"),
            "{directions:?}"
        );
    }
}

#[test]
fn a_host_hook_sees_metadata_and_can_change_drop_and_add_events() {
    let h = graph_harness("");
    // Each call's events: pages are made ready on parse threads, two at once, so the calls are
    // not in page order.
    let calls: Arc<Mutex<Vec<Vec<EventMeta>>>> = Arc::default();
    let s = calls.clone();
    let hook: Hook = Arc::new(move |events: &mut Vec<Event>| {
        s.lock()
            .unwrap()
            .push(events.iter().map(|e| e.meta.clone()).collect());
        // Drop failed deliveries, mark the rest, and add one summary event per page.
        events.retain(|e| e.fields["status"] != "failed");
        for e in events.iter_mut() {
            e.fields.insert("hooked".into(), true.into());
        }
        let mut summary = events[0].clone();
        summary.fields = serde_json::Map::new();
        summary
            .fields
            .insert("page_summary".into(), (events.len() as u64).into());
        events.push(summary);
    });
    let report = h.run_once_with(EngineOptions {
        hooks: vec![hook],
        ..opts()
    });
    assert!(report.all_succeeded(), "{report:?}");
    let calls = calls.lock().unwrap();
    assert_eq!(calls.len() as u64, report.jobs[0].1.pages, "once per page");
    let seen: Vec<&EventMeta> = calls.iter().flatten().collect();
    let rows = report.jobs[0].1.rows as usize;
    assert_eq!(seen.len(), rows, "the hook saw every event");
    assert!(seen.iter().all(|m| &*m.input_id == "src" && !m.is_broken));
    assert!(seen.iter().all(|m| m.source.ends_with("/messageTraces")));
    assert_eq!(
        seen.iter().filter(|m| m.is_final).count(),
        1,
        "one window, one final event"
    );
    let last_page = calls.iter().find(|c| c.iter().any(|m| m.is_final)).unwrap();
    assert!(last_page.last().unwrap().is_final, "the page's last event");

    let written = lines(&h.out);
    let summaries: Vec<&Value> = written
        .iter()
        .filter(|e| e.get("page_summary").is_some())
        .collect();
    let rows_out: Vec<&Value> = written
        .iter()
        .filter(|e| e.get("page_summary").is_none())
        .collect();
    assert_eq!(summaries.len() as u64, report.jobs[0].1.pages);
    assert!(rows_out
        .iter()
        .all(|e| e["hooked"] == true && e["status"] != "failed"));
    let failed = rows - rows_out.len();
    assert!(failed > 0, "the simulator has failed deliveries");
    assert!(written.iter().all(|e| e.get("__inputId").is_none()));
}

#[test]
fn a_panicking_hook_fails_the_page_and_moves_no_checkpoint() {
    let h = graph_harness("reschedule_tasks = false");
    let out = &h.out;
    let hook: Hook = Arc::new(|_| panic!("bad hook"));
    let report = h.run_once_with(EngineOptions {
        hooks: vec![hook],
        ..opts()
    });
    assert!(!report.all_succeeded());
    assert!(report.jobs[0]
        .1
        .error
        .as_deref()
        .unwrap()
        .contains("bad hook"));
    assert_eq!(report.restarts, 0, "the fetcher did not die");
    assert!(!out.exists() || lines(out).is_empty());
    let cp = h.store().checkpoint("src").unwrap();
    if let Some(c) = cp {
        assert!(c.cursor.is_none() && c.pages_total == 0, "{c:?}");
    }
}

/// A host sink that keeps every event it is given.
struct Keep(Arc<Mutex<Vec<Value>>>);

impl msgtrace::actors::sink::Sink for Keep {
    fn name(&self) -> &str {
        "keep"
    }

    fn deliver<'a>(
        &'a mut self,
        batch: &'a msgtrace::actors::event::Batch,
    ) -> futures_util::future::LocalBoxFuture<'a, Result<(), msgtrace::actors::sink::SinkError>>
    {
        let mut kept = self.0.lock().unwrap();
        kept.extend(batch.events.iter().map(|e| Value::Object(e.fields.clone())));
        Box::pin(async { Ok(()) })
    }
}

#[test]
fn a_file_sink_and_a_host_sink_of_one_source_get_the_same_hooked_events() {
    // The file sink takes NDJSON encoded on the parse thread, the host sink the events: both
    // after the hooks, both exactly once.
    let h = graph_harness("");
    let kept: Arc<Mutex<Vec<Value>>> = Arc::default();
    let hook: Hook = Arc::new(|events: &mut Vec<Event>| {
        events.retain(|e| e.fields["status"] != "failed");
        for e in events.iter_mut() {
            e.fields.insert("hooked".into(), true.into());
        }
    });
    let report = run_embedded(
        msgtrace::embed::EngineBuilder::new(h.config())
            .sink(Box::new(Keep(kept.clone())), &["src"])
            .hook(hook),
    );
    assert!(report.all_succeeded(), "{report:?}");
    let written = lines(&h.out);
    let kept = kept.lock().unwrap();
    assert!(written.len() > 40, "several pages: {}", written.len());
    assert!(written
        .iter()
        .all(|e| e["hooked"] == true && e["status"] != "failed"));
    let key = |e: &Value| e.to_string();
    let mut a: Vec<String> = written.iter().map(key).collect();
    let mut b: Vec<String> = kept.iter().map(key).collect();
    a.sort();
    b.sort();
    assert_eq!(a, b, "the same events, each once");
    assert_exactly_once_ids(&h.out, &written);
}

/// No identity twice in the file.
fn assert_exactly_once_ids(out: &std::path::Path, written: &[Value]) {
    let ids = identities(out, Api::Graph);
    assert_eq!(ids.values().sum::<usize>(), written.len());
    assert!(ids.values().all(|n| *n == 1), "an identity twice");
}

/// A host sink that panics the second time it is given a page, and keeps what it takes.
struct PanicsOnce {
    kept: Arc<Mutex<Vec<Value>>>,
    calls: usize,
}

impl msgtrace::actors::sink::Sink for PanicsOnce {
    fn name(&self) -> &str {
        "panics-once"
    }

    fn deliver<'a>(
        &'a mut self,
        batch: &'a msgtrace::actors::event::Batch,
    ) -> futures_util::future::LocalBoxFuture<'a, Result<(), msgtrace::actors::sink::SinkError>>
    {
        self.calls += 1;
        Box::pin(async move {
            if self.calls == 2 {
                panic!("a host sink's bug");
            }
            let mut kept = self.kept.lock().unwrap();
            kept.extend(batch.events.iter().map(|e| Value::Object(e.fields.clone())));
            Ok(())
        })
    }
}

#[test]
fn a_sink_that_panics_is_given_its_page_again_and_the_run_goes_on() {
    // Before, the panic ended the sink's actor for good: every later page was refused ("a sink
    // is not running") and the job failed, or a scheduled run held the page forever.
    let h = graph_harness("");
    let kept: Arc<Mutex<Vec<Value>>> = Arc::default();
    let report = run_embedded(msgtrace::embed::EngineBuilder::new(h.config()).sink(
        Box::new(PanicsOnce {
            kept: kept.clone(),
            calls: 0,
        }),
        &["src"],
    ));
    assert!(report.all_succeeded(), "{report:?}");
    let kept = kept.lock().unwrap();
    let (_, job) = &report.jobs[0];
    assert!(job.pages > 2, "several pages: {job:?}");
    // The page the sink panicked on was not acknowledged: the task ran again from the page
    // before it, and the sink has every row exactly once.
    let mut ids: Vec<String> = kept
        .iter()
        .map(|e| format!("{}\u{0}{}", e["id"], e["recipientAddress"]))
        .collect();
    let n = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n, "a row twice in the sink");
    let now = chrono::Utc::now();
    let (s, e) = job.window.unwrap();
    assert_eq!(n, h.sim().model().expected(s, e, now).len(), "every row");
}

/// Two engines in one process share nothing: engine A's pages are stuck in a hook on the threads
/// that parse them (every parse turn A has, whatever the number of cores), and engine B collects
/// all the same. Before, the parse turns were a process-wide static, and B waited for A.
#[test]
fn two_engines_in_one_process_do_not_wait_for_each_other() {
    // Engine B's set-up; engine A collects from its simulator into a directory of its own.
    let b = graph_harness("");
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let dir_a = tempfile::tempdir().unwrap();
    let sources: Vec<(String, String, String)> = (0..cores)
        .map(|i| (format!("a{i}"), hours_ago(3), hours_ago(1)))
        .collect();
    let refs: Vec<(&str, &str, &str)> = sources
        .iter()
        .map(|(a, b, c)| (a.as_str(), b.as_str(), c.as_str()))
        .collect();
    let cfg_a = parse(&graph_sources_toml(
        b.sim(),
        &dir_a.path().join("state"),
        &dir_a.path().join("out.ndjson"),
        &refs,
        "",
    ));
    // The hook holds each page of A until released.
    let gate = Arc::new((Mutex::new((0usize, false)), std::sync::Condvar::new()));
    let hook: Hook = {
        let gate = gate.clone();
        Arc::new(move |_: &mut Vec<Event>| {
            let (lock, cv) = &*gate;
            let mut g = lock.lock().unwrap();
            g.0 += 1;
            cv.notify_all();
            while !g.1 {
                g = cv.wait(g).unwrap();
            }
        })
    };
    let a = msgtrace::embed::EngineBuilder::new(cfg_a)
        .hook(hook)
        .start()
        .unwrap();
    let a = Arc::new(a);
    let run_a = {
        let a = a.clone();
        std::thread::spawn(move || block_on(a.run_once()))
    };
    {
        let (lock, cv) = &*gate;
        let g = lock.lock().unwrap();
        let (g, timeout) = cv
            .wait_timeout_while(g, std::time::Duration::from_secs(60), |g| g.0 < cores)
            .unwrap();
        assert!(!timeout.timed_out(), "engine A parsed {} pages", g.0);
    }
    // Engine B, while every parse turn of A is held.
    let cfg_b = b.config();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let b = msgtrace::embed::EngineBuilder::new(cfg_b).start().unwrap();
        let report = block_on(async {
            let r = b.run_once().await.unwrap();
            b.shutdown().await.unwrap();
            r
        });
        let _ = tx.send(report);
    });
    let got_b = rx.recv_timeout(std::time::Duration::from_secs(60));
    {
        let (lock, cv) = &*gate;
        lock.lock().unwrap().1 = true;
        cv.notify_all();
    }
    let report_a = run_a.join().unwrap().unwrap();
    block_on(a.shutdown()).unwrap();
    let report_b = got_b.expect("engine B collected while engine A's parses were held");
    assert!(report_b.all_succeeded(), "{report_b:?}");
    assert!(report_a.all_succeeded(), "{report_a:?}");
    b.assert_exactly_once(&report_b);
}
