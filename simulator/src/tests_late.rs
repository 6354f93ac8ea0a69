//! Late publishing and status changes ([`LateRows`]): the model's truth at fixed instants, and the
//! server on the real clock (Graph and RWS paging).

use std::collections::HashSet;
use std::time::Duration;

use awc::http::StatusCode;
use chrono::{DateTime, DurationRound, Utc};
use serde_json::Value;
use url::Url;

use super::model::Position;
use super::*;

const TICK: chrono::Duration = chrono::Duration::nanoseconds(100);

/// (trace id, recipient, status in RWS casing): what a collector sees of a row.
type Seen = (String, String, String);

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("test time")
        .with_timezone(&Utc)
}

fn ms(n: u64) -> chrono::Duration {
    chrono::Duration::milliseconds(n as i64)
}

// ---------------------------------------------------------------------------------------------
// The model at fixed instants

fn model() -> TenantModel {
    TenantModel::new(9, 3600, 3, "contoso.com")
}

fn late_minutes() -> LateRows {
    LateRows {
        late_per_mille: 250,
        max_delay_ms: 20 * 60_000,
        changing_per_mille: 200,
        status_change_after_ms: 30 * 60_000,
    }
}

/// Tick bounds of `[start, end)` capped at `now`, as the server computes them.
fn bounds(start: DateTime<Utc>, end: DateTime<Utc>, now: DateTime<Utc>) -> (i64, i64) {
    (
        ticks_ceil(start),
        (ticks_ceil(end) - 1).min(ticks_floor(now)),
    )
}

fn seen(r: SimRow) -> Seen {
    (r.trace_id, r.recipient, r.status)
}

#[test]
fn visible_rows_and_statuses_follow_the_per_row_truth() {
    let m = model();
    let late = late_minutes();
    let (start, end, now) = (
        t("2024-07-09T10:30:00Z"),
        t("2024-07-09T12:10:00Z"),
        t("2024-07-09T12:00:00Z"),
    );
    let all: Vec<SimRow> = m.rows(start, end - TICK, now).collect();
    let vis = m.expected_visible(start, end, now, &late);
    let manual: Vec<Seen> = all
        .iter()
        .filter(|r| m.row_visible_at(r, now, &late))
        .map(|r| {
            (
                r.trace_id.clone(),
                r.recipient.clone(),
                m.status_at(r, now, &late),
            )
        })
        .collect();
    assert_eq!(vis, manual);

    let late_rows: Vec<&SimRow> = all
        .iter()
        .filter(|r| m.late_delay_ms(r, &late) > 0)
        .collect();
    let share = late_rows.len() as f64 / all.len() as f64;
    assert!((0.2..0.3).contains(&share), "late share {share}");
    assert!(late_rows
        .iter()
        .all(|r| (1..=late.max_delay_ms).contains(&m.late_delay_ms(r, &late))));
    let invisible: Vec<&SimRow> = all
        .iter()
        .filter(|r| !m.row_visible_at(r, now, &late))
        .collect();
    assert!(!invisible.is_empty());
    assert_eq!(all.len() - invisible.len(), vis.len());
    for r in &invisible {
        let delay = ms(m.late_delay_ms(r, &late));
        assert!(r.received + delay > now && r.received > now - ms(late.max_delay_ms));
        assert!(m.row_visible_at(r, r.received + delay, &late));
        assert!(!m.row_visible_at(r, r.received + delay - TICK, &late));
    }

    let changing: Vec<&SimRow> = all.iter().filter(|r| m.is_changing(r, &late)).collect();
    let share = changing.len() as f64 / all.len() as f64;
    assert!((0.15..0.25).contains(&share), "changing share {share}");
    let change = ms(late.status_change_after_ms);
    for r in &changing {
        let settled = m.final_status(r, &late);
        assert!(
            settled != "Pending" && settled != "GettingStatus",
            "{settled}"
        );
        assert_eq!(m.status_at(r, r.received + change - TICK, &late), "Pending");
        assert_eq!(m.status_at(r, r.received + change, &late), settled);
    }
    for r in all.iter().filter(|r| !m.is_changing(r, &late)) {
        assert_eq!(m.final_status(r, &late), r.status);
        assert_eq!(m.status_at(r, now, &late), r.status);
    }
    assert!(
        changing.iter().any(|r| r.status != "Pending"
            && m.row_visible_at(r, now, &late)
            && m.status_at(r, now, &late) == "Pending"),
        "some visible rows are still pending"
    );

    // Deterministic: the same model and settings give the same answer; another seed another one.
    assert_eq!(m.expected_visible(start, end, now, &late), vis);
    let other = TenantModel {
        seed: 10,
        ..m.clone()
    };
    assert_ne!(other.expected_visible(start, end, now, &late), vis);

    // Once settled, every row of a window ending at or before `now` is there with its final status.
    let settled_at = end + ms(late.settle_ms());
    let fin = m.expected_visible(start, end, settled_at, &late);
    let want: Vec<Seen> = m
        .rows(start, end - TICK, settled_at)
        .map(|r| {
            let s = m.final_status(&r, &late);
            (r.trace_id, r.recipient, s)
        })
        .collect();
    assert_eq!(fin, want);
    let ids: Vec<(String, String)> = fin.into_iter().map(|(a, b, _)| (a, b)).collect();
    assert_eq!(ids, m.expected(start, end, settled_at));
}

