//! The control API: read-only JSON about a running engine, and its status page.
//!
//! It is served on the state directory's socket `control.sock` (always, on Unix: only the
//! state directory's owner can reach it) and, when `control_listen` is set, on that TCP
//! address too (the status page in a browser). `msgtrace jobs`, `msgtrace secrets list` and
//! `msgtrace-dump` ask it through the socket when the engine holds the state directory
//! ([`client`]).
//!
//! | path | answers |
//! |---|---|
//! | `/` | the status page ([`page`]): sources, recent jobs, quota use; refreshes itself |
//! | `/api/sources` | each source's state, cursor, lag, next due time, last job, last error, quota ([`SourceView`]); with `[cluster]`, its `owner` |
//! | `/api/jobs` | the job records, exactly what `msgtrace jobs --json` prints (`?source=`, `?state=`, `?last=` filter as its flags do); with `[cluster]`, each with its source's `owner` |
//! | `/api/secrets` | the secret store's names and kinds, never a value |
//! | `/api/dump` | exactly what `msgtrace-dump --json` prints, secrets redacted (`?tree=NAME`; `?format=text`: its text view) |
//! | `/api/details` | each source's details backlog: summary rows whose details are still to be fetched ([`DetailsBacklog`]) |
//! | `/api/cluster` | `[cluster]`: this instance's name, etcd `up` or `unreachable`, the members, the sources it holds and every source's owner ([`crate::cluster::ClusterView`]); `null` without `[cluster]` |

pub mod client;
pub mod jobs;
pub mod page;

use crate::config::Config;
use crate::listener::{Routes, Server};
use crate::secrets::SecretStore;
use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use msgtrace_actors::auth::AuthToken;
use msgtrace_actors::cluster::record::ClusterHandle;
use msgtrace_actors::supervisor::{GetStatus, SourceStatus, Supervisor};
use msgtrace_storage::{dump, JobRecord, JobState, Store};
use serde::{Deserialize, Serialize};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// The control socket of a state directory.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("control.sock")
}

/// How many jobs the status page shows.
pub const PAGE_JOBS: usize = 20;

/// What a source is doing, as `/api/sources` and the status page show it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SourceView {
    /// The source id.
    pub source: String,
    /// `running` (a job runs), `failing` (its last finished job did not succeed, as `/health`
    /// says) or `idle`.
    pub state: String,
    /// End of the last window collected completely (the checkpoint's cursor).
    pub cursor: Option<DateTime<Utc>>,
    /// Now minus the cursor, in seconds.
    pub lag_secs: Option<i64>,
    /// When the schedule fires next (`msgtrace run`; none for `--once` and backfills).
    pub next_due: Option<DateTime<Utc>>,
    /// The newest job of the source (the state directory keeps them for `ttl`).
    pub last_job: Option<JobBrief>,
    /// The error of its last finished job when that did not succeed.
    pub last_error: Option<String>,
    /// Fetcher restarts after a crash.
    pub restarts: u32,
    /// The tenant's request budget and what is left of it.
    pub quota: Option<QuotaView>,
    /// Summary rows whose details are still to be fetched (`details`).
    #[serde(default)]
    pub details_backlog: usize,
    /// `[cluster]`: the member holding the source's claim (absent without `[cluster]`, and
    /// while nobody holds it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// A source's details backlog, as `/api/details` lists it and `msgtrace jobs` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DetailsBacklog {
    /// The source id.
    pub source: String,
    /// Summary rows whose details are still to be fetched.
    pub entries: usize,
}

impl DetailsBacklog {
    /// Every source's backlog that is not empty, by source id.
    pub fn of(store: &Store) -> Result<Vec<DetailsBacklog>, msgtrace_storage::StorageError> {
        Ok(store
            .details_backlogs()?
            .into_iter()
            .map(|(source, entries)| DetailsBacklog { source, entries })
            .collect())
    }
}

/// A job in a line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobBrief {
    /// The job id.
    pub id: String,
    /// Its state.
    pub state: JobState,
    /// Pages delivered.
    pub pages: u64,
    /// Rows delivered.
    pub rows: u64,
}

/// A request budget and its use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaView {
    /// Requests allowed per span.
    pub requests: u32,
    /// The span, seconds.
    pub per_secs: u64,
    /// Requests left in the current span.
    pub remaining: u32,
}

