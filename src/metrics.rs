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
//! | `msgtrace_build_info` | gauge | `version` | always 1; the running version in its label |
//!
//! Every metric has a `# HELP` line ([`describe`]), and the per-source counters exist at zero
//! from the start ([`msgtrace_actors::telemetry::register_source`]).
//!
//! `/health` answers 200 `"status":"ok"` while the engine answers and no source's last job
//! failed; 503 `"status":"degraded"` naming the failing sources and their last errors when one
//! did (see [`health_of`]); 503 `"status":"unavailable"` when the engine does not answer. With
//! `[cluster]` it also has a `cluster` object ([`crate::cluster::ClusterView`]), and is
//! degraded while etcd does not answer or this instance holds no live lease (`"cluster"` in
//! `reasons`); a source another instance holds is not this one's to fail.
//!
//! The Prometheus recorder is installed process-wide on first use; if the host application
//! installed a recorder of its own, msgtrace's counters go there and `/metrics` says so.

use crate::listener::Routes;
use actix_web::{web, HttpResponse};
use metrics::{counter, describe_counter, describe_gauge, gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use msgtrace_actors::auth::{AuthToken, GetAuthStats};
use msgtrace_actors::cluster::record::ClusterHandle;
use msgtrace_actors::supervisor::{GetStatus, SourceStatus, Supervisor};
use msgtrace_storage::JobState;
use serde_json::json;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tracing::warn;

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
/// lost). Called by [`routes`]; harmless to call more than once.
pub fn install_recorder() {
    let _ = recorder();
}

/// The metrics this module sets when scraped (name, help), besides those of
/// [`msgtrace_actors::telemetry::METRICS`].
const SCRAPED_COUNTERS: &[(&str, &str)] = &[
    (
        "msgtrace_token_requests_total",
        "tokens obtained from Entra ID (first ones and refreshes)",
    ),
    ("msgtrace_token_failures_total", "failed token requests"),
    (
        "msgtrace_fetcher_restarts_total",
        "fetchers restarted after a crash",
    ),
];
const SCRAPED_GAUGES: &[(&str, &str)] = &[
    (
        "msgtrace_source_running",
        "1 while a job of the source runs",
    ),
    (
        "msgtrace_lag_seconds",
        "how far the source's checkpoint is behind now (absent until the first checkpoint)",
    ),
    (
        "msgtrace_build_info",
        "always 1; the running version is in the version label",
    ),
];

/// Describes every metric msgtrace records (the `# HELP` lines) to the installed recorder and
/// sets `msgtrace_build_info`. Called at every engine start, after the recorder is installed.
pub fn describe() {
    msgtrace_actors::telemetry::describe();
    for &(name, help) in SCRAPED_COUNTERS {
        describe_counter!(name, help);
    }
    for &(name, help) in SCRAPED_GAUGES {
        describe_gauge!(name, help);
    }
    gauge!("msgtrace_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}

pub use crate::listener::ListenError;

/// Binds the metrics endpoint's socket ([`crate::listener::bind`] for `metrics_listen`).
pub fn bind(addr: SocketAddr) -> Result<TcpListener, ListenError> {
    crate::listener::bind("metrics_listen", addr)
}

/// What `/health` says about the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// `true` when no source's last finished job failed and (`[cluster]`) etcd answers with a
    /// live lease held (200 `ok`), `false` otherwise (503 `degraded`).
    pub ok: bool,
    /// The sources whose last finished job did not succeed, in the engine's order.
    pub failing: Vec<String>,
    /// `[cluster]`: why this instance is degraded as a member (etcd unreachable, no lease).
    pub cluster: Option<String>,
}

/// The health rule: a source is failing while its last finished job did not succeed (failed,
/// cancelled by `job_timeout` or a shutdown, interrupted), until a job of it succeeds again. A
/// source that has not finished a job yet is not failing, nor (`[cluster]`) one whose claim
/// another instance holds. The engine is healthy when no source is failing (its data is as
/// fresh as its schedules allow) and, with `[cluster]`, etcd answers and this instance holds a
/// live lease.
pub fn health_of(
    sources: &[SourceStatus],
    cluster: Option<&crate::cluster::ClusterView>,
) -> Health {
    let failing: Vec<String> = sources
        .iter()
        .filter(|s| !s.elsewhere)
        .filter(|s| {
            s.last
                .as_ref()
                .is_some_and(|j| j.state != JobState::Succeeded)
        })
        .map(|s| s.source.clone())
        .collect();
    let cluster = cluster.and_then(crate::cluster::ClusterView::degraded);
    Health {
        ok: failing.is_empty() && cluster.is_none(),
        failing,
        cluster,
    }
}

struct Engine {
    supervisor: actix::Addr<Supervisor>,
    auth: actix::Addr<AuthToken>,
    store: crate::listener::StoreSlot,
    cluster: Option<ClusterHandle>,
}

/// The routes `/metrics` and `/health`, for [`crate::listener::serve`] (alone on
/// `metrics_listen`, or beside the control API's when `control_listen` names the same address).
pub fn routes(
    supervisor: actix::Addr<Supervisor>,
    auth: actix::Addr<AuthToken>,
    store: crate::listener::StoreSlot,
    cluster: Option<ClusterHandle>,
) -> Routes {
    install_recorder();
    let engine = web::Data::new(Engine {
        supervisor,
        auth,
        store,
        cluster,
    });
    Arc::new(move |cfg: &mut web::ServiceConfig| {
        cfg.app_data(engine.clone())
            .route("/metrics", web::get().to(metrics_page))
            .route("/health", web::get().to(health));
    })
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
            let cp = engine.store.get().map(|store| store.checkpoint(&s.source));
            if let Some(Ok(Some(cp))) = cp {
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
            let cluster = engine.cluster.as_ref().map(crate::cluster::ClusterView::of);
            let health = health_of(&sources, cluster.as_ref());
            let sources: Vec<_> = sources
                .iter()
                .map(|s| {
                    json!({
                        "source": s.source,
                        "running": s.running,
                        "last_job": s.last.as_ref().map(|j| format!("{:?}", j.state).to_lowercase()),
                        "last_error": s.last.as_ref().and_then(|j| j.error.clone()),
                        "restarts": s.restarts,
                        "failing": health.failing.contains(&s.source),
                    })
                })
                .collect();
            let mut body = if health.ok {
                json!({"status": "ok", "sources": sources})
            } else {
                json!({
                    "status": "degraded",
                    "failing": health.failing,
                    "sources": sources,
                })
            };
            // Only with `[cluster]`: single-instance answers are as they were.
            if let Some(view) = cluster {
                body["cluster"] = json!(view);
                if let Some(why) = &health.cluster {
                    body["reasons"] = json!({ "cluster": why });
                }
            }
            if health.ok {
                HttpResponse::Ok().json(body)
            } else {
                HttpResponse::ServiceUnavailable().json(body)
            }
        }
        _ => HttpResponse::ServiceUnavailable()
            .json(json!({"status": "unavailable", "reason": "the engine does not answer"})),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use msgtrace_actors::fetcher::JobSummary;

    fn source(id: &str, last: Option<JobState>) -> SourceStatus {
        SourceStatus {
            source: id.to_owned(),
            running: false,
            last: last.map(|state| JobSummary {
                job_id: format!("{id}-1"),
                state,
                pages: 0,
                rows: 0,
                dropped: 0,
                error: (state != JobState::Succeeded).then(|| "AADSTS7000215".to_owned()),
                window: None,
            }),
            restarts: 0,
            next_due: None,
            quota: None,
            owner: None,
            elsewhere: false,
        }
    }

    #[test]
    fn a_source_whose_last_job_did_not_succeed_degrades_health() {
        let fresh = [source("new", None), source("ok", Some(JobState::Succeeded))];
        assert_eq!(
            health_of(&fresh, None),
            Health {
                ok: true,
                failing: vec![],
                cluster: None,
            }
        );
        for bad in [JobState::Failed, JobState::Cancelled, JobState::Interrupted] {
            let sources = [
                source("ok", Some(JobState::Succeeded)),
                source("bad", Some(bad)),
            ];
            assert_eq!(
                health_of(&sources, None),
                Health {
                    ok: false,
                    failing: vec!["bad".to_owned()],
                    cluster: None,
                },
                "{bad:?}"
            );
        }
    }

    fn view(error: Option<&str>, live: bool) -> crate::cluster::ClusterView {
        crate::cluster::ClusterView {
            name: "c-0".into(),
            etcd: if error.is_none() { "up" } else { "unreachable" }.into(),
            error: error.map(str::to_owned),
            live,
            members: vec!["c-0".into(), "c-1".into()],
            owned: vec!["ok".into()],
            owners: Default::default(),
        }
    }

    #[test]
    fn etcd_unreachable_degrades_health_and_another_instances_source_does_not() {
        let mut moved = source("moved", Some(JobState::Cancelled));
        moved.elsewhere = true;
        let sources = [source("ok", Some(JobState::Succeeded)), moved];
        let up = health_of(&sources, Some(&view(None, true)));
        assert!(
            up.ok && up.failing.is_empty() && up.cluster.is_none(),
            "{up:?}"
        );
        for (error, live) in [
            (Some("etcd at http://127.0.0.1:1 unreachable"), true),
            (Some("x"), false),
            (None, false),
        ] {
            let h = health_of(&sources, Some(&view(error, live)));
            assert!(!h.ok && h.failing.is_empty(), "{h:?}");
            let why = h.cluster.expect("a cluster reason");
            assert_eq!(why.lines().count(), 1);
            if let Some(e) = error {
                assert!(why.contains("etcd unreachable") && why.contains(e), "{why}");
            }
        }
    }

    #[test]
    fn every_metric_is_in_the_operations_metrics_table() {
        let docs = include_str!("../docs/operations.md");
        let names = msgtrace_actors::telemetry::METRICS
            .iter()
            .map(|m| m.0)
            .chain(SCRAPED_COUNTERS.iter().map(|m| m.0))
            .chain(SCRAPED_GAUGES.iter().map(|m| m.0));
        for name in names {
            assert!(
                docs.contains(&format!("`{name}`")),
                "{name} is not in docs/operations.md"
            );
        }
    }
}
