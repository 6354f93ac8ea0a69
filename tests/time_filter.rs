//! The time filter: rows whose received time falls outside their window are dropped and counted,
//! unless `disable_time_filter = true`. The simulated tenant never returns such rows, so a tiny
//! stand-in API on 127.0.0.1 does.

mod common;

use actix_web::{web, App, HttpResponse, HttpServer};
use common::*;
use msgtrace::storage::Store;

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

fn serve() -> (String, actix_web::dev::ServerHandle) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        actix_rt::System::new().block_on(async move {
            let server = HttpServer::new(|| {
                App::new()
                    .route(
                        "/t/oauth2/v2.0/token",
                        web::post().to(|| async {
                            HttpResponse::Ok().json(serde_json::json!({"token_type": "Bearer", "expires_in": 3600, "access_token": "tok"}))
                        }),
                    )
                    .route("/graph", web::get().to(|| async { HttpResponse::Ok().json(page()) }))
            })
            .workers(1)
            .disable_signals()
            .bind("127.0.0.1:0")
            .unwrap();
            let addr = server.addrs()[0];
            let server = server.run();
            tx.send((format!("http://{addr}"), server.handle())).unwrap();
            let _ = server.await;
        });
    });
    rx.recv().unwrap()
}

fn run(disable: bool) -> (Vec<String>, u64) {
    let (base, handle) = serve();
    let (start, end) = window();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.ndjson");
    let q = |s: &str| serde_json::to_string(s).unwrap();
    let toml = format!(
        r#"
state_dir = {state}
[sources.src]
url = {url}
start = "{start}"
end = "{end}"
disable_time_filter = {disable}
quota = {{ requests = 1000, per_secs = 1 }}
[sources.src.auth]
method = "oauth"
tenant_id = "t"
client_id = "c"
client_secret = "s"
login_url = {base}
[sinks.out]
type = "file"
inputs = ["src"]
path = {out}
"#,
        state = q(&dir.path().join("state").to_string_lossy()),
        url = q(&format!("{base}/graph")),
        base = q(&base),
        out = q(&out.to_string_lossy()),
    );
    let report = run_once(&parse(&toml), opts());
    assert!(report.all_succeeded(), "{report:?}");
    let ids = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let jobs = Store::open(dir.path().join("state"))
        .unwrap()
        .jobs(Some("src"))
        .unwrap();
    actix_rt::System::new().block_on(handle.stop(false));
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
