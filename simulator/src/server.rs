//! The HTTP server: Entra ID token endpoints, Graph message trace and the Reporting Web Service.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use actix_web::dev::{ServerHandle, Service as _};
use actix_web::http::StatusCode;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;

use super::auth::{self, Api, IssuedToken, SimIdentity};
use super::model::{
    format_ms_date, format_window, from_ticks, splitmix64, ticks_floor, GraphRow, LateRows,
    Position, RwsRow, SimRow, TenantModel, TICKS_PER_HOUR,
};
use super::query::{
    encode_value, parse_details_path, parse_graph_filter, parse_rws_filter, Params, SkipToken,
};

/// Graph: longest `$filter` window accepted.
pub const GRAPH_MAX_WINDOW_DAYS: i64 = 10;
/// Graph: oldest start accepted, days before now.
pub const GRAPH_MAX_AGE_DAYS: i64 = 90;
/// RWS: data retention; a start older than this many days before now is refused.
pub const RWS_RETENTION_DAYS: i64 = 10;
/// Window served when a request has no `$filter` (both APIs): the last 48 hours.
pub const DEFAULT_WINDOW_HOURS: i64 = 48;
/// `$top` when a request gives none (both APIs; capped by the configured maximum).
pub const DEFAULT_TOP: u32 = 1000;

/// The Graph message trace path (`/v1.0/…`; `/beta/…` is served too).
pub const GRAPH_PATH: &str = "/v1.0/admin/exchange/tracing/messageTraces";
/// The Reporting Web Service message trace path (matched case-insensitively, as IIS does).
pub const RWS_PATH: &str = "/ecp/reportingwebservice/reporting.svc/MessageTrace";

/// A request budget on the data endpoints (sliding window); beyond it they answer 429.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimQuota {
    /// Data requests allowed per window.
    pub requests: u32,
    /// Window length in seconds (Graph documents 100 per 300 s per tenant).
    pub per_secs: u64,
}

/// A one-shot misbehaviour of the next data request (Graph or RWS), for retry tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimFault {
    /// Answer with this status (and a `Retry-After` header when given) instead of data.
    Status {
        /// HTTP status code, e.g. 429, 500, 503.
        status: u16,
        /// Seconds for the `Retry-After` header.
        retry_after_secs: Option<u64>,
    },
    /// Wait this long, then serve the request normally (client timeout tests).
    Delay {
        /// Extra latency in milliseconds.
        ms: u64,
    },
    /// Answer with this body instead of data: invalid JSON, an HTML error page, an unexpected
    /// shape.
    Body {
        /// HTTP status code.
        status: u16,
        /// `Content-Type` of the body.
        content_type: &'static str,
        /// The body.
        body: &'static str,
    },
    /// Start a 200 JSON answer and break the connection in the middle of the body (a truncated
    /// body, as after a connection reset).
    Truncated,
}

/// Settings of a simulated tenant server.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The tenant's mail flow (which rows exist).
    pub model: TenantModel,
    /// Tenant id accepted in token URLs (`/{tenant}/oauth2/…`), compared case-insensitively.
    pub tenant_id: String,
    /// More tenant ids the token endpoints accept besides `tenant_id`: a provider's many tenants
    /// on one server (the scale benchmark). They share the model and the app registration.
    /// Default empty.
    pub other_tenant_ids: Vec<String>,
    /// The only application (client) id the token endpoints know.
    pub client_id: String,
    /// That application's secret.
    pub client_secret: String,
    /// Basic-auth user accepted by RWS (together with `password`); `None` = Basic refused.
    pub username: Option<String>,
    /// Basic-auth password accepted by RWS.
    pub password: Option<String>,
    /// Lifetime of issued tokens in seconds (`expires_in`); Microsoft's is 3599.
    pub token_lifetime_secs: u64,
    /// Latency added to every data page response, in milliseconds.
    pub page_latency_ms: u64,
    /// Largest Graph `$top` (5000).
    pub graph_max_top: u32,
    /// Largest RWS `$top` (2000).
    pub rws_max_top: u32,
    /// Refuse tokens whose audience does not fit the API (Graph wants a `graph.` host, RWS an
    /// `outlook.`/`office365`/`exchange` one). Default true.
    pub check_audience: bool,
    /// Accept `client_assertion` (certificate) token requests at all. Default true. An assertion
    /// is accepted only when it is signed by the key of one of `client_certificates` (found by
    /// its `x5t#S256` or `x5t` thumbprint) with RS256 or PS256, has `iss` = `sub` = client id,
    /// `aud` = the token URL called, `nbf` ≤ now < `exp`, and a `jti` not seen before.
    pub accept_client_assertion: bool,
    /// DER certificates registered for the application (the app registration's "Certificates"),
    /// whose keys may sign client assertions. Default none: every assertion is refused with
    /// AADSTS700027 "The key was not found". See [`SimConfig::register_certificate_pem`].
    pub client_certificates: Vec<Vec<u8>>,
    /// Budget of data requests; `None` = unlimited (default).
    pub quota: Option<SimQuota>,
    /// Per cent of `quota`'s requests that another application of the tenant spends (0..=100),
    /// evenly spread, already under way when the server starts: Graph's budget is per tenant,
    /// shared by every app. Its requests count like the engine's; those the budget refuses are
    /// lost (counted in [`SimStats::other_app_refused`], not in `throttled`). Default 0.
    pub other_app_percent: u32,
    /// Simulate a tenant without the message trace service principal: every Graph data request
    /// answers 401 `Service principal-less Authentication failed…`. Default false.
    pub graph_service_principal_missing: bool,
    /// Late publishing and status changes (see [`LateRows`]), evaluated at the server's clock on
    /// every data request: a row is served only once `received + delay <= now`, and a changing row
    /// shows `Pending`/`pending` until `received + status_change_after`. Graph pages skip rows not
    /// yet visible; RWS offsets count only visible rows. `None` (default) = every row at once,
    /// statuses fixed.
    pub late: Option<LateRows>,
    /// A deterministic fault schedule: every `every`-th data request gets the next fault of the
    /// list, cyclically (on top of faults injected one by one). `None` = none (default).
    pub fault_schedule: Option<FaultSchedule>,
    /// Records per page of the detail endpoint (`getDetailsByRecipient`), the rest behind an
    /// `@odata.nextLink` with `$skiptoken`; `None` (default) = every record in one page, as
    /// Microsoft's sample.
    pub detail_page_size: Option<usize>,
    /// actix worker threads (default 2).
    pub workers: usize,
    /// Secretless sign-in: a federated credential on the application and the managed identity
    /// of the simulated machine (see [`SimIdentity`]). Default: neither.
    pub identity: SimIdentity,
}

