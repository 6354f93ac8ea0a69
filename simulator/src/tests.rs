//! Integration-style tests: a real server on 127.0.0.1:0 driven by awc.

use std::time::Duration;

use awc::http::StatusCode;
use chrono::{DateTime, DurationRound, Utc};
use serde_json::Value;
use url::Url;

use super::*;

const TICK: chrono::Duration = chrono::Duration::nanoseconds(100);

fn config() -> SimConfig {
    SimConfig {
        model: TenantModel::new(42, 300, 3, "contoso.com"),
        ..SimConfig::default()
    }
}

pub(super) fn start(config: SimConfig) -> SimServer {
    SimServer::start(config, "127.0.0.1:0".parse().expect("addr")).expect("server starts")
}

pub(super) fn run<F: std::future::Future>(f: F) -> F::Output {
    actix_rt::System::new().block_on(f)
}

pub(super) fn client() -> awc::Client {
    awc::Client::builder()
        .timeout(Duration::from_secs(60))
        .finish()
}

/// A past window of `hours` whole hours ending one hour before the current hour.
pub(super) fn past_window(hours: i64) -> (DateTime<Utc>, DateTime<Utc>) {
    let end = Utc::now()
        .duration_trunc(chrono::Duration::hours(1))
        .expect("trunc")
        - chrono::Duration::hours(1);
    (end - chrono::Duration::hours(hours), end)
}

pub(super) async fn send_get(
    client: &awc::Client,
    url: &str,
    auth: Option<(&str, &str)>,
) -> (StatusCode, String, Option<String>) {
    let mut req = client.get(url);
    if let Some(header) = auth {
        req = req.insert_header(header);
    }
    let mut res = req.send().await.expect("request sent");
    let retry_after = res
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = res.body().limit(256 << 20).await.expect("body");
    (
        res.status(),
        String::from_utf8_lossy(&body).into_owned(),
        retry_after,
    )
}

pub(super) async fn get_json(client: &awc::Client, url: &str, token: &str) -> (StatusCode, Value) {
    let bearer = format!("Bearer {token}");
    let (status, body, _) = send_get(client, url, Some(("Authorization", &bearer))).await;
    let json = serde_json::from_str(&body).unwrap_or(Value::String(body));
    (status, json)
}

async fn post_form(client: &awc::Client, url: &str, form: &[(&str, &str)]) -> (StatusCode, Value) {
    let mut res = client
        .post(url)
        .send_form(&form)
        .await
        .expect("request sent");
    let body: Value = res.json().await.expect("json body");
    (res.status(), body)
}

