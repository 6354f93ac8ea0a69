//! What is between fetch and commit: the next page is requested while the page before it is
//! delivered (prefetch), the engine-wide budget of rows in flight bounds how many pages all
//! sources together hold while a sink is busy, and the pages fetched ahead are kept in the spool
//! so that a run after a failure does not request them again.
//!
//! A sink that holds its first batch stands in for a slow sink; the simulator's request counter
//! shows what the engine asked for meanwhile.

use crate::common::*;
use msgtrace::actors::dialect::Api;
use msgtrace::actors::event::Batch;
use msgtrace::actors::sink::{Sink, SinkError};
use msgtrace::embed::EngineBuilder;
use msgtrace::engine::EngineOptions;
use msgtrace::storage::Spool;
use msgtrace_simulator::SimServer;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Holds its first batch until `wanted` data requests have reached the simulator (or
/// `patience` has passed), keeps holding it for `linger`, and records the most requests seen
/// while holding; then takes the batch, or with `refuse` refuses it (a failure while the first
/// page is delivered, the pages after it fetched ahead). Later batches pass at once.
struct HoldingSink {
    sim: Arc<SimServer>,
    wanted: u64,
    patience: Duration,
    linger: Duration,
    seen: Arc<Mutex<Option<u64>>>,
    refuse: bool,
}

impl Sink for HoldingSink {
    fn name(&self) -> &str {
        "holding"
    }

    fn deliver<'a>(
        &'a mut self,
        _batch: &'a Batch,
    ) -> futures_util::future::LocalBoxFuture<'a, Result<(), SinkError>> {
        let mut seen = self.seen.lock().unwrap();
        let first = seen.is_none();
        if first {
            // Blocking is fine here: each sink runs on its own thread.
            let requests = || self.sim.stats().data_requests;
            let until = Instant::now() + self.patience;
            while requests() < self.wanted && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(5));
            }
            std::thread::sleep(self.linger);
            *seen = Some(requests());
        }
        let refused = (first && self.refuse).then(|| SinkError {
            sink: "holding".into(),
            message: "refused on purpose".into(),
        });
        Box::pin(async { refused.map_or(Ok(()), Err) })
    }
}

/// Runs the engine once with a [`HoldingSink`] beside the file sink and returns the requests it
/// saw while holding the first page.
fn run_holding(
    sim: &Arc<SimServer>,
    toml: &str,
    opts: EngineOptions,
    wanted: u64,
    patience: Duration,
    linger: Duration,
) -> (msgtrace::actors::supervisor::RunReport, u64) {
    run_holding_then(sim, toml, opts, wanted, (patience, linger), false)
}

/// [`run_holding`], with the first batch refused after the wait when `refuse`.
fn run_holding_then(
    sim: &Arc<SimServer>,
    toml: &str,
    opts: EngineOptions,
    wanted: u64,
    (patience, linger): (Duration, Duration),
    refuse: bool,
) -> (msgtrace::actors::supervisor::RunReport, u64) {
    init_logs();
    let seen = Arc::new(Mutex::new(None));
    let sink = HoldingSink {
        sim: sim.clone(),
        wanted,
        patience,
        linger,
        seen: seen.clone(),
        refuse,
    };
    let handle = EngineBuilder::new(parse(toml))
        .options(opts)
        .sink(Box::new(sink), &[])
        .start()
        .expect("engine starts");
    let report = block_on(async {
        let report = handle.run_once().await.expect("run");
        handle.shutdown().await.expect("shutdown");
        report
    });
    let seen = seen.lock().unwrap().expect("the sink got a page");
    (report, seen)
}

/// One source `a` of the harness's tenant, over the eleven hours before the current one.
fn one_source(h: &Harness) -> String {
    h.sources_toml(&[("a", &hours_ago(12), &hours_ago(1))], "")
}

