//! HTTP proxies: `proxy_url` per source, or the usual `HTTPS_PROXY` / `HTTP_PROXY` / `NO_PROXY`
//! environment variables. Every connection through a proxy is an HTTP `CONNECT` tunnel (TLS to
//! Microsoft runs inside it, end to end); awc has no proxy support of its own, so this is a
//! custom awc connector.

use actix_rt::net::TcpStream;
use actix_service::Service;
use actix_tls::connect::{ConnectError, ConnectInfo, Connection};
use awc::http::Uri;
use base64::Engine as _;
use futures_util::future::LocalBoxFuture;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A proxy to tunnel through.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Proxy {
    /// `host:port` of the proxy.
    pub addr: String,
    /// `Proxy-Authorization: Basic` credentials from the URL's user info, base64-encoded.
    auth: Option<String>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the credentials.
        write!(f, "Proxy({})", self.addr)
    }
}

/// Why a proxy URL (`proxy_url`, or `HTTPS_PROXY` / `HTTP_PROXY`) cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// Not an http:// proxy.
    #[error("proxy scheme `{0}` is not supported; use an http:// proxy (connections are tunnelled with CONNECT)")]
    Scheme(String),
    /// No host in the URL.
    #[error("proxy URL has no host")]
    NoHost,
    /// An environment variable that is not a URL.
    #[error("{var}: not a URL ({reason})")]
    NotAUrl {
        /// `HTTPS_PROXY` or `HTTP_PROXY`.
        var: &'static str,
        /// The parser's reason.
        reason: url::ParseError,
    },
    /// An environment variable's proxy that cannot be used.
    #[error("{var}: {error}")]
    FromEnv {
        /// `HTTPS_PROXY` or `HTTP_PROXY`.
        var: &'static str,
        /// Why.
        error: Box<ProxyError>,
    },
}

impl Proxy {
    /// A proxy from its URL (`http://[user:pass@]host:port`).
    pub fn from_url(url: &url::Url) -> Result<Proxy, ProxyError> {
        if url.scheme() != "http" {
            return Err(ProxyError::Scheme(url.scheme().to_owned()));
        }
        let host = url.host_str().ok_or(ProxyError::NoHost)?;
        let port = url.port().unwrap_or(3128);
        let auth = (!url.username().is_empty()).then(|| {
            let user = percent_decode(url.username());
            let pass = percent_decode(url.password().unwrap_or(""));
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
        });
        Ok(Proxy {
            addr: format!("{host}:{port}"),
            auth,
        })
    }

