//! The simulated Microsoft Entra ID token endpoints and the checks of the data endpoints.
//!
//! Tokens are JWT-shaped (`header.claims.signature`, base64url) but only their presence in the
//! server's table counts: the table remembers each token's audience and expiry. Client
//! assertions, on the other hand, are verified for real (see `check_assertion`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{http::StatusCode, web, HttpRequest, HttpResponse};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use chrono::Utc;
use serde_json::{json, Value};

use super::model::splitmix64;
use super::query::Params;
use super::server::State;

/// The audience a data endpoint wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Api {
    /// Microsoft Graph (`https://graph.microsoft.com`).
    Graph,
    /// Exchange Online Reporting Web Service (`https://outlook.office365.com`).
    Rws,
}

/// One issued access token.
#[derive(Clone, Debug)]
pub(crate) struct IssuedToken {
    /// The audience it was issued for (scope without `/.default`, or v1 `resource`).
    pub audience: String,
    /// When it stops being accepted.
    pub expires: Instant,
}

/// Why a bearer token was refused (the text goes into the Graph error message).
pub(crate) enum TokenError {
    Missing,
    Unknown,
    Expired,
    Audience,
}

impl TokenError {
    pub(crate) fn message(&self) -> &'static str {
        match self {
            TokenError::Missing => "Access token is empty.",
            TokenError::Unknown => {
                "Access token validation failure. The token was not issued by this tenant or was revoked."
            }
            TokenError::Expired => "Lifetime validation failed, the token is expired.",
            TokenError::Audience => "Access token validation failure. Invalid audience.",
        }
    }
}

/// Whether an audience (URL or app id) is one the API accepts.
fn audience_fits(audience: &str, api: Api) -> bool {
    let a = audience.to_ascii_lowercase();
    match api {
        Api::Graph => a.contains("graph.") || a == "00000003-0000-0000-c000-000000000000",
        Api::Rws => {
            a.contains("outlook.")
                || a.contains("office365")
                || a.contains("exchange")
                || a == "00000002-0000-0ff1-ce00-000000000000"
        }
    }
}

/// `Authorization: Bearer …` → the token text.
pub(crate) fn bearer(req: &HttpRequest) -> Option<&str> {
    let value = req.headers().get("authorization")?.to_str().ok()?.trim();
    let (scheme, rest) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim())
        .filter(|t| !t.is_empty())
}

/// `Authorization: Basic …` → (user, password).
pub(crate) fn basic(req: &HttpRequest) -> Option<(String, String)> {
    let value = req.headers().get("authorization")?.to_str().ok()?.trim();
    let (scheme, rest) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(rest.trim()).ok()?).ok()?;
    let (user, pass) = decoded.split_once(':')?;
    Some((user.to_string(), pass.to_string()))
}

impl State {
    /// Checks the request's bearer token for `api`.
    pub(crate) fn check_bearer(&self, req: &HttpRequest, api: Api) -> Result<(), TokenError> {
        let token = bearer(req).ok_or(TokenError::Missing)?;
        let tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        let issued = tokens.get(token).ok_or(TokenError::Unknown)?;
        if Instant::now() >= issued.expires {
            return Err(TokenError::Expired);
        }
        if self.config.check_audience && !audience_fits(&issued.audience, api) {
            return Err(TokenError::Audience);
        }
        Ok(())
    }

    /// Checks Basic credentials against the configured username/password (if any).
    pub(crate) fn check_basic(&self, req: &HttpRequest) -> bool {
        match (&self.config.username, &self.config.password, basic(req)) {
            (Some(u), Some(p), Some((user, pass))) => *u == user && *p == pass,
            _ => false,
        }
    }

