//! End-to-end collections from the simulated tenant through the full engine.

use crate::common::*;
use msgtrace::actors::dialect::Api;
use msgtrace::storage::JobState;

fn collect_exactly(api: Api, start: &str, rate: u32, page_size: u32) {
    let h = Harness::simulated(api)
        .rate(rate)
        .window(start, "-1h@h")
        .page_size(page_size)
        .build();
    let report = h.run_once();
    assert!(report.all_succeeded(), "{report:?}");
    let job = &report.jobs[0].1;
    let (ws, we) = job.window.expect("window");
    let expected = h.sim().model().expected(ws, we, chrono::Utc::now());
    assert!(expected.len() > 3 * page_size as usize, "several pages");
    let got = h.identities();
    assert_eq!(
        compare(&got, &expected),
        (0, 0, 0),
        "missing, extra, duplicates"
    );
    assert_eq!(job.rows as usize, expected.len());
    assert!(job.pages as usize >= expected.len() / page_size as usize);
}

#[test]
fn graph_multi_day_many_pages_and_two_slices_exactly_once() {
    // 12 days: more than Graph's 10-day query limit, so the window is cut into two slices.
    collect_exactly(Api::Graph, "-12d@h", 20, 500);
}

#[test]
fn reporting_multi_day_many_pages_exactly_once() {
    collect_exactly(Api::Reporting, "-3d@h", 60, 400);
}

#[test]
fn later_runs_continue_from_the_cursor_without_gap_or_overlap() {
    let mut h = Harness::graph().page_size(300).build();
    let start = hours_ago(48);
    let mut windows = Vec::new();
    for end in [30, 29, 20, 1, 1] {
        h.set_window(&start, &hours_ago(end));
        let report = h.run_once();
        assert!(report.all_succeeded(), "{report:?}");
        if let Some(w) = report.jobs[0].1.window {
            windows.push(w);
        }
    }
    for pair in windows.windows(2) {
        assert_eq!(pair[0].1, pair[1].0, "consecutive windows touch");
    }
    assert_eq!(
        windows.len(),
        4,
        "the last run found nothing new: {windows:?}"
    );
    let (start, end) = (windows[0].0, windows.last().unwrap().1);
    let expected = h.sim().model().expected(start, end, chrono::Utc::now());
    assert_eq!(compare(&h.identities(), &expected), (0, 0, 0));

    let store = h.store();
    let cp = store.checkpoint("src").unwrap().unwrap();
    assert_eq!(cp.cursor, Some(end));
    assert!(cp.in_flight.is_none());
    let jobs = store.jobs(Some("src")).unwrap();
    assert_eq!(jobs.len(), 5);
    assert!(jobs.iter().all(|j| j.state == JobState::Succeeded));
}

#[test]
fn a_panicking_fetcher_is_restarted_and_the_job_completes_from_its_checkpoint() {
    let h = Harness::graph()
        .window("-1d@h", "-1h@h")
        .page_size(200)
        .build();
    let fired = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let f = fired.clone();
    let mut o = opts();
    o.page_hook = Some(std::sync::Arc::new(move |_, pages, _| {
        if pages == 3
            && f.compare_exchange(
                0,
                1,
                std::sync::atomic::Ordering::SeqCst,
                std::sync::atomic::Ordering::SeqCst,
            )
            .is_ok()
        {
            panic!("injected fetcher crash after page 3");
        }
    }));
    let report = h.run_once_with(o);
    assert_eq!(fired.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(report.restarts, 1, "{report:?}");
    assert!(report.all_succeeded(), "{report:?}");
    // The crash came after page 3 was committed: nothing is fetched twice.
    h.assert_exactly_once(&report);
}

#[test]
fn a_start_older_than_graph_keeps_is_clamped_and_the_gap_recorded() {
    let h = Harness::graph()
        .rate(2)
        .window("-100d@d", "-1h@h")
        .page_size(1000)
        .build();
    let report = h.run_once();
    assert!(report.all_succeeded(), "{report:?}");
    let (ws, we) = report.jobs[0].1.window.unwrap();
    let now = chrono::Utc::now();
    let age = now - ws;
    assert!(age < chrono::Duration::days(90) && age > chrono::Duration::days(89));
    let expected = h.sim().model().expected(ws, we, now);
    assert_eq!(compare(&h.identities(), &expected), (0, 0, 0));
    let jobs = h.store().jobs(Some("src")).unwrap();
    assert_eq!(jobs[0].gaps.len(), 1, "{:?}", jobs[0]);
    assert_eq!(jobs[0].gaps[0].1, ws);
    assert!(
        jobs[0].errors[0].starts_with("gap: "),
        "{:?}",
        jobs[0].errors
    );
}

#[test]
fn rereading_a_span_already_delivered_emits_no_duplicate() {
    let h = Harness::reporting()
        .window(&hours_ago(24), &hours_ago(1))
        .page_size(200)
        .extra("reread = \"12h\"")
        .build();
    let first = h.run_once();
    assert!(first.all_succeeded(), "{first:?}");
    let second = h.run_once();
    assert!(second.all_succeeded(), "{second:?}");
    let (ws, we) = first.jobs[0].1.window.unwrap();
    let expected = h.sim().model().expected(ws, we, chrono::Utc::now());
    assert_eq!(compare(&h.identities(), &expected), (0, 0, 0));
    let store = h.store();
    let jobs = store.jobs(Some("src")).unwrap();
    let reread = &jobs[1];
    assert!(
        reread.tasks.iter().any(|t| t.pages > 0),
        "the second run re-read: {reread:?}"
    );
    assert_eq!(reread.rows, 0, "nothing new, nothing changed");
    assert!(reread.known > 0);
    assert!(store.seen_len("src") > 0);
}
