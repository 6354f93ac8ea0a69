//! The `azure_logs_ingestion` sink end to end: a collection from the simulated tenant into a
//! test server on 127.0.0.1 that plays both the Logs Ingestion API and its Entra ID token
//! endpoint, with 429 (Retry-After), 503, 413, 401 and 403 answers; and the sink's validation.

use crate::common::*;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use msgtrace::actors::retry::RetryPolicy;
use msgtrace::config::{self, SinkKind};
use msgtrace::engine::EngineOptions;
use msgtrace::sinks::azure::{time_generated, MAX_CALL_BYTES};
use msgtrace::sinks::http::default_retry;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const DCR: &str = "dcr-0123456789abcdef0123456789abcdef";
const STREAM: &str = "Custom-MessageTrace";

/// One ingestion call as the server saw it, body decompressed.
#[derive(Clone, Debug)]
struct Call {
    authorization: String,
    /// Bytes of JSON (before compression).
    plain_bytes: usize,
    events: Vec<Map<String, Value>>,
}

/// What the server answers to the n-th ingestion call (0-based) of `plain_bytes`: status and
/// `Retry-After` seconds.
type Script = Arc<dyn Fn(usize, usize) -> (u16, Option<u64>) + Send + Sync>;

#[derive(Default)]
struct Seen {
    /// Every ingestion call, accepted or not, with the answer's status.
    calls: Vec<(Call, u16)>,
    /// The `scope` of every token request.
    scopes: Vec<String>,
    /// Where the token endpoint sends clients instead (a 307), if anywhere.
    token_redirect: Option<String>,
    /// Where the ingestion endpoint sends clients instead (a 307), if anywhere.
    ingest_redirect: Option<String>,
}

/// The Logs Ingestion API and its token endpoint on 127.0.0.1.
struct Azure {
    base: String,
    seen: Arc<Mutex<Seen>>,
    handle: actix_web::dev::ServerHandle,
}

impl Azure {
    fn start(script: Script) -> Azure {
        let seen: Arc<Mutex<Seen>> = Arc::default();
        let shared = seen.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let system = actix_rt::System::new();
            let server = HttpServer::new(move || {
                let (ingest_seen, token_seen, imds_seen, script) = (
                    shared.clone(),
                    shared.clone(),
                    shared.clone(),
                    script.clone(),
                );
                App::new()
                    .app_data(web::PayloadConfig::new(64 << 20))
                    .route(
                        "/{tenant}/oauth2/v2.0/token",
                        web::post().to(move |form: web::Form<HashMap<String, String>>| {
                            let seen = token_seen.clone();
                            async move {
                                let mut s = seen.lock().unwrap();
                                if let Some(to) = &s.token_redirect {
                                    return HttpResponse::TemporaryRedirect()
                                        .insert_header(("Location", to.as_str()))
                                        .finish();
                                }
                                s.scopes
                                    .push(form.get("scope").cloned().unwrap_or_default());
                                let n = s.scopes.len();
                                HttpResponse::Ok().json(serde_json::json!({
                                    "token_type": "Bearer",
                                    "expires_in": 3599,
                                    "access_token": format!("token-{n}"),
                                }))
                            }
                        }),
                    )
                    .route(
                        "/metadata/identity/oauth2/token",
                        web::get().to(move |req: HttpRequest| {
                            let seen = imds_seen.clone();
                            async move { imds(&req, &seen) }
                        }),
                    )
                    .route(
                        "/dataCollectionRules/{dcr}/streams/{stream}",
                        web::post().to(move |req: HttpRequest, body: web::Bytes| {
                            let (seen, script) = (ingest_seen.clone(), script.clone());
                            async move { ingest(req, body, &seen, &script) }
                        }),
                    )
            })
            .workers(1)
            .bind("127.0.0.1:0")
            .expect("the test server binds");
            let addr = server.addrs()[0];
            let server = server.run();
            tx.send((addr, server.handle())).unwrap();
            system.block_on(server).unwrap();
        });
        let (addr, handle) = rx.recv().unwrap();
        Azure {
            base: format!("http://{addr}"),
            seen,
            handle,
        }
    }

    /// The events of the accepted calls.
    fn accepted(&self) -> Vec<Map<String, Value>> {
        let seen = self.seen.lock().unwrap();
        seen.calls
            .iter()
            .filter(|(_, status)| *status == 204)
            .flat_map(|(c, _)| c.events.clone())
            .collect()
    }

    fn calls(&self) -> Vec<(Call, u16)> {
        self.seen.lock().unwrap().calls.clone()
    }

    fn scopes(&self) -> Vec<String> {
        self.seen.lock().unwrap().scopes.clone()
    }
}

