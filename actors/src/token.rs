//! Tokens from Microsoft Entra ID (client credentials): the request, the response, and when to
//! refresh. The AuthToken actor wraps this.

use crate::secret::Secret;
use crate::spec::{TokenEndpoint, TokenSpec};
use chrono::{DateTime, Utc};

/// A bearer token and its lifetime.
#[derive(Clone, Debug)]
pub struct Token {
    /// The access token.
    pub value: Secret,
    /// When it was obtained.
    pub issued_at: DateTime<Utc>,
    /// When it stops working.
    pub expires_at: DateTime<Utc>,
}

impl Token {
    /// When to fetch the next one: 5 minutes before expiry, but never before 80 % of the
    /// lifetime has passed (so a short-lived token is not refreshed on every request).
    pub fn refresh_at(&self) -> DateTime<Utc> {
        let life = self.expires_at - self.issued_at;
        let by_margin = self.expires_at - chrono::Duration::minutes(5);
        let by_share = self.issued_at + life * 4 / 5;
        by_margin.max(by_share)
    }

    /// Whether it should be replaced at `now`.
    pub fn needs_refresh(&self, now: DateTime<Utc>) -> bool {
        now >= self.refresh_at()
    }
}

/// Why no token could be had.
#[derive(Clone, Debug, thiserror::Error, PartialEq)]
pub enum AuthError {
    /// Entra refused (bad secret, unknown app or tenant...). The message says what to do.
    #[error("{0}")]
    Rejected(String),
    /// The token endpoint could not be reached or answered nonsense; worth retrying.
    #[error("{0}")]
    Unavailable(String),
}

/// The form fields of a client-credentials token request with a client secret.
pub fn secret_form(spec: &TokenSpec, secret: &Secret) -> Vec<(&'static str, String)> {
    let mut form = vec![
        ("grant_type", "client_credentials".to_string()),
        ("client_id", spec.client_id.clone()),
        ("client_secret", secret.expose().to_string()),
    ];
    push_audience(spec, &mut form);
    form
}

/// The form fields of a client-credentials token request with a signed client assertion
/// (certificate credential).
pub fn assertion_form(spec: &TokenSpec, assertion: &Secret) -> Vec<(&'static str, String)> {
    let mut form = vec![
        ("grant_type", "client_credentials".to_string()),
        ("client_id", spec.client_id.clone()),
        (
            "client_assertion_type",
            crate::assertion::JWT_BEARER.to_string(),
        ),
        ("client_assertion", assertion.expose().to_string()),
    ];
    push_audience(spec, &mut form);
    form
}

fn push_audience(spec: &TokenSpec, form: &mut Vec<(&'static str, String)>) {
    match spec.endpoint {
        TokenEndpoint::V2 => form.push((
            "scope",
            format!("{}/.default", spec.audience.trim_end_matches('/')),
        )),
        TokenEndpoint::V1 | TokenEndpoint::Imds => form.push(("resource", spec.audience.clone())),
    }
}

/// Parses a token response (v1: string numbers, `expires_on`; v2: numbers).
pub fn parse_token_response(body: &[u8], now: DateTime<Utc>) -> Result<Token, AuthError> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        AuthError::Unavailable(format!(
            "token endpoint answered with something that is not JSON ({e})"
        ))
    })?;
    let access = v
        .get("access_token")
        .and_then(|a| a.as_str())
        .filter(|a| !a.is_empty())
        .ok_or_else(|| {
            AuthError::Unavailable("token endpoint response has no access_token".into())
        })?;
    let num = |key: &str| -> Option<i64> {
        match v.get(key)? {
            serde_json::Value::Number(n) => n.as_i64(),
            serde_json::Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
    };
    let expires_at = if let Some(secs) = num("expires_in") {
        now + chrono::Duration::seconds(secs.max(0))
    } else if let Some(on) = num("expires_on") {
        DateTime::from_timestamp(on, 0).unwrap_or(now)
    } else {
        // No lifetime given: assume the shortest Entra issues.
        now + chrono::Duration::minutes(60)
    };
    Ok(Token {
        value: Secret::new(access),
        issued_at: now,
        expires_at,
    })
}