/// The sources' views from the supervisor's status and the state directory's records.
pub fn source_views(
    status: &[SourceStatus],
    jobs: &[JobRecord],
    store: &Store,
    now: DateTime<Utc>,
) -> Vec<SourceView> {
    let failing = crate::metrics::health_of(status, None).failing;
    status
        .iter()
        .map(|s| {
            let cursor = store
                .checkpoint(&s.source)
                .ok()
                .flatten()
                .and_then(|c| c.cursor);
            let mine = jobs.iter().filter(|j| j.source == s.source);
            let newest = mine
                .clone()
                .max_by(|a, b| a.started_at.cmp(&b.started_at).then(a.id.cmp(&b.id)));
            let last_finished = mine
                .filter(|j| j.state.is_finished())
                .max_by_key(|j| j.finished_at);
            let last_error = match &s.last {
                Some(last) => last.error.clone(),
                None => last_finished
                    .filter(|j| j.state != JobState::Succeeded)
                    .and_then(|j| j.errors.last().cloned()),
            };
            let state = if s.running {
                "running"
            } else if failing.contains(&s.source) {
                "failing"
            } else {
                "idle"
            };
            SourceView {
                source: s.source.clone(),
                state: state.into(),
                cursor,
                lag_secs: cursor.map(|c| (now - c).num_seconds()),
                next_due: s.next_due,
                last_job: newest.map(|j| JobBrief {
                    id: j.id.clone(),
                    state: j.state,
                    pages: j.pages,
                    rows: j.rows,
                }),
                last_error,
                restarts: s.restarts,
                details_backlog: store.details_backlog(&s.source),
                owner: s.owner.clone(),
                quota: s.quota.map(|q| QuotaView {
                    requests: q.spec.requests,
                    per_secs: q.spec.per.as_secs(),
                    remaining: q.remaining,
                }),
            }
        })
        .collect()
}

/// The control listeners, bound before any actor starts (a taken `control_listen` port stops
/// the start with one line, as `metrics_listen` does).
pub struct Bound {
    tcp: Option<TcpListener>,
    /// `control_listen` equals `metrics_listen`: the control routes go on the metrics listener.
    shared: bool,
    #[cfg(unix)]
    socket: Option<(std::os::unix::net::UnixListener, PathBuf)>,
}

/// Binds `control_listen` (unless it is `metrics_listen`'s address) and the state directory's
/// control socket. Call with the state directory open: its lock makes any socket file there a
/// leftover of a dead engine, which is replaced. A socket that cannot be made (a path longer
/// than the 107 bytes Unix allows) is a warning: the engine runs, the tools cannot ask it.
pub fn bind(config: &Config) -> Result<Bound, crate::listener::ListenError> {
    let shared = config.control_listen.is_some() && config.control_listen == config.metrics_listen;
    let tcp = match config.control_listen {
        Some(addr) if !shared => Some(crate::listener::bind("control_listen", addr)?),
        _ => None,
    };
    Ok(Bound {
        tcp,
        shared,
        #[cfg(unix)]
        socket: bind_socket(&socket_path(&config.state_dir)),
    })
}

#[cfg(unix)]
fn bind_socket(path: &Path) -> Option<(std::os::unix::net::UnixListener, PathBuf)> {
    use std::os::unix::fs::PermissionsExt as _;
    let _ = std::fs::remove_file(path);
    let bound = std::os::unix::net::UnixListener::bind(path).and_then(|l| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        l.set_nonblocking(true)?;
        Ok(l)
    });
    match bound {
        Ok(l) => Some((l, path.to_path_buf())),
        Err(e) => {
            warn!(
                socket = %path.display(),
                error = %e,
                "cannot create the control socket: `msgtrace jobs` and `msgtrace-dump` cannot ask this engine while it runs (use a shorter state_dir path)"
            );
            None
        }
    }
}

/// The running listeners: metrics, control, or both on one.
pub struct Servers {
    store: crate::listener::StoreSlot,
    metrics: Option<Server>,
    control: Option<Server>,
    #[cfg(unix)]
    socket: Option<PathBuf>,
}