#[test]
fn paging_by_position_and_by_offset_counts_only_visible_rows() {
    let m = model();
    let late = late_minutes();
    let (start, end, now) = (
        t("2024-07-09T10:30:00Z"),
        t("2024-07-09T12:10:00Z"),
        t("2024-07-09T12:00:00Z"),
    );
    let (lo, hi) = bounds(start, end, now);
    let now_t = ticks_floor(now);
    let vis = m.expected_visible(start, end, now, &late);
    assert!(vis.len() > 5000);

    // Graph: a page is the next `top` visible rows; its token is the next visible position.
    for top in [1usize, 13, 500] {
        let mut got = Vec::new();
        let mut from: Option<Position> = None;
        let mut pages = 0;
        loop {
            let mut it = m.rows_ticks(lo, hi, from).visible_at(Some(late), now_t);
            got.extend(it.by_ref().take(top).map(seen));
            pages += 1;
            from = it.peek_position();
            if from.is_none() {
                break;
            }
            if top == 1 && pages > 300 {
                // Enough of the one-row pages: check the prefix.
                break;
            }
        }
        assert_eq!(got, vis[..got.len()], "top {top}");
        if top > 1 {
            assert_eq!(got.len(), vis.len(), "top {top}");
        }
    }

    // RWS: offsets count visible rows only, in and beyond the newest `max_delay` of the window.
    let full = &mut |h| m.hour_total(h);
    let received: std::collections::HashMap<(String, String), DateTime<Utc>> = m
        .rows(start, end - TICK, now)
        .map(|r| ((r.trace_id, r.recipient), r.received))
        .collect();
    let recent = vis
        .iter()
        .take_while(|(id, rcpt, _)| {
            received[&(id.clone(), rcpt.clone())] > now - ms(late.max_delay_ms)
        })
        .count();
    assert!(recent > 0 && recent < vis.len());
    let mut offsets: Vec<usize> = vec![0, 1, 2, recent - 1, recent, recent + 1, vis.len() - 1];
    offsets.extend((0..vis.len()).step_by(97));
    for offset in offsets {
        let pos = m
            .seek_visible(lo, hi, offset as u64, Some(&late), now_t, full)
            .expect("in range");
        let row = m.row_at(pos);
        assert_eq!(
            (&row.trace_id, &row.recipient),
            (&vis[offset].0, &vis[offset].1),
            "offset {offset}"
        );
        let next = m
            .rows_ticks(lo, hi, Some(pos))
            .visible_at(Some(late), now_t)
            .next()
            .map(seen);
        assert_eq!(next.as_ref(), Some(&vis[offset]));
    }
    assert_eq!(
        m.seek_visible(lo, hi, vis.len() as u64, Some(&late), now_t, full),
        None
    );
    let mut got = Vec::new();
    for skip in (0..).step_by(700) {
        let Some(pos) = m.seek_visible(lo, hi, skip, Some(&late), now_t, full) else {
            break;
        };
        got.extend(
            m.rows_ticks(lo, hi, Some(pos))
                .visible_at(Some(late), now_t)
                .take(700)
                .map(seen),
        );
    }
    assert_eq!(got, vis);
}

