//! What is between fetch and commit: the next page is requested while the page before it is
//! delivered (prefetch), and the engine-wide budget of rows in flight bounds how many pages all
//! sources together hold while a sink is busy.
//!
//! A sink that holds its first batch stands in for a slow sink; the simulator's request counter
//! shows what the engine asked for meanwhile.

mod common;

use common::*;
use msgtrace::actors::dialect::Api;
use msgtrace::actors::event::Batch;
use msgtrace::actors::sink::{Sink, SinkError};
use msgtrace::embed::EngineBuilder;
use msgtrace::engine::EngineOptions;
use msgtrace::simulator::SimServer;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Holds its first batch until `wanted` data requests have reached the simulator (or
/// `patience` has passed), keeps holding it for `linger`, and records the most requests seen
/// while holding. Later batches pass at once.
struct HoldingSink {
    sim: Arc<SimServer>,
    wanted: u64,
    patience: Duration,
    linger: Duration,
    seen: Arc<Mutex<Option<u64>>>,
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
        if seen.is_none() {
            // Blocking is fine here: each sink runs on its own thread.
            let requests = || self.sim.stats().data_requests;
            let until = Instant::now() + self.patience;
            while requests() < self.wanted && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(5));
            }
            std::thread::sleep(self.linger);
            *seen = Some(requests());
        }
        Box::pin(async { Ok(()) })
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
    init_logs();
    let seen = Arc::new(Mutex::new(None));
    let sink = HoldingSink {
        sim: sim.clone(),
        wanted,
        patience,
        linger,
        seen: seen.clone(),
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

fn one_source(sim: &SimServer, dir: &std::path::Path) -> String {
    graph_sources_toml(
        sim,
        &dir.join("state"),
        &dir.join("out.ndjson"),
        &[("a", &hours_ago(12), &hours_ago(1))],
        "",
    )
}

#[test]
fn the_next_pages_are_requested_while_the_page_before_them_is_delivered() {
    let sim = Arc::new(sim(60, |_| {}));
    let dir = tempfile::tempdir().unwrap();
    let ahead = msgtrace::actors::fetcher::PREFETCH_PAGES as u64;
    // Waits (up to 30 s, a bound for a broken engine, not a timing) for the pages fetched ahead,
    // then a little longer, for any request beyond them to show.
    let (report, seen) = run_holding(
        &sim,
        &one_source(&sim, dir.path()),
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
    assert_exactly_once(&sim, &report, &dir.path().join("out.ndjson"), Api::Graph);
}

#[test]
fn without_prefetch_nothing_is_requested_while_a_page_is_delivered() {
    let sim = Arc::new(sim(60, |_| {}));
    let dir = tempfile::tempdir().unwrap();
    let (report, seen) = run_holding(
        &sim,
        &one_source(&sim, dir.path()),
        EngineOptions {
            prefetch: 0,
            ..opts()
        },
        2,
        Duration::from_millis(300),
        Duration::ZERO,
    );
    assert_eq!(seen, 1, "only page 1 was requested while it was delivered");
    assert_exactly_once(&sim, &report, &dir.path().join("out.ndjson"), Api::Graph);
}

#[test]
fn the_rows_in_flight_budget_bounds_the_pages_of_all_sources_while_a_sink_is_busy() {
    let sim = Arc::new(sim(60, |_| {}));
    let dir = tempfile::tempdir().unwrap();
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
    let toml = graph_sources_toml(
        &sim,
        &dir.path().join("state"),
        &dir.path().join("out.ndjson"),
        &sources,
        "",
    );
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
    assert_exactly_once(&sim, &report, &dir.path().join("out.ndjson"), Api::Graph);
}
