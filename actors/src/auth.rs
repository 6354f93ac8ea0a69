//! The AuthToken actor: one cached token per (authority, tenant, client, audience), shared by
//! every source that uses it, refreshed ahead of expiry, with one request in flight however many
//! fetchers ask at once.

use crate::http;
use crate::identity;
use crate::secret::Secret;
use crate::spec::{AuthSpec, ClientCredential, TokenSpec};
use crate::token::{self, AuthError, Token};
use actix::prelude::*;
use base64::Engine as _;
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

/// Asks for the `Authorization` header value for a source.
#[derive(Message, Clone)]
#[rtype(result = "Result<AuthHeader, AuthError>")]
pub struct GetAuthHeader(pub AuthSpec);

/// An `Authorization` header value (a secret: never logged).
#[derive(Clone, Debug)]
pub struct AuthHeader(pub Secret);

/// The API refused a token (HTTP 401): drop it so the next request fetches a new one.
#[derive(Message)]
#[rtype(result = "()")]
pub struct InvalidateToken {
    /// Whose token.
    pub spec: TokenSpec,
    /// The header that was refused; a newer token is kept.
    pub refused: AuthHeader,
}

/// Counters for observability and tests.
#[derive(Message)]
#[rtype(result = "AuthStats")]
pub struct GetAuthStats;

/// What the AuthToken actor has done so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuthStats {
    /// Tokens obtained.
    pub tokens_fetched: u64,
    /// Tokens dropped after a 401.
    pub invalidations: u64,
    /// Failed token requests.
    pub failures: u64,
}

#[derive(Default)]
struct Entry {
    token: Option<Token>,
    in_flight: bool,
    waiters: Vec<oneshot::Sender<Result<Token, AuthError>>>,
}

/// The AuthToken actor.
#[derive(Default)]
pub struct AuthToken {
    cache: HashMap<TokenSpec, Entry>,
    stats: AuthStats,
}

impl Actor for AuthToken {
    type Context = Context<Self>;
}

impl Supervised for AuthToken {}

fn bearer(t: &Token) -> AuthHeader {
    AuthHeader(Secret::new(format!("Bearer {}", t.value.expose())))
}

const TOKEN_ATTEMPTS: u32 = 4;

/// Waits between token requests: 1 s, 2 s, 4 s.
const TOKEN_BACKOFF: crate::retry::Backoff =
    crate::retry::Backoff::doubling(Duration::from_secs(1), Duration::from_secs(4));

/// One token request with `credential`: a form to the Entra token endpoint (a fresh assertion,
/// or the federated token as it is in its file now), or a GET to the instance metadata endpoint.
async fn request_once(spec: &TokenSpec, credential: &ClientCredential) -> Result<Token, AuthError> {
    let now = chrono::Utc::now();
    let url = spec.token_url();
    let form = match credential {
        ClientCredential::ManagedIdentity { app_role_required } => {
            return identity::imds_token(spec, *app_role_required, now).await
        }
        ClientCredential::Secret(secret) => token::secret_form(spec, secret),
        // A fresh assertion (new jti, current nbf/exp) for every request.
        ClientCredential::Certificate { certificate, alg } => {
            match certificate.client_assertion(*alg, &spec.client_id, &url, now) {
                Ok(assertion) => token::assertion_form(spec, &assertion),
                Err(e) => return Err(AuthError::Rejected(e.to_string())),
            }
        }
        ClientCredential::Federated { token_file } => {
            token::assertion_form(spec, &identity::read_federated_token(token_file)?)
        }
    };
    let response = http::post_form(
        &url,
        &form,
        Some(Duration::from_secs(60)),
        spec.proxy.as_ref(),
    )
    .await
    .map_err(|e| AuthError::Unavailable(format!("token request to {url} failed: {e}")))?;
    if response.status == 200 {
        return token::parse_token_response(&response.body, now);
    }
    let mut error = token::entra_error(response.status, &response.body, spec);
    if let AuthError::Rejected(message) = &mut error {
        match credential {
            ClientCredential::Certificate { certificate, .. } => message.push_str(&format!(
                " [certificate {}, thumbprint {}]",
                certificate.subject(),
                certificate.thumbprint()
            )),
            ClientCredential::Federated { token_file } => {
                message.push_str(&format!(" [federated token from {}]", token_file.display()));
                // An expired workload token: the platform may have replaced it just after it
                // was read, so the next attempt reads the file again.
                if message.contains("AADSTS700024") {
                    error = AuthError::Unavailable(std::mem::take(message));
                }
            }
            ClientCredential::Secret(_) | ClientCredential::ManagedIdentity { .. } => {}
        }
    }
    Err(error)
}

