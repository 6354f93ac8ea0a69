//! Collection through an HTTP CONNECT proxy on loopback, with and without credentials.

use crate::common::*;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A minimal CONNECT proxy: one thread per tunnel, bounded by the test's lifetime.
struct TestProxy {
    port: u16,
    tunnels: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
}

fn start_proxy(required_auth: Option<&'static str>) -> TestProxy {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let tunnels = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let (t, r) = (tunnels.clone(), refused.clone());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(client) = conn else { return };
            let (t, r) = (t.clone(), r.clone());
            std::thread::spawn(move || {
                let mut reader = BufReader::new(client.try_clone().unwrap());
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let target = line
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or_default()
                    .to_owned();
                let mut auth_ok = required_auth.is_none();
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap() == 0 || h == "\r\n" {
                        break;
                    }
                    if let Some(want) = required_auth {
                        if h.trim() == format!("Proxy-Authorization: Basic {want}") {
                            auth_ok = true;
                        }
                    }
                }
                let mut client = client;
                if !line.starts_with("CONNECT ") || !auth_ok {
                    r.fetch_add(1, Ordering::SeqCst);
                    let _ = client.write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n");
                    return;
                }
                let Ok(upstream) = TcpStream::connect(&target) else {
                    let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n");
                    return;
                };
                t.fetch_add(1, Ordering::SeqCst);
                client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .unwrap();
                let (mut c2, mut u2) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
                let mut upstream = upstream;
                let a = std::thread::spawn(move || {
                    let _ = std::io::copy(&mut reader, &mut upstream);
                    let _ = upstream.shutdown(std::net::Shutdown::Write);
                });
                let _ = std::io::copy(&mut u2, &mut c2);
                let _ = c2.shutdown(std::net::Shutdown::Write);
                let _ = a.join();
            });
        }
    });
    TestProxy {
        port,
        tunnels,
        refused,
    }
}

fn run_through(proxy_url: &str) -> (msgtrace::actors::supervisor::RunReport, bool) {
    let h = Harness::graph()
        .window("-6h@h", "-1h@h")
        .extra(&format!("proxy_url = \"{proxy_url}\""))
        .build();
    let report = h.run_once();
    let ok = report.all_succeeded();
    if ok {
        h.assert_exactly_once(&report);
    }
    (report, ok)
}

#[test]
fn collection_through_a_connect_proxy_is_complete() {
    let p = start_proxy(None);
    let (_, ok) = run_through(&format!("http://127.0.0.1:{}", p.port));
    assert!(ok);
    assert!(
        p.tunnels.load(Ordering::SeqCst) >= 1,
        "requests went through the proxy"
    );
}

#[test]
fn proxy_credentials_are_sent_and_a_refusal_is_explained() {
    // "user:p@ss" in base64.
    let p = start_proxy(Some("dXNlcjpwQHNz"));
    let (_, ok) = run_through(&format!("http://user:p%40ss@127.0.0.1:{}", p.port));
    assert!(ok);
    assert!(p.tunnels.load(Ordering::SeqCst) >= 1);

    let (report, ok) = run_through(&format!("http://user:wrong@127.0.0.1:{}", p.port));
    assert!(!ok);
    let err = report.jobs[0].1.error.clone().unwrap_or_default();
    assert!(
        err.contains("407") && err.contains("proxy credentials"),
        "{err}"
    );
    assert!(!err.contains("wrong"), "no password in messages: {err}");
    assert!(p.refused.load(Ordering::SeqCst) >= 1);
}
