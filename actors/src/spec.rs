//! What the engine needs to know about a source, free of TOML: the product crate builds these
//! from its validated configuration (or a host application builds them in code).

use crate::assertion::{AssertionAlg, ClientCertificate};
use crate::dialect::Api;
use crate::retry::RetryPolicy;
use crate::secret::Secret;
use crate::time::TimeExpr;
use std::sync::Arc;
use std::time::Duration;

/// How a source proves who it is.
#[derive(Clone, Debug)]
pub enum AuthSpec {
    /// HTTP Basic on every request (legacy endpoints and compatible proxies).
    Basic {
        /// User name.
        username: String,
        /// Password.
        password: Secret,
    },
    /// OAuth 2.0 client credentials: a bearer token from Entra ID, obtained with a client secret
    /// or a certificate (signed client assertion).
    OAuth {
        /// Where tokens come from; tokens are cached and shared per this key.
        token: TokenSpec,
        /// How the application proves who it is to the token endpoint.
        credential: ClientCredential,
    },
}

impl AuthSpec {
    /// The token identity of an OAuth source, `None` for Basic.
    pub fn token_spec(&self) -> Option<&TokenSpec> {
        match self {
            AuthSpec::OAuth { token, .. } => Some(token),
            AuthSpec::Basic { .. } => None,
        }
    }
}

/// What an application presents to the token endpoint.
#[derive(Clone, Debug)]
pub enum ClientCredential {
    /// A client secret (`client_secret=`).
    Secret(Secret),
    /// A certificate: a client assertion JWT signed fresh for every token request.
    Certificate {
        /// The certificate and its private key.
        certificate: Arc<ClientCertificate>,
        /// PS256 (`x5t#S256`) or RS256 (`x5t`).
        alg: AssertionAlg,
    },
    /// A workload identity federation token (Kubernetes service-account token, GitHub OIDC
    /// token, …) sent as the client assertion; the file is read at every token request because
    /// the platform rotates it.
    Federated {
        /// The file holding the current token.
        token_file: std::path::PathBuf,
    },
    /// No credential: the machine's managed identity, asked of the instance metadata endpoint
    /// (with [`TokenEndpoint::Imds`]; `client_id` empty for the system-assigned identity).
    ManagedIdentity {
        /// Refuse a token without an app role (`roles` claim): the message trace APIs authorize
        /// by app role, so such a token would be refused on every page. Azure Monitor (the
        /// Sentinel sink) authorizes by an Azure role on the rule instead: its tokens carry none.
        app_role_required: bool,
    },
}

/// Which Entra ID token endpoint to call (`token_endpoint` in the configuration).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TokenEndpoint {
    /// `/{tenant}/oauth2/v2.0/token` with `scope=<audience>/.default` (the default).
    V2,
    /// `/{tenant}/oauth2/token` with `resource=<audience>`.
    V1,
    /// The Azure instance metadata endpoint, `/metadata/identity/oauth2/token` (GET, v1-shaped:
    /// `resource=<audience>`), for [`ClientCredential::ManagedIdentity`]; not a `token_endpoint`
    /// value of the configuration.
    Imds,
}

impl TokenEndpoint {
    /// The token URL of `tenant` at the authority `login_url`.
    pub fn url(self, login_url: &url::Url, tenant: &str) -> String {
        let base = login_url.as_str().trim_end_matches('/');
        match self {
            TokenEndpoint::V2 => format!("{base}/{tenant}/oauth2/v2.0/token"),
            TokenEndpoint::V1 => format!("{base}/{tenant}/oauth2/token"),
            TokenEndpoint::Imds => format!("{base}/metadata/identity/oauth2/token"),
        }
    }
}

/// The identity a token is issued to: tokens are cached and shared per this key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TokenSpec {
    /// Authority host, e.g. `https://login.microsoftonline.com` (for [`TokenEndpoint::Imds`]: the
    /// metadata endpoint, `http://169.254.169.254`).
    pub login_url: url::Url,
    /// Directory (tenant) id.
    pub tenant_id: String,
    /// Application (client) id.
    pub client_id: String,
    /// Token audience, e.g. `https://graph.microsoft.com`.
    pub audience: String,
    /// v1 or v2 endpoint.
    pub endpoint: TokenEndpoint,
    /// The proxy token requests go through.
    pub proxy: Option<crate::proxy::Proxy>,
}

