//! Crash test: the collector runs as a child process and is killed with SIGKILL at random
//! moments, then restarted, many times over one collection. At the end every expected row is
//! present, and none twice: the file sink does not write again the pages in flight at a kill.
//! The machinery ([`crash_run`], [`crash_collect`], [`kill_repeatedly`]) is in `common.rs`:
//! the details test runs it too, and `archive.rs` runs the same collection into an object store,
//! where even the pages in flight at a kill are overwritten, not doubled.

use crate::common::*;
use msgtrace::actors::dialect::Api;

fn crash_test(api: Api, kills_wanted: u32) {
    let sim = sim(200, |c| c.page_latency_ms = 40);
    crash_collect(&sim, &Crash::two_days(api, kills_wanted));
}

#[test]
fn sigkill_at_random_moments_loses_no_row_graph() {
    crash_test(Api::Graph, 20);
}

#[test]
fn sigkill_at_random_moments_loses_no_row_reporting() {
    crash_test(Api::Reporting, 10);
}

/// What a kill leaves in the file past the last commit (the page being committed, and the page
/// after it, written while that commit's flush ran) is not written twice: the next start finds
/// it, and the pages delivered again are matched against it instead of appended. Nothing is
/// cut from the file (a program tailing it has read those lines already).
#[test]
fn pages_the_file_holds_past_its_last_commit_are_not_written_again_after_a_restart() {
    let (start, middle, end) = (hours_ago(8), hours_ago(6), hours_ago(3));
    let mut h = Harness::graph()
        .rate(200)
        .window(&start, &middle)
        .page_size(50)
        .build();
    h.assert_exactly_once(&h.run_once());
    // The state directory as it stood before the next run's pages were committed.
    let saved = h.path("state-before");
    copy_tree(&h.state, &saved);
    h.set_window(&start, &end);
    let report = h.run_once();
    assert!(report.all_succeeded(), "{report:?}");
    let written = std::fs::read_to_string(&h.out).unwrap();
    let pages = report.jobs[0].1.pages;
    assert!(pages >= 3, "{pages} pages");
    // A kill before any of those commits: their pages are in the file, no commit covers them.
    std::fs::remove_dir_all(&h.state).unwrap();
    copy_tree(&saved, &h.state);
    let again = h.run_once();
    assert!(again.all_succeeded(), "{again:?}");
    assert_eq!(
        again.jobs[0].1.pages, pages,
        "the pages are delivered again"
    );
    let now = std::fs::read_to_string(&h.out).unwrap();
    assert!(
        now == written,
        "{} lines, {} before the run again",
        now.lines().count(),
        written.lines().count()
    );
    assert_eq!(compare(&h.identities(), &h.expected()), (0, 0, 0));
}

/// Copies the directory `from` to `to`, with everything in it.
fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}
