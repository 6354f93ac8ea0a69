//! The request budget (issue 18, item 3): a collection that the tenant's budget bounds, against
//! the budget's ideal time; and the same budget with another application of the tenant spending
//! half of it (the simulator's `other_app_percent`), counting the 429s after the first minute.
//!
//! Each runs the engine once (`--once`) in a child against a simulator of its own whose quota is
//! the one the engine is told (the other sections lift the budget).

use std::path::Path;
use std::time::Duration;

use msgtrace::actors::dialect::Api;
use msgtrace::storage::{JobState, Store};
use msgtrace_simulator::{SimConfig, SimQuota, SimServer};

use crate::child::Work;
use crate::measure::count_lines;
use crate::{window_for, write_config, EngineFiles, Table};

/// The sizes of the section.
struct QuotaPlan {
    /// The budget: requests per `per_secs` (the engine's and the simulator's).
    requests: u32,
    per_secs: u64,
    /// Pages of the ideal-time collection.
    pages: u64,
    /// Pages of the collection beside the other application.
    shared_pages: u64,
    /// The 429s before this are not judged (the engine learns what the other app spends).
    first_minute: Duration,
}

const PAGE_SIZE: u32 = 100;

fn plan(full: bool) -> QuotaPlan {
    if full {
        // The 10 per 5 s, 60 requests: 25.0 s ideal. Beside the other app, about
        // 3.5 minutes at the half it leaves.
        QuotaPlan {
            requests: 10,
            per_secs: 5,
            pages: 60,
            shared_pages: 200,
            first_minute: Duration::from_secs(60),
        }
    } else {
        QuotaPlan {
            requests: 10,
            per_secs: 1,
            pages: 25,
            shared_pages: 25,
            first_minute: Duration::from_secs(1),
        }
    }
}

/// One collection of about `pages` pages under the budget, `other_app_percent` of it spent by
/// another app.
struct Run {
    /// `EngineBuilder::run`'s own wall time (the child's start-up excluded).
    secs: f64,
    /// Data requests the simulator saw.
    requests: u64,
    /// 429s: all, and those after the first minute.
    throttled: u64,
    throttled_later: u64,
    failed_jobs: usize,
    rows_ok: bool,
}

fn collect(dir: &Path, p: &QuotaPlan, pages: u64, other_app_percent: u32) -> Run {
    let sim = SimServer::start(
        SimConfig {
            quota: Some(SimQuota {
                requests: p.requests,
                per_secs: p.per_secs,
            }),
            other_app_percent,
            ..SimConfig::default()
        },
        "127.0.0.1:0".parse().expect("address"),
    )
    .expect("simulator starts");
    // A row or more short of a whole number of pages, so that the last page has no next link.
    let (start, end, rows) = window_for(sim.model(), (pages - 1) * u64::from(PAGE_SIZE) + 50);
    let name = format!("quota-{other_app_percent}");
    eprintln!("bench: quota: {rows} rows in pages of {PAGE_SIZE}, another app spending {other_app_percent} % of {} per {} s", p.requests, p.per_secs);
    let files = EngineFiles::new(dir, &name);
    let one = [("src".to_string(), "sim-tenant".to_string())];
    write_config(&files, &sim, Api::Graph, start, end, PAGE_SIZE, &one);
    // The tenant's budget instead of the lifted one.
    let lifted = "quota = { requests = 1000000, per_secs = 1 }";
    let text = std::fs::read_to_string(&files.config).expect("config");
    assert!(text.contains(lifted), "write_config lifts the budget");
    let budget = format!(
        "quota = {{ requests = {}, per_secs = {} }}",
        p.requests, p.per_secs
    );
    std::fs::write(&files.config, text.replace(lifted, &budget)).expect("config written");
    let child = crate::measure::spawn(&Work::Engine {
        config: files.config.clone(),
        durable: true,
        prefetch: msgtrace::actors::fetcher::PREFETCH_PAGES,
        print_pages: false,
        scale: None,
        continuous: false,
        sink_retry_initial_ms: None,
        commit_group: None,
    });
    // The 429s of the first minute, read from the simulator's count at its end.
    let first_minute = std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            std::thread::sleep(p.first_minute);
            sim.stats().throttled
        });
        let f = child.wait();
        (f, sampler.join().expect("sampler"))
    });
    let (f, throttled_first) = first_minute;
    let stats = sim.stats();
    sim.stop();
    assert!(f.success, "{name}: the engine failed");
    let jobs = Store::open(&files.state)
        .expect("state opens")
        .jobs(None)
        .expect("jobs");
    let run = Run {
        secs: f.result["engine_secs"].as_f64().expect("engine_secs"),
        requests: stats.data_requests,
        throttled: stats.throttled,
        throttled_later: stats.throttled - throttled_first.min(stats.throttled),
        failed_jobs: jobs
            .iter()
            .filter(|j| j.state != JobState::Succeeded)
            .count(),
        rows_ok: f.result["ok"] == true && count_lines(&files.out) == rows,
    };
    files.remove();
    run
}

/// The section: two rows of the table.
pub fn quota(full: bool, dir: &Path, table: &mut Table) {
    let p = plan(full);
    let (b, per) = (p.requests, p.per_secs);

    let alone = collect(dir, &p, p.pages, 0);
    // The budget lets the first `b` requests go at once and the last span's at
    // (spans - 1) x per.
    let ideal = (alone.requests.div_ceil(u64::from(b)) - 1) as f64 * per as f64;
    let ratio = alone.secs / ideal;
    table.row(
        &format!("quota: {} requests under {b} per {per} s", alone.requests),
        &format!("{:.2} s, {} 429s", alone.secs, alone.throttled),
        &format!("the budget's ideal: {ideal:.1} s"),
        ratio,
        "≤ 1.05 × ideal, zero 429s",
        ratio <= 1.05 && alone.throttled == 0 && alone.rows_ok,
    );

    let shared = collect(dir, &p, p.shared_pages, 50);
    let later_minutes = (shared.secs - p.first_minute.as_secs_f64()).max(1e-9) / 60.0;
    let per_minute = shared.throttled_later as f64 / later_minutes;
    table.row(
        &format!("quota: another app spends half of {b} per {per} s"),
        &format!(
            "{} failed jobs, rows {}; {} 429s, {} after the first {} s: {per_minute:.2} a minute; {:.1} s",
            shared.failed_jobs,
            if shared.rows_ok { "exactly once" } else { "WRONG" },
            shared.throttled,
            shared.throttled_later,
            p.first_minute.as_secs(),
            shared.secs
        ),
        &format!(
            "its half alone: {:.1} s",
            (shared.requests.div_ceil(u64::from(b / 2)) - 1) as f64 * per as f64
        ),
        per_minute,
        "zero failed jobs; ≤ 1 429 a minute after the first",
        shared.failed_jobs == 0 && shared.rows_ok && per_minute <= 1.0,
    );
}
