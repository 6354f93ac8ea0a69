//! Commit groups: pages that arrive back to back are handed to the sinks unsynced and committed
//! together with the page that closes the group, and no commit ever covers a page before a sync
//! has made it durable.

use crate::common::*;
use msgtrace::actors::dialect::Api;
use msgtrace::actors::event::Batch;
use msgtrace::actors::sink::{Sink, SinkError, SinkInput};
use msgtrace::engine::EngineOptions;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the slow sink saw, and what the page hook saw committed.
#[derive(Default, Debug)]
struct Seen {
    /// Each delivery: its `sync` flag and its rows.
    deliveries: Vec<(bool, u64)>,
    /// Rows made durable: delivered in a synced batch or before one, or flushed.
    synced_rows: u64,
    /// Rows delivered since the last sync or flush.
    pending_rows: u64,
    flushes: usize,
    /// Each committed page the page hook heard of: (pages, rows) of the job so far.
    commits: Vec<(u64, u64)>,
    /// Commits that covered rows no sync had made durable yet.
    early: Vec<String>,
    /// Deliveries asked of the sink, refused ones too.
    attempts: usize,
    /// The lines of every delivery taken.
    lines: Vec<String>,
}

/// A sink slow enough (30 ms a page) that the next page is always in before a page is settled;
/// it refuses its `fail_at`-th delivery (counting from 1), once.
struct Slow(Arc<Mutex<Seen>>, Option<usize>);

impl Sink for Slow {
    fn name(&self) -> &str {
        "slow"
    }

    fn input(&self) -> SinkInput {
        SinkInput::Ndjson
    }

    fn deliver<'a>(
        &'a mut self,
        batch: &'a Batch,
    ) -> futures_util::future::LocalBoxFuture<'a, Result<(), SinkError>> {
        let seen = self.0.clone();
        let rows = batch
            .ndjson(&mut Vec::new())
            .iter()
            .filter(|b| **b == b'\n')
            .count() as u64;
        let sync = batch.sync;
        let lines: Vec<String> = String::from_utf8_lossy(batch.ndjson(&mut Vec::new()))
            .lines()
            .map(str::to_owned)
            .collect();
        let fail = self
            .1
            .is_some_and(|n| n == seen.lock().unwrap().attempts + 1);
        Box::pin(async move {
            actix_rt::time::sleep(Duration::from_millis(30)).await;
            let mut s = seen.lock().unwrap();
            s.attempts += 1;
            if fail {
                return Err(SinkError {
                    sink: "slow".into(),
                    message: "refused once".into(),
                });
            }
            s.lines.extend(lines);
            s.deliveries.push((sync, rows));
            s.pending_rows += rows;
            if sync {
                s.synced_rows += std::mem::take(&mut s.pending_rows);
            }
            Ok(())
        })
    }

    fn flush(&mut self) -> futures_util::future::LocalBoxFuture<'_, Result<(), SinkError>> {
        let mut s = self.0.lock().unwrap();
        s.flushes += 1;
        s.synced_rows += std::mem::take(&mut s.pending_rows);
        Box::pin(async { Ok(()) })
    }
}

fn collect(
    commit_group: usize,
    fail_at: Option<usize>,
) -> (Seen, std::path::PathBuf, tempfile::TempDir, u64) {
    let sim = sim(40, |_| {});
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.ndjson");
    let cfg = parse(&config_toml(
        &sim,
        &Scenario {
            api: Api::Graph,
            state_dir: &dir.path().join("state"),
            out: &out,
            start: &hours_ago(6),
            end: &hours_ago(1),
            page_size: 10,
            extra: "",
        },
    ));
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let heard = seen.clone();
    let hook: msgtrace::actors::supervisor::PageHook = Arc::new(move |_, pages, rows| {
        let mut s = heard.lock().unwrap();
        s.commits.push((pages, rows));
        if rows > s.synced_rows {
            let why = format!("{rows} rows committed, {} synced", s.synced_rows);
            s.early.push(why);
        }
    });
    let report = run_embedded(
        msgtrace::embed::EngineBuilder::new(cfg)
            .options(EngineOptions {
                commit_group,
                page_hook: Some(hook),
                ..opts()
            })
            .sink(Box::new(Slow(seen.clone(), fail_at)), &["src"]),
    );
    assert!(report.all_succeeded(), "{report:?}");
    let (pages, rows) = (report.jobs[0].1.pages, report.jobs[0].1.rows);
    assert!(pages >= 12, "enough pages to group: {pages}");
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    (seen, out, dir, rows)
}