impl Servers {
    /// Stops serving and removes the control socket.
    pub async fn stop(self) {
        self.store.release();
        if let Some(s) = self.control {
            s.stop().await;
        }
        if let Some(s) = self.metrics {
            s.stop().await;
        }
        #[cfg(unix)]
        if let Some(path) = self.socket {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Serves the metrics endpoint (on `metrics`, from [`crate::metrics::bind`]) and the control
/// API (on what [`bind`] bound) inside the current actix System.
pub fn serve(
    bound: Bound,
    metrics: Option<TcpListener>,
    supervisor: actix::Addr<Supervisor>,
    auth: actix::Addr<AuthToken>,
    store: Store,
    cluster: Option<ClusterHandle>,
) -> std::io::Result<Servers> {
    let store = crate::listener::StoreSlot::new(store);
    let control = routes(supervisor.clone(), store.clone(), cluster.clone());
    let metrics = match metrics {
        Some(l) => {
            let mut routes = vec![crate::metrics::routes(
                supervisor,
                auth,
                store.clone(),
                cluster,
            )];
            if bound.shared {
                routes.push(control.clone());
            }
            let server = crate::listener::serve(
                vec![l],
                #[cfg(unix)]
                None,
                routes,
            )?;
            let also = if bound.shared {
                ", the control API and the status page"
            } else {
                ""
            };
            info!(listen = %server.addr(), "serving /metrics and /health{also}");
            Some(server)
        }
        None => None,
    };
    #[cfg(unix)]
    let (socket, socket_path) = match bound.socket {
        Some((l, p)) => (Some(l), Some(p)),
        None => (None, None),
    };
    #[cfg(unix)]
    let any_socket = socket.is_some();
    #[cfg(not(unix))]
    let any_socket = false;
    let control = if bound.tcp.is_some() || any_socket {
        let server = crate::listener::serve(
            bound.tcp.into_iter().collect(),
            #[cfg(unix)]
            socket,
            vec![control],
        )?;
        if let Some(addr) = server.addrs().first() {
            info!(listen = %addr, "serving the control API and the status page (http://{addr}/)");
        }
        Some(server)
    } else {
        None
    };
    Ok(Servers {
        store,
        metrics,
        control,
        #[cfg(unix)]
        socket: socket_path,
    })
}

struct Engine {
    supervisor: actix::Addr<Supervisor>,
    store: crate::listener::StoreSlot,
    cluster: Option<ClusterHandle>,
}

/// The control API's routes.
fn routes(
    supervisor: actix::Addr<Supervisor>,
    store: crate::listener::StoreSlot,
    cluster: Option<ClusterHandle>,
) -> Routes {
    let engine = web::Data::new(Engine {
        supervisor,
        store,
        cluster,
    });
    let local = |ctx: &actix_web::guard::GuardContext<'_>| {
        ctx.head()
            .headers()
            .get(actix_web::http::header::HOST)
            .is_none_or(|h| h.to_str().is_ok_and(host_allowed))
    };
    Arc::new(move |cfg: &mut web::ServiceConfig| {
        cfg.app_data(engine.clone())
            .service(
                web::scope("")
                    .guard(actix_web::guard::fn_guard(local))
                    .route("/", web::get().to(status_page))
                    .route("/api/sources", web::get().to(sources))
                    .route("/api/jobs", web::get().to(jobs_json))
                    .route("/api/secrets", web::get().to(secrets))
                    .route("/api/dump", web::get().to(dump_text))
                    .route("/api/details", web::get().to(details_backlogs))
                    .route("/api/cluster", web::get().to(cluster_view)),
            )
            .service(
                web::scope("")
                    .guard(actix_web::guard::fn_guard(move |ctx| !local(ctx)))
                    .default_service(web::to(misdirected)),
            );
    })
}

/// Whether a request's `Host` may see the control API: an IP address or `localhost`, with or
/// without a port. A browser that a web page tricks into asking 127.0.0.1 under the page's
/// own name (DNS rebinding) sends that name, and is refused.
pub fn host_allowed(host: &str) -> bool {
    let host = host.trim();
    if let Some(v6) = host.strip_prefix('[') {
        return v6
            .split_once(']')
            .is_some_and(|(ip, _)| ip.parse::<std::net::Ipv6Addr>().is_ok());
    }
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    name.parse::<std::net::Ipv4Addr>().is_ok() || name.eq_ignore_ascii_case("localhost")
}

async fn misdirected() -> HttpResponse {
    HttpResponse::MisdirectedRequest().body(
        "the control API answers only requests addressed to an IP address or localhost \
         (Host header); use http://127.0.0.1:PORT/\n",
    )
}

/// How long a request waits for the engine's actors.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);

fn failed(what: &str, e: impl std::fmt::Display) -> HttpResponse {
    HttpResponse::InternalServerError()
        .content_type("text/plain; charset=utf-8")
        .body(format!("{what}: {e}\n"))
}

/// Runs a read of the state directory off the server's thread.
async fn read<T: Send + 'static>(
    engine: &web::Data<Engine>,
    f: impl FnOnce(&Store) -> Result<T, Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
) -> Result<T, HttpResponse> {
    let Some(store) = engine.store.get() else {
        return Err(HttpResponse::ServiceUnavailable()
            .content_type("text/plain; charset=utf-8")
            .body("the engine is stopping\n"));
    };
    match web::block(move || f(&store)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(failed("reading the state directory", e)),
        Err(e) => Err(failed("reading the state directory", e)),
    }
}

async fn snapshot(
    engine: &web::Data<Engine>,
) -> Result<(Vec<SourceView>, Vec<JobRecord>), HttpResponse> {
    let status = match tokio::time::timeout(ASK_TIMEOUT, engine.supervisor.send(GetStatus)).await {
        Ok(Ok(s)) => s,
        _ => return Err(failed("the engine does not answer", "retry in a moment")),
    };
    read(engine, move |store| {
        let jobs = store.jobs(None)?;
        let views = source_views(&status, &jobs, store, Utc::now());
        Ok((views, jobs))
    })
    .await
}

async fn status_page(engine: web::Data<Engine>) -> HttpResponse {
    match snapshot(&engine).await {
        Ok((sources, jobs)) => HttpResponse::Ok()
            .content_type("text/html; charset=utf-8")
            .insert_header((
                "Content-Security-Policy",
                "default-src 'none'; style-src 'unsafe-inline'",
            ))
            .insert_header(("X-Content-Type-Options", "nosniff"))
            .body(page::render(&sources, &jobs, Utc::now())),
        Err(r) => r,
    }
}

async fn sources(engine: web::Data<Engine>) -> HttpResponse {
    match snapshot(&engine).await {
        Ok((sources, _)) => HttpResponse::Ok().json(sources),
        Err(r) => r,
    }
}

async fn jobs_json(engine: web::Data<Engine>, query: web::Query<jobs::JobFilter>) -> HttpResponse {
    let filter = query.into_inner();
    let owners = engine
        .cluster
        .as_ref()
        .map(|c| crate::cluster::ClusterView::of(c).owners);
    match read(&engine, move |store| {
        let jobs = filter.apply(store.jobs(None)?);
        Ok(jobs::to_json_with_owners(&jobs, owners.as_ref()))
    })
    .await
    {
        Ok(body) => HttpResponse::Ok()
            .content_type("application/json")
            .body(body),
        Err(r) => r,
    }
}

/// `[cluster]`: this instance's view of the cluster ([`crate::cluster::ClusterView`]); `null`
/// without `[cluster]`.
async fn cluster_view(engine: web::Data<Engine>) -> HttpResponse {
    let view = engine.cluster.as_ref().map(crate::cluster::ClusterView::of);
    HttpResponse::Ok().json(view)
}

async fn details_backlogs(engine: web::Data<Engine>) -> HttpResponse {
    match read(&engine, |store| Ok(DetailsBacklog::of(store)?)).await {
        Ok(list) => HttpResponse::Ok().json(list),
        Err(r) => r,
    }
}

/// A secret's name and kind, as `/api/secrets` lists them.
#[derive(Debug, Serialize, Deserialize)]
pub struct SecretEntry {
    /// The secret's name.
    pub name: String,
    /// `text` or `credentials`.
    pub kind: crate::secrets::SecretKind,
}

async fn secrets(engine: web::Data<Engine>) -> HttpResponse {
    let listed = read(&engine, |store| {
        let list = SecretStore::new(store.clone()).list()?;
        Ok(list
            .into_iter()
            .map(|(name, kind)| SecretEntry { name, kind })
            .collect::<Vec<_>>())
    })
    .await;
    match listed {
        Ok(list) => HttpResponse::Ok().json(list),
        Err(r) => r,
    }
}

#[derive(Deserialize)]
struct DumpQuery {
    tree: Option<String>,
    format: Option<String>,
}

async fn dump_text(engine: web::Data<Engine>, query: web::Query<DumpQuery>) -> HttpResponse {
    let DumpQuery { tree, format } = query.into_inner();
    let json = match format.as_deref() {
        None | Some("json") => true,
        Some("text") => false,
        Some(other) => {
            return HttpResponse::BadRequest().body(format!("format={other}: use json or text\n"))
        }
    };
    let only = tree.clone();
    match read(&engine, move |store| {
        Ok(dump::print(store, only.as_deref(), json)?)
    })
    .await
    {
        Ok(Some(text)) => HttpResponse::Ok()
            .content_type(if json {
                "application/json"
            } else {
                "text/plain; charset=utf-8"
            })
            .body(text),
        Ok(None) => {
            HttpResponse::NotFound().body(format!("no tree named `{}`\n", tree.unwrap_or_default()))
        }
        Err(r) => r,
    }
}

#[cfg(test)]
mod tests {
    use super::host_allowed;

    #[test]
    fn only_ip_addresses_and_localhost_may_ask() {
        for ok in [
            "127.0.0.1:9465",
            "127.0.0.1",
            "192.0.2.7:80",
            "[::1]:9465",
            "[::1]",
            "localhost",
            "LOCALHOST:9465",
        ] {
            assert!(host_allowed(ok), "{ok}");
        }
        for refused in [
            "evil.example:9465",
            "evil.example",
            "localhost.evil.example:9465",
            "127.0.0.1.nip.io:9465",
            "[evil]:1",
            "",
        ] {
            assert!(!host_allowed(refused), "{refused}");
        }
    }
}
