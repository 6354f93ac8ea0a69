//! The HTTP client: one awc `Client` per thread (awc's client is `!Send`), a timeout that
//! covers the whole exchange including the body, a body size limit, and failures sorted into
//! what the retry policy understands.

use crate::eof::CheckedConnector;
use crate::proxy::{Proxy, ProxyConnector};
use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Duration;

/// A response whose body was read completely.
#[derive(Debug)]
pub struct HttpResponse {
    /// HTTP status code.
    pub status: u16,
    /// `Retry-After`, parsed.
    pub retry_after: Option<Duration>,
    /// The body.
    pub body: bytes::Bytes,
}

/// Why no response could be had.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HttpError {
    /// The exchange took longer than the request timeout.
    #[error("request timed out after {0:?}")]
    Timeout(Duration),
    /// Connecting failed, the connection was reset, or the body was cut short.
    #[error("connection failed: {0}")]
    Connection(String),
    /// The body exceeded the size limit.
    #[error("response body larger than {0} bytes")]
    TooLarge(usize),
    /// The request could not be built (bad URL...).
    #[error("{0}")]
    Request(String),
}

thread_local! {
    /// One client per proxy (or none) and redirect rule per thread: awc's client is `!Send`, and
    /// its connector, which tunnels through the proxy, is fixed at construction.
    static CLIENTS: RefCell<HashMap<(Option<Proxy>, Redirects), awc::Client>> =
        RefCell::new(HashMap::new());
}

/// Whether a client follows redirects (awc's default: up to 10, `Authorization` dropped when
/// the origin changes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Redirects {
    /// API reads: awc's default.
    Follow,
    /// A 3xx is the answer: what the request carries goes to the URL given only.
    Refuse,
}

/// Installs the pure-Rust TLS crypto provider once per process (rustls needs one chosen).
pub fn install_crypto() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

fn client(proxy: Option<&Proxy>, redirects: Redirects) -> awc::Client {
    CLIENTS.with(|c| {
        c.borrow_mut()
            .entry((proxy.cloned(), redirects))
            .or_insert_with(|| {
                install_crypto();
                let builder = awc::Client::builder()
                    // Our own timeout below covers the whole exchange.
                    .disable_timeout();
                let builder = match redirects {
                    Redirects::Follow => builder,
                    Redirects::Refuse => builder.disable_redirects(),
                };
                // Every connection's close is checked (`crate::eof`): on plain HTTP it is an
                // error, never the end of a body.
                match proxy {
                    None => builder
                        .connector(
                            awc::Connector::new()
                                .connector(CheckedConnector(
                                    actix_tls::connect::Connector::default().service(),
                                ))
                                .timeout(Duration::from_secs(30)),
                        )
                        .finish(),
                    Some(p) => builder
                        .connector(
                            awc::Connector::new()
                                .connector(CheckedConnector(ProxyConnector(p.clone())))
                                .timeout(Duration::from_secs(30)),
                        )
                        .finish(),
                }
            })
            .clone()
    })
}

/// `GET url` with an `Authorization` header (an API read: redirects are followed).
pub async fn get(
    url: &str,
    authorization: Option<&str>,
    timeout: Option<Duration>,
    max_body: usize,
    proxy: Option<&Proxy>,
) -> Result<HttpResponse, HttpError> {
    let authorization: Vec<_> = authorization
        .map(|a| ("Authorization", a))
        .into_iter()
        .collect();
    let req = request(url, &authorization, proxy, Redirects::Follow);
    exchange(req, timeout, max_body).await
}

/// `GET url` with extra request headers, for a token (the instance metadata endpoint): a
/// redirect is not followed but answered, so that a token is taken from the URL given only.
pub async fn get_with(
    url: &str,
    headers: &[(&str, &str)],
    timeout: Option<Duration>,
    max_body: usize,
    proxy: Option<&Proxy>,
) -> Result<HttpResponse, HttpError> {
    let req = request(url, headers, proxy, Redirects::Refuse);
    exchange(req, timeout, max_body).await
}

fn request(
    url: &str,
    headers: &[(&str, &str)],
    proxy: Option<&Proxy>,
    redirects: Redirects,
) -> awc::ClientRequest {
    let mut req = client(proxy, redirects)
        .get(url)
        .insert_header(("Accept", "application/json"));
    for (name, value) in headers {
        req = req.insert_header((*name, *value));
    }
    req
}

async fn exchange(
    req: awc::ClientRequest,
    timeout: Option<Duration>,
    max_body: usize,
) -> Result<HttpResponse, HttpError> {
    let exchange = async move {
        let mut resp = req.send().await.map_err(classify_send)?;
        finish(&mut resp, max_body).await
    };
    with_timeout(timeout, exchange).await
}

