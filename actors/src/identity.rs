//! Secretless sign-in: a workload identity's federated token (read from the file the platform
//! rotates) and a managed identity's token from the Azure instance metadata endpoint (IMDS).
//! The AuthToken actor caches and refreshes both tokens like any other.

use std::path::Path;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, Utc};

use crate::secret::Secret;
use crate::spec::TokenSpec;
use crate::token::{self, AuthError, Token};

/// The IMDS API version Microsoft documents for managed identity tokens.
pub const IMDS_API_VERSION: &str = "2018-02-01";

/// Reads the workload identity token at `path`: at every token request, since the platform
/// replaces the file before the token in it expires.
pub fn read_federated_token(path: &Path) -> Result<Secret, AuthError> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| {
        AuthError::Rejected(if e.kind() == std::io::ErrorKind::NotFound {
            format!(
                "the federated token file {shown} does not exist: on AKS give the pod the label \
                 azure.workload.identity/use: \"true\" and its service account the annotation \
                 azure.workload.identity/client-id (the webhook then mounts the token and sets \
                 AZURE_FEDERATED_TOKEN_FILE), or set token_file to where the platform writes it"
            )
        } else {
            format!(
                "cannot read the federated token file {shown} ({e}): make it readable by the user \
                 msgtrace runs as"
            )
        })
    })?;
    let token = text.trim();
    if token.is_empty() {
        // A platform writing the file for the first time: worth another try.
        return Err(AuthError::Unavailable(format!(
            "the federated token file {shown} is empty: the platform has not written a token into \
             it; check the workload identity set-up (docs/authentication.md)"
        )));
    }
    Ok(Secret::new(token))
}

/// The IMDS token request: `GET {imds}/metadata/identity/oauth2/token?api-version=…&resource=…`
/// (`&client_id=…` for a user-assigned identity).
pub fn imds_request_url(spec: &TokenSpec) -> String {
    let mut url = spec.token_url();
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    query.append_pair("api-version", IMDS_API_VERSION);
    query.append_pair("resource", &spec.audience);
    if !spec.client_id.is_empty() {
        query.append_pair("client_id", &spec.client_id);
    }
    url.push('?');
    url.push_str(&query.finish());
    url
}

/// Which identity a message is about.
fn identity(spec: &TokenSpec) -> String {
    if spec.client_id.is_empty() {
        "the system-assigned managed identity".to_owned()
    } else {
        format!("the user-assigned managed identity {}", spec.client_id)
    }
}

/// Turns an IMDS refusal into one line naming the fix. IMDS asks to retry 404, 410 (while it
/// starts), 429 and 5xx.
pub fn imds_error(status: u16, body: &[u8], spec: &TokenSpec) -> AuthError {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let text = |k: &str| v.get(k).and_then(|d| d.as_str()).unwrap_or("");
    let description = text("error_description")
        .lines()
        .next()
        .unwrap_or("")
        .trim();
    let description = if description.is_empty() {
        text("error")
    } else {
        description
    };
    let who = identity(spec);
    let hint = if description.contains("Identity not found") {
        if spec.client_id.is_empty() {
            "no managed identity is assigned to this machine: assign one (az vm identity assign -g \
             <group> -n <vm>) and grant it the app role (docs/authentication.md)"
                .to_owned()
        } else {
            format!(
                "no identity with client_id {} is assigned to this machine: assign it (az vm identity \
                 assign -g <group> -n <vm> --identities <identity resource id>) or check client_id",
                spec.client_id
            )
        }
    } else if description.contains("AADSTS500011") || text("error") == "invalid_resource" {
        format!(
            "resource {} is not known: check resource, plan and api",
            spec.audience
        )
    } else {
        String::new()
    };
    let mut message =
        format!("the instance metadata endpoint refused a token for {who} with HTTP {status}");
    if !description.is_empty() {
        message.push_str(&format!(": {description}"));
    }
    if !hint.is_empty() {
        message.push_str(&format!(" ({hint})"));
    }
    if matches!(status, 404 | 410 | 429) || status >= 500 {
        AuthError::Unavailable(message)
    } else {
        AuthError::Rejected(message)
    }
}