#[test]
fn without_late_rows_nothing_changes() {
    let m = model();
    let (start, end, now) = (
        t("2024-07-09T10:30:00Z"),
        t("2024-07-09T12:10:00Z"),
        t("2024-07-09T12:00:00Z"),
    );
    let (lo, hi) = bounds(start, end, now);
    let now_t = ticks_floor(now);
    let plain: Vec<SimRow> = m.rows_ticks(lo, hi, None).collect();
    let none: Vec<SimRow> = m.rows_ticks(lo, hi, None).visible_at(None, now_t).collect();
    assert_eq!(plain, none);
    let full = &mut |h| m.hour_total(h);
    for offset in [0u64, 1, 500, plain.len() as u64 - 1, plain.len() as u64] {
        assert_eq!(
            m.seek_visible(lo, hi, offset, None, now_t, full),
            m.seek(lo, hi, offset, full)
        );
    }
    // Zero rates: every row at once with its model status.
    let zero = LateRows {
        late_per_mille: 0,
        max_delay_ms: 1000,
        changing_per_mille: 0,
        status_change_after_ms: 1000,
    };
    let want: Vec<Seen> = plain.into_iter().map(seen).collect();
    assert_eq!(m.expected_visible(start, end, now, &zero), want);
}

// ---------------------------------------------------------------------------------------------
// The server on the real clock

fn start(config: SimConfig) -> SimServer {
    SimServer::start(config, "127.0.0.1:0".parse().expect("addr")).expect("server starts")
}

fn run<F: std::future::Future>(f: F) -> F::Output {
    actix_rt::System::new().block_on(f)
}

async fn get_json(client: &awc::Client, url: &str, token: &str) -> Value {
    let mut res = client
        .get(url)
        .insert_header(("Authorization", format!("Bearer {token}")))
        .send()
        .await
        .expect("request sent");
    let status = res.status();
    let body = res.body().limit(256 << 20).await.expect("body");
    let json: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(status, StatusCode::OK, "{json}");
    json
}

async fn token(client: &awc::Client, server: &SimServer, audience: &str) -> String {
    let cfg = server.config();
    let scope = format!("{audience}/.default");
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", cfg.client_id.as_str()),
        ("client_secret", cfg.client_secret.as_str()),
        ("scope", scope.as_str()),
    ];
    let mut res = client
        .post(server.token_url_v2())
        .send_form(&form)
        .await
        .expect("token request");
    let body: Value = res.json().await.expect("json");
    body["access_token"].as_str().expect("token").to_string()
}

/// `Delivered` → `Pending`'s Graph casing: first letter lower-cased.
fn graph_casing(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_lowercase().chain(c).collect())
        .unwrap_or_default()
}

/// The two APIs, as the test drives them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Api {
    Graph,
    Rws,
}