/// Turns an Entra error response into one line naming the cause and the fix.
pub fn entra_error(status: u16, body: &[u8], spec: &TokenSpec) -> AuthError {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let desc = v
        .get("error_description")
        .and_then(|d| d.as_str())
        .unwrap_or("");
    let code = v
        .get("error_codes")
        .and_then(|c| c.get(0))
        .and_then(|c| c.as_i64())
        .or_else(|| {
            desc.strip_prefix("AADSTS")
                .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|n| n.parse().ok())
        });
    let first_line = desc.lines().next().unwrap_or("").trim();
    let hint = match code {
        Some(7000215) => format!("the client secret of application {} is wrong: copy the secret's Value (not its ID) from the app registration into client_secret, or with oauth_secret into the store (msgtrace secrets set NAME)", spec.client_id),
        Some(7000222) => format!("the client secret of application {} has expired: create a new one in the app registration and update client_secret (or the stored secret)", spec.client_id),
        Some(700016) => format!("application {} is not known in tenant {}: check client_id and tenant_id, or grant admin consent in that tenant", spec.client_id, spec.tenant_id),
        Some(90002) => format!("tenant {} does not exist: check tenant_id (the Directory ID) and the plan / login_url", spec.tenant_id),
        Some(700027) => format!("the client assertion's signature was not accepted: upload the certificate (cert_path) to the certificates of application {} in the app registration, and check that key_path holds its private key", spec.client_id),
        Some(700024) => "the client assertion is outside its validity time: check this machine's clock (NTP); with oauth_federated, check that the platform still refreshes token_file".into(),
        Some(70021 | 700211 | 700212 | 700213) => format!("no federated credential of application {} matches the token's issuer, subject and audience: add one with az ad app federated-credential create (issuer = the cluster's OIDC issuer URL, subject = system:serviceaccount:<namespace>:<service account>, audience api://AzureADTokenExchange)", spec.client_id),
        Some(700021) => format!("the client assertion's issuer does not match client_id {}: check client_id", spec.client_id),
        Some(700023) => format!("the client assertion's audience does not match {}: check login_url, tenant_id and token_endpoint", spec.token_url()),
        Some(7000274) => "the client assertion was used before (jti replayed): this is a bug or a replay; report it".into(),
        Some(50027) => "the client assertion is not a valid JWT: check the certificate and key".into(),
        Some(500011) => format!("resource {} is not available in this tenant: check resource, plan and api", spec.audience),
        Some(70011) => format!("scope {}/.default is not valid: check resource and token_endpoint", spec.audience),
        _ if (300..400).contains(&status) => "the token endpoint redirects, which msgtrace does not follow (the request carries the credential): set login_url to the authority host itself, e.g. https://login.microsoftonline.com".into(),
        _ => String::new(),
    };
    let mut msg = format!(
        "token request to {} failed with HTTP {status}",
        spec.token_url()
    );
    if !first_line.is_empty() {
        msg.push_str(&format!(": {first_line}"));
    } else if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
        msg.push_str(&format!(": {e}"));
    }
    if !hint.is_empty() {
        msg.push_str(&format!(" ({hint})"));
    }
    if status >= 500 || status == 429 {
        AuthError::Unavailable(msg)
    } else {
        AuthError::Rejected(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(endpoint: TokenEndpoint) -> TokenSpec {
        TokenSpec {
            login_url: url::Url::parse("https://login.microsoftonline.com").unwrap(),
            tenant_id: "t1".into(),
            client_id: "c1".into(),
            audience: "https://graph.microsoft.com".into(),
            endpoint,
            proxy: None,
        }
    }

    #[test]
    fn forms_for_v1_and_v2() {
        let v2 = secret_form(&spec(TokenEndpoint::V2), &Secret::new("s"));
        assert!(v2.contains(&("scope", "https://graph.microsoft.com/.default".into())));
        let v1 = secret_form(&spec(TokenEndpoint::V1), &Secret::new("s"));
        assert!(v1.contains(&("resource", "https://graph.microsoft.com".into())));
        assert_eq!(
            spec(TokenEndpoint::V1).token_url(),
            "https://login.microsoftonline.com/t1/oauth2/token"
        );
    }

    #[test]
    fn parses_both_response_shapes() {
        let now = DateTime::from_timestamp(1_000_000, 0).unwrap();
        let t = parse_token_response(
            br#"{"token_type":"Bearer","expires_in":3599,"access_token":"abc"}"#,
            now,
        )
        .unwrap();
        assert_eq!((t.expires_at - now).num_seconds(), 3599);
        let t = parse_token_response(
            br#"{"token_type":"Bearer","expires_in":"3600","expires_on":"1003600","access_token":"abc"}"#,
            now,
        )
        .unwrap();
        assert_eq!((t.expires_at - now).num_seconds(), 3600);
        let t =
            parse_token_response(br#"{"expires_on":"1000100","access_token":"x"}"#, now).unwrap();
        assert_eq!((t.expires_at - now).num_seconds(), 100);
        assert!(parse_token_response(b"<html>", now).is_err());
        assert!(parse_token_response(br#"{"expires_in":5}"#, now).is_err());
    }

    #[test]
    fn refresh_ahead_of_expiry() {
        let now = DateTime::from_timestamp(0, 0).unwrap();
        let long = Token {
            value: Secret::new("a"),
            issued_at: now,
            expires_at: now + chrono::Duration::seconds(3600),
        };
        assert_eq!(long.refresh_at(), now + chrono::Duration::seconds(3300));
        let short = Token {
            expires_at: now + chrono::Duration::seconds(3),
            ..long.clone()
        };
        assert_eq!(
            short.refresh_at(),
            now + chrono::Duration::milliseconds(2400)
        );
        assert!(!short.needs_refresh(now + chrono::Duration::seconds(2)));
        assert!(short.needs_refresh(now + chrono::Duration::seconds(3)));
    }

    #[test]
    fn entra_errors_name_the_fix() {
        let body = br#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided.\r\nTrace ID: x","error_codes":[7000215]}"#;
        let e = entra_error(401, body, &spec(TokenEndpoint::V2));
        let s = e.to_string();
        assert!(matches!(e, AuthError::Rejected(_)));
        assert!(
            s.contains("AADSTS7000215: Invalid client secret provided."),
            "{s}"
        );
        assert!(s.contains("copy the secret's Value"), "{s}");
        assert!(!s.contains("Trace ID"));
        let e = entra_error(
            400,
            br#"{"error_description":"AADSTS90002: Tenant 'x' not found."}"#,
            &spec(TokenEndpoint::V2),
        );
        assert!(e.to_string().contains("tenant t1 does not exist"));
    }
}
