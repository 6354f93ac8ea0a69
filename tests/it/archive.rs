//! The `object_store` sink (the archive): a collection into a directory (`file://`) and into a
//! real S3 emulator on loopback (moto), SIGKILLed several times, holds every row exactly once;
//! objects lie under `source=/date=/hour=` by their rows' hour; a 503 is retried and a refused
//! credential fails the page, which the next run delivers.
//!
//! moto (PyPI `moto[server]`) is started by the test on a free port. Where it is not installed
//! the S3 tests print "SKIPPED: moto not installed" and pass, unless `MSGTRACE_REQUIRE_MOTO` is
//! set (`.ci/run` installs moto and sets it, so CI cannot skip them).

use crate::common::*;
use msgtrace::actors::dialect::Api;
use msgtrace::actors::retry::RetryPolicy;
use object_store::aws::AmazonS3Builder;
use object_store::{ObjectStore, ObjectStoreExt as _};
use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// The archive's objects: path (from the store's root) and decompressed NDJSON.
type Objects = Vec<(String, String)>;

fn gunzip(body: &[u8]) -> String {
    let mut text = String::new();
    flate2::read::GzDecoder::new(body)
        .read_to_string(&mut text)
        .expect("an object is gzip NDJSON");
    text
}

/// Checks every object's name (`{prefix}/source=src/date=…/hour=…/{32 hex}.ndjson.gz`) and that
/// every row in it is of that hour; returns the rows counted by identity.
fn rows_by_identity(objects: &Objects, prefix: &str, api: Api) -> HashMap<(String, String), usize> {
    let (a, b) = api.identity_fields();
    let mut rows = HashMap::new();
    for (path, text) in objects {
        let head = match prefix {
            "" => "source=src/date=".to_owned(),
            p => format!("{p}/source=src/date="),
        };
        let rest = path
            .strip_prefix(&head)
            .unwrap_or_else(|| panic!("{path} is not under {head}"));
        let (date, rest) = rest.split_once("/hour=").expect("hour=");
        let (hour, name) = rest.split_once('/').expect("a name");
        let hash = name.strip_suffix(".ndjson.gz").expect(".ndjson.gz");
        assert!(
            hash.len() == 32 && hash.bytes().all(|c| c.is_ascii_hexdigit()),
            "{path}"
        );
        let from =
            chrono::NaiveDateTime::parse_from_str(&format!("{date} {hour}:00"), "%Y-%m-%d %H:%M")
                .unwrap_or_else(|e| panic!("{path}: {e}"))
                .and_utc()
                .timestamp() as f64;
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let t = v["_time"].as_f64().expect("_time");
            assert!(
                (from..from + 3600.0).contains(&t),
                "{path} holds a row of {t}"
            );
            let key = (
                v[a].as_str().unwrap().to_owned(),
                v[b].as_str().unwrap().to_owned(),
            );
            *rows.entry(key).or_insert(0) += 1;
        }
    }
    rows
}

/// Every file under `dir` (a `file://` archive), by its path below `dir`.
fn read_dir_archive(dir: &Path) -> Objects {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                out.push((rel, gunzip(&std::fs::read(&p).unwrap())));
            }
        }
    }
    out
}

/// The sink table of an archive at `url`, with more keys.
fn archive_sink(url: &str, more: &str) -> String {
    format!(
        "[sinks.archive]\ntype = \"object_store\"\ninputs = [\"src\"]\nurl = {}\n{more}\n",
        serde_json::to_string(url).unwrap()
    )
}

/// moto's S3 on 127.0.0.1, stopped when dropped.
struct Moto {
    child: Child,
    port: u16,
}

