//! The detail endpoint over HTTP: records as the model has them, paging, and the summary
//! endpoint's faults and quota.

use awc::http::StatusCode;
use serde_json::Value;

use super::tests::{client, get_json, past_window, run, start, token};
use super::*;

const GRAPH_AUDIENCE: &str = "https://graph.microsoft.com";

fn config() -> SimConfig {
    SimConfig {
        model: TenantModel::new(42, 120, 3, "contoso.com"),
        ..SimConfig::default()
    }
}

/// The detail URL of a row, the address as an OData literal.
fn details_url(server: &SimServer, trace: &str, address: &str) -> String {
    let literal: String = address
        .replace('\'', "''")
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~@'".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    format!(
        "{}/{trace}/getDetailsByRecipient(recipientAddress='{literal}')",
        server.graph_url()
    )
}

/// A row of the past window with this status.
fn row_with(server: &SimServer, status: &str) -> SimRow {
    let (s, e) = past_window(2);
    server
        .model()
        .rows(s, e, chrono::Utc::now())
        .find(|r| r.status == status)
        .expect("a row of that status")
}

#[test]
fn a_row_s_details_are_the_model_s_and_an_unknown_row_is_a_404() {
    let server = start(config());
    let row = row_with(&server, "Failed");
    run(async {
        let c = client();
        let tok = token(&c, &server, GRAPH_AUDIENCE).await;
        // The address in another case is the same recipient.
        let url = details_url(&server, &row.trace_id, &row.recipient.to_uppercase());
        let (status, body) = get_json(&c, &url, &tok).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let want: Vec<Value> = server
            .model()
            .details(&row, chrono::Utc::now(), None)
            .iter()
            .map(SimDetail::to_graph_json)
            .collect();
        assert_eq!(body["value"], Value::Array(want));
        assert!(body.get("@odata.nextLink").is_none());
        assert!(body["@odata.context"]
            .as_str()
            .unwrap()
            .ends_with("$metadata#Collection(microsoft.graph.exchangeMessageTraceDetail)"));
        let (status, body) = get_json(
            &c,
            &details_url(&server, &row.trace_id, "nobody@contoso.com"),
            &tok,
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert_eq!(body["error"]["code"], "ResourceNotFound");
        let bad = format!(
            "{}/{}/getDetailsByRecipient(recipientAddress='a'b')",
            server.graph_url(),
            row.trace_id
        );
        let (status, body) = get_json(&c, &bad, &tok).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        let (status, _) = get_json(&c, &url, "not-a-token").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    });
    let stats = server.stats();
    assert_eq!(stats.detail_requests, 4);
    assert_eq!(stats.data_requests, 4, "detail requests are data requests");
    assert_eq!(stats.detail_records_served, 3);
}

#[test]
fn a_detail_page_size_pages_the_records_behind_next_links() {
    let server = start(SimConfig {
        detail_page_size: Some(2),
        ..config()
    });
    let row = row_with(&server, "Quarantined");
    run(async {
        let c = client();
        let tok = token(&c, &server, GRAPH_AUDIENCE).await;
        let mut url = Some(details_url(&server, &row.trace_id, &row.recipient));
        let mut events = Vec::new();
        let mut pages = 0;
        while let Some(u) = url.take() {
            let (status, body) = get_json(&c, &u, &tok).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            pages += 1;
            for r in body["value"].as_array().unwrap() {
                events.push(r["event"].as_str().unwrap().to_owned());
            }
            url = body["@odata.nextLink"].as_str().map(str::to_owned);
        }
        assert_eq!(pages, 2);
        assert_eq!(events, ["Receive", "Submit", "Quarantine"]);
    });
}

#[test]
fn the_detail_endpoint_has_the_summary_endpoint_s_faults_and_quota() {
    let server = start(SimConfig {
        quota: Some(SimQuota {
            requests: 2,
            per_secs: 60,
        }),
        ..config()
    });
    let row = row_with(&server, "FilteredAsSpam");
    let url = details_url(&server, &row.trace_id, &row.recipient);
    run(async {
        let c = client();
        let tok = token(&c, &server, GRAPH_AUDIENCE).await;
        server.inject_fault(SimFault::Status {
            status: 503,
            retry_after_secs: None,
        });
        assert_eq!(
            get_json(&c, &url, &tok).await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        server.inject_fault(SimFault::Truncated);
        let cut = c
            .get(&url)
            .insert_header(("Authorization", format!("Bearer {tok}")))
            .send()
            .await;
        // The reset comes with the headers or in the body: either way no body is had.
        if let Ok(mut res) = cut {
            assert!(res.body().await.is_err(), "the body is cut short");
        }
        // The quota (2 a minute; faults are answered before it counts) counts detail requests as
        // the summary's: the detail request after a page and a detail is refused.
        let summary = graph_query_url(&server);
        assert_eq!(get_json(&c, &summary, &tok).await.0, StatusCode::OK);
        assert_eq!(get_json(&c, &url, &tok).await.0, StatusCode::OK);
        let (_, _, retry_after) =
            super::tests::send_get(&c, &url, Some(("Authorization", &format!("Bearer {tok}"))))
                .await;
        assert!(retry_after.is_some(), "a 429 with Retry-After");
    });
    assert_eq!(server.stats().throttled, 1);
}

fn graph_query_url(server: &SimServer) -> String {
    let (s, e) = past_window(1);
    let filter = format!(
        "receivedDateTime ge {} and receivedDateTime le {}",
        format_7z(s),
        format_7z(e)
    );
    url::Url::parse_with_params(
        &server.graph_url(),
        &[("$filter", filter.as_str()), ("$top", "10")],
    )
    .unwrap()
    .to_string()
}
