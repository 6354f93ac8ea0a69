//! The time filter: rows whose received time falls outside their window are dropped and counted,
//! unless `disable_time_filter = true`. The simulated tenant never returns such rows, so a tiny
//! stand-in API on 127.0.0.1 does.

use crate::common::*;
use actix_web::HttpResponse;

/// The window: an hour two days ago (within what the API keeps).
fn window() -> (i64, i64) {
    let start: i64 = hours_ago(48).parse().unwrap();
    (start, start + 3600)
}

fn page() -> serde_json::Value {
    let (start, end) = window();
    let at = |secs: i64, nanos: u32| {
        msgtrace::actors::dialect::format_timestamp(
            chrono::DateTime::from_timestamp(secs, nanos).unwrap(),
        )
    };
    let row = |id: &str, t: String| serde_json::json!({"id": id, "recipientAddress": "a@contoso.com", "receivedDateTime": t, "status": "Delivered"});
    serde_json::json!({"value": [
        row("after", at(end, 0)),                  // = end: belongs to the next window
        row("inside", at(start + 1800, 0)),
        row("first", at(start, 0)),                // = start: inside
        row("before", at(start - 1, 999_999_900)), // 100 ns before start
    ]})
}

fn run(disable: bool) -> (Vec<String>, u64) {
    let (base, handle) = fake_api(|_| HttpResponse::Ok().json(page()));
    let h = Harness::fake(&base, window(), &format!("disable_time_filter = {disable}"));
    let report = h.run_once();
    assert!(report.all_succeeded(), "{report:?}");
    let ids = output_ids(&h.out);
    let jobs = h.store().jobs(Some("src")).unwrap();
    block_on(handle.stop(false));
    (ids, jobs[0].dropped)
}

#[test]
fn rows_outside_the_window_are_dropped_and_counted() {
    let (ids, dropped) = run(false);
    assert_eq!(ids, vec!["inside", "first"]);
    assert_eq!(dropped, 2);
}

#[test]
fn disable_time_filter_keeps_them() {
    let (ids, dropped) = run(true);
    assert_eq!(ids, vec!["after", "inside", "first", "before"]);
    assert_eq!(dropped, 0);
}