/// Faults on a fixed rhythm, for soak runs from tests and `msgtrace simulate`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultSchedule {
    /// Every this many data requests (≥ 1).
    pub every: u64,
    /// The faults, used in turn.
    pub faults: Vec<SimFault>,
}

/// A fault name [`SimFault::by_name`] does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown fault `{0}`; use a status code (400..599), stall, invalid-json, html, wrong-shape or truncated")]
pub struct UnknownFault(pub String);

impl SimFault {
    /// A fault by name, for the command line: a status code (`429` comes with `Retry-After: 1`,
    /// `400` is a poisoned next link), `stall` (30 s), `invalid-json`, `html`, `wrong-shape`,
    /// `truncated`.
    pub fn by_name(name: &str) -> Result<SimFault, UnknownFault> {
        Ok(match name.trim() {
            "stall" => SimFault::Delay { ms: 30_000 },
            "invalid-json" => SimFault::Body {
                status: 200,
                content_type: "application/json",
                body: "{\"value\": [ {\"id\": ",
            },
            "html" => SimFault::Body {
                status: 502,
                content_type: "text/html",
                body: "<html><head><title>502 Bad Gateway</title></head></html>",
            },
            "wrong-shape" => SimFault::Body {
                status: 200,
                content_type: "application/json",
                body: "{\"unexpected\": true}",
            },
            "truncated" => SimFault::Truncated,
            code => match code.parse::<u16>() {
                Ok(status) if (400..600).contains(&status) => SimFault::Status {
                    status,
                    retry_after_secs: (status == 429).then_some(1),
                },
                _ => return Err(UnknownFault(code.to_owned())),
            },
        })
    }
}

impl Default for SimConfig {
    /// Seed 42, 600 messages/hour, up to 3 recipients, `contoso.com`; tenant `sim-tenant`, client
    /// `sim-client`, secret `sim-secret`; no Basic auth; tokens live 3599 s; no latency; `$top`
    /// maxima 5000 (Graph) and 2000 (RWS).
    fn default() -> Self {
        SimConfig {
            model: TenantModel::default(),
            tenant_id: "sim-tenant".to_string(),
            other_tenant_ids: Vec::new(),
            client_id: "sim-client".to_string(),
            client_secret: "sim-secret".to_string(),
            username: None,
            password: None,
            token_lifetime_secs: 3599,
            page_latency_ms: 0,
            graph_max_top: 5000,
            rws_max_top: 2000,
            check_audience: true,
            accept_client_assertion: true,
            client_certificates: Vec::new(),
            quota: None,
            other_app_percent: 0,
            graph_service_principal_missing: false,
            late: None,
            fault_schedule: None,
            detail_page_size: None,
            workers: 2,
            identity: SimIdentity::default(),
        }
    }
}

impl SimConfig {
    /// Registers every `CERTIFICATE` of a PEM text for client assertions; how many were found.
    pub fn register_certificate_pem(&mut self, pem: &str) -> usize {
        let found = auth::pem_certificates(pem);
        let n = found.len();
        self.client_certificates.extend(found);
        n
    }

    /// Whether the token endpoints know `tenant` (`tenant_id` or one of `other_tenant_ids`,
    /// case-insensitively).
    pub fn accepts_tenant(&self, tenant: &str) -> bool {
        std::iter::once(&self.tenant_id)
            .chain(&self.other_tenant_ids)
            .any(|t| t.eq_ignore_ascii_case(tenant))
    }
}

/// A snapshot of the server's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Requests to either token endpoint.
    pub token_requests: u64,
    /// Tokens issued.
    pub tokens_issued: u64,
    /// Requests to either data endpoint (Graph or RWS), whatever their outcome.
    pub data_requests: u64,
    /// Data responses with rows or an empty page (status 200).
    pub pages_served: u64,
    /// Rows served in those pages.
    pub rows_served: u64,
    /// Responses with a 4xx status (any path).
    pub client_errors: u64,
    /// 401 responses on data endpoints.
    pub unauthorized: u64,
    /// 429 responses (quota or injected).
    pub throttled: u64,
    /// Requests of the other application ([`SimConfig::other_app_percent`]) the quota counted.
    pub other_app_requests: u64,
    /// Requests of the other application the quota refused.
    pub other_app_refused: u64,
    /// Requests to the detail endpoint (`getDetailsByRecipient`), whatever their outcome; they
    /// are data requests too (counted in `data_requests`, and by the quota).
    pub detail_requests: u64,
    /// Detail records served (status 200).
    pub detail_records_served: u64,
}