#[test]
fn pages_that_arrive_back_to_back_are_committed_in_groups_after_their_sync() {
    let (seen, out, _dir, rows) = collect(4, None);
    eprintln!("deliveries (sync, rows): {:?}", seen.deliveries);
    assert!(seen.early.is_empty(), "{:?}", seen.early);
    let pages = seen.deliveries.len();
    // Groups of at most four pages: three unsynced, then the synced one that closes it.
    let mut run = 0;
    for (sync, _) in &seen.deliveries {
        run = if *sync { 0 } else { run + 1 };
        assert!(run < 4, "{:?}", seen.deliveries);
    }
    assert!(
        seen.deliveries.last().is_some_and(|(sync, _)| *sync),
        "the last page is synced"
    );
    let unsynced = seen.deliveries.iter().filter(|(s, _)| !s).count();
    assert!(
        unsynced >= pages / 2,
        "a slow sink: nearly every page has the next one in ({unsynced} of {pages})"
    );
    // The hook hears of every page, in order, as if each had been committed alone.
    let heard: Vec<u64> = seen.commits.iter().map(|c| c.0).collect();
    assert_eq!(heard, (1..=pages as u64).collect::<Vec<_>>());
    assert_eq!(seen.commits.last().map(|c| c.1), Some(rows));
    assert_eq!(seen.synced_rows, rows);
    // Every row once in the file sink beside it.
    let ids = identities(&out, Api::Graph);
    assert_eq!(ids.values().sum::<usize>() as u64, rows);
    assert!(ids.values().all(|n| *n == 1));
}

#[test]
fn a_commit_group_of_one_commits_every_page_synced() {
    let (seen, _out, _dir, rows) = collect(1, None);
    assert!(seen.early.is_empty(), "{:?}", seen.early);
    assert!(seen.deliveries.iter().all(|(sync, _)| *sync));
    assert_eq!(seen.commits.len(), seen.deliveries.len());
    assert!(seen.deliveries.len() >= 12);
    assert_eq!(seen.synced_rows, rows);
}

/// A sink that refuses a page in the middle of a group: the task is rescheduled, and the pages of
/// the group delivered before the refusal are committed first, so only the refused page is
/// delivered again (before, the rescheduled task sent the whole group again).
#[test]
fn a_refusal_mid_group_commits_the_pages_before_it_and_repeats_none() {
    // Deliveries 1 (alone: nothing is fetched ahead yet), 2 to 5 (a group), 6, 7, then 8 is
    // refused: 6 and 7 were delivered unsynced in the group that 8 would have closed.
    let (seen, out, _dir, rows) = collect(4, Some(8));
    assert!(seen.early.is_empty(), "{:?}", seen.early);
    let syncs: Vec<bool> = seen.deliveries[..7].iter().map(|d| d.0).collect();
    assert_eq!(syncs, [true, false, false, false, true, false, false]);
    let mut count = std::collections::HashMap::new();
    for l in &seen.lines {
        *count.entry(l.clone()).or_insert(0) += 1;
    }
    let twice = count.values().filter(|n| **n > 1).count();
    assert_eq!(count.len() as u64, rows, "every row once at least");
    assert_eq!(
        twice, 0,
        "the refused page was not taken, and nothing before it was sent again"
    );
    let ids = identities(&out, Api::Graph);
    assert_eq!(ids.len() as u64, rows);
    // The file sink took page 7 before the other sink refused it: it alone gets that page twice.
    assert!(ids.values().filter(|n| **n > 1).count() <= 10);
}
