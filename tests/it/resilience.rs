//! Bad days: failing next links, throttling, server errors. Each ends with every expected row
//! delivered exactly once.

use crate::common::*;
use msgtrace::actors::dialect::Api;
use msgtrace_simulator::SimFault;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A source of `api` over the day before the current hour, in pages of 100, with `extra`.
fn harness(api: Api, extra: &str) -> Harness {
    Harness::simulated(api)
        .window("-1d@h", "-1h@h")
        .extra(extra)
        .build()
}

fn run_with_faults_after_page(api: Api, page: u64, faults: Vec<SimFault>) -> (u64, String, u64) {
    let h = harness(api, "");
    let armed = Arc::new(AtomicBool::new(true));
    let (s, a) = (h.shared_sim(), armed.clone());
    let mut o = opts();
    o.page_hook = Some(Arc::new(move |_, pages, _| {
        if pages == page && a.swap(false, Ordering::SeqCst) {
            for f in &faults {
                s.inject_fault(*f);
            }
        }
    }));
    let report = h.run_once_with(o);
    assert!(report.all_succeeded(), "{report:?}");
    h.assert_exactly_once(&report);
    let jobs = h.store().jobs(Some("src")).unwrap();
    let requeries: u32 = jobs[0].tasks.iter().map(|t| t.requeries).sum();
    (requeries as u64, jobs[0].errors.join("\n"), jobs[0].retries)
}

#[test]
fn a_next_link_that_keeps_failing_is_abandoned_and_the_slice_requeried_without_duplicates() {
    for api in [Api::Graph, Api::Reporting] {
        let poisoned = SimFault::Status {
            status: 400,
            retry_after_secs: None,
        };
        let (requeries, errors, _) = run_with_faults_after_page(api, 3, vec![poisoned; 3]);
        assert_eq!(requeries, 1, "{api:?}");
        assert!(errors.contains("next link abandoned"), "{errors}");
    }
}

#[test]
fn throttling_and_server_errors_are_retried_to_completion() {
    let faults = vec![
        SimFault::Status {
            status: 429,
            retry_after_secs: Some(1),
        },
        SimFault::Status {
            status: 503,
            retry_after_secs: None,
        },
        SimFault::Status {
            status: 503,
            retry_after_secs: None,
        },
    ];
    let (requeries, _, retries) = run_with_faults_after_page(Api::Graph, 2, faults);
    assert_eq!(retries, 3);
    assert_eq!(requeries, 0);
}

fn faults_then_run(
    extra: &str,
    faults: usize,
) -> (
    msgtrace::actors::supervisor::RunReport,
    Vec<msgtrace::storage::JobRecord>,
) {
    let h = harness(Api::Graph, extra);
    let armed = Arc::new(AtomicBool::new(true));
    let (s, a) = (h.shared_sim(), armed.clone());
    let mut o = opts();
    o.page_hook = Some(Arc::new(move |_, pages, _| {
        if pages == 2 && a.swap(false, Ordering::SeqCst) {
            for _ in 0..faults {
                s.inject_fault(SimFault::Status {
                    status: 503,
                    retry_after_secs: None,
                });
            }
        }
    }));
    let report = h.run_once_with(o);
    if report.all_succeeded() {
        h.assert_exactly_once(&report);
    }
    let jobs = h.store().jobs(Some("src")).unwrap();
    (report, jobs)
}

#[test]
fn a_task_failing_with_a_non_fatal_error_is_rescheduled_and_completes() {
    // Six 503s exhaust the retry limit (5): the task fails, is rescheduled once, and completes.
    let (report, jobs) = faults_then_run("", 6);
    assert!(report.all_succeeded(), "{report:?}");
    assert_eq!(jobs[0].tasks[0].reschedules, 1, "{:?}", jobs[0]);
    // Without rescheduling the job fails, and says why.
    let (report, jobs) = faults_then_run("reschedule_tasks = false", 6);
    assert!(!report.all_succeeded());
    assert!(
        jobs[0].errors.iter().any(|e| e.contains("HTTP 503")),
        "{:?}",
        jobs[0].errors
    );
}

