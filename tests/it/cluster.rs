//! `[cluster]`'s pieces against a real etcd on loopback (`common::EtcdServer`): a lease kept
//! alive and expiring, membership seen by two clients, a claim and its fenced checkpoint
//! refused once the lease has ended or the claim was given up; and gateways that answer
//! garbage, stall or cut a body short, each a one-line typed error.
//!
//! Where etcd is not installed the etcd tests print "SKIPPED: etcd not installed" and pass,
//! unless `MSGTRACE_REQUIRE_ETCD` is set (`.ci/run` installs `etcd-server` and sets it).

use crate::common::*;
use msgtrace::actors::cluster::agent::{self, AgentConfig, Busy, Ownership};
use msgtrace::actors::cluster::etcd::{Etcd, EtcdError};
use msgtrace::actors::cluster::fence::{self, Claimed, FenceError};
use msgtrace::actors::cluster::membership::{self, RegisterError};
use msgtrace::actors::cluster::ownership;
use msgtrace::actors::dialect::Api;
use msgtrace::actors::supervisor::RunReport;
use msgtrace::config::Config;
use std::future::Future;
use std::io::{Read as _, Write as _};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use url::Url;

/// Runs `f` on an actix System (awc's client needs one).
fn on_actix<F: Future>(f: F) -> F::Output {
    actix_rt::System::new().block_on(f)
}

/// A client of `endpoints` with a 5 s timeout per request.
fn client_of(endpoints: &[String]) -> Etcd {
    let urls = endpoints.iter().map(|e| Url::parse(e).unwrap()).collect();
    Etcd::new(urls, Duration::from_secs(5))
}