/// Pages through `[start, end)` with `$top` = `top`; the rows (RWS casing) and the clock before
/// the first request and after the last response. A fresh client each time: no pooled connection
/// the server may have closed while the test was checking.
async fn collect(
    server: &SimServer,
    tokens: &(String, String),
    api: Api,
    (start, end): (DateTime<Utc>, DateTime<Utc>),
    top: u32,
) -> (Vec<Seen>, DateTime<Utc>, DateTime<Utc>, usize) {
    let client = &awc::Client::builder()
        .timeout(Duration::from_secs(60))
        .finish();
    let top_s = top.to_string();
    let mut next = Some(
        match api {
            Api::Graph => {
                let filter = format!(
                    "receivedDateTime ge {} and receivedDateTime le {}",
                    format_7z(start),
                    format_7z(end - TICK)
                );
                Url::parse_with_params(
                    &server.graph_url(),
                    &[("$filter", filter.as_str()), ("$top", &top_s)],
                )
            }
            Api::Rws => {
                let filter = format!(
                    "StartDate eq datetime'{}' and EndDate eq datetime'{}'",
                    format_7z(start),
                    format_7z(end - TICK)
                );
                Url::parse_with_params(
                    &server.rws_url(),
                    &[("$filter", filter.as_str()), ("$top", &top_s)],
                )
            }
        }
        .expect("url")
        .to_string(),
    );
    let mut got = Vec::new();
    let mut pages = 0;
    let before = Utc::now();
    while let Some(url) = next.take() {
        pages += 1;
        match api {
            Api::Graph => {
                let body = get_json(client, &url, &tokens.0).await;
                for r in body["value"].as_array().expect("value") {
                    let status = r["status"].as_str().expect("status");
                    assert_eq!(graph_casing(status), status, "Graph casing");
                    // Back to RWS casing: upper-case the first letter.
                    let mut c = status.chars();
                    let rws: String = c
                        .next()
                        .map(|f| f.to_uppercase().chain(c).collect())
                        .unwrap_or_default();
                    got.push((
                        r["id"].as_str().expect("id").to_string(),
                        r["recipientAddress"].as_str().expect("rcpt").to_string(),
                        rws,
                    ));
                }
                next = body["@odata.nextLink"].as_str().map(str::to_string);
            }
            Api::Rws => {
                let body = get_json(client, &url, &tokens.1).await;
                for r in body["value"].as_array().expect("value") {
                    assert_eq!(r["Index"], got.len() as u64, "RWS Index");
                    got.push((
                        r["MessageTraceId"].as_str().expect("id").to_string(),
                        r["RecipientAddress"].as_str().expect("rcpt").to_string(),
                        r["Status"].as_str().expect("status").to_string(),
                    ));
                }
                next = body["odata.nextLink"].as_str().map(|link| {
                    Url::parse(&url)
                        .and_then(|u| u.join(link))
                        .expect("resolves")
                        .to_string()
                });
            }
        }
    }
    (got, before, Utc::now(), pages)
}

/// Instants in `(before, after]` at which a row of `[start, end)` becomes visible or changes
/// status: between two of them, what the server serves cannot change.
fn transitions(
    m: &TenantModel,
    late: &LateRows,
    (start, end): (DateTime<Utc>, DateTime<Utc>),
    before: DateTime<Utc>,
    after: DateTime<Utc>,
) -> Vec<DateTime<Utc>> {
    let mut out = Vec::new();
    for r in m.rows(start, end - TICK, after) {
        let delay = m.late_delay_ms(&r, late);
        if delay > 0 {
            out.push(r.received + ms(delay));
        }
        if m.is_changing(&r, late) {
            out.push(r.received + ms(late.status_change_after_ms));
        }
    }
    out.retain(|t| *t > before && *t <= after);
    out.sort();
    out
}

/// Whether `got` is exactly what the model says the server serves at some instant of
/// `[before, after]` (the request's own, unknown, server clock).
fn served_at_some_instant(
    m: &TenantModel,
    late: &LateRows,
    window: (DateTime<Utc>, DateTime<Utc>),
    (before, after): (DateTime<Utc>, DateTime<Utc>),
    got: &[Seen],
) -> bool {
    std::iter::once(before)
        .chain(transitions(m, late, window, before, after))
        .any(|at| m.expected_visible(window.0, window.1, at, late) == got)
}