#[test]
fn a_job_stopped_by_job_timeout_resumes_on_the_next_run_without_losing_a_row() {
    let h = Harness::graph()
        .sim(|c| c.page_latency_ms = 80)
        .window(&hours_ago(24), &hours_ago(1))
        .build();
    let first = run_once(&parse(&h.toml_with("job_timeout = \"1s\"")), opts());
    let (_, job) = &first.jobs[0];
    assert_eq!(job.state, msgtrace::storage::JobState::Cancelled, "{job:?}");
    assert!(job
        .error
        .as_deref()
        .unwrap_or_default()
        .contains("job_timeout"));
    assert!(job.pages > 0);
    let second = h.run_once();
    assert!(second.all_succeeded(), "{second:?}");
    let (ws, _) = job.window.unwrap();
    let (_, we) = second.jobs[0].1.window.unwrap();
    let expected = h.sim().model().expected(ws, we, chrono::Utc::now());
    assert_eq!(compare(&h.identities(), &expected), (0, 0, 0));
}

#[test]
fn a_page_that_stalls_past_request_timeout_is_retried() {
    let h = harness(Api::Graph, "request_timeout_secs = 1");
    let armed = Arc::new(AtomicBool::new(true));
    let (s, a) = (h.shared_sim(), armed.clone());
    let mut o = opts();
    o.page_hook = Some(Arc::new(move |_, pages, _| {
        if pages == 2 && a.swap(false, Ordering::SeqCst) {
            s.inject_fault(SimFault::Delay { ms: 2500 });
        }
    }));
    let report = h.run_once_with(o);
    assert!(report.all_succeeded(), "{report:?}");
    h.assert_exactly_once(&report);
    let jobs = h.store().jobs(Some("src")).unwrap();
    assert!(jobs[0].retries >= 1, "{:?}", jobs[0]);
}

#[test]
fn hostile_responses_are_retried_and_no_page_is_half_delivered() {
    let not_json = SimFault::Body {
        status: 200,
        content_type: "application/json",
        body: "{\"value\": [ {\"id\": ",
    };
    let html = SimFault::Body {
        status: 200,
        content_type: "text/html",
        body: "<html><head><title>Service Unavailable</title></head><body>busy</body></html>",
    };
    let shape = SimFault::Body {
        status: 200,
        content_type: "application/json",
        body: "{\"unexpected\": true}",
    };
    for (api, fault) in [
        (Api::Graph, not_json),
        (Api::Reporting, html),
        (Api::Graph, shape),
        (Api::Graph, SimFault::Truncated),
        (Api::Reporting, SimFault::Truncated),
    ] {
        // Each: retried, then every row exactly once (checked inside).
        let (requeries, errors, retries) = run_with_faults_after_page(api, 2, vec![fault, fault]);
        assert_eq!(requeries, 0, "{api:?} {fault:?}: {errors}");
        assert_eq!(
            retries, 2,
            "{api:?} {fault:?}: both bad answers were retried"
        );
    }
}

#[test]
fn revoked_tokens_are_replaced_and_the_page_retried() {
    let h = harness(Api::Graph, "");
    let (s, fired) = (h.shared_sim(), Arc::new(AtomicBool::new(true)));
    let mut o = opts();
    let f = fired.clone();
    o.page_hook = Some(Arc::new(move |_, pages, _| {
        if pages == 3 && f.swap(false, Ordering::SeqCst) {
            s.revoke_tokens();
        }
    }));
    let report = h.run_once_with(o);
    assert!(!fired.load(Ordering::SeqCst), "tokens were revoked mid-run");
    h.assert_exactly_once(&report);
    let stats = h.sim().stats();
    assert_eq!(
        stats.unauthorized, 1,
        "one 401, then a new token: {stats:?}"
    );
    assert_eq!(stats.tokens_issued, 2, "{stats:?}");
}

#[test]
fn a_body_over_the_size_limit_is_refused_with_a_clear_error() {
    let h = harness(Api::Graph, "reschedule_tasks = false");
    let mut o = opts();
    // A page of 100 rows is ~40 KB; the limit here is 4 KB.
    o.max_body_bytes = 4096;
    let report = h.run_once_with(o);
    let job = &report.jobs[0].1;
    assert_eq!(job.state, msgtrace::storage::JobState::Failed);
    let err = job.error.clone().unwrap_or_default();
    assert!(
        err.contains("larger than 4096 bytes") && err.contains("lower page_size"),
        "{err}"
    );
    assert!(!h.out.exists(), "nothing half delivered");
    let cp = h.store().checkpoint("src").unwrap();
    assert!(no_page_checkpointed(cp.as_ref()), "{cp:?}");
}