/// Waits until `check` holds, for at most 60 s (a bound for a broken etcd, not a timing).
async fn until<F, Fut>(mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let end = Instant::now() + Duration::from_secs(60);
    while !check().await {
        if Instant::now() >= end {
            return false;
        }
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

#[test]
fn a_lease_lives_while_kept_alive_and_its_keys_go_when_it_is_not() {
    let Some(server) = EtcdServer::start() else {
        return;
    };
    on_actix(async {
        let etcd = client_of(&[server.endpoint()]);
        let kept = etcd.grant(Duration::from_secs(6)).await.unwrap();
        let dropped = etcd.grant(Duration::from_secs(2)).await.unwrap();
        assert_ne!(kept.id, dropped.id);
        etcd.put(b"/t/kept", b"1", kept.id).await.unwrap();
        etcd.put(b"/t/dropped", b"1", dropped.id).await.unwrap();
        assert_eq!(etcd.get(b"/t/kept").await.unwrap().unwrap().lease, kept.id);

        // One lease renewed all along, the other never: the second one's key goes first.
        let (client, kept_id) = (&etcd, kept.id);
        let gone = until(move || async move {
            let ttl = client.keep_alive(kept_id).await.unwrap();
            assert!(ttl > Duration::ZERO);
            client.get(b"/t/dropped").await.unwrap().is_none()
        })
        .await;
        assert!(gone, "a lease not kept alive expires");
        assert!(
            etcd.get(b"/t/kept").await.unwrap().is_some(),
            "the kept one lives"
        );

        assert_eq!(
            etcd.keep_alive(dropped.id).await,
            Err(EtcdError::LeaseExpired(dropped.id))
        );
        assert_eq!(
            etcd.put(b"/t/late", b"1", dropped.id).await,
            Err(EtcdError::LeaseExpired(dropped.id)),
            "nothing is written under a lease that has ended"
        );
        assert!(etcd.get(b"/t/late").await.unwrap().is_none());

        etcd.revoke(kept.id).await.unwrap();
        assert!(
            etcd.get(b"/t/kept").await.unwrap().is_none(),
            "revoked: its keys go at once"
        );
        etcd.revoke(kept.id).await.unwrap();
    });
}

#[test]
fn two_instances_see_the_same_members_and_agree_on_the_owners() {
    let Some(server) = EtcdServer::start() else {
        return;
    };
    on_actix(async {
        let a = client_of(&[server.endpoint()]);
        let b = client_of(&[server.endpoint()]);
        let la = a.grant(Duration::from_secs(30)).await.unwrap();
        let lb = b.grant(Duration::from_secs(30)).await.unwrap();
        membership::register(&a, "/m", "collector-a", la.id)
            .await
            .unwrap();
        membership::register(&b, "/m", "collector-b", lb.id)
            .await
            .unwrap();
        let seen_a = membership::members(&a, "/m").await.unwrap();
        let seen_b = membership::members(&b, "/m").await.unwrap();
        assert_eq!(seen_a, ["collector-a", "collector-b"]);
        assert_eq!(seen_a, seen_b);
        assert!(membership::members(&a, "/other").await.unwrap().is_empty());

        // Each takes its own share from its own view: together, every source once.
        let sources: Vec<String> = (0..12).map(|i| format!("tenant-{i}")).collect();
        let ids = || sources.iter().map(String::as_str);
        let mut shares = ownership::share(ids(), &seen_a, "collector-a");
        shares.extend(ownership::share(ids(), &seen_b, "collector-b"));
        shares.sort_unstable();
        let mut all: Vec<&str> = ids().collect();
        all.sort_unstable();
        assert_eq!(shares, all);

        // A second instance under a name in use is refused; the first registering again is not.
        let lc = b.grant(Duration::from_secs(30)).await.unwrap();
        let taken = membership::register(&b, "/m", "collector-a", lc.id).await;
        let Err(e @ RegisterError::NameTaken { .. }) = &taken else {
            panic!("{taken:?}")
        };
        assert!(
            e.to_string()
                .contains("give each instance its own cluster.name"),
            "{e}"
        );
        membership::register(&a, "/m", "collector-a", la.id)
            .await
            .unwrap();

        // b stops (its lease revoked): both see a alone at once; a leaves cleanly.
        b.revoke(lb.id).await.unwrap();
        assert_eq!(
            membership::members(&a, "/m").await.unwrap(),
            ["collector-a"]
        );
        assert_eq!(
            membership::members(&b, "/m").await.unwrap(),
            ["collector-a"]
        );
        membership::deregister(&b, "/m", "collector-a", lc.id)
            .await
            .unwrap();
        assert_eq!(
            membership::members(&a, "/m").await.unwrap(),
            ["collector-a"],
            "only its lease removes it"
        );
        membership::deregister(&a, "/m", "collector-a", la.id)
            .await
            .unwrap();
        assert!(membership::members(&b, "/m").await.unwrap().is_empty());
    });
}

#[test]
fn a_fenced_checkpoint_is_refused_once_the_writers_lease_has_ended() {
    let Some(server) = EtcdServer::start() else {
        return;
    };
    on_actix(async {
        let a = client_of(&[server.endpoint()]);
        let b = client_of(&[server.endpoint()]);
        let la = a.grant(Duration::from_secs(2)).await.unwrap();
        let lb = b.grant(Duration::from_secs(60)).await.unwrap();
        let Claimed::Ours(ca) = fence::claim(&a, "/f", "contoso", "a", la.id).await.unwrap() else {
            panic!("nobody held it")
        };
        assert_eq!(
            fence::claim(&b, "/f", "contoso", "b", lb.id).await.unwrap(),
            Claimed::Held("a".into())
        );
        fence::fenced_put(&a, "/f", &ca, "contoso", b"page 1")
            .await
            .unwrap();

        // a is paused past its lease: nothing renews it, and its claim goes.
        let owner = fence::owner_key("/f", "contoso");
        let (owner, client) = (&owner, &b);
        assert!(until(move || async move { client.get(owner).await.unwrap().is_none() }).await);
        let refused = fence::fenced_put(&a, "/f", &ca, "contoso", b"page 2").await;
        let Err(e @ FenceError::Fenced { .. }) = &refused else {
            panic!("{refused:?}")
        };
        assert!(e.to_string().contains("its lease ended"), "{e}");

        // b takes the source over and resumes from the last committed checkpoint; a, resumed,
        // still cannot commit.
        let Claimed::Ours(cb) = fence::claim(&b, "/f", "contoso", "b", lb.id).await.unwrap() else {
            panic!("the claim ended with a's lease")
        };
        assert_eq!(
            fence::committed(&b, "/f", "contoso")
                .await
                .unwrap()
                .as_deref(),
            Some(&b"page 1"[..])
        );
        let refused = fence::fenced_put(&a, "/f", &ca, "contoso", b"page 2").await;
        let Err(e @ FenceError::Fenced { .. }) = &refused else {
            panic!("{refused:?}")
        };
        assert!(e.to_string().contains("now held by `b`"), "{e}");
        fence::fenced_put(&b, "/f", &cb, "contoso", b"page 2 by b")
            .await
            .unwrap();
        assert_eq!(
            fence::committed(&a, "/f", "contoso")
                .await
                .unwrap()
                .as_deref(),
            Some(&b"page 2 by b"[..])
        );
    });
}

#[test]
fn a_claim_given_up_cannot_commit_even_when_its_instance_claims_the_source_again() {
    let Some(server) = EtcdServer::start() else {
        return;
    };
    on_actix(async {
        let etcd = client_of(&[server.endpoint()]);
        let lease = etcd.grant(Duration::from_secs(60)).await.unwrap();
        let claim = move |etcd: Etcd| async move {
            match fence::claim(&etcd, "/r", "fabrikam", "a", lease.id)
                .await
                .unwrap()
            {
                Claimed::Ours(c) => c,
                held => panic!("{held:?}"),
            }
        };
        let first = claim(etcd.clone()).await;
        assert_eq!(
            claim(etcd.clone()).await,
            first,
            "claiming again keeps the claim"
        );
        assert!(fence::release(&etcd, "/r", &first).await.unwrap());
        let second = claim(etcd.clone()).await;
        assert_ne!(first.revision, second.revision);
        let refused = fence::fenced_put(&etcd, "/r", &first, "fabrikam", b"stale").await;
        assert!(
            matches!(&refused, Err(FenceError::Fenced { now, .. }) if now.contains("claimed again since")),
            "{refused:?}"
        );
        assert!(
            !fence::release(&etcd, "/r", &first).await.unwrap(),
            "the old claim is gone"
        );
        fence::fenced_put(&etcd, "/r", &second, "fabrikam", b"fresh")
            .await
            .unwrap();
        assert_eq!(
            fence::committed(&etcd, "/r", "fabrikam")
                .await
                .unwrap()
                .as_deref(),
            Some(&b"fresh"[..])
        );
    });
}

#[test]
fn a_backfill_request_is_asked_once_taken_by_the_claims_holder_only_and_asked_again_after_failing()
{
    use msgtrace::actors::cluster::backfill::{self, Asked, Outcome, Request, State};
    use msgtrace::actors::fetcher::Backfill;
    let Some(server) = EtcdServer::start() else {
        return;
    };
    on_actix(async {
        let etcd = client_of(&[server.endpoint()]);
        let at = |s| chrono::DateTime::from_timestamp(s, 0).unwrap();
        let range = Backfill {
            start: at(1_000),
            end: at(2_000),
        };
        let ask = Request::new("contoso", &range, "cli", at(5_000));
        let first = backfill::ask(&etcd, "/b", &ask).await.unwrap();
        let Asked::New(queued) = &first else {
            panic!("{first:?}")
        };
        assert_eq!(queued.request.state, State::Queued);
        // Asking again finds the same request: the range runs once.
        let again = backfill::ask(
            &etcd,
            "/b",
            &Request::new("contoso", &range, "cli-2", at(6_000)),
        )
        .await
        .unwrap();
        assert_eq!(again, Asked::Existing(queued.clone()));

        // Only the holder of the source's claim takes it, and only from what it read.
        let lease = etcd.grant(Duration::from_secs(60)).await.unwrap();
        let Claimed::Ours(old) = fence::claim(&etcd, "/b", "contoso", "a", lease.id)
            .await
            .unwrap()
        else {
            panic!("nobody held it")
        };
        assert!(fence::release(&etcd, "/b", &old).await.unwrap());
        let Claimed::Ours(claim) = fence::claim(&etcd, "/b", "contoso", "a", lease.id)
            .await
            .unwrap()
        else {
            panic!("nobody held it")
        };
        let taken = queued.request.taken("a", at(7_000));
        assert_eq!(
            backfill::update(&etcd, "/b", &old, queued, &taken)
                .await
                .unwrap(),
            None,
            "a claim given up takes nothing"
        );
        let running = backfill::update(&etcd, "/b", &claim, queued, &taken)
            .await
            .unwrap()
            .expect("the holder takes it");
        assert_eq!(running.request.describe(), "running on a");
        assert_eq!(
            backfill::update(&etcd, "/b", &claim, queued, &taken)
                .await
                .unwrap(),
            None,
            "a write over a revision read before is refused"
        );

        // It fails; asking again queues it again; a succeeded one is reported as it is.
        let failed = Outcome::Failed {
            error: "HTTP 403".into(),
            pages: 0,
            rows: 0,
        };
        let failed = backfill::update(
            &etcd,
            "/b",
            &claim,
            &running,
            &running.request.ended(&failed, at(8_000)),
        )
        .await
        .unwrap()
        .unwrap();
        let requeued = backfill::ask(
            &etcd,
            "/b",
            &Request::new("contoso", &range, "cli-3", at(9_000)),
        )
        .await
        .unwrap();
        let Asked::Requeued(requeued) = requeued else {
            panic!("{requeued:?}")
        };
        assert_eq!(
            (requeued.request.state, requeued.request.asked_by.as_str()),
            (State::Queued, "cli-3")
        );
        assert!(requeued.revision > failed.revision);

        // Every request is listed; one that is not a request is its error, in its place.
        etcd.put(b"/b/backfills/contoso/junk", b"not json", 0)
            .await
            .unwrap();
        let listed = backfill::list(&etcd, "/b").await.unwrap();
        assert_eq!(listed.len(), 2, "{listed:?}");
        assert_eq!(listed[0].as_ref().unwrap(), &requeued);
        let junk = listed[1].as_ref().unwrap_err().to_string();
        assert!(
            junk.contains("/b/backfills/contoso/junk") && junk.contains("remove the key"),
            "{junk}"
        );
        assert_eq!(
            backfill::get(&etcd, &requeued.key).await.unwrap(),
            Some(requeued.clone())
        );
    });
}

/// Reads one HTTP request (headers, then a `Content-Length` body).
fn read_request(s: &mut std::net::TcpStream) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n @ 1..) = s.read(&mut buf) {
        seen.extend_from_slice(&buf[..n]);
        let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&seen[..end]).to_ascii_lowercase();
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        if seen.len() >= end + 4 + length {
            return;
        }
    }
}