impl Drop for Azure {
    fn drop(&mut self) {
        actix_rt::System::new().block_on(self.handle.stop(false));
    }
}

/// An ingestion call: checked as the API checks it, recorded, answered per the script.
/// The instance metadata endpoint: a token for the `resource` asked, recorded as `imds:<resource>`
/// among the scopes. Like Azure Monitor's, the token is a JWT without a `roles` claim: the
/// identity is authorized by an Azure role on the rule, not by an app role.
fn imds(req: &HttpRequest, seen: &Mutex<Seen>) -> HttpResponse {
    use base64::Engine as _;
    if req.headers().get("Metadata").and_then(|v| v.to_str().ok()) != Some("true") {
        return HttpResponse::BadRequest().json(serde_json::json!({"error": "invalid_request"}));
    }
    let query: HashMap<String, String> =
        web::Query::<HashMap<String, String>>::from_query(req.query_string())
            .map(|q| q.into_inner())
            .unwrap_or_default();
    let resource = query.get("resource").cloned().unwrap_or_default();
    let mut s = seen.lock().unwrap();
    s.scopes.push(format!("imds:{resource}"));
    let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::json!({ "aud": resource }).to_string());
    HttpResponse::Ok().json(serde_json::json!({
        "token_type": "Bearer",
        "expires_in": "3599",
        "resource": resource,
        "access_token": format!("token-mi-{}.{claims}.sig", s.scopes.len()),
    }))
}

fn ingest(req: HttpRequest, body: web::Bytes, seen: &Mutex<Seen>, script: &Script) -> HttpResponse {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let path_ok = req.match_info().get("dcr") == Some(DCR)
        && req.match_info().get("stream") == Some(STREAM)
        && req.query_string() == "api-version=2023-01-01";
    if !path_ok || header("content-type") != "application/json" {
        return HttpResponse::NotFound().body(format!("{} {}", req.path(), req.query_string()));
    }
    let plain = if header("content-encoding") == "gzip" {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&body[..])
            .read_to_end(&mut out)
            .expect("a gzip body");
        out
    } else {
        body.to_vec()
    };
    let events: Vec<Map<String, Value>> =
        serde_json::from_slice(&plain).expect("the body is a JSON array of objects");
    let call = Call {
        authorization: header("authorization"),
        plain_bytes: plain.len(),
        events,
    };
    if let Some(to) = &seen.lock().unwrap().ingest_redirect {
        let to = format!("{to}{}?{}", req.path(), req.query_string());
        return HttpResponse::TemporaryRedirect()
            .insert_header(("Location", to))
            .finish();
    }
    let n = seen.lock().unwrap().calls.len();
    let (status, retry_after) = if call.authorization.starts_with("Bearer token-") {
        script(n, plain.len())
    } else {
        (401, None)
    };
    seen.lock().unwrap().calls.push((call, status));
    let mut answer = HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap());
    if let Some(secs) = retry_after {
        answer.insert_header(("Retry-After", secs.to_string()));
    }
    if status == 204 {
        answer.finish()
    } else {
        answer.json(
            serde_json::json!({"error": {"code": "Test", "message": format!("answered {status}")}}),
        )
    }
}

fn script(f: impl Fn(usize, usize) -> (u16, Option<u64>) + Send + Sync + 'static) -> Script {
    Arc::new(f)
}

/// A collection of the simulated tenant into a file sink and an `azure_logs_ingestion` sink.
struct Setup(Harness);

impl Setup {
    /// `messages_per_hour` over the `hours` before the current one, `page_size` rows a page.
    fn new(messages_per_hour: u32, hours: i64, page_size: u32) -> Setup {
        Setup(
            Harness::graph()
                .rate(messages_per_hour)
                .window(&hours_ago(hours + 1), &hours_ago(1))
                .page_size(page_size)
                .build(),
        )
    }

    /// The configuration: the sink table's extra `keys`.
    fn config(&self, azure: &Azure, keys: &str) -> config::Config {
        self.config_with(azure, keys, "")
    }

