//! The next page is requested while the page before it is still being parsed, from its next link
//! read off the end of the body. That guess is checked against the parsed page: a page whose rows
//! mislead it (a field named like the key, after the real link) costs at most one wasted request,
//! never a row lost, repeated or taken from the wrong page.

use crate::common::*;
use actix_web::HttpResponse;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The window: an hour two days ago (within what the API keeps).
fn window() -> (i64, i64) {
    let start: i64 = hours_ago(48).parse().unwrap();
    (start, start + 3600)
}

/// Page `n` of 4 (newest rows first), as raw JSON: its link comes first, and page 2 has a row
/// with a field named `x"@odata.nextLink` pointing at a decoy page, after the real link.
fn page(base: &str, n: u32) -> String {
    let (start, _) = window();
    let row = |id: String, age: i64| {
        let t = chrono::DateTime::from_timestamp(start + 3000 - age, 0).unwrap();
        serde_json::json!({
            "id": id,
            "recipientAddress": "a@contoso.com",
            "receivedDateTime": msgtrace::actors::dialect::format_timestamp(t),
            "status": "Delivered",
        })
    };
    let mut rows: Vec<serde_json::Value> = (0..3)
        .map(|i| row(format!("p{n}-{i}"), i64::from(n * 10 + i)))
        .collect();
    if n == 2 {
        rows[1]["x\"@odata.nextLink"] = format!("{base}/graph?p=99").into();
    }
    if n == 99 {
        rows = vec![row("decoy".into(), 1)];
    }
    let link = match n {
        1..=3 => serde_json::Value::from(format!("{base}/graph?p={}", n + 1)),
        _ => serde_json::Value::Null,
    };
    format!(
        r#"{{"@odata.nextLink":{link},"value":{}}}"#,
        serde_json::Value::from(rows)
    )
}

#[test]
fn a_misleading_row_costs_at_most_one_request_and_no_row() {
    let asked: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let base: Arc<Mutex<String>> = Arc::default();
    let (url, handle) = fake_api({
        let (asked, base) = (asked.clone(), base.clone());
        move |query| {
            *asked.lock().unwrap().entry(query.to_owned()).or_default() += 1;
            let n = query
                .strip_prefix("p=")
                .and_then(|p| p.parse().ok())
                .unwrap_or(1);
            let body = page(&base.lock().unwrap(), n);
            HttpResponse::Ok()
                .content_type("application/json")
                .body(body)
        }
    });
    *base.lock().unwrap() = url.clone();
    let h = Harness::fake(&url, window(), "");
    let report = h.run_once();
    block_on(handle.stop(false));
    assert!(report.all_succeeded(), "{report:?}");

    let ids: Vec<String> = output_ids(&h.out);
    let want: Vec<String> = (1..=4)
        .flat_map(|n| (0..3).map(move |i| format!("p{n}-{i}")))
        .collect();
    assert_eq!(
        ids, want,
        "every row once, in page order, none from the decoy"
    );
    let asked = asked.lock().unwrap();
    for p in 2..=4 {
        assert_eq!(asked.get(&format!("p={p}")), Some(&1), "{asked:?}");
    }
    assert!(asked.get("p=99").copied().unwrap_or(0) <= 1, "{asked:?}");
}