/// A server on 127.0.0.1 that answers each of its first `conns` connections with the raw bytes
/// `answer`, then holds the connection for `hold` before closing it. Returns its URL.
fn raw_server(answer: Vec<u8>, hold: Duration, conns: usize) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(conns) {
            let Ok(mut s) = stream else { continue };
            read_request(&mut s);
            let _ = s.write_all(&answer);
            std::thread::sleep(hold);
        }
    });
    format!("http://{addr}")
}

#[test]
fn a_gateway_that_answers_garbage_stalls_or_cuts_its_body_is_a_one_line_error() {
    let json = r#"{"header":{"revision":"1"}}"#;
    let cases: Vec<(&str, Vec<u8>, Duration, &str)> = vec![
        (
            "text",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello".to_vec(),
            Duration::ZERO,
            "not etcd's JSON",
        ),
        (
            "no header",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}".to_vec(),
            Duration::ZERO,
            "not etcd's JSON",
        ),
        (
            "a proxy's page",
            b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 14\r\n\r\n<html>\n</html>".to_vec(),
            Duration::ZERO,
            "HTTP 502",
        ),
        (
            "a length cut short",
            format!("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{json}").into_bytes(),
            Duration::ZERO,
            "unreachable",
        ),
        (
            // Valid JSON, but the last chunk never came.
            "chunks cut short",
            format!(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{json}\r\n",
                json.len()
            )
            .into_bytes(),
            Duration::ZERO,
            "unreachable",
        ),
        ("a stall", Vec::new(), Duration::from_secs(10), "timed out"),
    ];
    on_actix(async {
        for (what, answer, hold, says) in cases {
            let url = raw_server(answer, hold, 1);
            let etcd = Etcd::new(vec![Url::parse(&url).unwrap()], Duration::from_millis(500));
            let e = etcd.get_prefix(b"/x").await.expect_err(what).to_string();
            assert_eq!(e.lines().count(), 1, "{what}: {e}");
            assert!(e.contains(&url) && e.contains(says), "{what}: {e}");
        }
    });
}

