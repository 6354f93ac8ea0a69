//! A plain-HTTP connection on which the server's close is an error, never the end of a body.
//!
//! awc ends a response body without an error when the connection closes, whatever the framing
//! said (its `PlStream` maps the stream's end to the payload's end): a chunked body cut before its
//! last chunk, when what arrived is valid JSON without a next link, passed for the last page.
//! (A `Content-Length` body is checked in [`crate::http`]; over TLS, rustls already refuses a
//! close without `close_notify`.) On `http://` connections awc reads to the close only for a body
//! framed by neither a length nor chunks, which HTTP/1.1 servers do not send for JSON: so the
//! close is read as an error there, and the body is retried like a reset.

use actix_rt::net::{ActixStream, Ready, TcpStream};
use actix_service::Service;
use actix_tls::connect::{ConnectError, ConnectInfo, Connection};
use awc::http::Uri;
use futures_util::future::LocalBoxFuture;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A TCP stream whose end is an error when `strict` (plain HTTP), as it is (TLS).
#[derive(Debug)]
pub struct CheckedEof {
    io: TcpStream,
    strict: bool,
}

impl CheckedEof {
    /// `io`, strict about its end for plain-HTTP `uri`s.
    pub fn new(io: TcpStream, uri: &Uri) -> CheckedEof {
        CheckedEof {
            io,
            strict: uri.scheme_str() == Some("http"),
        }
    }
}

/// Whether a read that added nothing to a buffer with room is the peer's close.
fn closed(before: usize, buf: &ReadBuf<'_>) -> bool {
    buf.filled().len() == before && buf.remaining() > 0
}

impl AsyncRead for CheckedEof {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let strict = self.strict;
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if strict && closed(before, buf) => {
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the connection",
                )))
            }
            other => other,
        }
    }
}

impl AsyncWrite for CheckedEof {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl ActixStream for CheckedEof {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<Ready>> {
        ActixStream::poll_read_ready(&self.io, cx)
    }

    fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<Ready>> {
        ActixStream::poll_write_ready(&self.io, cx)
    }
}

/// An awc TCP connector whose connections are [`CheckedEof`]: `S` connects (directly, or
/// through a proxy's tunnel), this wraps what it connected.
#[derive(Clone, Debug)]
pub struct CheckedConnector<S>(pub S);

impl<S> Service<ConnectInfo<Uri>> for CheckedConnector<S>
where
    S: Service<ConnectInfo<Uri>, Response = Connection<Uri, TcpStream>, Error = ConnectError>,
    S::Future: 'static,
{
    type Response = Connection<Uri, CheckedEof>;
    type Error = ConnectError;
    type Future = LocalBoxFuture<'static, Result<Self::Response, Self::Error>>;

    // Both connectors it wraps (actix-tls's and the proxy's) are always ready.
    actix_service::always_ready!();

    fn call(&self, req: ConnectInfo<Uri>) -> Self::Future {
        let connecting = self.0.call(req);
        Box::pin(async move {
            let conn = connecting.await?;
            let uri = conn.request().clone();
            let (tcp, conn) = conn.replace_io(());
            Ok(conn.replace_io(CheckedEof::new(tcp, &uri)).1)
        })
    }
}