    /// [`Setup::config`] with more keys for the source.
    fn config_with(&self, azure: &Azure, keys: &str, source: &str) -> config::Config {
        let auth = format!(
            "method = \"oauth\"\ntenant_id = \"contoso-tenant\"\nclient_id = \"sentinel-writer\"\n\
             client_secret = \"writer-secret\"\nlogin_url = \"{}\"",
            azure.base
        );
        self.config_with_auth(azure, keys, source, &auth)
    }

    /// [`Setup::config_with`] with `auth` (TOML lines) as the sink's auth table.
    fn config_with_auth(
        &self,
        azure: &Azure,
        keys: &str,
        source: &str,
        auth: &str,
    ) -> config::Config {
        let base = self.0.toml_with(source);
        parse(&format!(
            r#"{base}
[sinks.sentinel]
type = "azure_logs_ingestion"
inputs = ["src"]
endpoint = "{url}"
dcr_id = "{DCR}"
stream = "{STREAM}"
{keys}
[sinks.sentinel.auth]
{auth}
"#,
            url = azure.base
        ))
    }

    /// The rows the simulator has in the window, by identity.
    fn expected(&self) -> Vec<(String, String)> {
        self.0.expected()
    }

    fn file_rows(&self) -> HashMap<(String, String), usize> {
        self.0.identities()
    }
}

/// Retries without waiting long (a Retry-After is still waited for).
fn fast() -> EngineOptions {
    EngineOptions {
        sink_retry: Some(RetryPolicy {
            initial: Duration::from_millis(20),
            ..default_retry()
        }),
        ..opts()
    }
}

fn identity(e: &Map<String, Value>) -> (String, String) {
    let text = |k: &str| e[k].as_str().expect("an identity field").to_owned();
    (text("id"), text("recipientAddress"))
}

fn count(events: &[Map<String, Value>]) -> HashMap<(String, String), usize> {
    let mut m = HashMap::new();
    for e in events {
        *m.entry(identity(e)).or_insert(0) += 1;
    }
    m
}

/// The "done when" of issue 19: pages larger than one call, some calls answered 429 with a
/// Retry-After and some 503: every row arrives exactly once, no call is over 1 MB, every event
/// has TimeGenerated (the row's `_time`) and is otherwise what the file sink wrote, and the token
/// was asked of the configured login_url for the Azure Monitor audience.
#[test]
fn a_collection_delivers_every_row_exactly_once_through_429_and_503() {
    let setup = Setup::new(900, 6, 5000);
    let azure = Azure::start(script(|n, _| match n % 7 {
        1 => (429, Some(1)),
        4 => (503, None),
        _ => (204, None),
    }));
    let config = setup.config(&azure, "compression = \"gzip\"");
    let report = run_once(&config, fast());
    assert!(report.all_succeeded(), "{report:?}");

    let expected = setup.expected();
    assert!(
        expected.len() > 8000,
        "pages larger than one call: {}",
        expected.len()
    );
    let got = count(&azure.accepted());
    assert_eq!(
        compare(&got, &expected),
        (0, 0, 0),
        "missing, extra, duplicates"
    );

    let calls = azure.calls();
    assert!(calls.iter().any(|(_, s)| *s == 429) && calls.iter().any(|(_, s)| *s == 503));
    let largest = calls.iter().map(|(c, _)| c.plain_bytes).max().unwrap();
    assert!(largest <= MAX_CALL_BYTES, "a call of {largest} bytes");
    assert!(
        largest > MAX_CALL_BYTES / 2,
        "calls are filled: {largest} bytes"
    );

    // Each event is the file sink's line plus TimeGenerated.
    let file: HashMap<(String, String), Map<String, Value>> = std::fs::read_to_string(&setup.0.out)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Map<String, Value> = serde_json::from_str(l).unwrap();
            (identity(&v), v)
        })
        .collect();
    assert_eq!(file.len(), expected.len());
    for mut e in azure.accepted() {
        let time = e
            .remove("TimeGenerated")
            .expect("every event has TimeGenerated");
        assert_eq!(time.as_str(), time_generated(&e).as_deref());
        assert_eq!(e, file[&identity(&e)]);
    }

    // deploy/azure/message-trace.json declares every field the sink sends, with its type.
    let declared = stream_columns();
    for e in azure.accepted().iter().take(500) {
        for (name, value) in e {
            let kind = declared
                .get(name)
                .unwrap_or_else(|| panic!("{name} is not declared by the template's stream"));
            let fits = match kind.as_str() {
                "string" | "datetime" => value.is_string(),
                "long" => value.is_i64() || value.is_u64(),
                "real" => value.is_number(),
                "boolean" => value.is_boolean(),
                _ => true,
            };
            assert!(fits, "{name}: {value} is not a {kind}");
        }
    }

    let scopes = azure.scopes();
    assert!(!scopes.is_empty());
    assert!(
        scopes
            .iter()
            .all(|s| s == "https://monitor.azure.com/.default"),
        "{scopes:?}"
    );
    assert!(calls
        .iter()
        .all(|(c, _)| c.authorization == "Bearer token-1"));
}