impl TokenSpec {
    /// The token URL.
    pub fn token_url(&self) -> String {
        self.endpoint.url(&self.login_url, &self.tenant_id)
    }
}

/// How a run's window is chosen.
#[derive(Clone, Debug)]
pub struct WindowSpec {
    /// Start of the first run's window (later runs continue from the cursor).
    pub start: TimeExpr,
    /// End of every run's window: the lag that lets late rows arrive.
    pub end: TimeExpr,
    /// Longest slice asked of the API in one query.
    pub max_slice: chrono::Duration,
    /// Re-read this trailing span of what earlier runs collected, for late rows and status
    /// changes (`reread`); `None` = off.
    pub reread: Option<chrono::Duration>,
}

/// One source, ready to run.
#[derive(Clone, Debug)]
pub struct SourceSpec {
    /// The input id.
    pub id: String,
    /// Which API dialect.
    pub api: Api,
    /// The API URL (first page is built from it).
    pub url: url::Url,
    /// Rows per page (`$top`).
    pub page_size: u32,
    /// Window planning.
    pub window: WindowSpec,
    /// Authentication.
    pub auth: AuthSpec,
    /// Retries of failed requests.
    pub retry: RetryPolicy,
    /// Per-request timeout including the body; `None` = unlimited.
    pub request_timeout: Option<Duration>,
    /// Largest response body accepted.
    pub max_body_bytes: usize,
    /// Static fields added to every event.
    pub fields: serde_json::Map<String, serde_json::Value>,
    /// Keep events whose time falls outside their window.
    pub disable_time_filter: bool,
    /// Which rows have their per-recipient details fetched (Graph only).
    pub details: crate::dialect::details::DetailsMode,
    /// 6-field cron expression of the schedule (seconds first).
    pub cron: String,
    /// Flush sled after every page (the durability guarantee). Off only for benchmarks.
    pub durable: bool,
    /// Pages fetched ahead while the one before them is delivered and committed
    /// ([`crate::fetcher::PREFETCH_PAGES`] by default; 0 only to measure what it gains). At most
    /// one page (one commit group, [`SourceSpec::commit_group`]) is delivered twice after a crash
    /// either way, and (with `durable` on) at most one page requested twice: the pages fetched ahead are
    /// kept in the spool until committed.
    pub prefetch: usize,
    /// The most pages committed together ([`crate::fetcher::COMMIT_GROUP_PAGES`], 1, by
    /// default): above 1, a page whose next page is already fetched and made ready is handed to the sinks
    /// unsynced ([`crate::event::Batch::sync`]) and committed with the pages after it, with one
    /// sink `fsync` and one checkpoint flush for them all. A crash then delivers again at most
    /// the pages of one group (one page when they did not arrive back to back); 1 commits every
    /// page on its own.
    pub commit_group: usize,
    /// What one query's next links may do before they are taken for a loop.
    pub link_limits: crate::link_guard::LinkLimits,
    /// Run a task that failed with a non-fatal error again, up to this many times
    /// (`reschedule_tasks` / `task_reschedule_limit`); `None` = never.
    pub reschedule_limit: Option<u32>,
    /// The proxy API requests go through (`proxy_url`, or the environment's).
    pub proxy: Option<crate::proxy::Proxy>,
    /// The API request budget, shared by every source with the same [`SourceSpec::quota_key`].
    pub quota: Option<crate::quota::QuotaSpec>,
}

impl SourceSpec {
    /// Which budget this source draws from: the API host and the tenant (or Basic user).
    pub fn quota_key(&self) -> String {
        let host = self.url.host_str().unwrap_or_default();
        let port = self.url.port().map(|p| format!(":{p}")).unwrap_or_default();
        let who = match &self.auth {
            AuthSpec::Basic { username, .. } => username.clone(),
            AuthSpec::OAuth { token, .. } => token.tenant_id.to_ascii_lowercase(),
        };
        format!("{host}{port}/{who}")
    }
}
