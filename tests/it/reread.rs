//! Late rows and status changes: a simulated tenant that publishes rows late and changes their
//! status later. With `reread`, every row and every status change arrives, and no exact
//! duplicate; without it, late rows are lost (the warning in docs/operations.md).

use crate::common::*;
use msgtrace::actors::dialect::Api;
use msgtrace_simulator::LateRows;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

const LATE: LateRows = LateRows {
    late_per_mille: 300,
    max_delay_ms: 1500,
    changing_per_mille: 300,
    status_change_after_ms: 2000,
};

struct Outcome {
    /// (trace id, recipient) → statuses delivered, in order, with their `_update` flags.
    delivered: HashMap<(String, String), Vec<(String, bool)>>,
    /// (trace id, recipient, final status) of every row of the collected span.
    truth: Vec<(String, String, String)>,
}

fn collect_with_late_rows(api: Api, reread: Option<&str>) -> Outcome {
    let extra = reread
        .map(|r| format!("reread = \"{r}\""))
        .unwrap_or_default();
    let h = Harness::simulated(api)
        .rate(36_000)
        .sim(|c| c.late = Some(LATE))
        .window("-20s", "now")
        .page_size(500)
        .extra(&extra)
        .build();
    // Four runs, as a schedule would make them: the last ones after everything has settled.
    let mut windows = Vec::new();
    for pause_ms in [1000, 2600, 2600, 0] {
        let report = h.run_once();
        assert!(report.all_succeeded(), "{report:?}");
        windows.extend(report.jobs.iter().filter_map(|(_, j)| j.window));
        std::thread::sleep(Duration::from_millis(pause_ms));
    }
    // The span whose rows have all been re-read after settling: up to the third run's end.
    let start = windows[0].0;
    let end = windows[2].1;
    let truth = h
        .sim()
        .model()
        .expected_visible(start, end, chrono::Utc::now(), &LATE);
    let (id_a, id_b) = api.identity_fields();
    let status_field = api.status_field();
    let mut delivered: HashMap<(String, String), Vec<(String, bool)>> = HashMap::new();
    for line in std::fs::read_to_string(&h.out).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let t = v["_time"].as_f64().unwrap();
        if t < start.timestamp_micros() as f64 / 1e6 || t >= end.timestamp_micros() as f64 / 1e6 {
            continue;
        }
        delivered
            .entry((
                v[id_a].as_str().unwrap().into(),
                v[id_b].as_str().unwrap().into(),
            ))
            .or_default()
            .push((
                v[status_field].as_str().unwrap().to_owned(),
                v["_update"].as_bool().unwrap_or(false),
            ));
    }
    Outcome { delivered, truth }
}

fn check_reread(api: Api) {
    let o = collect_with_late_rows(api, Some("10s"));
    assert!(o.truth.len() > 200, "a busy span: {}", o.truth.len());
    let mut updates = 0;
    for (trace, recipient, final_status) in &o.truth {
        let seen = o
            .delivered
            .get(&(trace.clone(), recipient.clone()))
            .unwrap_or_else(|| panic!("{api:?}: row {trace}/{recipient} never delivered"));
        let (last, _) = seen.last().unwrap();
        assert!(
            last.eq_ignore_ascii_case(final_status),
            "{api:?}: {trace}/{recipient} ended as {last}, not {final_status}: {seen:?}"
        );
        // No exact duplicate: each delivery carries a status the previous one did not.
        for pair in seen.windows(2) {
            assert!(!pair[0].0.eq_ignore_ascii_case(&pair[1].0), "{seen:?}");
            assert!(pair[1].1, "a re-delivery is marked as an update: {seen:?}");
        }
        assert!(!seen[0].1, "a first delivery is not an update");
        updates += seen.len() - 1;
    }
    let truth_ids: HashSet<_> = o
        .truth
        .iter()
        .map(|(a, b, _)| (a.clone(), b.clone()))
        .collect();
    assert!(
        o.delivered.keys().all(|k| truth_ids.contains(k)),
        "no row from outside the span"
    );
    assert!(
        updates > 0,
        "{api:?}: status changes were delivered as updates ({updates})"
    );
}

#[test]
fn with_reread_every_late_row_and_status_change_arrives_without_exact_duplicates_graph() {
    check_reread(Api::Graph);
}

#[test]
fn with_reread_every_late_row_and_status_change_arrives_without_exact_duplicates_reporting() {
    check_reread(Api::Reporting);
}

#[test]
fn without_reread_late_rows_are_lost() {
    let o = collect_with_late_rows(Api::Graph, None);
    let missing = o
        .truth
        .iter()
        .filter(|(a, b, _)| !o.delivered.contains_key(&(a.clone(), b.clone())))
        .count();
    assert!(
        missing > 0,
        "rows published after their window was read are never collected"
    );
}