/// The live counters behind [`SimStats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub token_requests: AtomicU64,
    pub tokens_issued: AtomicU64,
    pub data_requests: AtomicU64,
    pub pages_served: AtomicU64,
    pub rows_served: AtomicU64,
    pub client_errors: AtomicU64,
    pub unauthorized: AtomicU64,
    pub throttled: AtomicU64,
    pub other_app_requests: AtomicU64,
    pub other_app_refused: AtomicU64,
    pub detail_requests: AtomicU64,
    pub detail_records_served: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(&self, c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    fn snapshot(&self) -> SimStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        SimStats {
            token_requests: g(&self.token_requests),
            tokens_issued: g(&self.tokens_issued),
            data_requests: g(&self.data_requests),
            pages_served: g(&self.pages_served),
            rows_served: g(&self.rows_served),
            client_errors: g(&self.client_errors),
            unauthorized: g(&self.unauthorized),
            throttled: g(&self.throttled),
            other_app_requests: g(&self.other_app_requests),
            other_app_refused: g(&self.other_app_refused),
            detail_requests: g(&self.detail_requests),
            detail_records_served: g(&self.detail_records_served),
        }
    }
}

/// Everything the handlers share (one per server, behind an `Arc`).
#[derive(Debug)]
pub(crate) struct State {
    pub config: SimConfig,
    pub counters: Counters,
    pub tokens: Mutex<HashMap<String, IssuedToken>>,
    /// `jti`s of accepted client assertions and their `exp` (replay detection).
    pub seen_jtis: Mutex<HashMap<String, i64>>,
    hour_totals: Mutex<HashMap<i64, u64>>,
    faults: Mutex<VecDeque<SimFault>>,
    /// Data requests seen by the fault schedule.
    scheduled: AtomicU64,
    quota_log: Mutex<QuotaLog>,
    seq: AtomicU64,
    /// Told of every data request ([`SimServer::on_data_request`]).
    observer: Observer,
}

/// What [`SimServer::on_data_request`] calls.
#[derive(Default)]
struct Observer(Mutex<Option<ObserverFn>>);

type ObserverFn = std::sync::Arc<dyn Fn(&str) + Send + Sync>;

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Observer")
    }
}

impl State {
    fn new(config: SimConfig) -> State {
        let other_next = config
            .quota
            .and_then(|q| Instant::now().checked_sub(Duration::from_secs(q.per_secs)))
            .unwrap_or_else(Instant::now);
        State {
            config,
            counters: Counters::default(),
            tokens: Mutex::new(HashMap::new()),
            seen_jtis: Mutex::new(HashMap::new()),
            hour_totals: Mutex::new(HashMap::new()),
            faults: Mutex::new(VecDeque::new()),
            scheduled: AtomicU64::new(0),
            // The other application was already at it: its requests of the window before the
            // start count too (`other_next`).
            quota_log: Mutex::new(QuotaLog {
                log: VecDeque::new(),
                other_next,
            }),
            seq: AtomicU64::new(1),
            observer: Observer::default(),
        }
    }

    /// Tells the observer, if any, of a data request (before it is answered).
    pub(crate) fn observe(&self, req: &HttpRequest) {
        let observer = self
            .observer
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(f) = observer {
            f(&req.uri().to_string());
        }
    }

    pub(crate) fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    /// A fresh GUID-shaped id for `request-id`, `trace_id`, `correlation_id`.
    pub(crate) fn request_id(&self) -> String {
        let a = splitmix64(self.next_seq() ^ 0x0072_6571_7565_7374);
        super::model::guid(a, splitmix64(a))
    }