    /// The proxy the environment asks for to reach `target`, if any: `HTTPS_PROXY` (or
    /// `https_proxy`) for https targets, `HTTP_PROXY` (or `http_proxy`) for http ones, unless
    /// `NO_PROXY` (or `no_proxy`) lists the host (`*`, exact names, or domain suffixes such as
    /// `.example.com` / `example.com`). Loopback targets never use an environment proxy.
    pub fn from_env(
        target: &url::Url,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<Proxy>, ProxyError> {
        let host = target.host_str().unwrap_or_default().to_ascii_lowercase();
        if host == "localhost" || host.starts_with("127.") || host == "[::1]" || host == "::1" {
            return Ok(None);
        }
        let get = |k: &str| {
            env(k)
                .or_else(|| env(&k.to_ascii_lowercase()))
                .filter(|v| !v.is_empty())
        };
        if let Some(no) = get("NO_PROXY") {
            for item in no.split(',').map(|s| s.trim().to_ascii_lowercase()) {
                let item = item.trim_start_matches('.');
                if item == "*"
                    || (!item.is_empty() && (host == item || host.ends_with(&format!(".{item}"))))
                {
                    return Ok(None);
                }
            }
        }
        let var = if target.scheme() == "https" {
            "HTTPS_PROXY"
        } else {
            "HTTP_PROXY"
        };
        match get(var) {
            None => Ok(None),
            Some(v) => {
                let url =
                    url::Url::parse(&v).map_err(|reason| ProxyError::NotAUrl { var, reason })?;
                Proxy::from_url(&url)
                    .map(Some)
                    .map_err(|e| ProxyError::FromEnv {
                        var,
                        error: Box::new(e),
                    })
            }
        }
    }
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// An awc TCP connector that opens a `CONNECT` tunnel through a proxy.
#[derive(Clone, Debug)]
pub struct ProxyConnector(pub Proxy);

impl Service<ConnectInfo<Uri>> for ProxyConnector {
    type Response = Connection<Uri, TcpStream>;
    type Error = ConnectError;
    type Future = LocalBoxFuture<'static, Result<Self::Response, Self::Error>>;

    actix_service::always_ready!();

    fn call(&self, req: ConnectInfo<Uri>) -> Self::Future {
        let target = format!("{}:{}", req.hostname(), req.port());
        let uri = req.request().clone();
        let proxy = self.0.clone();
        Box::pin(async move {
            let io = |e: std::io::Error| ConnectError::Io(e);
            let refuse = |m: String| ConnectError::Io(std::io::Error::other(m));
            let mut s = TcpStream::connect(&proxy.addr)
                .await
                .map_err(|e| refuse(format!("proxy {} unreachable: {e}", proxy.addr)))?;
            let mut head = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
            if let Some(a) = &proxy.auth {
                head.push_str(&format!("Proxy-Authorization: Basic {a}\r\n"));
            }
            head.push_str("\r\n");
            s.write_all(head.as_bytes()).await.map_err(io)?;
            let mut reply = Vec::with_capacity(128);
            let mut byte = [0u8; 1];
            while !reply.ends_with(b"\r\n\r\n") {
                if reply.len() > 16 * 1024 {
                    return Err(refuse(format!(
                        "proxy {} sent an oversized reply to CONNECT",
                        proxy.addr
                    )));
                }
                if s.read(&mut byte).await.map_err(io)? == 0 {
                    return Err(refuse(format!(
                        "proxy {} closed the connection during CONNECT",
                        proxy.addr
                    )));
                }
                reply.push(byte[0]);
            }
            let line = String::from_utf8_lossy(&reply);
            let line = line.lines().next().unwrap_or_default().to_owned();
            let code: u16 = line
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            if !(200..300).contains(&code) {
                let hint = if code == 407 {
                    " (check the proxy credentials in the URL)"
                } else {
                    ""
                };
                return Err(refuse(format!(
                    "proxy {} refused CONNECT {target}: `{line}`{hint}",
                    proxy.addr
                )));
            }
            Ok(Connection::new(uri, s))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(a, _)| *a == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn environment_rules() {
        let graph = url::Url::parse("https://graph.microsoft.com/v1.0/x").unwrap();
        let env = env_of(&[("HTTPS_PROXY", "http://u:p%40ss@proxy.corp:8080")]);
        let p = Proxy::from_env(&graph, &env).unwrap().unwrap();
        assert_eq!(p.addr, "proxy.corp:8080");
        assert_eq!(
            p.auth.as_deref(),
            Some(
                base64::engine::general_purpose::STANDARD
                    .encode("u:p@ss")
                    .as_str()
            )
        );
        assert_eq!(format!("{p:?}"), "Proxy(proxy.corp:8080)");
        let env = env_of(&[
            ("https_proxy", "http://proxy:3128"),
            ("NO_PROXY", "localhost,.microsoft.com"),
        ]);
        assert!(Proxy::from_env(&graph, &env).unwrap().is_none());
        let env = env_of(&[("HTTP_PROXY", "http://proxy:3128")]);
        assert!(
            Proxy::from_env(&graph, &env).unwrap().is_none(),
            "https needs HTTPS_PROXY"
        );
        let local = url::Url::parse("http://127.0.0.1:8080/x").unwrap();
        assert!(
            Proxy::from_env(&local, &env).unwrap().is_none(),
            "loopback is never proxied"
        );
        let env = env_of(&[("HTTPS_PROXY", "socks5://proxy:1080")]);
        assert!(Proxy::from_env(&graph, &env)
            .unwrap_err()
            .to_string()
            .contains("socks5"));
    }
}