impl Moto {
    /// Starts moto on a free port and waits until it answers; `None` (after saying so) where it
    /// is not installed and `MSGTRACE_REQUIRE_MOTO` is unset.
    fn start() -> Option<Moto> {
        let port = free_port();
        let spawned = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .or_else(|_| {
                Command::new("python3")
                    .args([
                        "-m",
                        "moto.server",
                        "-H",
                        "127.0.0.1",
                        "-p",
                        &port.to_string(),
                    ])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
            });
        let mut moto = match spawned {
            Ok(child) => Moto { child, port },
            Err(e) => return skip(&format!("cannot start moto: {e}")),
        };
        let up = wait_for(|| {
            matches!(moto.child.try_wait(), Ok(Some(_))) || moto.request("GET", "/").is_some()
        });
        if matches!(moto.child.try_wait(), Ok(Some(_))) {
            return skip("moto exited at start");
        }
        assert!(up, "moto did not answer on 127.0.0.1:{port}");
        Some(moto)
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// One plain HTTP request (moto takes unsigned requests): its status.
    fn request(&self, method: &str, path: &str) -> Option<u16> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )
        .ok()?;
        let mut answer = String::new();
        s.read_to_string(&mut answer).ok()?;
        answer.split_whitespace().nth(1)?.parse().ok()
    }

    fn create_bucket(&self, bucket: &str) {
        assert_eq!(self.request("PUT", &format!("/{bucket}")), Some(200));
    }

    /// Every object of `bucket`, read back with the crate itself.
    fn objects(&self, bucket: &str) -> Objects {
        // The client needs the process's crypto provider, which the engine installs: a test
        // that reads the bucket before any engine ran in its process (nextest runs each test
        // in its own) would panic without this.
        msgtrace::actors::http::install_crypto();
        let store = AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_endpoint(self.endpoint())
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_access_key_id("testing")
            .with_secret_access_key("testing")
            .build()
            .unwrap();
        block_on(async {
            use futures_util::TryStreamExt as _;
            let metas: Vec<_> = store.list(None).try_collect().await.unwrap();
            let mut out = Vec::new();
            for m in metas {
                let body = store.get(&m.location).await.unwrap().bytes().await.unwrap();
                out.push((m.location.to_string(), gunzip(&body)));
            }
            out
        })
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Says why an S3 test does not run, or fails it when CI requires moto.
fn skip(why: &str) -> Option<Moto> {
    skip_without(
        "moto",
        "MSGTRACE_REQUIRE_MOTO",
        "pip install 'moto[server]'",
        why,
    )
}

/// The `options` of a sink writing to moto.
const MOTO_OPTIONS: &str = "[sinks.archive.options]\naws_access_key_id = \"testing\"\naws_secret_access_key = \"testing\"\naws_region = \"us-east-1\"\n";

#[test]
fn a_collection_into_a_directory_holds_every_row_once_under_its_hour_a_page_given_again_too() {
    let h = Harness::graph().rate(600).build();
    let archive = h.path("archive");
    let url = url::Url::from_directory_path(&archive).unwrap();
    let toml = h.toml_with_sink(&archive_sink(url.as_str(), ""));
    // First beside an http sink nobody listens for: the archive stores the first page, the
    // other sink refuses it, so it is not checkpointed and the next run delivers it again.
    let refusing = format!(
        "[sinks.down]\ntype = \"http\"\ninputs = [\"src\"]\nformat = \"ndjson\"\nurl = \"http://127.0.0.1:{}/\"\n",
        free_port()
    );
    let report = run_once(&parse(&format!("{toml}\n{refusing}")), quick_sink_retry());
    assert!(!report.all_succeeded(), "{report:?}");
    assert!(
        !read_dir_archive(&archive).is_empty(),
        "the archive took the page the other sink refused"
    );
    let report = run_once(&parse(&toml), opts());
    assert!(report.all_succeeded(), "{report:?}");
    let (start, end) = report.jobs[0].1.window.expect("a window");
    let expected = h.sim().model().expected(start, end, chrono::Utc::now());
    let objects = read_dir_archive(&archive);
    let hours: std::collections::BTreeSet<_> = objects
        .iter()
        .map(|(p, _)| p.rsplit_once('/').unwrap().0.to_owned())
        .collect();
    assert_eq!(hours.len(), 2, "two hours collected: {hours:?}");
    let got = rows_by_identity(&objects, "", Api::Graph);
    assert_eq!(
        compare(&got, &expected),
        (0, 0, 0),
        "missing, extra, duplicates"
    );
    // Nothing but archive objects: no temporary file of a put is left.
    assert!(objects.iter().all(|(p, _)| p.ends_with(".ndjson.gz")));
}

/// The archive's crash test: the collection of `crash.rs` into `sink`, SIGKILLed `kills` times,
/// holds every row exactly once (the file sink may hold the page in flight at a kill twice; the
/// archive overwrites it), read back by `read`, its objects under `prefix`.
fn crash_into(sink: &str, kills: u32, read: impl FnOnce() -> Objects, prefix: &str) {
    let sim = sim(200, |c| c.page_latency_ms = 40);
    let run = crash_run(
        &sim,
        &Crash {
            sink: Some(sink),
            ..Crash::two_days(Api::Graph, kills)
        },
    );
    let expected = run.expected(&sim);
    let objects = read();
    let got = rows_by_identity(&objects, prefix, Api::Graph);
    let (missing, extra, dups) = compare(&got, &expected);
    eprintln!(
        "archive crash test: {} SIGKILLs, {} objects, {} expected rows, {missing} missing, {extra} extra, {dups} duplicates",
        run.kills,
        objects.len(),
        expected.len()
    );
    assert_eq!(
        (missing, extra, dups),
        (0, 0, 0),
        "missing, extra, duplicates"
    );
}

#[test]
fn sigkill_at_random_moments_leaves_every_row_once_in_a_directory() {
    let archive = tempfile::tempdir().unwrap();
    let url = url::Url::from_directory_path(archive.path().join("a")).unwrap();
    crash_into(
        &archive_sink(url.as_str(), ""),
        8,
        || read_dir_archive(&archive.path().join("a")),
        "",
    );
}

#[test]
fn sigkill_at_random_moments_leaves_every_row_once_in_s3() {
    let Some(moto) = Moto::start() else { return };
    moto.create_bucket("archive");
    let more = format!("endpoint = \"{}\"\n{MOTO_OPTIONS}", moto.endpoint());
    crash_into(
        &archive_sink("s3://archive/msgtrace/v1", &more),
        8,
        || moto.objects("archive"),
        "msgtrace/v1",
    );
}

/// An S3 stand-in on 127.0.0.1: PUT stores the object (answering 503 first `fail` times, or
/// 403 while `refuse`), GET of nothing else.
#[derive(Clone, Default)]
struct FakeS3 {
    objects: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    fail: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    refuse: Arc<AtomicBool>,
    refused: Arc<AtomicUsize>,
}

impl FakeS3 {
    fn start(&self) -> (String, actix_web::dev::ServerHandle) {
        use actix_web::{web, App, HttpRequest, HttpServer};
        let me = self.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            actix_rt::System::new().block_on(async move {
                let server = HttpServer::new(move || {
                    let me = me.clone();
                    App::new()
                        .app_data(web::PayloadConfig::new(64 << 20))
                        .default_service(web::to(move |req: HttpRequest, body: web::Bytes| {
                            let me = me.clone();
                            async move { me.answer(&req, body) }
                        }))
                })
                .workers(1)
                .disable_signals()
                .bind("127.0.0.1:0")
                .unwrap();
                let addr = server.addrs()[0];
                let server = server.run();
                tx.send((format!("http://{addr}"), server.handle()))
                    .unwrap();
                let _ = server.await;
            });
        });
        rx.recv().unwrap()
    }

    fn answer(
        &self,
        req: &actix_web::HttpRequest,
        body: actix_web::web::Bytes,
    ) -> actix_web::HttpResponse {
        use actix_web::HttpResponse;
        if req.method() != actix_web::http::Method::PUT {
            return HttpResponse::NotFound().finish();
        }
        if self.refuse.load(Ordering::SeqCst) {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return HttpResponse::Forbidden().content_type("application/xml").body(
                "<Error><Code>InvalidAccessKeyId</Code><Message>The AWS Access Key Id you provided does not exist in our records.</Message></Error>",
            );
        }
        if self
            .fail
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            self.failed.fetch_add(1, Ordering::SeqCst);
            return HttpResponse::ServiceUnavailable().body("<Error><Code>SlowDown</Code></Error>");
        }
        self.objects
            .lock()
            .unwrap()
            // The client percent-encodes `=`, as S3 would decode it.
            .insert(req.path().replace("%3D", "="), body.to_vec());
        HttpResponse::Ok().insert_header(("ETag", "\"e\"")).finish()
    }
}

