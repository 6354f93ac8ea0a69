//! Crash test: the collector runs as a child process and is killed with SIGKILL at random
//! moments, then restarted, many times over one collection. At the end every expected row is
//! present; duplicates come only from pages in flight at a kill (at most one page per kill).
//! (`archive.rs` runs the same collection into an object store, where even those are
//! overwritten.)

use crate::common::*;
use msgtrace::actors::dialect::Api;

fn crash_test(api: Api, kills_wanted: u32) {
    let run = crash_run(api, kills_wanted, None);
    let expected = run.expected();
    let got = identities(&run.out(), api);
    let (missing, extra, dups) = compare(&got, &expected);
    let kills = run.kills;
    eprintln!(
        "crash test ({api:?}): {kills} SIGKILLs, {} expected rows, {missing} missing, {extra} extra, {dups} duplicates (pages in flight at a kill)",
        expected.len(),
    );
    assert_eq!((missing, extra), (0, 0));
    assert!(
        dups <= kills as usize * run.page_size as usize,
        "{dups} duplicates is more than one page per kill"
    );
}

#[test]
fn sigkill_at_random_moments_loses_no_row_graph() {
    crash_test(Api::Graph, 20);
}

#[test]
fn sigkill_at_random_moments_loses_no_row_reporting() {
    crash_test(Api::Reporting, 10);
}