pub(super) async fn token(client: &awc::Client, server: &SimServer, audience: &str) -> String {
    let cfg = server.config();
    let scope = format!("{audience}/.default");
    let (status, body) = post_form(
        client,
        &server.token_url_v2(),
        &[
            ("grant_type", "client_credentials"),
            ("client_id", &cfg.client_id),
            ("client_secret", &cfg.client_secret),
            ("scope", &scope),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["access_token"].as_str().expect("token").to_string()
}

fn graph_query(server: &SimServer, filter: &str, top: u32) -> String {
    Url::parse_with_params(
        &server.graph_url(),
        &[("$filter", filter), ("$top", &top.to_string())],
    )
    .expect("url")
    .to_string()
}

fn rws_query(server: &SimServer, start: DateTime<Utc>, end: DateTime<Utc>, top: u32) -> String {
    let filter = format!(
        "StartDate eq datetime'{}' and EndDate eq datetime'{}'",
        format_7z(start),
        format_7z(end)
    );
    Url::parse_with_params(
        &server.rws_url(),
        &[("$filter", filter.as_str()), ("$top", &top.to_string())],
    )
    .expect("url")
    .to_string()
}

fn ids(rows: &Value, id: &str, rcpt: &str) -> Vec<(String, String)> {
    rows.as_array()
        .expect("array")
        .iter()
        .map(|r| {
            (
                r[id].as_str().expect("id").to_string(),
                r[rcpt].as_str().expect("recipient").to_string(),
            )
        })
        .collect()
}

#[test]
fn token_v2_and_v1_flows_and_errors() {
    let server = start(config());
    run(async {
        let c = client();
        let url = server.token_url_v2();
        let (status, body) = post_form(
            &c,
            &url,
            &[
                ("grant_type", "client_credentials"),
                ("client_id", "sim-client"),
                ("client_secret", "sim-secret"),
                ("scope", "https://graph.microsoft.com/.default"),
            ],
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["token_type"], "Bearer");
        assert_eq!(body["expires_in"], 3599);
        assert_eq!(body["ext_expires_in"], 3599);
        assert!(body["access_token"]
            .as_str()
            .is_some_and(|t| t.split('.').count() == 3));

        let (status, body) = post_form(
            &c,
            &server.token_url_v1(),
            &[
                ("grant_type", "client_credentials"),
                ("client_id", "sim-client"),
                ("client_secret", "sim-secret"),
                ("resource", "https://outlook.office365.com"),
            ],
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["expires_in"], "3599");
        assert_eq!(body["resource"], "https://outlook.office365.com");
        for k in ["expires_on", "not_before"] {
            assert!(
                body[k].as_str().is_some_and(|s| s.parse::<i64>().is_ok()),
                "{k}"
            );
        }
        let rws_token = body["access_token"].as_str().expect("token").to_string();
        let (status, _) = get_json(&c, &server.rws_url(), &rws_token).await;
        assert_eq!(status, StatusCode::OK, "v1 token works on RWS");

        let base = server.base_url();
        let wrong_tenant = format!("{base}/other-tenant/oauth2/v2.0/token");
        let good = [
            ("grant_type", "client_credentials"),
            ("client_id", "sim-client"),
            ("client_secret", "sim-secret"),
            ("scope", "https://graph.microsoft.com/.default"),
        ];
        let (status, body) = post_form(&c, &wrong_tenant, &good).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error_codes"][0], 90002);
        for k in [
            "error",
            "error_description",
            "timestamp",
            "trace_id",
            "correlation_id",
        ] {
            assert!(body[k].is_string(), "{k}");
        }

        let mut unknown = good;
        unknown[1] = ("client_id", "nobody");
        let (status, body) = post_form(&c, &url, &unknown).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"], "invalid_client");
        assert_eq!(body["error_codes"][0], 700016);

        let mut wrong_secret = good;
        wrong_secret[2] = ("client_secret", "nope");
        let (status, body) = post_form(&c, &url, &wrong_secret).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body["error"], "invalid_client");
        assert_eq!(body["error_codes"][0], 7000215);
        assert!(body["error_description"]
            .as_str()
            .is_some_and(|d| d.starts_with("AADSTS7000215:")));
    });
    let stats = server.stats();
    assert_eq!(stats.token_requests, 5);
    assert_eq!(stats.tokens_issued, 2);
    server.stop();
}

#[test]
fn graph_paging_over_two_days_collects_exactly_expected() {
    let server = start(config());
    let (start, end) = past_window(48);
    let expected = run(async {
        let c = client();
        let tok = token(&c, &server, "https://graph.microsoft.com").await;
        // Inclusive upper bound one tick before `end` = the half-open window of expected().
        let filter = format!(
            "receivedDateTime ge {} and receivedDateTime le {}",
            format_7z(start),
            format_7z(end - TICK)
        );
        let mut next = Some(graph_query(&server, &filter, 5000));
        let mut got = Vec::new();
        let mut pages = 0;
        while let Some(url) = next.take() {
            let (status, body) = get_json(&c, &url, &tok).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            assert!(body["@odata.context"].is_string());
            got.extend(ids(&body["value"], "id", "recipientAddress"));
            next = body["@odata.nextLink"].as_str().map(str::to_string);
            if let Some(link) = &next {
                assert!(link.starts_with(&server.base_url()), "absolute nextLink");
                assert!(link.contains("$skiptoken=") && link.contains("$top=5000"));
            }
            pages += 1;
        }
        let expected = server.model().expected(start, end, Utc::now());
        assert!(pages > 1, "several pages");
        assert_eq!(got, expected, "exactly expected(), newest first");

        // Swapped order and extra spaces are accepted too.
        let swapped = format!(
            "  receivedDateTime le {}   and receivedDateTime ge {} ",
            format_7z(end - TICK),
            format_7z(end - chrono::Duration::minutes(10))
        );
        let (status, body) = get_json(&c, &graph_query(&server, &swapped, 1000), &tok).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let want = server
            .model()
            .expected(end - chrono::Duration::minutes(10), end, Utc::now());
        assert_eq!(ids(&body["value"], "id", "recipientAddress"), want);

        // No filter: the last 48 hours, default $top 1000.
        let (status, body) = get_json(&c, &server.graph_url(), &tok).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["value"].as_array().map(Vec::len), Some(1000));
        expected
    });
    let swapped = server
        .model()
        .count(end - chrono::Duration::minutes(10), end, Utc::now());
    assert_eq!(
        server.stats().rows_served,
        expected.len() as u64 + swapped + 1000
    );
}

