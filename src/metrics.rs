//! The `metrics_listen` endpoint (actix-web): Prometheus `/metrics` and `/health`.
//!
//! `/metrics` renders what the engine recorded through the `metrics` facade (the counters of
//! [`msgtrace_actors::telemetry`]: rows, pages, retries, 429s, jobs, last page and last success per
//! source) plus values read when scraped:
//!
//! | name | type | labels | meaning |
//! |---|---|---|---|
//! | `msgtrace_token_requests_total` | counter | | tokens obtained from Entra ID (first ones and refreshes) |
//! | `msgtrace_token_failures_total` | counter | | failed token requests |
//! | `msgtrace_source_running` | gauge | `source` | 1 while a job of the source runs |
//! | `msgtrace_fetcher_restarts_total` | counter | `source` | fetchers restarted after a crash |
//! | `msgtrace_lag_seconds` | gauge | `source` | how far the source's checkpoint is behind now |
//!
//! `/health` answers 200 with each source's state as JSON while the engine answers, 503 otherwise.
//!
//! The Prometheus recorder is installed process-wide on first use; if the host application
//! installed a recorder of its own, msgtrace's counters go there and `/metrics` says so.

use actix_web::{web, App, HttpResponse, HttpServer};
use metrics::{counter, gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use msgtrace_actors::auth::{AuthToken, GetAuthStats};
use msgtrace_actors::supervisor::{GetStatus, Supervisor};
use msgtrace_storage::Store;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;
use tracing::{info, warn};

/// The process-wide Prometheus recorder, `None` if another recorder was installed first.
fn recorder() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            match metrics::set_global_recorder(recorder) {
                Ok(()) => Some(handle),
                Err(_) => {
                    warn!("a metrics recorder is already installed (by the host application): /metrics stays empty, the counters go to that recorder");
                    None
                }
            }
        })
        .clone()
}

/// Installs the Prometheus recorder now (so that nothing recorded before the first scrape is
/// lost). Called by [`serve`]; harmless to call more than once.
pub fn install_recorder() {
    let _ = recorder();
}

struct Engine {
    supervisor: actix::Addr<Supervisor>,
    auth: actix::Addr<AuthToken>,
    store: Store,
}

/// A running metrics endpoint.
pub struct MetricsServer {
    addr: SocketAddr,
    handle: actix_web::dev::ServerHandle,
}

impl MetricsServer {
    /// The address it listens on (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving.
    pub async fn stop(self) {
        self.handle.stop(true).await;
    }
}

/// Serves `/metrics` and `/health` on `addr`, inside the current actix System.
pub fn serve(
    addr: SocketAddr,
    supervisor: actix::Addr<Supervisor>,
    auth: actix::Addr<AuthToken>,
    store: Store,
) -> std::io::Result<MetricsServer> {
    install_recorder();
    let engine = web::Data::new(Engine {
        supervisor,
        auth,
        store,
    });
    let server = HttpServer::new(move || {
        App::new()
            .app_data(engine.clone())
            .route("/metrics", web::get().to(metrics_page))
            .route("/health", web::get().to(health))
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(1)
    .bind(addr)?;
    let addr = server.addrs()[0];
    let server = server.run();
    let handle = server.handle();
    actix_rt::spawn(server);
    info!(listen = %addr, "serving /metrics and /health");
    Ok(MetricsServer { addr, handle })
}

/// How long a scrape waits for the engine's actors.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);

async fn metrics_page(engine: web::Data<Engine>) -> HttpResponse {
    let Some(handle) = recorder() else {
        return HttpResponse::ServiceUnavailable()
            .body("# another metrics recorder is installed in this process\n");
    };
    if let Ok(Ok(stats)) = tokio::time::timeout(ASK_TIMEOUT, engine.auth.send(GetAuthStats)).await {
        counter!("msgtrace_token_requests_total").absolute(stats.tokens_fetched);
        counter!("msgtrace_token_failures_total").absolute(stats.failures);
    }
    if let Ok(Ok(sources)) =
        tokio::time::timeout(ASK_TIMEOUT, engine.supervisor.send(GetStatus)).await
    {
        let now = chrono::Utc::now();
        for s in sources {
            let running = if s.running { 1.0 } else { 0.0 };
            gauge!("msgtrace_source_running", "source" => s.source.clone()).set(running);
            counter!("msgtrace_fetcher_restarts_total", "source" => s.source.clone())
                .absolute(u64::from(s.restarts));
            if let Ok(Some(cp)) = engine.store.checkpoint(&s.source) {
                if let Some(cursor) = cp.cursor {
                    let lag = (now - cursor).num_milliseconds() as f64 / 1e3;
                    gauge!("msgtrace_lag_seconds", "source" => s.source.clone()).set(lag);
                }
            }
        }
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(handle.render())
}

async fn health(engine: web::Data<Engine>) -> HttpResponse {
    match tokio::time::timeout(ASK_TIMEOUT, engine.supervisor.send(GetStatus)).await {
        Ok(Ok(sources)) => {
            let sources: Vec<_> = sources
                .iter()
                .map(|s| {
                    json!({
                        "source": s.source,
                        "running": s.running,
                        "last_job": s.last.as_ref().map(|j| format!("{:?}", j.state).to_lowercase()),
                        "last_error": s.last.as_ref().and_then(|j| j.error.clone()),
                        "restarts": s.restarts,
                    })
                })
                .collect();
            HttpResponse::Ok().json(json!({"status": "ok", "sources": sources}))
        }
        _ => HttpResponse::ServiceUnavailable()
            .json(json!({"status": "unavailable", "reason": "the engine does not answer"})),
    }
}