/// `POST url` with a form body. A redirect is not followed but answered (a 307 or 308 would
/// send the form, a token request's credential, to wherever it points).
pub async fn post_form(
    url: &str,
    form: &[(&'static str, String)],
    timeout: Option<Duration>,
    proxy: Option<&Proxy>,
) -> Result<HttpResponse, HttpError> {
    let req = client(proxy, Redirects::Refuse)
        .post(url)
        .insert_header(("Accept", "application/json"));
    let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let exchange = async move {
        let mut resp = req.send_form(&form).await.map_err(classify_send)?;
        finish(&mut resp, 1 << 20).await
    };
    with_timeout(timeout, exchange).await
}

/// `POST url` with a JSON body (etcd's JSON gateway, [`crate::cluster::etcd`]), at most
/// `max_body` bytes back. A redirect is not followed but answered: the gateway never sends one,
/// and a request that changes state goes to the URL given only.
pub async fn post_json(
    url: &str,
    body: Vec<u8>,
    timeout: Duration,
    max_body: usize,
) -> Result<HttpResponse, HttpError> {
    let req = client(None, Redirects::Refuse)
        .post(url)
        .insert_header(("Accept", "application/json"))
        .insert_header(("Content-Type", "application/json"));
    let exchange = async move {
        let mut resp = req.send_body(body).await.map_err(classify_send)?;
        finish(&mut resp, max_body).await
    };
    with_timeout(Some(timeout), exchange).await
}

async fn with_timeout<F>(timeout: Option<Duration>, f: F) -> Result<HttpResponse, HttpError>
where
    F: std::future::Future<Output = Result<HttpResponse, HttpError>>,
{
    match timeout {
        Some(t) => match tokio::time::timeout(t, f).await {
            Ok(r) => r,
            Err(_) => Err(HttpError::Timeout(t)),
        },
        None => f.await,
    }
}

async fn finish<S>(
    resp: &mut awc::ClientResponse<S>,
    max_body: usize,
) -> Result<HttpResponse, HttpError>
where
    S: futures_util::Stream<Item = Result<bytes::Bytes, awc::error::PayloadError>> + Unpin,
{
    let status = resp.status().as_u16();
    let retry_after = retry_after(resp.headers());
    let body = read_body(resp, max_body).await?;
    Ok(HttpResponse {
        status,
        retry_after,
        body,
    })
}

/// The delay a response's `Retry-After` header asks for (delay seconds or an HTTP date), read
/// by [`crate::retry::parse_retry_after`]; the API's pages and the sinks' receivers alike.
pub fn retry_after(headers: &awc::http::header::HeaderMap) -> Option<Duration> {
    headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| crate::retry::parse_retry_after(v, chrono::Utc::now()))
}

/// Reads the whole body into one buffer sized from `Content-Length` when there is one (a page is
/// megabytes: growing the buffer by doubling copied it several times over), at most `max_body`
/// bytes. The buffer comes from [`crate::buffers`]; whoever is done with the body may give it
/// back ([`crate::buffers::give_bytes`]).
async fn read_body<S>(
    resp: &mut awc::ClientResponse<S>,
    max_body: usize,
) -> Result<bytes::Bytes, HttpError>
where
    S: futures_util::Stream<Item = Result<bytes::Bytes, awc::error::PayloadError>> + Unpin,
{
    use futures_util::StreamExt as _;
    let announced = resp
        .headers()
        .get(awc::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    if announced.is_some_and(|n| n > max_body) {
        return Err(HttpError::TooLarge(max_body));
    }
    // A compressed body is longer once decoded: its length is the decoder's to check.
    let identity = resp
        .headers()
        .get(awc::http::header::CONTENT_ENCODING)
        .is_none_or(|v| v.as_bytes().eq_ignore_ascii_case(b"identity"));
    let mut body = crate::buffers::take(announced.unwrap_or(0));
    while let Some(chunk) = resp.next().await {
        let chunk =
            chunk.map_err(|e| HttpError::Connection(format!("reading the body failed: {e}")))?;
        if body.len() + chunk.len() > max_body {
            return Err(HttpError::TooLarge(max_body));
        }
        body.extend_from_slice(&chunk);
    }
    match announced {
        // The connection closed before the body was whole: what arrived may still parse (a
        // page without its next link), so it must never be taken for a page.
        Some(n) if identity && body.len() != n => Err(HttpError::Connection(format!(
            "the body ended after {} of the {n} bytes its Content-Length announced",
            body.len()
        ))),
        _ => Ok(bytes::Bytes::from(body)),
    }
}

fn classify_send(e: awc::error::SendRequestError) -> HttpError {
    use awc::error::SendRequestError as E;
    match e {
        E::Url(u) => HttpError::Request(format!("invalid URL: {u}")),
        E::Timeout => HttpError::Timeout(Duration::ZERO),
        other => HttpError::Connection(other.to_string()),
    }
}
