//! The engine's HTTP listeners (actix-web): binding an address key (`metrics_listen`,
//! `control_listen`) with a one-line error, and serving route sets on TCP listeners and the
//! control socket. [`crate::metrics`] and [`crate::control`] each bring their routes; two keys
//! naming the same address share one listener.

use actix_web::{web, App, HttpServer};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

/// Why an endpoint cannot listen: one line naming the key, the address and what to do.
#[derive(Debug, thiserror::Error)]
#[error("{key}: cannot listen on {addr}: {error}; {hint}")]
pub struct ListenError {
    /// The configuration key (`metrics_listen`, `control_listen`).
    pub key: &'static str,
    /// The configured address.
    pub addr: SocketAddr,
    /// What the operating system said (in the message, so not a `source`: printed once).
    pub error: std::io::Error,
    /// What to do about it.
    pub hint: &'static str,
}

/// Binds the socket of the endpoint configured by `key`. The engine does this before it starts
/// any actor, so that a taken port stops the start cleanly; `validate` does it to check the
/// address.
pub fn bind(key: &'static str, addr: SocketAddr) -> Result<TcpListener, ListenError> {
    let failed = |error: std::io::Error| {
        let hint = match error.kind() {
            std::io::ErrorKind::AddrInUse => {
                "another program (another msgtrace?) listens there: stop it, or choose another port"
            }
            std::io::ErrorKind::AddrNotAvailable => {
                "the address is not one of this host's: use 127.0.0.1 or an address of this host"
            }
            std::io::ErrorKind::PermissionDenied => {
                "ports below 1024 need privileges: choose a port above 1024"
            }
            _ => "check the address",
        };
        ListenError {
            key,
            addr,
            error,
            hint,
        }
    };
    let listener = TcpListener::bind(addr).map_err(failed)?;
    listener.set_nonblocking(true).map_err(failed)?;
    Ok(listener)
}

/// A set of routes (with the data they need) that a server mounts.
pub type Routes = Arc<dyn Fn(&mut web::ServiceConfig) + Send + Sync>;

/// A running server.
pub struct Server {
    addrs: Vec<SocketAddr>,
    handle: actix_web::dev::ServerHandle,
}

impl Server {
    /// The first TCP address it listens on (useful with port 0).
    ///
    /// # Panics
    /// When it listens on no TCP address (only the control socket).
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// The TCP addresses it listens on.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Stops serving.
    pub async fn stop(self) {
        self.handle.stop(true).await;
    }
}

/// Serves `routes` on `tcp` and on the Unix socket `uds`, inside the current actix System.
pub fn serve(
    tcp: Vec<TcpListener>,
    #[cfg(unix)] uds: Option<std::os::unix::net::UnixListener>,
    routes: Vec<Routes>,
) -> std::io::Result<Server> {
    let addrs = tcp
        .iter()
        .map(TcpListener::local_addr)
        .collect::<std::io::Result<Vec<_>>>()?;
    let mut server = HttpServer::new(move || {
        let routes = routes.clone();
        App::new().configure(move |cfg| routes.iter().for_each(|r| r(cfg)))
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(1);
    for l in tcp {
        server = server.listen(l)?;
    }
    #[cfg(unix)]
    if let Some(l) = uds {
        server = server.listen_uds(l)?;
    }
    let server = server.run();
    let handle = server.handle();
    actix_rt::spawn(server);
    Ok(Server { addrs, handle })
}

/// The state directory as the listeners see it. The engine releases it at its stop, before the
/// listeners stop: an actix-web worker thread drops its app data a moment after the server's
/// stop returns, and a store it still held kept the directory locked for the next open (a test,
/// a restart in the same process).
#[derive(Clone)]
pub struct StoreSlot(std::sync::Arc<std::sync::RwLock<Option<msgtrace_storage::Store>>>);

impl StoreSlot {
    /// A slot holding `store`.
    pub fn new(store: msgtrace_storage::Store) -> StoreSlot {
        StoreSlot(std::sync::Arc::new(std::sync::RwLock::new(Some(store))))
    }

    /// The store, unless the engine is stopping.
    pub fn get(&self) -> Option<msgtrace_storage::Store> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Lets go of the store: later requests answer that the engine is stopping.
    pub fn release(&self) {
        self.0.write().unwrap_or_else(|p| p.into_inner()).take();
    }
}