/// A window of the last few seconds, at 100 messages a second, with sub-second delays: collected
/// at once it lacks exactly the rows not yet published and shows pending statuses; collected after
/// the delays it is complete with final statuses, on both APIs, in one page or many.
#[test]
fn window_ending_now_is_incomplete_at_first_then_complete_and_final() {
    let late = LateRows {
        late_per_mille: 300,
        max_delay_ms: 1500,
        changing_per_mille: 300,
        status_change_after_ms: 2000,
    };
    let server = start(SimConfig {
        model: TenantModel::new(42, 360_000, 3, "contoso.com"),
        late: Some(late),
        ..SimConfig::default()
    });
    let m = server.model().clone();
    run(async {
        let c = awc::Client::builder()
            .timeout(Duration::from_secs(60))
            .finish();
        let tokens = (
            token(&c, &server, "https://graph.microsoft.com").await,
            token(&c, &server, "https://outlook.office365.com").await,
        );
        let end = Utc::now()
            .duration_trunc(chrono::Duration::milliseconds(1))
            .expect("trunc");
        let window = (end - chrono::Duration::seconds(5), end);
        let all = m.expected(window.0, window.1, end);
        assert!(all.len() > 500 && all.len() < 2000, "{}", all.len());

        // At once, one page each: exactly the rows visible at the request's instant.
        // Both requests first, the checks after (they take time).
        let graph = collect(&server, &tokens, Api::Graph, window, 5000).await;
        let rws = collect(&server, &tokens, Api::Rws, window, 2000).await;
        for (api, (got, before, after, pages)) in [(Api::Graph, graph), (Api::Rws, rws)] {
            assert!(pages <= 2, "{api:?}");
            assert!(
                served_at_some_instant(&m, &late, window, (before, after), &got),
                "{api:?}: not the rows visible at one instant of the request"
            );
            assert!(got.len() < all.len(), "{api:?}: unpublished rows missing");
            let ids: HashSet<(&str, &str)> = got
                .iter()
                .map(|(a, b, _)| (a.as_str(), b.as_str()))
                .collect();
            let missing = m
                .rows(window.0, window.1 - TICK, after)
                .filter(|r| !ids.contains(&(r.trace_id.as_str(), r.recipient.as_str())))
                .collect::<Vec<_>>();
            assert!(missing
                .iter()
                .all(|r| m.late_delay_ms(r, &late) > 0 && !m.row_visible_at(r, before, &late)));
            assert!(
                got.iter().any(|(_, _, s)| s == "Pending"),
                "{api:?}: pending statuses"
            );
        }

        // At once, small pages: every row published before the collection, none unpublished
        // after it; Graph positions never repeat a row, in the model's order.
        for api in [Api::Graph, Api::Rws] {
            let (got, before, after, pages) = collect(&server, &tokens, api, window, 97).await;
            assert!(pages > 5, "{api:?}");
            let early = m.expected_visible(window.0, window.1, before, &late);
            let late_set = m.expected_visible(window.0, window.1, after, &late);
            let ids = |v: &[Seen]| -> HashSet<(String, String)> {
                v.iter().map(|(a, b, _)| (a.clone(), b.clone())).collect()
            };
            let (got_ids, early_ids, late_ids) = (ids(&got), ids(&early), ids(&late_set));
            assert!(
                early_ids.is_subset(&got_ids),
                "{api:?}: published row missed"
            );
            assert!(
                got_ids.is_subset(&late_ids),
                "{api:?}: unpublished row served"
            );
            if api == Api::Graph {
                assert_eq!(got_ids.len(), got.len(), "Graph: no duplicates");
                let order: Vec<&(String, String)> =
                    all.iter().filter(|id| got_ids.contains(*id)).collect();
                let served: Vec<(String, String)> =
                    got.iter().map(|(a, b, _)| (a.clone(), b.clone())).collect();
                assert_eq!(served.iter().collect::<Vec<_>>(), order, "newest first");
            }
            let rows: std::collections::HashMap<(String, String), SimRow> = m
                .rows(window.0, window.1 - TICK, after)
                .map(|r| ((r.trace_id.clone(), r.recipient.clone()), r))
                .collect();
            for (id, rcpt, status) in &got {
                let row = &rows[&(id.clone(), rcpt.clone())];
                assert!(
                    [
                        m.status_at(row, before, &late),
                        m.status_at(row, after, &late)
                    ]
                    .contains(status),
                    "{api:?}: status {status} of {id}"
                );
            }
        }

        // After the delays and the status changes: every row, final statuses, exact paging.
        let settled = end + ms(late.settle_ms()) + chrono::Duration::milliseconds(50);
        let wait = (settled - Utc::now()).to_std().unwrap_or_default();
        actix_rt::time::sleep(wait).await;
        let want: Vec<Seen> = m
            .rows(window.0, window.1 - TICK, settled)
            .map(|r| {
                let s = m.final_status(&r, &late);
                (r.trace_id, r.recipient, s)
            })
            .collect();
        assert_eq!(
            want,
            m.expected_visible(window.0, window.1, Utc::now(), &late)
        );
        for (api, top) in [
            (Api::Graph, 5000),
            (Api::Rws, 2000),
            (Api::Graph, 97),
            (Api::Rws, 97),
        ] {
            let (got, _, _, _) = collect(&server, &tokens, api, window, top).await;
            assert_eq!(got, want, "{api:?} $top={top}");
        }
        let changed = m
            .rows(window.0, window.1 - TICK, settled)
            .filter(|r| m.is_changing(r, &late))
            .count();
        assert!(changed > 0);
    });
    server.stop();
}