#[test]
fn a_503_is_retried_and_a_refused_credential_fails_the_page_for_the_next_run() {
    let h = Harness::graph()
        .rate(300)
        .window(&hours_ago(2), &hours_ago(1))
        .build();
    let s3 = FakeS3::default();
    let (endpoint, server) = s3.start();
    let secret = "s3cr3t-never-shown";
    let more = format!(
        "endpoint = \"{endpoint}\"\n[sinks.archive.options]\naws_access_key_id = \"AKIDTEST\"\naws_secret_access_key = \"{secret}\"\naws_region = \"us-east-1\"\n"
    );
    let config = parse(&h.toml_with_sink(&archive_sink("s3://bucket/arch", &more)));
    let quick = quick_sink_retry();

    // A refused credential: the page fails, nothing is committed.
    s3.refuse.store(true, Ordering::SeqCst);
    let report = run_once(&config, quick.clone());
    assert!(!report.all_succeeded(), "{report:?}");
    let errors = format!("{report:?}");
    assert!(errors.contains("refused the credentials"), "{errors}");
    assert!(!errors.contains(secret), "the secret was shown: {errors}");
    {
        let store = h.store();
        let job = &store.jobs(Some("src")).unwrap()[0];
        let deliveries: u32 = job.tasks.iter().map(|t| 1 + t.reschedules).sum();
        assert_eq!(
            s3.refused.load(Ordering::SeqCst),
            deliveries as usize,
            "one request a delivery: a refusal is not retried"
        );
        let cp = store.checkpoint("src").unwrap();
        assert!(
            no_page_checkpointed(cp.as_ref()),
            "the failed page was checkpointed: {cp:?}"
        );
    }

    // The credential accepted, two 503s: retried; the next run delivers every row once.
    s3.refuse.store(false, Ordering::SeqCst);
    s3.fail.store(2, Ordering::SeqCst);
    let report = run_once(&config, quick);
    assert!(report.all_succeeded(), "{report:?}");
    assert_eq!(s3.failed.load(Ordering::SeqCst), 2);
    let (start, end) = report.jobs[0].1.window.expect("a window");
    let objects: Objects = s3
        .objects
        .lock()
        .unwrap()
        .iter()
        .map(|(path, body)| {
            let path = path.strip_prefix("/bucket/").expect("in the bucket");
            (path.to_owned(), gunzip(body))
        })
        .collect();
    let got = rows_by_identity(&objects, "arch", Api::Graph);
    let expected = h.sim().model().expected(start, end, chrono::Utc::now());
    assert_eq!(
        compare(&got, &expected),
        (0, 0, 0),
        "missing, extra, duplicates"
    );
    block_on(server.stop(false));
}