impl AuthToken {
    fn start_fetch(
        &mut self,
        spec: TokenSpec,
        credential: ClientCredential,
        ctx: &mut Context<Self>,
    ) {
        let entry = self.cache.entry(spec.clone()).or_default();
        if entry.in_flight {
            return;
        }
        entry.in_flight = true;
        let fut = request_token(spec.clone(), credential);
        ctx.spawn(guarded(fut).into_actor(self).map(move |res, act, _| {
            let entry = act.cache.entry(spec.clone()).or_default();
            entry.in_flight = false;
            match &res {
                Ok(t) => {
                    act.stats.tokens_fetched += 1;
                    info!(
                        client_id = %spec.client_id,
                        audience = %spec.audience,
                        expires_in_secs = (t.expires_at - t.issued_at).num_seconds(),
                        "token refreshed"
                    );
                    entry.token = Some(t.clone());
                }
                Err(e) => {
                    act.stats.failures += 1;
                    warn!(client_id = %spec.client_id, error = %e, "token request failed");
                }
            }
            for w in entry.waiters.drain(..) {
                let _ = w.send(res.clone());
            }
        }));
    }
}

/// Requests a token from the spec's endpoint: up to [`TOKEN_ATTEMPTS`] tries (refused
/// credentials are not tried again), each one a [`request_once`].
async fn request_token(spec: TokenSpec, credential: ClientCredential) -> Result<Token, AuthError> {
    let mut last = AuthError::Unavailable("no attempt".into());
    for attempt in 0..TOKEN_ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(TOKEN_BACKOFF.delay(attempt - 1)).await;
        }
        match request_once(&spec, &credential).await {
            Ok(token) => return Ok(token),
            Err(e @ AuthError::Rejected(_)) => return Err(e),
            Err(e) => last = e,
        }
        warn!(client_id = %spec.client_id, attempt, error = %last, "token request failed, retrying");
    }
    Err(last)
}

/// A token request whose panic (a bug in parsing a response or signing an assertion) is caught
/// and answered as a failed request: the actor, shared by every source, goes on, the waiters get
/// the error, and the next request tries again. Before, the panic ended the engine's thread.
pub(crate) async fn guarded(
    request: impl std::future::Future<Output = Result<Token, AuthError>>,
) -> Result<Token, AuthError> {
    use futures_util::FutureExt as _;
    std::panic::AssertUnwindSafe(request)
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| {
            let what = crate::hook::panic_message(&*panic);
            Err(AuthError::Unavailable(format!(
                "the token request panicked ({what}); the next request tries again"
            )))
        })
}

impl Handler<GetAuthHeader> for AuthToken {
    type Result = ResponseFuture<Result<AuthHeader, AuthError>>;

    fn handle(&mut self, msg: GetAuthHeader, ctx: &mut Context<Self>) -> Self::Result {
        match msg.0 {
            AuthSpec::Basic { username, password } => {
                let raw = format!("{username}:{}", password.expose());
                let header = format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(raw)
                );
                Box::pin(async move { Ok(AuthHeader(Secret::new(header))) })
            }
            AuthSpec::OAuth {
                token: spec,
                credential,
            } => {
                let now = chrono::Utc::now();
                let entry = self.cache.entry(spec.clone()).or_default();
                if let Some(t) = &entry.token {
                    if now < t.expires_at - chrono::Duration::seconds(1) {
                        let header = bearer(t);
                        if t.needs_refresh(now) {
                            debug!(client_id = %spec.client_id, "refreshing token ahead of expiry");
                            self.start_fetch(spec, credential, ctx);
                        }
                        return Box::pin(async move { Ok(header) });
                    }
                }
                let (tx, rx) = oneshot::channel();
                entry.waiters.push(tx);
                self.start_fetch(spec, credential, ctx);
                Box::pin(async move {
                    match rx.await {
                        Ok(Ok(t)) => Ok(bearer(&t)),
                        Ok(Err(e)) => Err(e),
                        Err(_) => Err(AuthError::Unavailable("token actor stopped".into())),
                    }
                })
            }
        }
    }
}

impl Handler<InvalidateToken> for AuthToken {
    type Result = ();

    fn handle(&mut self, msg: InvalidateToken, _: &mut Context<Self>) {
        if let Some(entry) = self.cache.get_mut(&msg.spec) {
            if entry
                .token
                .as_ref()
                .is_some_and(|t| bearer(t).0 == msg.refused.0)
            {
                entry.token = None;
                self.stats.invalidations += 1;
                info!(client_id = %msg.spec.client_id, "token refused by the API, dropped");
            }
        }
    }
}

impl Handler<GetAuthStats> for AuthToken {
    type Result = MessageResult<GetAuthStats>;

    fn handle(&mut self, _: GetAuthStats, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.stats.clone())
    }
}

#[cfg(test)]
mod tests {
    #[actix_rt::test]
    async fn a_token_request_that_panics_is_a_failed_request_not_a_dead_actor() {
        let r = super::guarded(async { panic!("bad response") }).await;
        match r {
            Err(super::AuthError::Unavailable(m)) => assert!(m.contains("bad response"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}