/// Delays of up to 10 days on an hour-old window: during the test (almost surely) no row changes,
/// so many-page collections are checked exactly, unpublished rows and pending statuses included.
#[test]
fn paging_over_unpublished_rows_is_exact_on_both_apis() {
    let late = LateRows {
        late_per_mille: 400,
        max_delay_ms: 10 * 86_400_000,
        changing_per_mille: 400,
        status_change_after_ms: 10 * 86_400_000,
    };
    let server = start(SimConfig {
        model: TenantModel::new(5, 3600, 3, "contoso.com"),
        late: Some(late),
        ..SimConfig::default()
    });
    let m = server.model().clone();
    run(async {
        let c = awc::Client::builder()
            .timeout(Duration::from_secs(60))
            .finish();
        let tokens = (
            token(&c, &server, "https://graph.microsoft.com").await,
            token(&c, &server, "https://outlook.office365.com").await,
        );
        let end = Utc::now()
            .duration_trunc(chrono::Duration::seconds(1))
            .expect("trunc")
            - chrono::Duration::hours(1);
        let window = (end - chrono::Duration::hours(1), end);
        let all = m.expected(window.0, window.1, end);
        for api in [Api::Graph, Api::Rws] {
            let mut checked = false;
            for _attempt in 0..3 {
                let (got, before, after, pages) = collect(&server, &tokens, api, window, 500).await;
                if !transitions(&m, &late, window, before, after).is_empty() {
                    continue; // a row was published meanwhile: try again
                }
                let want = m.expected_visible(window.0, window.1, before, &late);
                assert!(pages > 3, "{api:?}");
                assert_eq!(got, want, "{api:?}");
                assert!(want.len() < all.len() * 4 / 5, "{api:?}: many unpublished");
                assert!(want.iter().any(|(_, _, s)| s == "Pending"));
                checked = true;
                break;
            }
            assert!(checked, "{api:?}: rows kept changing during every attempt");
        }
    });
    server.stop();
}