#[test]
fn a_client_moves_past_a_bad_endpoint_to_a_good_one() {
    let Some(server) = EtcdServer::start() else {
        return;
    };
    let garbage = raw_server(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}".to_vec(),
        Duration::ZERO,
        1,
    );
    let dead = format!("http://127.0.0.1:{}", free_port());
    on_actix(async {
        let etcd = client_of(&[dead, garbage, server.endpoint()]);
        etcd.put(b"/e/k", b"v", 0).await.unwrap();
        // The endpoint that answered is asked first from then on (the others are gone now).
        assert_eq!(etcd.get(b"/e/k").await.unwrap().unwrap().value, b"v");
    });
}

/// An agent running on the current actix System: what it publishes, its stop switch, what its
/// fetchers are busy with, and its task.
struct Running {
    owned: watch::Receiver<Ownership>,
    stop: watch::Sender<bool>,
    busy: Busy,
    task: actix_rt::task::JoinHandle<()>,
}

fn start_agent(server: &EtcdServer, name: &str, sources: &[String]) -> Running {
    let cfg = AgentConfig {
        etcd: client_of(&[server.endpoint()]),
        prefix: "/agents".into(),
        name: name.into(),
        lease: Duration::from_secs(2),
        sources: sources.to_vec(),
        keys: Default::default(),
        updates: None,
    };
    let (out, owned) = watch::channel(Ownership::default());
    let (stop, stopped) = watch::channel(false);
    let busy = Busy::default();
    let task = actix_rt::spawn(agent::run(cfg, busy.clone(), out, stopped));
    Running {
        owned,
        stop,
        busy,
        task,
    }
}