    /// A new access token for `audience`; `roles` false leaves out the `roles` claim, as Entra
    /// does for an identity that was granted no app role.
    fn issue_token(&self, audience: &str, roles: bool) -> (String, u64) {
        let lifetime = self.config.token_lifetime_secs;
        let lifetime_i64 = i64::try_from(lifetime).unwrap_or(i64::MAX);
        let n = self.next_seq();
        let now = Utc::now().timestamp();
        let header = URL_SAFE_NO_PAD.encode(r#"{"typ":"JWT","alg":"RS256","kid":"msgtrace-sim"}"#);
        let mut claims = json!({
            "aud": audience,
            "iss": format!("https://sts.windows.net/{}/", self.config.tenant_id),
            "iat": now,
            "nbf": now,
            "exp": now.saturating_add(lifetime_i64),
            "appid": self.config.client_id,
            "tid": self.config.tenant_id,
            "roles": ["ExchangeMessageTrace.Read.All", "ReportingWebService.Read.All"],
            "jti": n,
        });
        if !roles {
            claims.as_object_mut().map(|c| c.remove("roles"));
        }
        let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
        let mut sig = Vec::with_capacity(32);
        let mut h = splitmix64(self.config.model.seed ^ n ^ 0x746f6b656e);
        for _ in 0..4 {
            h = splitmix64(h);
            sig.extend_from_slice(&h.to_le_bytes());
        }
        let token = format!("{header}.{claims}.{}", URL_SAFE_NO_PAD.encode(sig));
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        let now_i = Instant::now();
        tokens.retain(|_, t| t.expires > now_i);
        tokens.insert(
            token.clone(),
            IssuedToken {
                audience: audience.to_string(),
                // A lifetime beyond what Instant can hold means "never" (about a century here).
                expires: now_i
                    .checked_add(Duration::from_secs(lifetime))
                    .unwrap_or(now_i + Duration::from_secs(100 * 365 * 86_400)),
            },
        );
        (token, lifetime)
    }
}

/// An Entra ID error body (`error`, `error_description`, `error_codes`, `timestamp`, `trace_id`,
/// `correlation_id`, `error_uri`).
fn aad_error(
    state: &State,
    status: StatusCode,
    error: &str,
    code: u32,
    text: &str,
) -> HttpResponse {
    let trace_id = state.request_id();
    let correlation_id = state.request_id();
    let timestamp = Utc::now().format("%Y-%m-%d %H:%M:%SZ").to_string();
    let body = json!({
        "error": error,
        "error_description": format!(
            "AADSTS{code}: {text} Trace ID: {trace_id} Correlation ID: {correlation_id} Timestamp: {timestamp}"
        ),
        "error_codes": [code],
        "timestamp": timestamp,
        "trace_id": trace_id,
        "correlation_id": correlation_id,
        "error_uri": format!("https://login.microsoftonline.com/error?code={code}"),
    });
    HttpResponse::build(status).json(body)
}

const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Decodes one base64url JWT segment as JSON.
fn jwt_part(part: &str) -> Option<Value> {
    let bytes = URL_SAFE_NO_PAD.decode(part.trim_end_matches('=')).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Every `CERTIFICATE` block of a PEM text, as DER.
pub(crate) fn pem_certificates(pem: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut body: Option<String> = None;
    for line in pem.lines().map(str::trim) {
        if line == "-----BEGIN CERTIFICATE-----" {
            body = Some(String::new());
        } else if line == "-----END CERTIFICATE-----" {
            if let Some(der) = body.take().and_then(|b| STANDARD.decode(b).ok()) {
                out.push(der);
            }
        } else if let Some(b) = body.as_mut() {
            b.push_str(line);
        }
    }
    out
}

/// The DER `RSAPublicKey` of a DER certificate, if it has an RSA key.
fn rsa_public_key(cert_der: &[u8]) -> Option<Vec<u8>> {
    use x509_cert::der::Decode as _;
    let cert = x509_cert::Certificate::from_der(cert_der).ok()?;
    let spki = &cert.tbs_certificate.subject_public_key_info;
    (spki.algorithm.oid.to_string() == "1.2.840.113549.1.1.1")
        .then(|| spki.subject_public_key.raw_bytes().to_vec())
}

fn hex_upper(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// An AADSTS code and its text.
type Refusal = (u32, String);

/// Checks a client assertion the way Entra ID does: the signing certificate is found by its
/// thumbprint among the registered ones, the signature verified (RS256 or PS256), then `iss` /
/// `sub`, `aud` (one of `audiences`: the token URLs of this tenant), `nbf` / `exp`, and `jti`
/// reuse.
///
/// Codes (Entra's where Microsoft documents them): 50027 malformed JWT; 700027 invalid signature
/// or unknown key; 700021 issuer/subject not the client id; 700023 audience not the token URL;
/// 700024 outside `nbf`..`exp`; 7000274 `jti` already used (Microsoft publishes no code for a
/// replayed assertion; this one is the simulator's choice).
fn check_assertion(
    state: &State,
    assertion: &str,
    client_id: &str,
    audiences: &[String],
) -> Result<(), Refusal> {
    let malformed = || (50027, "JWT token is invalid or malformed.".to_string());
    let parts: Vec<&str> = assertion.split('.').collect();
    let [header_b64, claims_b64, sig_b64] = parts.as_slice() else {
        return Err(malformed());
    };
    let header = jwt_part(header_b64).ok_or_else(malformed)?;
    let claims = jwt_part(claims_b64).ok_or_else(malformed)?;
    let sig = URL_SAFE_NO_PAD
        .decode(sig_b64.trim_end_matches('='))
        .map_err(|_| malformed())?;
    let hstr = |k: &str| header.get(k).and_then(Value::as_str);
    // The key: x5t#S256 (SHA-256 of the DER certificate) first, else x5t (SHA-1).
    let wanted = hstr("x5t#S256")
        .map(|t| (t, &ring::digest::SHA256))
        .or_else(|| hstr("x5t").map(|t| (t, &ring::digest::SHA1_FOR_LEGACY_USE_ONLY)));
    let client_thumb = wanted
        .and_then(|(t, _)| URL_SAFE_NO_PAD.decode(t.trim_end_matches('=')).ok())
        .map(|b| hex_upper(&b))
        .unwrap_or_default();
    let not_found = || {
        (
            700027,
            format!(
                "Client assertion contains an invalid signature. [Reason - The key was not found., Thumbprint of key used by client: '{client_thumb}', Please visit the Azure Portal, Graph Explorer or directly use MS Graph to see configured keys for app Id '{client_id}'.]"
            ),
        )
    };
    let (thumb, digest_alg) = wanted.ok_or_else(not_found)?;
    let cert = state
        .config
        .client_certificates
        .iter()
        .find(|der| {
            URL_SAFE_NO_PAD.encode(ring::digest::digest(digest_alg, der))
                == thumb.trim_end_matches('=')
        })
        .ok_or_else(not_found)?;
    let public_key = rsa_public_key(cert).ok_or_else(not_found)?;
    let verify_alg: &dyn ring::signature::VerificationAlgorithm = match hstr("alg") {
        Some("RS256") => &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        Some("PS256") => &ring::signature::RSA_PSS_2048_8192_SHA256,
        _ => {
            return Err((
                700027,
                "Client assertion contains an invalid signature. [Reason - The algorithm is not supported.]"
                    .to_string(),
            ))
        }
    };
    let signed = format!("{header_b64}.{claims_b64}");
    ring::signature::UnparsedPublicKey::new(verify_alg, &public_key)
        .verify(signed.as_bytes(), &sig)
        .map_err(|_| {
            (
                700027,
                format!(
                    "Client assertion contains an invalid signature. [Reason - The provided signature value did not match the expected signature value., Thumbprint of key used by client: '{client_thumb}']"
                ),
            )
        })?;
    let claim = |k: &str| claims.get(k).and_then(Value::as_str).unwrap_or_default();
    if claim("iss") != client_id || claim("sub") != client_id {
        return Err((
            700021,
            "Client assertion application identifier doesn't match 'client_id' parameter."
                .to_string(),
        ));
    }
    let aud = claim("aud").trim_end_matches('/');
    if !audiences
        .iter()
        .any(|a| a.trim_end_matches('/').eq_ignore_ascii_case(aud))
    {
        return Err((
            700023,
            format!("Client assertion audience claim does not match Realm issuer. The audience in the assertion was '{aud}'."),
        ));
    }
    let now = Utc::now().timestamp();
    let exp = claims.get("exp").and_then(Value::as_i64).unwrap_or(0);
    let nbf = claims.get("nbf").and_then(Value::as_i64).unwrap_or(0);
    // Entra allows a few minutes of clock skew on nbf.
    if exp <= now || nbf > now + 300 {
        return Err((
            700024,
            format!("Client assertion is not within its valid time range. Current time: {now}, assertion valid from {nbf}, expiry time of assertion {exp}."),
        ));
    }
    let jti = claim("jti");
    if jti.is_empty() {
        return Err(malformed());
    }
    let mut seen = state.seen_jtis.lock().unwrap_or_else(|e| e.into_inner());
    seen.retain(|_, e| *e > now);
    if seen.contains_key(jti) {
        return Err((
            7000274,
            "Client assertion has already been used: its jti was seen before. Sign a new assertion for every request.".to_string(),
        ));
    }
    seen.insert(jti.to_string(), exp);
    Ok(())
}

/// Which token endpoint was called.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Flavor {
    V1,
    V2,
}

async fn token(
    state: &State,
    req: &HttpRequest,
    tenant: &str,
    body: &[u8],
    flavor: Flavor,
) -> HttpResponse {
    state.counters.bump(&state.counters.token_requests, 1);
    let cfg = &state.config;
    let form = Params::parse(&String::from_utf8_lossy(body));
    if !cfg.accepts_tenant(tenant) {
        let text = format!(
            "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."
        );
        return aad_error(
            state,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            90002,
            &text,
        );
    }
    if form.get("grant_type") != Some("client_credentials") {
        let text = "The app requested an unsupported grant type.";
        return aad_error(
            state,
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70003,
            text,
        );
    }
    let Some(client_id) = form.get("client_id") else {
        let text = "The request body must contain the following parameter: 'client_id'.";
        return aad_error(
            state,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            900144,
            text,
        );
    };
    if client_id != cfg.client_id {
        let text = format!(
            "Application with identifier '{client_id}' was not found in the directory '{tenant}'."
        );
        return aad_error(
            state,
            StatusCode::BAD_REQUEST,
            "invalid_client",
            700016,
            &text,
        );
    }
    match (
        form.get("client_secret"),
        form.get("client_assertion_type"),
        form.get("client_assertion"),
    ) {
        (Some(secret), _, _) => {
            if secret != cfg.client_secret {
                let text = format!(
                    "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{client_id}'."
                );
                return aad_error(
                    state,
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    7000215,
                    &text,
                );
            }
        }
        (None, Some(JWT_BEARER), Some(assertion)) if cfg.identity.is_federated(assertion) => {
            if let Err((code, text)) = cfg.identity.check_federated(assertion) {
                return aad_error(
                    state,
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    code,
                    &text,
                );
            }
        }
        (None, Some(JWT_BEARER), Some(assertion)) => {
            // Entra accepts the URL of either token endpoint of the tenant as `aud`.
            let info = req.connection_info();
            let base = format!("{}://{}/{tenant}/oauth2", info.scheme(), info.host());
            let audiences = [format!("{base}/v2.0/token"), format!("{base}/token")];
            let checked = if cfg.accept_client_assertion {
                check_assertion(state, assertion, client_id, &audiences)
            } else {
                Err((
                    700027,
                    "Client assertion contains an invalid signature. [Reason - The key was not found.]"
                        .to_string(),
                ))
            };
            if let Err((code, text)) = checked {
                let status = if code == 50027 {
                    StatusCode::BAD_REQUEST
                } else {
                    StatusCode::UNAUTHORIZED
                };
                return aad_error(state, status, "invalid_client", code, &text);
            }
        }
        _ => {
            let text = "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.";
            return aad_error(
                state,
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                7000218,
                text,
            );
        }
    }
    let audience = match flavor {
        Flavor::V2 => {
            let Some(scope) = form.get("scope") else {
                let text = "The request body must contain the following parameter: 'scope'.";
                return aad_error(
                    state,
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    90014,
                    text,
                );
            };
            match scope
                .split_whitespace()
                .find_map(|s| s.strip_suffix("/.default"))
            {
                Some(a) if !a.is_empty() => a.to_string(),
                _ => {
                    let text = format!(
                        "The provided value for the input parameter 'scope' is not valid. The scope {scope} is not valid."
                    );
                    return aad_error(
                        state,
                        StatusCode::BAD_REQUEST,
                        "invalid_scope",
                        70011,
                        &text,
                    );
                }
            }
        }
        Flavor::V1 => match form.get("resource").map(|r| r.trim_end_matches('/')) {
            Some(r) if !r.is_empty() => r.to_string(),
            _ => {
                let text = "The request body must contain the following parameter: 'resource'.";
                return aad_error(
                    state,
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    90014,
                    text,
                );
            }
        },
    };
    let (access_token, lifetime) = state.issue_token(&audience, true);
    state.counters.bump(&state.counters.tokens_issued, 1);
    let body = match flavor {
        Flavor::V2 => json!({
            "token_type": "Bearer",
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": access_token,
        }),
        Flavor::V1 => {
            let now = Utc::now().timestamp();
            json!({
                "token_type": "Bearer",
                "expires_in": lifetime.to_string(),
                "ext_expires_in": lifetime.to_string(),
                "expires_on": now.saturating_add(i64::try_from(lifetime).unwrap_or(i64::MAX)).to_string(),
                "not_before": now.to_string(),
                "resource": audience,
                "access_token": access_token,
            })
        }
    };
    HttpResponse::Ok().json(body)
}

/// `POST /{tenant}/oauth2/v2.0/token` (client credentials; `scope=<audience>/.default`).
pub(crate) async fn token_v2(
    state: web::Data<State>,
    req: HttpRequest,
    tenant: web::Path<String>,
    body: web::Bytes,
) -> HttpResponse {
    token(&state, &req, &tenant, &body, Flavor::V2).await
}

/// `POST /{tenant}/oauth2/token` (client credentials; `resource=<audience>`).
pub(crate) async fn token_v1(
    state: web::Data<State>,
    req: HttpRequest,
    tenant: web::Path<String>,
    body: web::Bytes,
) -> HttpResponse {
    token(&state, &req, &tenant, &body, Flavor::V1).await
}

/// The audience Entra ID expects in a workload identity token.
pub const FEDERATED_AUDIENCE: &str = "api://AzureADTokenExchange";

/// The instance metadata endpoint's token path.
pub(crate) const IMDS_PATH: &str = "/metadata/identity/oauth2/token";

/// Secretless sign-in of the simulated tenant: a federated credential on the application and the
/// managed identity of the simulated machine. Clones share one state (the server's copy of the
/// [`SimConfig`](super::SimConfig) included), so that a test rotates a token while the server runs.
#[derive(Clone, Debug, Default)]
pub struct SimIdentity(Arc<Mutex<Identities>>);

#[derive(Debug, Default)]
struct Identities {
    federated: Option<Federated>,
    managed: Option<Managed>,
}

/// A federated identity credential and the platform's current token for it.
#[derive(Debug)]
struct Federated {
    issuer: String,
    subject: String,
    current: String,
    issued: u64,
}

/// The machine's managed identity.
#[derive(Debug)]
struct Managed {
    /// A user-assigned identity's client id; `None`: system-assigned.
    client_id: Option<String>,
    /// Whether its service principal holds the API's app role.
    app_role: bool,
}

impl SimIdentity {
    fn lock(&self) -> std::sync::MutexGuard<'_, Identities> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a federated credential (`issuer`, `subject`, audience [`FEDERATED_AUDIENCE`]) to the
    /// application and returns the platform's first token for it, as it would write it to the
    /// workload's token file.
    pub fn federate(&self, issuer: &str, subject: &str) -> String {
        let mut ids = self.lock();
        let fed = ids.federated.insert(Federated {
            issuer: issuer.to_owned(),
            subject: subject.to_owned(),
            current: String::new(),
            issued: 0,
        });
        fed.rotate()
    }

    /// The platform rotates the token: returns the new one, and from now on refuses the old one
    /// (as expired). Panics without [`SimIdentity::federate`].
    pub fn rotate_federated_token(&self) -> String {
        self.lock()
            .federated
            .as_mut()
            .expect("federate() first")
            .rotate()
    }

    /// Assigns a managed identity to the simulated machine: `client_id` `None` is the
    /// system-assigned identity (IMDS requests name no client id), `Some` a user-assigned one
    /// (requests must name it). `app_role`: whether its service principal was granted the API's
    /// app role; without it tokens carry no `roles` claim.
    pub fn assign_managed_identity(&self, client_id: Option<&str>, app_role: bool) {
        self.lock().managed = Some(Managed {
            client_id: client_id.map(str::to_owned),
            app_role,
        });
    }

    /// Whether `assertion` is a workload token rather than a certificate's assertion (no
    /// thumbprint in its header) and a federated credential exists.
    fn is_federated(&self, assertion: &str) -> bool {
        let header = assertion.split('.').next().and_then(jwt_part);
        let signed_by_certificate =
            header.is_some_and(|h| h.get("x5t").is_some() || h.get("x5t#S256").is_some());
        !signed_by_certificate && self.lock().federated.is_some()
    }

    /// Checks a workload token as Entra ID checks it against the federated credential: issuer,
    /// subject and audience (AADSTS700211, 700213, 700212), then its lifetime (700024; a rotated
    /// token counts as expired).
    fn check_federated(&self, assertion: &str) -> Result<(), Refusal> {
        let ids = self.lock();
        let Some(fed) = ids.federated.as_ref() else {
            return Err((700211, "No federated identity credential.".to_owned()));
        };
        let claims = assertion
            .split('.')
            .nth(1)
            .and_then(jwt_part)
            .ok_or_else(|| (50027, "JWT token is invalid or malformed.".to_owned()))?;
        let claim = |k: &str| {
            claims
                .get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let mismatch = |code: u32, what: &str, value: String| {
            Err((
                code,
                format!(
                    "No matching federated identity record found for presented assertion {what} '{value}'. \
                     Please check your federated identity credential Subject, Audience and Issuer against the presented assertion."
                ),
            ))
        };
        if claim("iss") != fed.issuer {
            return mismatch(700211, "issuer", claim("iss"));
        }
        if claim("sub") != fed.subject {
            return mismatch(700213, "subject", claim("sub"));
        }
        if claim("aud") != FEDERATED_AUDIENCE {
            return mismatch(700212, "audience", claim("aud"));
        }
        let exp = claims.get("exp").and_then(Value::as_i64).unwrap_or(0);
        if assertion != fed.current || exp <= Utc::now().timestamp() {
            return Err((
                700024,
                format!("Client assertion is not within its valid time range. Current time: {}, expiry time of assertion {exp}.", Utc::now().timestamp()),
            ));
        }
        Ok(())
    }
}

impl Federated {
    /// A new token (JWT-shaped; the simulator compares it whole) replacing the current one.
    fn rotate(&mut self) -> String {
        self.issued += 1;
        let now = Utc::now().timestamp();
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","kid":"sim-oidc"}"#);
        let claims = json!({
            "iss": self.issuer,
            "sub": self.subject,
            "aud": FEDERATED_AUDIENCE,
            "iat": now,
            "exp": now + 3600,
            "n": self.issued,
        });
        self.current = format!(
            "{header}.{}.{}",
            URL_SAFE_NO_PAD.encode(claims.to_string()),
            URL_SAFE_NO_PAD.encode(self.issued.to_le_bytes())
        );
        self.current.clone()
    }
}

/// An IMDS error body (`error`, `error_description`).
fn imds_error(error: &str, description: &str) -> HttpResponse {
    HttpResponse::BadRequest().json(json!({"error": error, "error_description": description}))
}

/// `GET /metadata/identity/oauth2/token?api-version=2018-02-01&resource=…[&client_id=…]` with
/// `Metadata: true`: the instance metadata endpoint's managed identity token, numbers as strings.
pub(crate) async fn imds_token(state: web::Data<State>, req: HttpRequest) -> HttpResponse {
    state.counters.bump(&state.counters.token_requests, 1);
    let metadata = req.headers().get("metadata").and_then(|v| v.to_str().ok());
    if metadata != Some("true") {
        return imds_error("invalid_request", "Required metadata header not specified");
    }
    let query = Params::parse(req.query_string());
    if query.get("api-version") != Some("2018-02-01") {
        return imds_error("invalid_request", "Invalid version");
    }
    let Some(resource) = query.get("resource").filter(|r| !r.is_empty()) else {
        return imds_error(
            "invalid_request",
            "Required query variable 'resource' is missing",
        );
    };
    let app_role = {
        let ids = state.config.identity.lock();
        match &ids.managed {
            Some(m) if m.client_id.as_deref() == query.get("client_id") => m.app_role,
            _ => return imds_error("invalid_request", "Identity not found"),
        }
    };
    let resource = resource.trim_end_matches('/').to_owned();
    let (access_token, lifetime) = state.issue_token(&resource, app_role);
    state.counters.bump(&state.counters.tokens_issued, 1);
    let now = Utc::now().timestamp();
    let expires_on = now.saturating_add(i64::try_from(lifetime).unwrap_or(i64::MAX));
    HttpResponse::Ok().json(json!({
        "access_token": access_token,
        "client_id": query.get("client_id").unwrap_or(&state.config.client_id),
        "expires_in": lifetime.to_string(),
        "expires_on": expires_on.to_string(),
        "ext_expires_in": lifetime.to_string(),
        "not_before": now.to_string(),
        "resource": resource,
        "token_type": "Bearer",
    }))
}