#[test]
fn the_next_pages_are_requested_while_the_page_before_them_is_delivered() {
    let h = Harness::graph().rate(60).build();
    let sim = h.shared_sim();
    let ahead = msgtrace::actors::fetcher::PREFETCH_PAGES as u64;
    // Waits (up to 30 s, a bound for a broken engine, not a timing) for the pages fetched ahead,
    // then a little longer, for any request beyond them to show.
    let (report, seen) = run_holding(
        &sim,
        &one_source(&h),
        opts(),
        1 + ahead,
        Duration::from_secs(30),
        Duration::from_millis(300),
    );
    assert_eq!(
        seen,
        1 + ahead,
        "while page 1 was delivered, the {ahead} pages after it were requested, and no more"
    );
    assert!(report.jobs[0].1.pages > 3, "{report:?}");
    // The pages fetched ahead came out in order, each once, after the page before was committed.
    h.assert_exactly_once(&report);
}

#[test]
fn without_prefetch_nothing_is_requested_while_a_page_is_delivered() {
    let h = Harness::graph().rate(60).build();
    let sim = h.shared_sim();
    let (report, seen) = run_holding(
        &sim,
        &one_source(&h),
        EngineOptions {
            prefetch: 0,
            ..opts()
        },
        2,
        Duration::from_millis(300),
        Duration::ZERO,
    );
    assert_eq!(seen, 1, "only page 1 was requested while it was delivered");
    h.assert_exactly_once(&report);
}

#[test]
fn the_rows_in_flight_budget_bounds_the_pages_of_all_sources_while_a_sink_is_busy() {
    let h = Harness::graph().rate(60).build();
    let sim = h.shared_sim();
    // Four sources due at once, each with a page being fetched and two fetched ahead: twelve
    // pages without a budget. A budget of two pages (page_size 100) lets two be requested.
    let ranges: Vec<(String, String)> = (0..4)
        .map(|k| (hours_ago(4 * k + 4), hours_ago(4 * k + 1)))
        .collect();
    let sources: Vec<(&str, &str, &str)> = ["a", "b", "c", "d"]
        .iter()
        .zip(&ranges)
        .map(|(id, (s, e))| (*id, s.as_str(), e.as_str()))
        .collect();
    let toml = h.sources_toml(&sources, "");
    let (report, seen) = run_holding(
        &sim,
        &toml,
        EngineOptions {
            rows_in_flight: 200,
            ..opts()
        },
        2,
        Duration::from_secs(30),
        // Time for requests beyond the budget to show up if the budget did not hold them.
        Duration::from_millis(500),
    );
    assert_eq!(
        seen, 2,
        "two pages' worth of rows in flight while the sink held one"
    );
    assert_eq!(report.jobs.len(), 4);
    h.assert_exactly_once(&report);
}

/// One source `a` over fixed hours (so that a second run plans the very same requests), its
/// state in the harness's, its output the file `out` of the harness's directory.
fn fixed_source(h: &Harness, out: &str, extra: &str) -> String {
    let (start, end) = (hours_ago(12), hours_ago(1));
    graph_sources_toml(
        h.sim(),
        &h.state,
        &h.path(out),
        &[("a", &start, &end)],
        extra,
    )
}

/// Run 1 fails while its first page is delivered, once the pages after it were fetched ahead
/// (and the failed task is not run again); returns the requests it made and the spool it left.
fn fail_with_pages_ahead(h: &Harness) -> (u64, Spool) {
    let ahead = msgtrace::actors::fetcher::PREFETCH_PAGES as u64;
    let toml = fixed_source(h, "run1.ndjson", "task_reschedule_limit = 0");
    let sim = h.shared_sim();
    let (report, seen) = run_holding_then(
        &sim,
        &toml,
        opts(),
        1 + ahead,
        // Up to 30 s for the pages ahead (a bound for a broken engine, not a timing), then time
        // for the last one's body to be kept.
        (Duration::from_secs(30), Duration::from_millis(300)),
        true,
    );
    assert_eq!(seen, 1 + ahead, "page 1 and the {ahead} pages after it");
    assert!(!report.all_succeeded(), "the refused page fails the job");
    let spool = Spool::new(&h.state, "a");
    assert_eq!(
        spool.len() as u64,
        1 + ahead,
        "every page fetched but not committed is kept"
    );
    (sim.stats().data_requests, spool)
}