/// Whether `agents` are live, see each other alone, and hold exactly the rendezvous shares of
/// `sources` among themselves, with nothing leaving.
fn settled(agents: &[&Running], names: &[&str], sources: &[String]) -> bool {
    let members: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    agents.iter().zip(names).all(|(a, name)| {
        let o = a.owned.borrow();
        let share = ownership::share(sources.iter().map(String::as_str), &members, name);
        o.live
            && o.members == members
            && o.leaving.is_empty()
            && o.claims
                .keys()
                .map(String::as_str)
                .eq(share.iter().copied())
    })
}

/// Waits until [`settled`] holds.
async fn settle(agents: &[&Running], names: &[&str], sources: &[String]) -> bool {
    until(|| {
        let done = settled(agents, names, sources);
        async move { done }
    })
    .await
}

#[test]
fn agents_share_the_sources_and_take_them_over_when_one_stops_dies_or_joins() {
    let Some(server) = EtcdServer::start() else {
        return;
    };
    let sources: Vec<String> = (0..6).map(|i| format!("tenant-{i}")).collect();
    on_actix(async {
        let a = start_agent(&server, "a", &sources);
        let b = start_agent(&server, "b", &sources);
        let c = start_agent(&server, "c", &sources);
        assert!(
            settle(&[&a, &b, &c], &["a", "b", "c"], &sources).await,
            "three shares"
        );

        // b stops cleanly (its lease revoked): a and c share everything.
        b.stop.send_replace(true);
        b.task.await.unwrap();
        assert!(
            settle(&[&a, &c], &["a", "c"], &sources).await,
            "b's sources taken over"
        );

        // c dies (its task dropped, its lease left to expire): a holds everything.
        c.task.abort();
        assert!(
            settle(&[&a], &["a"], &sources).await,
            "c's sources taken over after its lease"
        );

        // d joins while a's fetchers are all busy: a keeps d's share (leaving) until they are
        // idle, and d claims it only then.
        a.busy.borrow_mut().extend(sources.iter().cloned());
        let d = start_agent(&server, "d", &sources);
        let (owned, d_owned) = (&a.owned, &d.owned);
        let waiting = until(move || {
            let leaving = !owned.borrow().leaving.is_empty();
            let waits = d_owned.borrow().live && d_owned.borrow().claims.is_empty();
            async move { leaving && waits }
        });
        assert!(
            waiting.await,
            "a gives nothing up while its fetchers are busy"
        );
        assert_eq!(a.owned.borrow().claims.len(), 6);
        a.busy.borrow_mut().clear();
        assert!(
            settle(&[&a, &d], &["a", "d"], &sources).await,
            "d's share handed over once idle"
        );
        d.stop.send_replace(true);
        a.stop.send_replace(true);
    });
}