/// Refuses a managed identity's token that carries no app role: the API would answer 401/403
/// on every page, and the fix is on the identity, not on the request. A token that is not a
/// readable JWT is left to the API.
pub fn check_app_roles(token: &Token, spec: &TokenSpec) -> Result<(), AuthError> {
    let claims = token
        .value
        .expose()
        .split('.')
        .nth(1)
        .and_then(|c| URL_SAFE_NO_PAD.decode(c.trim_end_matches('=')).ok())
        .and_then(|c| serde_json::from_slice::<serde_json::Value>(&c).ok());
    let Some(claims) = claims else {
        return Ok(());
    };
    let has_role = claims
        .get("roles")
        .and_then(|r| r.as_array())
        .is_some_and(|r| !r.is_empty());
    if has_role {
        return Ok(());
    }
    Err(AuthError::Rejected(format!(
        "the token of {} for {} carries no app role: grant the identity's service principal the \
         API's application permission (Graph: ExchangeMessageTrace.Read.All; Reporting Web Service: \
         ReportingWebService.Read.All) with an app role assignment, as docs/authentication.md shows",
        identity(spec),
        spec.audience
    )))
}

/// Asks the instance metadata endpoint for a token (never through a proxy: it is on the host).
pub async fn imds_token(
    spec: &TokenSpec,
    app_role_required: bool,
    now: DateTime<Utc>,
) -> Result<Token, AuthError> {
    let url = imds_request_url(spec);
    let base = spec.login_url.as_str().trim_end_matches('/');
    let response = crate::http::get_with(
        &url,
        &[("Metadata", "true")],
        Some(Duration::from_secs(60)),
        1 << 20,
        None,
    )
    .await
    .map_err(|e| {
        AuthError::Unavailable(format!(
            "cannot reach the instance metadata endpoint {base} ({e}): method managed_identity works \
             only on Azure (a VM, scale set, App Service or AKS node) or with imds_url"
        ))
    })?;
    if response.status != 200 {
        return Err(imds_error(response.status, &response.body, spec));
    }
    let token = token::parse_token_response(&response.body, now)?;
    if app_role_required {
        check_app_roles(&token, spec)?;
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::TokenEndpoint;

    fn spec(client_id: &str) -> TokenSpec {
        TokenSpec {
            login_url: url::Url::parse("http://169.254.169.254").unwrap(),
            tenant_id: String::new(),
            client_id: client_id.into(),
            audience: "https://graph.microsoft.com".into(),
            endpoint: TokenEndpoint::Imds,
            proxy: None,
        }
    }

    fn token_with(claims: &str) -> Token {
        let now = DateTime::from_timestamp(0, 0).unwrap();
        Token {
            value: Secret::new(format!("e30.{}.c2ln", URL_SAFE_NO_PAD.encode(claims))),
            issued_at: now,
            expires_at: now,
        }
    }

    #[test]
    fn imds_url_names_the_resource_and_a_user_assigned_identity() {
        assert_eq!(
            imds_request_url(&spec("")),
            "http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fgraph.microsoft.com"
        );
        assert!(imds_request_url(&spec("abc")).ends_with("&client_id=abc"));
    }

    #[test]
    fn imds_errors_name_the_fix() {
        let body = br#"{"error":"invalid_request","error_description":"Identity not found"}"#;
        let e = imds_error(400, body, &spec(""));
        assert!(matches!(e, AuthError::Rejected(_)));
        assert!(e.to_string().contains("az vm identity assign"), "{e}");
        let e = imds_error(400, body, &spec("abc"));
        assert!(e.to_string().contains("client_id abc"), "{e}");
        assert!(matches!(
            imds_error(410, b"", &spec("")),
            AuthError::Unavailable(_)
        ));
        assert!(matches!(
            imds_error(500, b"", &spec("")),
            AuthError::Unavailable(_)
        ));
    }

    #[test]
    fn a_token_without_an_app_role_is_refused_with_the_fix() {
        let s = spec("");
        assert!(check_app_roles(
            &token_with(r#"{"roles":["ExchangeMessageTrace.Read.All"]}"#),
            &s
        )
        .is_ok());
        let e = check_app_roles(&token_with(r#"{"roles":[]}"#), &s).unwrap_err();
        assert!(e.to_string().contains("carries no app role"), "{e}");
        assert!(check_app_roles(&token_with(r#"{"aud":"x"}"#), &s).is_err());
        // Not a JWT: the API decides.
        let opaque = Token {
            value: Secret::new("opaque"),
            ..token_with("{}")
        };
        assert!(check_app_roles(&opaque, &s).is_ok());
    }

    #[test]
    fn federated_token_file_is_read_fresh_and_its_problems_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let e = read_federated_token(&path).unwrap_err();
        assert!(e.to_string().contains("azure.workload.identity/use"), "{e}");
        std::fs::write(&path, " \n").unwrap();
        assert!(matches!(
            read_federated_token(&path),
            Err(AuthError::Unavailable(m)) if m.contains("is empty")
        ));
        std::fs::write(&path, "one\n").unwrap();
        assert_eq!(read_federated_token(&path).unwrap().expose(), "one");
        std::fs::write(&path, "two").unwrap();
        assert_eq!(read_federated_token(&path).unwrap().expose(), "two");
    }
}
