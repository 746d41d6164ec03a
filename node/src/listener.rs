//! The public HTTP listener's connections, bounded: what an outsider can
//! make the node hold is capped before any request is read.
//!
//! - at most `max_connections` open connections, and at most
//!   `max_connections_per_ip` from one address; a connection over either cap
//!   is closed at once, so a flood costs the node an accept and a close;
//! - a connection must start its request within `header_read_timeout` (the
//!   bytes that tell HTTP/2 from HTTP/1 included), and a request head must
//!   arrive within it (HTTP/1: also
//!   the idle time allowed between requests of a kept-alive connection), and
//!   may be at most `max_header_bytes` — a slowloris holds a connection for
//!   that long, never longer;
//! - HTTP/2: at most `MAX_H2_STREAMS` concurrent streams and
//!   `max_header_bytes` of headers per request, keep-alive pings to notice
//!   vanished peers;
//! - a request body must be read within `body_read_timeout`
//!   (`api/extract.rs`), and is at most `max_request_bytes`.
//!
//! On shutdown the listener stops accepting and every connection is asked
//! to finish what it is serving.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;

/// What one connection may hold, and how many connections there may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    pub max_connections: usize,
    /// 0: no per-address cap (behind a proxy every client has its address).
    pub max_connections_per_ip: usize,
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub body_read_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            max_connections_per_ip: 256,
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            body_read_timeout: Duration::from_secs(60),
        }
    }
}

/// Concurrent streams one HTTP/2 connection may open.
const MAX_H2_STREAMS: u32 = 256;
const H2_KEEPALIVE: Duration = Duration::from_secs(20);

/// Open connections, in all and per address.
#[derive(Default)]
struct Open {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// One admitted connection; dropping it frees its place.
struct Slot {
    open: Arc<Mutex<Open>>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.per_ip.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.per_ip.remove(&self.ip);
            }
        }
    }
}

fn admit(open: &Arc<Mutex<Open>>, ip: IpAddr, limits: &HttpLimits) -> Option<Slot> {
    let mut o = open.lock().unwrap_or_else(PoisonError::into_inner);
    let mine = o.per_ip.get(&ip).copied().unwrap_or(0);
    if o.total >= limits.max_connections
        || (limits.max_connections_per_ip > 0 && mine >= limits.max_connections_per_ip)
    {
        return None;
    }
    o.total += 1;
    *o.per_ip.entry(ip).or_insert(0) += 1;
    Some(Slot {
        open: open.clone(),
        ip,
    })
}

/// Serves `app` on the connections `listener` accepts, within `limits`,
/// until `shutdown` completes; then lets the connections finish.
pub async fn serve<L>(
    mut listener: L,
    app: Router,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // The read buffer bounds a request head (hyper's minimum is 8 KiB).
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_H2_STREAMS)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(H2_KEEPALIVE)
        .keep_alive_timeout(H2_KEEPALIVE);
    let builder = Arc::new(builder);
    let open = Arc::new(Mutex::new(Open::default()));
    let (closing, closed) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (io, addr) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
            // Reap finished connections as we go.
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
        };
        let Some(slot) = admit(&open, addr.ip(), &limits) else {
            tracing::debug!(peer = %addr, "connection refused: too many open");
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        let builder = builder.clone();
        let mut closed = closed.clone();
        let head_timeout = limits.header_read_timeout;
        tasks.spawn(async move {
            let _slot = slot;
            // hyper-util reads the first bytes to tell HTTP/2 from HTTP/1
            // before hyper's own header timer starts, with no deadline of its
            // own: a connection that sends nothing would be held forever.
            let io = match tokio::time::timeout(head_timeout, Sniffed::read(io)).await {
                Ok(Ok(io)) => io,
                Ok(Err(e)) => {
                    tracing::debug!(peer = %addr, error = %e, "connection ended before a request");
                    return;
                }
                Err(_) => {
                    tracing::debug!(peer = %addr, "connection closed: nothing sent within the header timeout");
                    return;
                }
            };
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
            tokio::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(peer = %addr, error = %e, "connection ended");
                    }
                    return;
                }
                _ = closed.wait_for(|c| *c) => conn.as_mut().graceful_shutdown(),
            }
            if let Err(e) = conn.await {
                tracing::debug!(peer = %addr, error = %e, "connection ended while shutting down");
            }
        });
    }
    let _ = closing.send(true);
    while tasks.join_next().await.is_some() {}
}

/// The HTTP/2 connection preface; anything that departs from it is HTTP/1.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A connection whose first bytes were read (enough to tell HTTP/2 from
/// HTTP/1) and are handed out again before the rest.
pub struct Sniffed<T> {
    io: T,
    head: Vec<u8>,
    at: usize,
}

impl<T: AsyncRead + Unpin> Sniffed<T> {
    /// Reads until the bytes depart from the HTTP/2 preface or make all of
    /// it (HTTP/1 clients decide at their first byte), or the peer closes.
    async fn read(mut io: T) -> std::io::Result<Self> {
        use tokio::io::AsyncReadExt;
        let mut head = Vec::with_capacity(H2_PREFACE.len());
        let mut buf = [0u8; 24];
        while head.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(&head) {
            let want = H2_PREFACE.len() - head.len();
            let n = io.read(&mut buf[..want]).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok(Self { io, head, at: 0 })
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Sniffed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.at < this.head.len() {
            let n = (this.head.len() - this.at).min(buf.remaining());
            buf.put_slice(&this.head[this.at..this.at + n]);
            this.at += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Sniffed<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The public listener over HTTPS: connections whose TLS handshake
/// completed (bounded in time and number by [`meridian_link::TlsAcceptor`]).
pub struct TlsListener {
    incoming: meridian_link::TlsIncoming,
    local: SocketAddr,
}

impl TlsListener {
    pub fn new(incoming: meridian_link::TlsIncoming, local: SocketAddr) -> Self {
        Self { incoming, local }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = meridian_link::TlsConnection;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        use futures_util::StreamExt;
        match self.incoming.next().await {
            Some(conn) => {
                let peer = conn.peer_addr();
                (conn, peer)
            }
            // The accept task ended (the runtime is stopping): accept nothing.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_capped_in_all_and_per_address() {
        let limits = HttpLimits {
            max_connections: 3,
            max_connections_per_ip: 2,
            ..HttpLimits::default()
        };
        let open = Arc::new(Mutex::new(Open::default()));
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let a1 = admit(&open, a, &limits).unwrap();
        let _a2 = admit(&open, a, &limits).unwrap();
        assert!(
            admit(&open, a, &limits).is_none(),
            "a third from one address"
        );
        let _b1 = admit(&open, b, &limits).unwrap();
        assert!(admit(&open, b, &limits).is_none(), "a fourth in all");
        drop(a1);
        assert!(
            admit(&open, a, &limits).is_some(),
            "a closed one frees its place"
        );
    }
}