    /// Rows in hour `h`, cached.
    fn hour_total(&self, h: i64) -> u64 {
        if let Some(n) = self
            .hour_totals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&h)
        {
            return *n;
        }
        let n = self.config.model.hour_total(h);
        self.hour_totals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(h, n);
        n
    }

    /// Takes the next injected fault if it replaces the whole answer (a body fault).
    pub(crate) fn take_body_fault(&self) -> Option<HttpResponse> {
        let mut faults = self.faults.lock().unwrap_or_else(|e| e.into_inner());
        let answer = match faults.front()? {
            SimFault::Body {
                status,
                content_type,
                body,
            } => HttpResponse::build(fault_status(*status))
                .content_type(*content_type)
                .body(*body),
            SimFault::Truncated => {
                let parts: Vec<Result<actix_web::web::Bytes, std::io::Error>> = vec![
                    Ok(actix_web::web::Bytes::from_static(
                        b"{\"value\":[{\"id\":\"x\",",
                    )),
                    Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        "simulated connection reset",
                    )),
                ];
                HttpResponse::Ok()
                    .content_type("application/json")
                    .streaming(futures_util::stream::iter(parts))
            }
            _ => return None,
        };
        faults.pop_front();
        self.counters.bump(&self.counters.data_requests, 1);
        Some(answer)
    }

    /// Queues the scheduled fault of this data request, if it has one.
    pub(crate) fn schedule_fault(&self) {
        let Some(sched) = &self.config.fault_schedule else {
            return;
        };
        if sched.every == 0 || sched.faults.is_empty() {
            return;
        }
        let n = self.scheduled.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_multiple_of(sched.every) {
            let f = sched.faults[((n / sched.every - 1) % sched.faults.len() as u64) as usize];
            self.faults
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push_front(f);
        }
    }

    /// Takes the next injected fault, if any.
    fn take_fault(&self) -> Option<SimFault> {
        self.faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front()
    }

    /// Records a data request against the quota; `Some(seconds)` = refused, retry after.
    fn throttle(&self) -> Option<u64> {
        let quota = self.config.quota?;
        let window = Duration::from_secs(quota.per_secs);
        let now = Instant::now();
        let mut q = self.quota_log.lock().unwrap_or_else(|e| e.into_inner());
        // The other application's requests up to now first, each counted at its own moment.
        let others = u64::from(quota.requests) * u64::from(self.config.other_app_percent.min(100));
        let others = (others / 100) as u32;
        if others > 0 {
            let every = window / others;
            while q.other_next <= now {
                let at = q.other_next;
                let counter = match q.admit(at, window, quota.requests) {
                    Ok(()) => &self.counters.other_app_requests,
                    Err(_) => &self.counters.other_app_refused,
                };
                self.counters.bump(counter, 1);
                q.other_next += every;
            }
        }
        let wait = q.admit(now, window, quota.requests).err()?;
        Some(wait.as_secs() + u64::from(wait.subsec_nanos() > 0))
    }
}

/// The quota's sliding window of the data requests it counted, the other application's included.
#[derive(Debug)]
struct QuotaLog {
    log: VecDeque<Instant>,
    /// When the other application sends its next request.
    other_next: Instant,
}

impl QuotaLog {
    /// Counts a request arriving `at` if `window` has room for it, else how long until it has.
    fn admit(&mut self, at: Instant, window: Duration, requests: u32) -> Result<(), Duration> {
        while self
            .log
            .front()
            .is_some_and(|t| at.saturating_duration_since(*t) >= window)
        {
            self.log.pop_front();
        }
        if self.log.len() >= requests as usize {
            return Err(self
                .log
                .front()
                .map(|t| window.saturating_sub(at.saturating_duration_since(*t)))
                .unwrap_or(window));
        }
        self.log.push_back(at);
        Ok(())
    }
}