#[test]
fn two_engines_share_six_tenants_and_deliver_every_row_exactly_once() {
    let Some(server) = EtcdServer::start() else {
        return;
    };
    // Six tenants on one simulated server (they share its mail flow), each a source of its own
    // hour: each row belongs to one source only.
    let tenants: Vec<String> = (0..6).map(|i| format!("tenant{i}")).collect();
    let sim = sim(600, |c| c.other_tenant_ids = tenants.clone());
    let dir = tempfile::tempdir().unwrap();
    let hours: Vec<(String, String, String)> = (0..6)
        .map(|i| (format!("tenant{i}"), hours_ago(7 - i), hours_ago(6 - i)))
        .collect();
    let sources: Vec<(&str, &str, &str)> = hours
        .iter()
        .map(|(id, s, e)| (id.as_str(), s.as_str(), e.as_str()))
        .collect();
    let configs: Vec<Config> = ["a", "b"]
        .iter()
        .map(|name| {
            // Each in its own directory: two engines starting at once in one parent probe it
            // with the same file name.
            let home = dir.path().join(name);
            std::fs::create_dir(&home).unwrap();
            let (state, out) = (home.join("state"), home.join("out.ndjson"));
            let cluster = format!(
                "[cluster]\netcd = [{:?}]\nprefix = \"/two\"\nname = \"{name}\"\nlease_secs = 2\n",
                server.endpoint()
            );
            let toml = graph_sources_toml(&sim, &state, &out, &sources, "");
            // Each source signs in to its own tenant: the sources have six budgets, shared out.
            let mut parts = toml.split("tenant_id = \"sim-tenant\"");
            let mut toml = parts.next().unwrap().to_owned();
            for (tenant, rest) in tenants.iter().zip(parts) {
                toml += &format!("tenant_id = {tenant:?}{rest}");
            }
            parse(&(toml + &cluster))
        })
        .collect();
    let runs: Vec<_> = configs
        .into_iter()
        .map(|c| std::thread::spawn(move || run_once(&c, opts())))
        .collect();
    let reports: Vec<RunReport> = runs.into_iter().map(|r| r.join().unwrap()).collect();
    for (name, r) in ["a", "b"].iter().zip(&reports) {
        let ids: Vec<&str> = r.jobs.iter().map(|(s, _)| s.as_str()).collect();
        eprintln!("engine {name} collected {ids:?}");
    }
    let mut ran: Vec<&str> = reports
        .iter()
        .flat_map(|r| r.jobs.iter().map(|(s, _)| s.as_str()))
        .collect();
    ran.sort_unstable();
    let all: Vec<&str> = hours.iter().map(|h| h.0.as_str()).collect();
    assert_eq!(ran, all, "each tenant collected by one engine");
    for r in &reports {
        assert!(r.all_succeeded(), "{r:?}");
    }
    let mut got = identities(&dir.path().join("a/out.ndjson"), Api::Graph);
    for (k, n) in identities(&dir.path().join("b/out.ndjson"), Api::Graph) {
        *got.entry(k).or_insert(0) += n;
    }
    let at = |t: &str| chrono::DateTime::from_timestamp(t.parse().unwrap(), 0).unwrap();
    let expected = sim
        .model()
        .expected(at(&hours[0].1), at(&hours[5].2), chrono::Utc::now());
    assert!(!expected.is_empty());
    assert_eq!(
        compare(&got, &expected),
        (0, 0, 0),
        "missing, extra, duplicates"
    );
    // The checkpoints of record are in etcd, each at its tenant's window's end; both engines
    // left the cluster cleanly.
    on_actix(async {
        let etcd = client_of(&[server.endpoint()]);
        for (id, _, end) in &hours {
            let cp = fence::committed(&etcd, "/two", id).await.unwrap();
            let cp = msgtrace::storage::record::decode_checkpoint(&cp.expect(id)).unwrap();
            let cursor = cp.cursor.map(|c| c.timestamp().to_string());
            assert_eq!(cursor.as_deref(), Some(end.as_str()), "{id}");
        }
        assert!(membership::members(&etcd, "/two").await.unwrap().is_empty());
    });
}