#[test]
fn rws_paging_follows_relative_next_links_and_ends_with_an_empty_page() {
    let server = start(config());
    let (start, end) = past_window(30);
    run(async {
        let c = client();
        let tok = token(&c, &server, "https://outlook.office365.com").await;
        let mut next = Some(rws_query(&server, start, end - TICK, 2000));
        let mut got = Vec::new();
        let mut index = 0u64;
        while let Some(url) = next.take() {
            let (status, body) = get_json(&c, &url, &tok).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            assert!(body["odata.metadata"].is_string());
            for row in body["value"].as_array().expect("value") {
                assert_eq!(row["Index"], index);
                index += 1;
                let received = row["Received"].as_str().expect("Received");
                assert!(
                    !received.ends_with('Z') && received.len() == 27,
                    "{received}"
                );
                assert_eq!(
                    row["StartDate"],
                    start.format("%Y-%m-%dT%H:%M:%SZ").to_string()
                );
            }
            got.extend(ids(&body["value"], "MessageTraceId", "RecipientAddress"));
            next = body["odata.nextLink"].as_str().map(|link| {
                assert!(link.starts_with("../../reportingwebservice/reporting.svc/MessageTrace?"));
                let resolved = Url::parse(&url)
                    .and_then(|u| u.join(link))
                    .expect("resolves");
                assert_eq!(
                    resolved.path(),
                    "/ecp/reportingwebservice/reporting.svc/MessageTrace"
                );
                resolved.to_string()
            });
        }
        assert_eq!(got, server.model().expected(start, end, Utc::now()));

        // A row count that is a multiple of $top ends with an empty page (Microsoft's quirk).
        let (s, e) = (end - chrono::Duration::hours(1), end - TICK);
        let n = server.model().count(s, end, Utc::now());
        assert!(n > 0 && n <= 2000);
        let (status, first) = get_json(&c, &rws_query(&server, s, e, n as u32), &tok).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(first["value"].as_array().map(Vec::len), Some(n as usize));
        let link = first["odata.nextLink"]
            .as_str()
            .expect("full page has a nextLink");
        let second_url = Url::parse(&server.rws_url())
            .and_then(|u| u.join(link))
            .expect("resolves");
        assert!(second_url
            .query()
            .is_some_and(|q| q.contains(&format!("$skiptoken={n}"))));
        let (status, second) = get_json(&c, second_url.as_str(), &tok).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(second["value"], Value::Array(Vec::new()));
        assert!(second.get("odata.nextLink").is_none());

        // Graph, in contrast, only links when more rows exist.
        let gtoken = token(&c, &server, "https://graph.microsoft.com").await;
        let filter = format!(
            "receivedDateTime ge {} and receivedDateTime le {}",
            format_7z(s),
            format_7z(e)
        );
        let (status, body) = get_json(&c, &graph_query(&server, &filter, n as u32), &gtoken).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["value"].as_array().map(Vec::len), Some(n as usize));
        assert!(body.get("@odata.nextLink").is_none());
    });
}