/// A running simulated tenant (see the [module docs](super)). Stops on [`SimServer::stop`] or drop.
pub struct SimServer {
    addr: SocketAddr,
    state: Arc<State>,
    handle: Option<ServerHandle>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for SimServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl SimServer {
    /// Binds `addr` (port 0 = any free port), runs the actix-web server on its own thread with its
    /// own actix System, and returns once the socket is listening. Works from a plain `#[test]` and
    /// from inside another runtime.
    pub fn start(config: SimConfig, addr: SocketAddr) -> std::io::Result<SimServer> {
        let workers = config.workers.max(1);
        let state = Arc::new(State::new(config));
        let (tx, rx) = std::sync::mpsc::channel();
        let shared = state.clone();
        let thread = std::thread::Builder::new()
            .name("msgtrace-sim".to_string())
            .spawn(move || {
                let system = actix_rt::System::new();
                let data = web::Data::from(shared);
                let built = HttpServer::new(move || {
                    let data = data.clone();
                    let counted = data.clone();
                    App::new()
                        .app_data(data)
                        .wrap_fn(move |req, srv| {
                            let fut = srv.call(req);
                            let state = counted.clone();
                            async move {
                                let res = fut.await?;
                                if res.status().is_client_error() {
                                    state.counters.bump(&state.counters.client_errors, 1);
                                }
                                Ok(res)
                            }
                        })
                        .route("/health", web::get().to(health))
                        .route(
                            "/{tenant}/oauth2/v2.0/token",
                            web::post().to(auth::token_v2),
                        )
                        .route("/{tenant}/oauth2/token", web::post().to(auth::token_v1))
                        .route(auth::IMDS_PATH, web::get().to(auth::imds_token))
                        .default_service(web::to(dispatch))
                })
                .workers(workers)
                .disable_signals()
                .shutdown_timeout(1)
                .bind(addr)
                .and_then(|server| {
                    let local =
                        server.addrs().first().copied().ok_or_else(|| {
                            std::io::Error::other("simulator: no address after bind")
                        })?;
                    Ok((server.run(), local))
                });
                match built {
                    Ok((server, local)) => {
                        let _ = tx.send(Ok((server.handle(), local)));
                        if let Err(e) = system.block_on(server) {
                            tracing::warn!(error = %e, "simulator server ended with an error");
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            })?;
        let (handle, addr) = rx
            .recv()
            .map_err(|_| std::io::Error::other("simulator thread exited before listening"))??;
        tracing::debug!(%addr, "simulated tenant listening");
        Ok(SimServer {
            addr,
            state,
            handle: Some(handle),
            thread: Some(thread),
        })
    }

    /// `http://127.0.0.1:PORT`: the login host, Graph host and RWS host at once.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `{base}/v1.0/admin/exchange/tracing/messageTraces`.
    pub fn graph_url(&self) -> String {
        format!("{}{GRAPH_PATH}", self.base_url())
    }

    /// `{base}/ecp/reportingwebservice/reporting.svc/MessageTrace`.
    pub fn rws_url(&self) -> String {
        format!("{}{RWS_PATH}", self.base_url())
    }

    /// `{base}/{tenant}/oauth2/v2.0/token`.
    pub fn token_url_v2(&self) -> String {
        format!(
            "{}/{}/oauth2/v2.0/token",
            self.base_url(),
            self.state.config.tenant_id
        )
    }

    /// `{base}/{tenant}/oauth2/token`.
    pub fn token_url_v1(&self) -> String {
        format!(
            "{}/{}/oauth2/token",
            self.base_url(),
            self.state.config.tenant_id
        )
    }

    /// The configuration the server runs with.
    pub fn config(&self) -> &SimConfig {
        &self.state.config
    }

    /// The tenant model (to compute `expected()` in tests).
    pub fn model(&self) -> &TenantModel {
        &self.state.config.model
    }

    /// Calls `f` with the path and query of every data request (Graph or RWS) as it arrives,
    /// before it is answered, on the server's thread: for tests that check what the client had
    /// done by then. Replaces an earlier observer.
    pub fn on_data_request(&self, f: impl Fn(&str) + Send + Sync + 'static) {
        *self
            .state
            .observer
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(std::sync::Arc::new(f));
    }

    /// Current counters.
    pub fn stats(&self) -> SimStats {
        self.state.counters.snapshot()
    }

    /// Queues a fault for the next data request (FIFO: one fault per request).
    pub fn inject_fault(&self, fault: SimFault) {
        self.state
            .faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(fault);
    }

    /// Drops the faults queued and not yet served (the outage is over); returns how many.
    pub fn clear_faults(&self) -> usize {
        let mut faults = self.state.faults.lock().unwrap_or_else(|e| e.into_inner());
        let n = faults.len();
        faults.clear();
        n
    }

    /// Forgets every issued token: the next data request with one answers 401.
    pub fn revoke_tokens(&self) {
        self.state
            .tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Gracefully stops the server and joins its thread (in-flight requests get up to 1 s).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(handle) = self.handle.take() {
            // The stop command is sent when `stop` is called; the returned future only reports
            // completion, which joining the thread also does.
            drop(handle.stop(true));
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

async fn health() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// Everything without an explicit route: the data endpoints (paths compared case-insensitively),
/// else 404.
async fn dispatch(req: HttpRequest, state: web::Data<State>) -> HttpResponse {
    let path = req.path().to_ascii_lowercase();
    let is_get = req.method() == actix_web::http::Method::GET;
    if is_get && path == RWS_PATH.to_ascii_lowercase() {
        return rws(&req, &state).await;
    }
    for version in ["v1.0", "beta"] {
        if is_get && path == format!("/{version}/admin/exchange/tracing/messagetraces") {
            return graph(&req, &state, version).await;
        }
        if !is_get {
            continue;
        }
        let prefix = format!("/{version}/admin/exchange/tracing/messagetraces/");
        if let Some(asked) = path
            .starts_with(&prefix)
            .then(|| parse_details_path(&req.path()[prefix.len()..]))
            .flatten()
        {
            return super::details_endpoint::graph_details(&req, &state, version, asked).await;
        }
    }
    HttpResponse::NotFound()
        .content_type("text/plain")
        .body("Not Found")
}

/// `scheme://host` of the request as the client addressed it (Host header).
pub(crate) fn origin(req: &HttpRequest) -> String {
    let info = req.connection_info();
    format!("{}://{}", info.scheme(), info.host())
}

fn with_retry_after(
    mut builder: actix_web::HttpResponseBuilder,
    secs: Option<u64>,
) -> actix_web::HttpResponseBuilder {
    if let Some(s) = secs {
        builder.insert_header(("Retry-After", s.to_string()));
    }
    builder
}

// ---------------------------------------------------------------------------------------------
// Graph

/// `{"error":{"code","message","innerError":{"date","request-id","client-request-id"}}}`.
pub(crate) fn graph_error(
    req: &HttpRequest,
    state: &State,
    status: StatusCode,
    code: &str,
    message: &str,
) -> HttpResponse {
    graph_error_retry(req, state, status, code, message, None)
}

pub(crate) fn graph_error_retry(
    req: &HttpRequest,
    state: &State,
    status: StatusCode,
    code: &str,
    message: &str,
    retry_after: Option<u64>,
) -> HttpResponse {
    let request_id = state.request_id();
    let client_request_id = req
        .headers()
        .get("client-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| request_id.clone());
    let body = GraphErrorBody {
        error: GraphError {
            code,
            message,
            inner_error: InnerError {
                date: Utc::now().format("%Y-%m-%dT%H:%M:%S").to_string(),
                request_id,
                client_request_id,
            },
        },
    };
    let mut builder = with_retry_after(HttpResponse::build(status), retry_after);
    if status == StatusCode::UNAUTHORIZED {
        builder.insert_header((
            "WWW-Authenticate",
            "Bearer realm=\"\", authorization_uri=\"https://login.microsoftonline.com/common/oauth2/authorize\", client_id=\"00000003-0000-0000-c000-000000000000\"",
        ));
    }
    builder.json(body)
}

/// `{"error":{…}}` in Microsoft's field order.
#[derive(Serialize)]
struct GraphErrorBody<'a> {
    error: GraphError<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GraphError<'a> {
    code: &'a str,
    message: &'a str,
    inner_error: InnerError,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct InnerError {
    date: String,
    request_id: String,
    client_request_id: String,
}

pub(crate) fn bad_request(req: &HttpRequest, state: &State, message: &str) -> HttpResponse {
    graph_error(req, state, StatusCode::BAD_REQUEST, "BadRequest", message)
}

/// A status code from a fault, defaulting to 500 when out of range.
fn fault_status(status: u16) -> StatusCode {
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// Applies the next injected fault: `Some((status, Retry-After))` replaces the request's answer.
async fn apply_fault(state: &State) -> Option<(StatusCode, Option<u64>)> {
    match state.take_fault()? {
        SimFault::Delay { ms } => {
            actix_rt::time::sleep(Duration::from_millis(ms)).await;
            None
        }
        // Taken by `take_body_fault` before the gate; unreachable here.
        SimFault::Body { .. } | SimFault::Truncated => None,
        SimFault::Status {
            status,
            retry_after_secs,
        } => {
            let status = fault_status(status);
            if status == StatusCode::TOO_MANY_REQUESTS {
                state.counters.bump(&state.counters.throttled, 1);
            }
            Some((status, retry_after_secs))
        }
    }
}

/// Parses `$top`: default `min(DEFAULT_TOP, max)`, valid range `1..=max`.
fn parse_top(params: &Params, max: u32) -> Result<u32, String> {
    match params.get("$top") {
        None => Ok(DEFAULT_TOP.min(max).max(1)),
        Some(v) => match v.trim().parse::<u32>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(format!(
                "Invalid $top value '{v}': it must be an integer between 1 and {max}."
            )),
        },
    }
}

pub(crate) fn graph_code(status: StatusCode) -> &'static str {
    match status.as_u16() {
        429 => "TooManyRequests",
        503 => "ServiceUnavailable",
        504 => "GatewayTimeout",
        401 => "InvalidAuthenticationToken",
        403 => "Forbidden",
        400 => "BadRequest",
        _ => "UnknownError",
    }
}

/// What a Graph request asks for once validated: tick window, page size, resume position.
struct GraphQuery<'a> {
    lo: i64,
    hi: i64,
    top: u32,
    from: Option<Position>,
    filter: Option<&'a str>,
}

/// Validates `$top`, `$filter` and `$skiptoken`; `Err` is the 400 message.
fn graph_query<'a>(
    params: &'a Params,
    state: &State,
    now_t: i64,
) -> Result<GraphQuery<'a>, String> {
    let now = from_ticks(now_t);
    let top = parse_top(params, state.config.graph_max_top)?;
    let filter = params.get("$filter");
    let window = filter
        .map(parse_graph_filter)
        .transpose()
        .map_err(|m| format!("Invalid filter clause: {m}"))?;
    let model = &state.config.model;
    if let Some(raw) = params.get("$skiptoken") {
        let tok = SkipToken::decode(raw, model.seed)
            .filter(|t| model.is_valid_position(t.pos))
            .ok_or("Invalid skip token.")?;
        if window.is_some_and(|w| (w.lo, w.hi) != (tok.lo, tok.hi)) {
            return Err("The skip token does not belong to this $filter.".to_string());
        }
        return Ok(GraphQuery {
            lo: tok.lo,
            hi: tok.hi,
            top,
            from: Some(tok.pos),
            filter,
        });
    }
    let Some(w) = window else {
        let lo = now_t - DEFAULT_WINDOW_HOURS * TICKS_PER_HOUR;
        return Ok(GraphQuery {
            lo,
            hi: now_t,
            top,
            from: None,
            filter,
        });
    };
    if w.lo > w.hi {
        return Err("The start date must be earlier than the end date.".to_string());
    }
    if w.end - w.start > chrono::Duration::days(GRAPH_MAX_WINDOW_DAYS) {
        return Err("The date range cannot exceed 10 days.".to_string());
    }
    if w.start < now - chrono::Duration::days(GRAPH_MAX_AGE_DAYS) {
        return Err("The start date cannot be older than 90 days.".to_string());
    }
    Ok(GraphQuery {
        lo: w.lo,
        hi: w.hi,
        top,
        from: None,
        filter,
    })
}

/// Refusals common to both data endpoints before the query is read: injected faults, then
/// authentication (`authorized`), then the quota. `Err` carries (status, Retry-After, message).
pub(crate) async fn gate(
    state: &State,
    authorized: impl FnOnce() -> Result<(), String>,
) -> Result<(), (StatusCode, Option<u64>, String)> {
    let counters = &state.counters;
    counters.bump(&counters.data_requests, 1);
    if let Some((status, retry)) = apply_fault(state).await {
        let message = status.canonical_reason().unwrap_or("Simulated fault");
        return Err((status, retry, message.to_string()));
    }
    if let Err(message) = authorized() {
        counters.bump(&counters.unauthorized, 1);
        return Err((StatusCode::UNAUTHORIZED, None, message));
    }
    if let Some(retry) = state.throttle() {
        counters.bump(&counters.throttled, 1);
        let message =
            "Too many requests. The tenant's message trace quota is exhausted; retry later.";
        return Err((
            StatusCode::TOO_MANY_REQUESTS,
            Some(retry),
            message.to_string(),
        ));
    }
    Ok(())
}

/// The configured per-page latency (after validation: error answers are not delayed).
pub(crate) async fn page_latency(state: &State) {
    if state.config.page_latency_ms > 0 {
        actix_rt::time::sleep(Duration::from_millis(state.config.page_latency_ms)).await;
    }
}

/// Whether a Graph data request may be answered: its bearer token, and the tenant's service
/// principal of the message trace app.
pub(crate) fn graph_authorized(req: &HttpRequest, state: &State) -> Result<(), String> {
    let cfg = &state.config;
    state
        .check_bearer(req, Api::Graph)
        .map_err(|e| e.message().to_string())?;
    if cfg.graph_service_principal_missing {
        return Err(format!(
            "Service principal-less Authentication failed: the service principal for application 8bd644d1-64a1-4d4b-ae52-2e0cbf64e373 was not found in tenant '{}'.",
            cfg.tenant_id
        ));
    }
    Ok(())
}

async fn graph(req: &HttpRequest, state: &State, version: &str) -> HttpResponse {
    state.observe(req);
    state.schedule_fault();
    let cfg = &state.config;
    if let Some(answer) = state.take_body_fault() {
        return answer;
    }
    if let Err((status, retry, message)) = gate(state, || graph_authorized(req, state)).await {
        return graph_error_retry(req, state, status, graph_code(status), &message, retry);
    }
    let params = Params::parse(req.query_string());
    let now_t = ticks_floor(Utc::now());
    let q = match graph_query(&params, state, now_t) {
        Ok(q) => q,
        Err(m) => return bad_request(req, state, &m),
    };
    page_latency(state).await;
    let mut rows = cfg
        .model
        .rows_ticks(q.lo, q.hi.min(now_t), q.from)
        .visible_at(cfg.late, now_t);
    let page: Vec<SimRow> = rows.by_ref().take(q.top as usize).collect();
    let n = page.len() as u64;
    let origin = origin(req);
    let next = rows.peek_position();
    let next_link = next.map(|pos| {
        let token = SkipToken {
            lo: q.lo,
            hi: q.hi,
            pos,
        }
        .encode(cfg.model.seed);
        let mut link = format!("{origin}{}?", req.path());
        if let Some(f) = q.filter {
            link.push_str(&format!("$filter={}&", encode_value(f)));
        }
        link.push_str(&format!("$top={}&$skiptoken={token}", q.top));
        link
    });
    let body = GraphPage {
        context: format!("{origin}/{version}/$metadata#admin/exchange/tracing/messageTraces"),
        value: page.iter().map(SimRow::graph_row).collect(),
        next_link,
    };
    let counters = &state.counters;
    counters.bump(&counters.pages_served, 1);
    counters.bump(&counters.rows_served, n);
    tracing::debug!(
        api = "graph",
        rows = n,
        more = next.is_some(),
        "simulator served a page"
    );
    HttpResponse::Ok().json(body)
}

/// A Graph page: `@odata.context`, `value`, `@odata.nextLink` when more rows exist.
#[derive(Serialize)]
struct GraphPage<'a> {
    #[serde(rename = "@odata.context")]
    context: String,
    value: Vec<GraphRow<'a>>,
    #[serde(rename = "@odata.nextLink", skip_serializing_if = "Option::is_none")]
    next_link: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Reporting Web Service

/// The IIS 401 page Microsoft answers on RWS.
const RWS_401_HTML: &str = r#"<title>401 - Unauthorized: Access is denied due to invalid credentials.</title><body><div id="header"><h1>Server Error</h1></div><div id="content"><div class="content-container"><fieldset><h2>401 - Unauthorized: Access is denied due to invalid credentials.</h2><h3>You do not have permission to view this directory or page using the credentials that you supplied.</h3></fieldset></div></div></body>"#;

/// `{"ErrorCode":…,"Message":…}`: the plain JSON error body of RWS.
fn rws_error(
    status: StatusCode,
    code: &str,
    message: &str,
    retry_after: Option<u64>,
) -> HttpResponse {
    with_retry_after(HttpResponse::build(status), retry_after)
        .json(json!({"ErrorCode": code, "Message": message}))
}

fn rws_bad_request(message: &str) -> HttpResponse {
    rws_error(StatusCode::BAD_REQUEST, "InvalidQuery", message, None)
}

/// What an RWS request asks for once validated.
struct RwsQuery<'a> {
    /// The window as written (echoed in `StartDate`/`EndDate`).
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    lo: i64,
    hi: i64,
    top: u32,
    skip: u64,
    filter: Option<&'a str>,
}

/// Validates `$top`, `$skiptoken` and `$filter`; `Err` is the 400 message.
fn rws_query<'a>(
    params: &'a Params,
    state: &State,
    now: DateTime<Utc>,
) -> Result<RwsQuery<'a>, String> {
    let top = parse_top(params, state.config.rws_max_top)?;
    let skip = match params.get("$skiptoken").map(|s| s.trim().parse::<u64>()) {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(_)) => {
            return Err("Invalid $skiptoken: it must be a non-negative integer.".to_string())
        }
    };
    let filter = params.get("$filter");
    let Some(w) = filter.map(parse_rws_filter).transpose()? else {
        let start = now - chrono::Duration::hours(DEFAULT_WINDOW_HOURS);
        let (lo, hi) = (ticks_floor(start), ticks_floor(now));
        return Ok(RwsQuery {
            start,
            end: now,
            lo,
            hi,
            top,
            skip,
            filter,
        });
    };
    if w.lo > w.hi {
        return Err("StartDate must be earlier than EndDate.".to_string());
    }
    if w.start < now - chrono::Duration::days(RWS_RETENTION_DAYS) {
        return Err(
            "Invalid StartDate value. The StartDate can't be older than 10 days from today."
                .to_string(),
        );
    }
    Ok(RwsQuery {
        start: w.start,
        end: w.end,
        lo: w.lo,
        hi: w.hi,
        top,
        skip,
        filter,
    })
}