#[test]
fn an_instance_paused_past_its_lease_commits_nothing_after_it_and_no_row_is_lost() {
    let Some(server) = EtcdServer::start() else {
        return;
    };
    let sim = sim(600, |c| c.page_latency_ms = 150);
    let dir = tempfile::tempdir().unwrap();
    let (start, end) = (hours_ago(4), hours_ago(1));
    let config_of = |name: &str| {
        let home = dir.path().join(name);
        std::fs::create_dir(&home).unwrap();
        let toml = graph_sources_toml(
            &sim,
            &home.join("state"),
            &home.join("out.ndjson"),
            &[("src", &start, &end)],
            "",
        ) + &format!(
            "[cluster]\netcd = [{:?}]\nprefix = \"/stop\"\nname = \"{name}\"\nlease_secs = 2\n",
            server.endpoint()
        );
        let path = home.join("msgtrace.toml");
        std::fs::write(&path, &toml).unwrap();
        (path, toml)
    };
    let (a_path, _) = config_of("a");
    let (_, b_toml) = config_of("b");
    let a_log = std::fs::File::create(dir.path().join("a.log")).unwrap();
    let mut a = std::process::Command::new(env!("CARGO_BIN_EXE_msgtrace"))
        .args(["run", "--once", "-c"])
        .arg(&a_path)
        .stdout(std::process::Stdio::null())
        .stderr(a_log)
        .spawn()
        .unwrap();
    let pid = a.id() as libc::pid_t;
    let record = |etcd: Etcd| async move {
        let cp = fence::committed(&etcd, "/stop", "src").await.unwrap()?;
        Some(msgtrace::storage::record::decode_checkpoint(&cp).unwrap())
    };
    on_actix(async {
        let etcd = client_of(&[server.endpoint()]);
        // a has committed a few pages: it is paused past its lease.
        let e = etcd.clone();
        let going = until(move || {
            let e = e.clone();
            async move { record(e).await.is_some_and(|cp| cp.pages_total >= 3) }
        });
        assert!(going.await, "a collects");
        assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
        let e = etcd.clone();
        let gone = until(move || {
            let e = e.clone();
            async move { membership::members(&e, "/stop").await.unwrap().is_empty() }
        });
        assert!(gone.await, "a's lease ends while it is paused");
    });
    // b takes the source over from a's last committed checkpoint and finishes it.
    let report = run_once(&parse(&b_toml), opts());
    assert!(
        report.all_succeeded() && report.jobs.len() == 1,
        "{report:?}"
    );
    let after_b = on_actix(record(client_of(&[server.endpoint()]))).unwrap();
    assert_eq!(
        after_b.cursor.map(|c| c.timestamp().to_string()),
        Some(end.clone())
    );
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    let status = a.wait().unwrap();
    let log = std::fs::read_to_string(dir.path().join("a.log")).unwrap();
    assert!(!status.success(), "a's job cannot commit: {log}");
    assert!(log.contains("not committed"), "{log}");
    let after_a = on_actix(record(client_of(&[server.endpoint()]))).unwrap();
    assert_eq!(
        after_a, after_b,
        "a committed nothing after its lease ended"
    );

    // No row lost; rows twice only from the pages a had fetched when it was paused.
    let mut got = identities(&dir.path().join("a/out.ndjson"), Api::Graph);
    for (k, n) in identities(&dir.path().join("b/out.ndjson"), Api::Graph) {
        *got.entry(k).or_insert(0) += n;
    }
    let at = |t: &str| chrono::DateTime::from_timestamp(t.parse().unwrap(), 0).unwrap();
    let expected = sim
        .model()
        .expected(at(&start), at(&end), chrono::Utc::now());
    let (missing, extra, dups) = compare(&got, &expected);
    assert_eq!((missing, extra), (0, 0));
    assert!(
        dups <= 5 * 100,
        "{dups} rows twice: more than the pages in flight"
    );
}

/// `EngineHandle::run_once` right after `start`: it waits for the agent's first round, so the
/// instance's share is known and collected (before, the first run_once could come before the
/// agent's round: no source owned, nothing collected).
#[test]
fn an_embedded_run_once_waits_for_the_agents_first_round() {
    let Some(server) = EtcdServer::start() else {
        return;
    };
    let sim = sim(600, |_| {});
    let dir = tempfile::tempdir().unwrap();
    let (state, out) = (dir.path().join("state"), dir.path().join("out.ndjson"));
    let cluster = format!(
        "[cluster]\netcd = [{:?}]\nprefix = \"/embedded\"\nname = \"e\"\nlease_secs = 2\n",
        server.endpoint()
    );
    let sources = [("src", hours_ago(3), hours_ago(2))];
    let sources: Vec<(&str, &str, &str)> = sources
        .iter()
        .map(|(id, s, e)| (*id, s.as_str(), e.as_str()))
        .collect();
    let config = parse(&(graph_sources_toml(&sim, &state, &out, &sources, "") + &cluster));
    let report = run_embedded(msgtrace::embed::EngineBuilder::new(config));
    assert_eq!(report.jobs.len(), 1, "{report:?}");
    assert!(report.all_succeeded(), "{report:?}");
    assert!(report.jobs[0].1.rows > 0, "{report:?}");
}