/// Engine options whose sink retries wait 10 ms.
fn quick_sink_retry() -> msgtrace::engine::EngineOptions {
    let mut o = opts();
    o.sink_retry = Some(RetryPolicy {
        initial: std::time::Duration::from_millis(10),
        ..msgtrace::sinks::http::default_retry()
    });
    o
}

#[test]
fn validate_names_the_key_and_the_fix() {
    let h = Harness::graph().rate(10).window("-2h@h", "-1h@h").build();
    let errors = |sink: &str| {
        msgtrace::config::from_str(&h.toml_with_sink(sink))
            .unwrap_err()
            .to_string()
    };
    let e = errors(&archive_sink("ftp://x/y", ""));
    assert!(
        e.contains("sinks.archive.url: `ftp://x/y` scheme `ftp` is not an object store; use s3://"),
        "{e}"
    );
    let e = errors(&archive_sink(
        "s3://b/p",
        "endpoint = \"http://minio.example:9000\"",
    ));
    assert!(
        e.contains("sinks.archive.endpoint: plain http:// would send the credentials and the events unencrypted"),
        "{e}"
    );
    let e = errors(&archive_sink(
        "s3://b/p",
        "[sinks.archive.options]\naws_secret_acces_key = \"hunter22\"\nallow_http = \"true\"",
    ));
    assert!(
        e.contains("sinks.archive.options.aws_secret_acces_key: not a setting of this store"),
        "{e}"
    );
    assert!(
        e.contains("sinks.archive.options.allow_http: set the sink's own endpoint key instead"),
        "{e}"
    );
    assert!(!e.contains("hunter22"), "{e}");
    let e = errors(&archive_sink("file:///tmp/a", "path = \"/x\""));
    assert!(
        e.contains("sinks.archive.path: not used by sink type object_store (only by file)"),
        "{e}"
    );
    let e = errors("[sinks.archive]\ntype = \"object_store\"\ninputs = [\"src\"]\n");
    assert!(
        e.contains("sinks.archive.url: is required for an object_store sink"),
        "{e}"
    );
    // The store is built (not contacted) before a run and by `msgtrace validate`.
    let config = parse(&h.toml_with_sink(&archive_sink(
        "az://container/p",
        "[sinks.archive.options]\nazure_storage_account_key = \"c2VjcmV0LWtleS12YWx1ZQ==\"",
    )));
    if std::env::var_os("AZURE_STORAGE_ACCOUNT_NAME").is_none() {
        let e = msgtrace::preflight::check(&config).unwrap_err().to_string();
        assert!(
            e.contains("sinks.archive.url: cannot set up the store az://container/p: ")
                && e.contains("Account must be specified"),
            "{e}"
        );
        assert!(!e.contains("c2VjcmV0"), "{e}");
    }
    // A loopback endpoint over http is a test server: accepted.
    msgtrace::config::from_str(&h.toml_with_sink(&archive_sink(
        "s3://b/p",
        "endpoint = \"http://127.0.0.1:9000\"",
    )))
    .unwrap();
}