#[test]
fn rws_verbose_format_and_basic_auth() {
    let server = start(SimConfig {
        username: Some("some_username".to_string()),
        password: Some("some_password".to_string()),
        ..config()
    });
    let (start, end) = past_window(1);
    run(async {
        let c = client();
        let basic = (
            "Authorization",
            "Basic c29tZV91c2VybmFtZTpzb21lX3Bhc3N3b3Jk",
        );
        let url = format!("{}&$format=json", rws_query(&server, start, end, 5));
        let (status, body, _) = send_get(&c, &url, Some(basic)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let body: Value = serde_json::from_str(&body).expect("json");
        let rows = body["d"].as_array().expect("{\"d\":[...]} with $top");
        assert_eq!(rows.len(), 5);
        assert_eq!(
            rows[0]["__metadata"]["type"],
            "TenantReporting.MessageTrace"
        );
        let received = rows[0]["Received"].as_str().expect("Received");
        assert!(received.starts_with("/Date(") && received.ends_with(")/"));

        let filter = format!(
            "StartDate eq datetime'{}' and EndDate eq datetime'{}'",
            format_7z(start),
            format_7z(end)
        );
        let url = Url::parse_with_params(
            &server.rws_url(),
            &[("$filter", filter.as_str()), ("$format", "json")],
        )
        .expect("url");
        let (status, body, _) = send_get(&c, url.as_str(), Some(basic)).await;
        assert_eq!(status, StatusCode::OK);
        let body: Value = serde_json::from_str(&body).expect("json");
        assert!(
            body["d"]["results"].is_array(),
            "{{\"d\":{{\"results\":[...]}}}} without $top"
        );

        let bad = ("Authorization", "Basic d3Jvbmc6d3Jvbmc=");
        let (status, body, _) = send_get(&c, url.as_str(), Some(bad)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(body.contains("401 - Unauthorized: Access is denied due to invalid credentials."));
    });
}

#[test]
fn limits_answer_400_with_the_graph_shape() {
    let server = start(config());
    run(async {
        let c = client();
        let tok = token(&c, &server, "https://graph.microsoft.com").await;
        let now = Utc::now();
        let day = chrono::Duration::days(1);
        let window = |s: DateTime<Utc>, e: DateTime<Utc>| {
            format!(
                "receivedDateTime ge {} and receivedDateTime le {}",
                format_7z(s),
                format_7z(e)
            )
        };
        let ok = window(now - day, now);
        let base = server.graph_url();
        let cases = [
            graph_query(&server, &window(now - day * 11, now), 100),
            graph_query(
                &server,
                &window(now - day * 91, now - day * 90 + chrono::Duration::hours(1)),
                100,
            ),
            graph_query(&server, &ok, 0),
            graph_query(&server, &ok, 5001),
            graph_query(&server, "receivedDateTime ge yesterday", 100),
            graph_query(&server, &window(now, now - day), 100),
            format!("{base}?$top=abc"),
            format!("{base}?$skiptoken=bm90LWEtdG9rZW4"),
            format!(
                "{}&$skiptoken=%22poisoned%22",
                graph_query(&server, &ok, 100)
            ),
        ];
        for url in cases {
            let (status, body) = get_json(&c, &url, &tok).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{url}: {body}");
            assert_eq!(body["error"]["code"], "BadRequest", "{url}");
            assert!(body["error"]["message"].is_string());
            assert!(body["error"]["innerError"]["request-id"].is_string());
        }
        // End later than now is served up to now.
        let (status, body) = get_json(
            &c,
            &graph_query(
                &server,
                &window(now - chrono::Duration::hours(1), now + day),
                5000,
            ),
            &tok,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let latest = body["value"][0]["receivedDateTime"].as_str().expect("row");
        assert!(latest <= format_7z(Utc::now()).as_str());

        // RWS keeps ten days: older starts are refused with a plain JSON body.
        let rtoken = token(&c, &server, "https://outlook.office365.com").await;
        let url = rws_query(&server, now - day * 11, now - day * 10, 10);
        let (status, body) = get_json(&c, &url, &rtoken).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body["Message"].is_string());
        let (status, _) = get_json(
            &c,
            &format!("{}&$skiptoken=x", rws_query(&server, now - day, now, 10)),
            &rtoken,
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, _) = get_json(&c, &rws_query(&server, now - day, now, 2001), &rtoken).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    });
    assert_eq!(server.stats().client_errors, 12);
}

#[test]
fn unauthorized_without_a_valid_token() {
    let server = start(SimConfig {
        token_lifetime_secs: 1,
        ..config()
    });
    run(async {
        let c = client();
        let (status, body, _) = send_get(&c, &server.graph_url(), None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let body: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(body["error"]["code"], "InvalidAuthenticationToken");
        assert!(body["error"]["innerError"].is_object());

        let (status, body, _) = send_get(&c, &server.rws_url(), None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(body.starts_with("<title>401 - Unauthorized"));

        let (status, _) = get_json(&c, &server.graph_url(), "made-up").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);

        // An RWS token does not open Graph.
        let rws_token = token(&c, &server, "https://outlook.office365.com").await;
        let (status, body) = get_json(&c, &server.graph_url(), &rws_token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");

        // Tokens expire.
        let graph_token = token(&c, &server, "https://graph.microsoft.com").await;
        let (status, _) = get_json(&c, &server.graph_url(), &graph_token).await;
        assert_eq!(status, StatusCode::OK);
        actix_rt::time::sleep(Duration::from_millis(1100)).await;
        let (status, body) = get_json(&c, &server.graph_url(), &graph_token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("expired")));

        // Revoked tokens too.
        let graph_token = token(&c, &server, "https://graph.microsoft.com").await;
        server.revoke_tokens();
        let (status, _) = get_json(&c, &server.graph_url(), &graph_token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    });
    assert_eq!(server.stats().unauthorized, 6);
}

#[test]
fn faults_quota_health_and_unknown_paths() {
    run(async {
        // Started from inside a running System: the server has its own thread and System.
        let server = start(SimConfig {
            quota: Some(SimQuota {
                requests: 2,
                per_secs: 300,
            }),
            ..config()
        });
        let c = client();
        let tok = token(&c, &server, "https://graph.microsoft.com").await;
        server.inject_fault(SimFault::Status {
            status: 503,
            retry_after_secs: Some(2),
        });
        let bearer = format!("Bearer {tok}");
        let auth = Some(("Authorization", bearer.as_str()));
        let (status, _, retry) = send_get(&c, &server.graph_url(), auth).await;
        assert_eq!(
            (status, retry.as_deref()),
            (StatusCode::SERVICE_UNAVAILABLE, Some("2"))
        );
        for _ in 0..2 {
            let (status, _, _) = send_get(&c, &server.graph_url(), auth).await;
            assert_eq!(status, StatusCode::OK);
        }
        let (status, body, retry) = send_get(&c, &server.graph_url(), auth).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
        assert!(retry.is_some_and(|r| r.parse::<u64>().is_ok_and(|s| s > 0 && s <= 300)));

        let (status, _, _) = send_get(&c, &format!("{}/health", server.base_url()), None).await;
        assert_eq!(status, StatusCode::OK);
        let (status, _, _) = send_get(&c, &format!("{}/nope", server.base_url()), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let stats = server.stats();
        assert_eq!(
            (stats.data_requests, stats.pages_served, stats.throttled),
            (4, 2, 1)
        );
        server.stop();
    });
}

#[test]
fn another_app_spends_its_part_of_the_quota() {
    run(async {
        // 10 per 600 s, half of it the other app's, one of its requests every 120 s, already
        // under way: its last 5 count, 5 are left.
        let server = start(SimConfig {
            quota: Some(SimQuota {
                requests: 10,
                per_secs: 600,
            }),
            other_app_percent: 50,
            ..config()
        });
        let c = client();
        let tok = token(&c, &server, "https://graph.microsoft.com").await;
        let bearer = format!("Bearer {tok}");
        let auth = Some(("Authorization", bearer.as_str()));
        for _ in 0..5 {
            let (status, body, _) = send_get(&c, &server.graph_url(), auth).await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
        let (status, _, _) = send_get(&c, &server.graph_url(), auth).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        let stats = server.stats();
        assert_eq!(
            (
                stats.throttled,
                stats.other_app_requests,
                stats.other_app_refused
            ),
            (1, 6, 0),
            "the other app's six since 600 s before the start, the first out of the window"
        );
        server.stop();
    });
}

#[test]
fn start_fails_cleanly_on_a_taken_port() {
    let first = start(config());
    let again = SimServer::start(config(), first.addr());
    assert!(again.is_err());
}

#[test]
fn unverifiable_assertions_are_refused_and_missing_service_principal() {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    let server = start(SimConfig {
        graph_service_principal_missing: true,
        ..config()
    });
    let jwt = |iss: &str, exp: i64| {
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"PS256","typ":"JWT","x5t#S256":"dGh1bWI"}"#);
        let claims = serde_json::json!({"aud": server.token_url_v2(), "iss": iss, "sub": iss,
            "jti": "1", "nbf": 0, "iat": 0, "exp": exp});
        let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
        format!("{header}.{claims}.c2lnbmF0dXJl")
    };
    run(async {
        let c = client();
        let later = Utc::now().timestamp() + 600;
        let mut results = Vec::new();
        // No certificate is registered: well-formed or not, nothing is signed by a known key.
        // (Signed assertions are tested end to end in tests/auth.rs.)
        for assertion in [
            jwt("sim-client", later),
            jwt("someone-else", 1),
            "not-a-jwt".to_string(),
        ] {
            let (status, body) = post_form(
                &c,
                &server.token_url_v2(),
                &[
                    ("grant_type", "client_credentials"),
                    ("client_id", "sim-client"),
                    (
                        "client_assertion_type",
                        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                    ),
                    ("client_assertion", &assertion),
                    ("scope", "https://graph.microsoft.com/.default"),
                ],
            )
            .await;
            results.push((status, body["error_codes"][0].as_u64()));
        }
        assert_eq!(
            results,
            [
                (StatusCode::UNAUTHORIZED, Some(700027)),
                (StatusCode::UNAUTHORIZED, Some(700027)),
                (StatusCode::BAD_REQUEST, Some(50027)),
            ]
        );
        let (status, body) = post_form(
            &c,
            &server.token_url_v2(),
            &[
                ("grant_type", "client_credentials"),
                ("client_id", "sim-client"),
                ("client_secret", "sim-secret"),
                ("scope", "https://graph.microsoft.com/.default"),
            ],
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let tok = body["access_token"].as_str().expect("token").to_string();
        let (status, body) = get_json(&c, &server.graph_url(), &tok).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let message = body["error"]["message"].as_str().expect("message");
        assert!(message.starts_with("Service principal-less Authentication failed"));
    });
}

#[test]
fn other_tenant_ids_get_tokens_too() {
    let server = start(SimConfig {
        other_tenant_ids: vec!["tenant-0001".to_string(), "Tenant-0002".to_string()],
        ..config()
    });
    let base = server.base_url();
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", "sim-client"),
        ("client_secret", "sim-secret"),
        ("scope", "https://graph.microsoft.com/.default"),
    ];
    run(async {
        let c = client();
        for (tenant, want) in [
            ("sim-tenant", StatusCode::OK),
            ("tenant-0001", StatusCode::OK),
            ("TENANT-0002", StatusCode::OK),
            ("tenant-0003", StatusCode::BAD_REQUEST),
        ] {
            let url = format!("{base}/{tenant}/oauth2/v2.0/token");
            let (status, body) = post_form(&c, &url, &form).await;
            assert_eq!(status, want, "{tenant}: {body}");
        }
    });
}

#[test]
fn an_unknown_fault_name_lists_the_known_ones() {
    assert_eq!(
        crate::SimFault::by_name("slow").unwrap_err().to_string(),
        "unknown fault `slow`; use a status code (400..599), stall, invalid-json, html, wrong-shape or truncated"
    );
    assert!(crate::SimFault::by_name("399").is_err());
    assert!(crate::SimFault::by_name(" 503 ").is_ok());
}