async fn rws(req: &HttpRequest, state: &State) -> HttpResponse {
    state.observe(req);
    state.schedule_fault();
    let authorized = || {
        if state.check_bearer(req, Api::Rws).is_ok() || state.check_basic(req) {
            Ok(())
        } else {
            Err(String::new())
        }
    };
    if let Some(answer) = state.take_body_fault() {
        return answer;
    }
    match gate(state, authorized).await {
        Ok(()) => {}
        Err((StatusCode::UNAUTHORIZED, _, _)) => {
            let mut builder = HttpResponse::Unauthorized();
            builder.insert_header(("WWW-Authenticate", "Bearer"));
            if state.config.username.is_some() {
                builder
                    .append_header(("WWW-Authenticate", "Basic realm=\"reports.office365.com\""));
            }
            return builder.content_type("text/html").body(RWS_401_HTML);
        }
        Err((status, retry, message)) => return rws_error(status, "", &message, retry),
    }
    let params = Params::parse(req.query_string());
    let now = Utc::now();
    let now_t = ticks_floor(now);
    let RwsQuery {
        start,
        end,
        lo,
        hi,
        top,
        skip,
        filter,
    } = match rws_query(&params, state, now) {
        Ok(q) => q,
        Err(m) => return rws_bad_request(&m),
    };
    page_latency(state).await;
    let model = &state.config.model;
    let hi = hi.min(now_t);
    let late = state.config.late;
    let full_hour = &mut |h| state.hour_total(h);
    let page: Vec<_> = match model.seek_visible(lo, hi, skip, late.as_ref(), now_t, full_hour) {
        Some(pos) => model
            .rows_ticks(lo, hi, Some(pos))
            .visible_at(late, now_t)
            .take(top as usize)
            .collect(),
        None => Vec::new(),
    };
    let full = page.len() == top as usize;
    let origin = origin(req);
    let format = params.get("$format");
    let verbose = format.is_some_and(|f| f.eq_ignore_ascii_case("json"));
    // Relative to `/ecp/`: Microsoft's links start `../../` from `…/reporting.svc/MessageTrace`.
    let mut next = String::from("reportingwebservice/reporting.svc/MessageTrace?");
    if let Some(f) = filter {
        next.push_str(&format!("$filter={}&", encode_value(f)));
    }
    if let Some(f) = format {
        next.push_str(&format!("$format={}&", encode_value(f)));
    }
    next.push_str(&format!("$top={top}&$skiptoken={}", skip + u64::from(top)));
    let n = page.len() as u64;
    let index = |i: usize| skip + i as u64;
    let response = if verbose {
        let service = format!("{origin}/ecp/ReportingWebService/Reporting.svc/MessageTrace");
        let (start, end) = (format_ms_date(start), format_ms_date(end));
        let rows: Vec<RwsRow> = page
            .iter()
            .enumerate()
            .map(|(i, r)| r.rws_verbose_row(&start, &end, index(i), &service))
            .collect();
        if params.get("$top").is_some() {
            HttpResponse::Ok().json(VerboseArray { d: rows })
        } else {
            let next = full.then(|| format!("{origin}/ecp/{next}"));
            HttpResponse::Ok().json(VerboseResults {
                d: Results {
                    results: rows,
                    next,
                },
            })
        }
    } else {
        let (start, end) = (format_window(start), format_window(end));
        HttpResponse::Ok().json(RwsPage {
            metadata: format!(
                "{origin}/ecp/ReportingWebService/Reporting.svc/$metadata#MessageTrace"
            ),
            value: page
                .iter()
                .enumerate()
                .map(|(i, r)| r.rws_row(&start, &end, index(i)))
                .collect(),
            next_link: full.then(|| format!("../../{next}")),
        })
    };
    let counters = &state.counters;
    counters.bump(&counters.pages_served, 1);
    counters.bump(&counters.rows_served, n);
    tracing::debug!(
        api = "rws",
        rows = n,
        skip,
        more = full,
        "simulator served a page"
    );
    response
}

/// An RWS JSON light page: `odata.metadata`, `value`, a relative `odata.nextLink` when full.
#[derive(Serialize)]
struct RwsPage<'a> {
    #[serde(rename = "odata.metadata")]
    metadata: String,
    value: Vec<RwsRow<'a>>,
    #[serde(rename = "odata.nextLink", skip_serializing_if = "Option::is_none")]
    next_link: Option<String>,
}

/// Verbose RWS with `$top`: `{"d":[...]}`.
#[derive(Serialize)]
struct VerboseArray<'a> {
    d: Vec<RwsRow<'a>>,
}

/// Verbose RWS without `$top`: `{"d":{"results":[...],"__next":…}}`.
#[derive(Serialize)]
struct VerboseResults<'a> {
    d: Results<'a>,
}

/// The `d` object of [`VerboseResults`].
#[derive(Serialize)]
struct Results<'a> {
    results: Vec<RwsRow<'a>>,
    #[serde(rename = "__next", skip_serializing_if = "Option::is_none")]
    next: Option<String>,
}