#[test]
fn pages_fetched_before_a_failure_are_not_requested_again_by_the_next_run() {
    let h = Harness::graph().rate(60).build();
    let sim = h.shared_sim();
    let (before, spool) = fail_with_pages_ahead(&h);

    let toml = fixed_source(&h, "run2.ndjson", "task_reschedule_limit = 0");
    let report = run_once(&parse(&toml), opts());
    let pages = report.jobs[0].1.pages;
    assert_eq!(
        sim.stats().data_requests - before,
        pages - before,
        "run 2 requested only the pages run 1 had not fetched ({pages} pages in all)"
    );
    // Every row once: page 1 and the pages kept are delivered as the requested ones are.
    assert_exactly_once(&sim, &report, &h.path("run2.ndjson"), Api::Graph);
    assert!(spool.is_empty(), "nothing is kept once the job succeeded");
    assert!(!spool.dir().exists());
}

#[test]
fn a_damaged_spool_costs_requests_never_rows() {
    let h = Harness::graph().rate(60).build();
    let sim = h.shared_sim();
    let (before, spool) = fail_with_pages_ahead(&h);
    // Every kept page damaged a different way: cut short, a bit flipped, emptied, replaced by a
    // well-formed page of no rows with no next link under another file's name.
    let mut files: Vec<_> = std::fs::read_dir(spool.dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 4);
    let whole = std::fs::read(&files[0]).unwrap();
    std::fs::write(&files[0], &whole[..whole.len() / 2]).unwrap();
    let mut flipped = std::fs::read(&files[1]).unwrap();
    let i = flipped.len() / 2;
    flipped[i] ^= 0x20;
    std::fs::write(&files[1], flipped).unwrap();
    std::fs::write(&files[2], b"").unwrap();
    let other = Spool::new(&h.path("elsewhere"), "a");
    other
        .put("http://127.0.0.1:1/other", br#"{"value":[]}"#)
        .unwrap();
    let moved = std::fs::read_dir(other.dir())
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    std::fs::rename(moved.path(), &files[3]).unwrap();

    let toml = fixed_source(&h, "run2.ndjson", "task_reschedule_limit = 0");
    let report = run_once(&parse(&toml), opts());
    let pages = report.jobs[0].1.pages;
    assert_eq!(
        sim.stats().data_requests - before,
        pages,
        "run 2 requested every page again"
    );
    assert_exactly_once(&sim, &report, &h.path("run2.ndjson"), Api::Graph);
}

#[test]
fn a_task_run_again_in_the_same_job_takes_its_pages_from_the_spool() {
    let h = Harness::graph().rate(60).build();
    let sim = h.shared_sim();
    let ahead = msgtrace::actors::fetcher::PREFETCH_PAGES as u64;
    // The default task_reschedule_limit (1) runs the failed task again from its last commit.
    let toml = fixed_source(&h, "out.ndjson", "");
    let (report, seen) = run_holding_then(
        &sim,
        &toml,
        opts(),
        1 + ahead,
        (Duration::from_secs(30), Duration::from_millis(300)),
        true,
    );
    assert_eq!(seen, 1 + ahead);
    let job = &report.jobs[0].1;
    assert_eq!(
        sim.stats().data_requests,
        job.pages,
        "each page requested once, though page 1 and the pages ahead were fetched before the failure"
    );
    // The file sink took page 1 before the holding sink refused it: that page is there twice,
    // every other row once.
    let ids = identities(&h.path("out.ndjson"), Api::Graph);
    let twice = ids.values().filter(|n| **n == 2).count();
    assert!(ids.values().all(|n| *n <= 2));
    assert_eq!(
        twice, 100,
        "page 1 (100 rows) delivered twice, nothing else"
    );
}

#[test]
fn each_page_is_kept_before_the_request_for_the_next_goes_out() {
    // Pages of 5000 rows (about 1.8 MB), eight of them ahead: a write that came after the next
    // request went out would often still be under way when that request arrives. (The order is
    // the code's; this catches a missing write always, a late one most of the time.)
    let h = Harness::graph().rate(3000).build();
    let sim = h.shared_sim();
    let ahead = 8;
    let spool = Spool::new(&h.state, "a");
    // For each request as it arrives: is the page requested before it in the spool?
    let log: Arc<Mutex<Vec<(String, bool)>>> = Arc::default();
    {
        let (log, base) = (log.clone(), sim.base_url());
        sim.on_data_request(move |uri| {
            let mut log = log.lock().unwrap();
            let before_kept = log.last().is_none_or(|(before, _)| {
                matches!(spool.get(&format!("{base}{before}")), Ok(Some(_)))
            });
            log.push((uri.to_owned(), before_kept));
        });
    }
    let toml =
        fixed_source(&h, "out.ndjson", "").replace("page_size = 100\n", "page_size = 5000\n");
    let (report, seen) = run_holding(
        &sim,
        &toml,
        EngineOptions {
            prefetch: ahead as usize,
            ..opts()
        },
        1 + ahead,
        Duration::from_secs(30),
        Duration::from_millis(300),
    );
    assert_eq!(seen, 1 + ahead);
    // While page 1 was held nothing was committed (so nothing left the spool): each of those
    // requests went out after the page before it was kept.
    let log = log.lock().unwrap();
    for (i, (uri, before_kept)) in log.iter().take(1 + ahead as usize).enumerate() {
        assert!(
            before_kept,
            "request {} ({uri}) went out before page {i} was kept",
            i + 1
        );
    }
    h.assert_exactly_once(&report);
}

#[test]
fn a_re_read_is_never_answered_from_the_spool() {
    let h = Harness::graph().rate(60).build();
    let sim = h.shared_sim();
    let toml = fixed_source(&h, "out.ndjson", r#"reread = "3h""#);
    let cfg = parse(&toml);
    let log: Arc<Mutex<Vec<String>>> = Arc::default();
    {
        let log = log.clone();
        sim.on_data_request(move |uri| log.lock().unwrap().push(uri.to_owned()));
    }
    let requested = || log.lock().unwrap().len();
    // Job 1 collects the window; job 2 re-reads its last three hours.
    assert!(run_once(&cfg, opts()).all_succeeded());
    let after_first = requested();
    assert!(run_once(&cfg, opts()).all_succeeded());
    let reread: Vec<String> = log.lock().unwrap()[after_first..].to_vec();
    assert!(!reread.is_empty(), "job 2 re-read the last three hours");

    // A row no API sent, in the re-read span, kept in the spool under every URL job 2 asked
    // for: a re-read answered from the spool would deliver it.
    let out = h.path("out.ndjson");
    let text = std::fs::read_to_string(&out).unwrap();
    // The newest row: in the re-read span (the window's last three hours) whatever the time of
    // day (a row "of the last two hours" found none just before the hour: the window ends at
    // the hour before the last).
    let mut row: serde_json::Value = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .max_by(|a, b| {
            a["_time"]
                .as_f64()
                .unwrap()
                .total_cmp(&b["_time"].as_f64().unwrap())
        })
        .expect("a row in the window");
    let span_start = hours_ago(1).parse::<f64>().unwrap() - 3.0 * 3600.0;
    assert!(
        row["_time"].as_f64().unwrap() >= span_start,
        "the newest row is in the re-read span"
    );
    row["id"] = "a-row-no-api-sent".into();
    let body = serde_json::to_vec(&serde_json::json!({ "value": [row] })).unwrap();
    let spool = Spool::new(&h.state, "a");
    for uri in &reread {
        spool
            .put(&format!("{}{uri}", sim.base_url()), &body)
            .unwrap();
    }
    assert_eq!(spool.len(), reread.len());

    let before = requested();
    assert!(run_once(&cfg, opts()).all_succeeded());
    let third: Vec<String> = log.lock().unwrap()[before..].to_vec();
    assert!(
        third.iter().any(|u| reread.contains(u)),
        "job 3 requested the re-read's URLs from the API: {third:?}"
    );
    assert!(
        !std::fs::read_to_string(&out)
            .unwrap()
            .contains("a-row-no-api-sent"),
        "a re-read was answered from the spool"
    );
}