/// The stream declaration of deploy/azure/message-trace.json: column name to type.
fn stream_columns() -> HashMap<String, String> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/azure/message-trace.json"
    );
    let t: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let rule = t["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "Microsoft.Insights/dataCollectionRules")
        .expect("the template has a data collection rule");
    rule["properties"]["streamDeclarations"][STREAM]["columns"]
        .as_array()
        .expect("the rule declares the stream")
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_owned(),
                c["type"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// A 413 splits the batch: the halves are sent, every row arrives once.
#[test]
fn a_batch_the_api_finds_too_large_is_split() {
    let setup = Setup::new(200, 2, 500);
    let azure = Azure::start(script(|_, bytes| {
        if bytes > 40_000 {
            (413, None)
        } else {
            (204, None)
        }
    }));
    let config = setup.config(&azure, "");
    let report = run_once(&config, fast());
    assert!(report.all_succeeded(), "{report:?}");
    let got = count(&azure.accepted());
    assert_eq!(
        compare(&got, &setup.expected()),
        (0, 0, 0),
        "missing, extra, duplicates"
    );
    let calls = azure.calls();
    assert!(calls.iter().any(|(_, s)| *s == 413));
    assert!(calls
        .iter()
        .all(|(c, s)| (*s == 204) == (c.plain_bytes <= 40_000)));
}

/// A token the API refuses (401) is dropped and a new one asked for, once.
#[test]
fn a_refused_token_is_renewed_once() {
    let setup = Setup::new(40, 2, 100);
    let azure = Azure::start(script(
        |n, _| if n == 0 { (401, None) } else { (204, None) },
    ));
    let config = setup.config(&azure, "");
    let report = run_once(&config, fast());
    assert!(report.all_succeeded(), "{report:?}");
    assert_eq!(azure.scopes().len(), 2, "a new token after the 401");
    let got = count(&azure.accepted());
    assert_eq!(compare(&got, &setup.expected()), (0, 0, 0));
}

/// Without the role, the API answers 403: the run fails with a line naming the role, and the
/// page is not checkpointed: the next run delivers it (the batches of that page accepted
/// before the refusal arrive twice; nothing is missing).
#[test]
fn a_missing_role_fails_the_page_naming_the_role_and_the_next_run_delivers_it() {
    let setup = Setup::new(900, 3, 5000);
    let refuse = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let r = refuse.clone();
    let azure = Azure::start(script(move |n, _| {
        if n >= 1 && r.load(std::sync::atomic::Ordering::SeqCst) {
            (403, None)
        } else {
            (204, None)
        }
    }));
    // A page of 5000 rows takes more than one call: the second call of the first page is refused.
    let config = setup.config(&azure, "");
    let report = run_once(&config, fast());
    assert!(!report.all_succeeded());
    let errors = format!("{report:?}");
    assert!(
        errors.contains("Monitoring Metrics Publisher on the data collection rule")
            && errors.contains(DCR)
            && errors.contains("sentinel-writer"),
        "{errors}"
    );
    let before = azure.accepted().len();
    assert!(
        before > 0 && before < 5000,
        "the first call of the page: {before} rows"
    );
    refuse.store(false, std::sync::atomic::Ordering::SeqCst);
    let report = run_once(&config, fast());
    assert!(report.all_succeeded(), "{report:?}");
    let got = count(&azure.accepted());
    let (missing, extra, twice) = compare(&got, &setup.expected());
    assert_eq!((missing, extra), (0, 0));
    assert!(
        twice <= before,
        "only rows of the refused page are sent again"
    );
    // The file sink of the same source got the pages that were not checkpointed again too.
    let (missing, extra, _) = compare(&setup.file_rows(), &setup.expected());
    assert_eq!((missing, extra), (0, 0));
}

/// `msgtrace run`: a page refused part way (403 until the role applies) is held and given again
/// to the sink, which skips the calls of it already accepted: every row arrives exactly once.
#[test]
fn a_scheduled_run_gives_a_refused_page_again_and_no_row_arrives_twice() {
    let setup = Setup::new(900, 3, 5000);
    // The second call (of the first page) and the next two tries of the held page are refused.
    let azure = Azure::start(script(|n, _| {
        if (1..=3).contains(&n) {
            (403, None)
        } else {
            (204, None)
        }
    }));
    let config = setup.config_with(&azure, "", "reschedule_tasks = false");
    let expected = setup.expected();
    let handle = msgtrace::embed::EngineBuilder::new(config)
        .options(fast())
        .scheduled(true)
        .start()
        .expect("engine starts");
    wait_for(|| azure.accepted().len() >= expected.len());
    block_on(handle.shutdown()).expect("shutdown");
    assert!(azure.calls().len() > 4);
    let got = count(&azure.accepted());
    assert_eq!(
        compare(&got, &expected),
        (0, 0, 0),
        "missing, extra, duplicates"
    );
    assert_eq!(compare(&setup.file_rows(), &expected), (0, 0, 0), "file");
}

/// The sink's token is asked of its login_url only: a token endpoint that redirects elsewhere
/// (a 307 keeps the form, client secret included) is not followed.
#[test]
fn a_token_endpoint_redirecting_elsewhere_is_not_followed() {
    let setup = Setup::new(20, 1, 100);
    let elsewhere = Azure::start(script(|_, _| (204, None)));
    let azure = Azure::start(script(|_, _| (204, None)));
    azure.seen.lock().unwrap().token_redirect = Some(format!(
        "{}/contoso-tenant/oauth2/v2.0/token",
        elsewhere.base
    ));
    let config = setup.config(&azure, "");
    let report = run_once(&config, fast());
    assert!(!report.all_succeeded(), "{report:?}");
    assert!(
        elsewhere.scopes().is_empty(),
        "the form went to another origin"
    );
    assert!(format!("{report:?}").contains("HTTP 307"), "{report:?}");
    assert!(azure.calls().is_empty());
}

/// Events go to the configured endpoint only: an ingestion endpoint that redirects elsewhere is
/// not followed (the page fails, naming the 307).
#[test]
fn an_ingestion_endpoint_redirecting_elsewhere_is_not_followed() {
    let setup = Setup::new(20, 1, 100);
    let elsewhere = Azure::start(script(|_, _| (204, None)));
    let azure = Azure::start(script(|_, _| (204, None)));
    azure.seen.lock().unwrap().ingest_redirect = Some(elsewhere.base.clone());
    let config = setup.config(&azure, "");
    let report = run_once(&config, fast());
    assert!(!report.all_succeeded(), "{report:?}");
    assert!(format!("{report:?}").contains("HTTP 307"), "{report:?}");
    assert!(
        elsewhere.calls().is_empty(),
        "events went to another origin"
    );
}

/// A managed identity signs the sink in through the instance metadata endpoint, for the Azure
/// Monitor audience; its token has no app role (Azure Monitor authorizes by an Azure role on the
/// rule), and is not refused for that as a source's would be.
#[test]
fn a_managed_identity_signs_the_sink_in_without_an_app_role() {
    let setup = Setup::new(40, 2, 100);
    let azure = Azure::start(script(|_, _| (204, None)));
    let auth = format!(
        "method = \"managed_identity\"\nclient_id = \"sentinel-mi\"\nimds_url = \"{}\"",
        azure.base
    );
    let config = setup.config_with_auth(&azure, "", "", &auth);
    let report = run_once(&config, fast());
    assert!(report.all_succeeded(), "{report:?}");
    assert_eq!(azure.scopes(), ["imds:https://monitor.azure.com"]);
    let got = count(&azure.accepted());
    assert_eq!(compare(&got, &setup.expected()), (0, 0, 0));
}

/// In GCC High and DoD the token is for the US government audience.
#[test]
fn gcc_high_asks_for_the_us_government_monitor_audience() {
    let setup = Setup::new(20, 1, 100);
    let azure = Azure::start(script(|_, _| (204, None)));
    let config = setup.config(&azure, "plan = \"gcc_high\"");
    let report = run_once(&config, fast());
    assert!(report.all_succeeded(), "{report:?}");
    assert_eq!(azure.scopes(), vec!["https://monitor.azure.us/.default"]);
}

// Validation.

const SOURCE: &str = r#"
[sources.contoso.auth]
method = "oauth"
tenant_id = "contoso.onmicrosoft.com"
client_id = "00000000-0000-0000-0000-000000000000"
client_secret = "s"
"#;

fn sink(table: &str, auth: &str) -> String {
    format!("{SOURCE}\n[sinks.sentinel]\ntype = \"azure_logs_ingestion\"\ninputs = [\"contoso\"]\n{table}\n{auth}")
}

const GOOD: &str = r#"endpoint = "https://my-dce-a1b2.eastus-1.ingest.monitor.azure.com"
dcr_id = "dcr-0123456789abcdef0123456789abcdef"
stream = "Custom-MessageTrace""#;

const AUTH: &str = "[sinks.sentinel.auth]\nmethod = \"oauth\"\ntenant_id = \"t\"\nclient_id = \"c\"\nclient_secret = \"s\"\n";

fn errors(toml: &str) -> Vec<String> {
    config::from_str_with_env(toml, &|_| None)
        .expect_err("invalid")
        .errors
        .iter()
        .map(|e| e.to_string())
        .collect()
}

#[test]
fn the_sinks_auth_defaults_to_the_monitor_audience_of_its_plan() {
    let c = config::from_str_with_env(&sink(GOOD, AUTH), &|_| None).unwrap();
    let SinkKind::AzureLogsIngestion(a) = &c.sinks["sentinel"].kind else {
        panic!("{:?}", c.sinks["sentinel"].kind)
    };
    let app = a.auth.oauth().unwrap();
    assert_eq!(app.resource, "https://monitor.azure.com");
    assert_eq!(app.login_url.as_str(), "https://login.microsoftonline.com/");
    assert_eq!(
        a.ingestion_url(),
        "https://my-dce-a1b2.eastus-1.ingest.monitor.azure.com/dataCollectionRules/dcr-0123456789abcdef0123456789abcdef/streams/Custom-MessageTrace?api-version=2023-01-01"
    );
    let us = config::from_str_with_env(&sink(&format!("{GOOD}\nplan = \"dod\""), AUTH), &|_| None)
        .unwrap();
    let SinkKind::AzureLogsIngestion(a) = &us.sinks["sentinel"].kind else {
        panic!()
    };
    let app = a.auth.oauth().unwrap();
    assert_eq!(app.resource, "https://monitor.azure.us");
    assert_eq!(app.login_url.as_str(), "https://login.microsoftonline.us/");
    // An explicit resource is kept.
    let own = format!("{AUTH}resource = \"https://monitor.azure.cn\"\n");
    let c = config::from_str_with_env(&sink(GOOD, &own), &|_| None).unwrap();
    let SinkKind::AzureLogsIngestion(a) = &c.sinks["sentinel"].kind else {
        panic!()
    };
    assert_eq!(a.auth.oauth().unwrap().resource, "https://monitor.azure.cn");
}

#[test]
fn validation_names_the_key_and_the_fix() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "endpoint = \"https://x.ingest.monitor.azure.com\"\ndcr_id = \"my-rule\"\nstream = \"Custom-MessageTrace\"",
            "sinks.sentinel.dcr_id: `my-rule` is not an immutable id",
            "az monitor data-collection rule show --query immutableId",
        ),
        (
            "endpoint = \"http://x.ingest.monitor.azure.com\"\ndcr_id = \"dcr-0123456789abcdef0123456789abcdef\"\nstream = \"Custom-MessageTrace\"",
            "sinks.sentinel.endpoint: plain http://",
            "use https://",
        ),
        (
            "endpoint = \"https://x.ingest.monitor.azure.com/dataCollectionRules/dcr-1\"\ndcr_id = \"dcr-0123456789abcdef0123456789abcdef\"\nstream = \"Custom-MessageTrace\"",
            "sinks.sentinel.endpoint: has a path or query",
            "scheme and host only",
        ),
        (
            "endpoint = \"https://x.ingest.monitor.azure.com\"\ndcr_id = \"dcr-0123456789abcdef0123456789abcdef\"\nstream = \"MessageTrace_CL\"",
            "sinks.sentinel.stream: `MessageTrace_CL` is not a stream name",
            "Custom-MessageTrace",
        ),
        (
            "dcr_id = \"dcr-0123456789abcdef0123456789abcdef\"\nstream = \"Custom-MessageTrace\"",
            "sinks.sentinel.endpoint: is required",
            "ingest.monitor.azure.com",
        ),
        (
            &format!("{GOOD}\nplan = \"china\""),
            "sinks.sentinel.plan: unknown value `china`",
            "gcc_high",
        ),
        (
            &format!("{GOOD}\nformat = \"json\""),
            "sinks.sentinel.format: not used by sink type azure_logs_ingestion (only by http)",
            "remove it",
        ),
    ];
    for (table, error, fix) in cases {
        let errs = errors(&sink(table, AUTH));
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with(error) && errs[0].contains(fix),
            "{errs:?}"
        );
        assert!(!errs[0].contains('\n'));
    }
    let errs = errors(&sink(GOOD, ""));
    assert!(
        errs.len() == 1
            && errs[0].starts_with("sinks.sentinel.auth: is required")
            && errs[0].contains("Monitoring Metrics Publisher"),
        "{errs:?}"
    );
    let basic = "[sinks.sentinel.auth]\nmethod = \"basic\"\nusername = \"u\"\npassword = \"p\"\n";
    let errs = errors(&sink(GOOD, basic));
    assert!(
        errs.len() == 1
            && errs[0].starts_with("sinks.sentinel.auth.method: ")
            && errs[0].contains("oauth_cert"),
        "{errs:?}"
    );
    // The source's auth validation runs on the sink's table: its messages, under the sink's path.
    let half = "[sinks.sentinel.auth]\nmethod = \"oauth\"\ntenant_id = \"t\"\nclient_secret = \"s\"\nusername = \"u\"\n";
    let errs = errors(&sink(GOOD, half));
    assert!(
        errs.iter()
            .any(|e| e.starts_with("sinks.sentinel.auth.client_id: is required"))
            && errs
                .iter()
                .any(|e| e.starts_with("sinks.sentinel.auth.username: not used by method oauth")),
        "{errs:?}"
    );
    // A certificate of [certificates] used by the sink's auth only is used.
    let cert = "[sinks.sentinel.auth]\nmethod = \"oauth_cert\"\ntenant_id = \"t\"\nclient_id = \"c\"\ncertificate = \"writer\"\n\n[certificates.writer]\ncert_path = \"/etc/msgtrace/w.pem\"\nkey_path = \"/etc/msgtrace/w.key\"\n";
    let c = config::from_str_with_env(&sink(GOOD, cert), &|_| None).unwrap();
    assert!(
        c.warnings
            .iter()
            .all(|w| !w.contains("certificates.writer")),
        "{:?}",
        c.warnings
    );
    let SinkKind::AzureLogsIngestion(a) = &c.sinks["sentinel"].kind else {
        panic!()
    };
    assert_eq!(a.auth.method(), "oauth_cert");
    // http:// to this machine is a test server.
    let local = GOOD.replace(
        "https://my-dce-a1b2.eastus-1.ingest.monitor.azure.com",
        "http://127.0.0.1:8080",
    );
    let c = config::from_str_with_env(&sink(&local, AUTH), &|_| None).unwrap();
    assert!(
        c.warnings.iter().all(|w| !w.contains("sinks.sentinel")),
        "{:?}",
        c.warnings
    );
    // endpoint belongs to this sink type (and object_store) only.
    let errs = errors(&format!(
        "{SOURCE}\n[sinks.web]\ntype = \"http\"\ninputs = [\"contoso\"]\nurl = \"https://h/x\"\nformat = \"json\"\nendpoint = \"https://x\"\n"
    ));
    assert!(
        errs == ["sinks.web.endpoint: not used by sink type http (only by azure_logs_ingestion, object_store); remove it"],
        "{errs:?}"
    );
}