/// Regression: a page refused (or cut by a kill) before its slice had a checkpoint was asked for
/// again from a slice planned anew up to an `end` that had moved, so under another URL: the
/// archive then held its rows twice (its first delivery's objects beside the new ones). The
/// checkpoint now records the slice before its first page, and the next run resumes it.
#[test]
fn a_first_page_given_again_after_the_end_moved_keeps_its_name() {
    let mut h = Harness::graph().rate(300).build();
    let archive = h.path("archive");
    let url = url::Url::from_directory_path(&archive).unwrap();
    let (start, first_end, later_end) = (hours_ago(3), hours_ago(2), hours_ago(1));
    let mut toml = |end: &str| {
        h.set_window(&start, end);
        h.toml_with_sink(&archive_sink(url.as_str(), ""))
    };
    let refusing = format!(
        "[sinks.down]\ntype = \"http\"\ninputs = [\"src\"]\nformat = \"ndjson\"\nurl = \"http://127.0.0.1:{}/\"\n",
        free_port()
    );
    let report = run_once(
        &parse(&format!("{}\n{refusing}", toml(&first_end))),
        quick_sink_retry(),
    );
    assert!(!report.all_succeeded(), "{report:?}");
    assert!(!read_dir_archive(&archive).is_empty());
    let report = run_once(&parse(&toml(&later_end)), opts());
    assert!(report.all_succeeded(), "{report:?}");
    let at = |epoch: &str| chrono::DateTime::from_timestamp(epoch.parse().unwrap(), 0).unwrap();
    let expected = h
        .sim()
        .model()
        .expected(at(&start), at(&later_end), chrono::Utc::now());
    let got = rows_by_identity(&read_dir_archive(&archive), "", Api::Graph);
    assert_eq!(
        compare(&got, &expected),
        (0, 0, 0),
        "missing, extra, duplicates"
    );
}
