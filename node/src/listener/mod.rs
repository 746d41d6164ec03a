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
//!   (`api/extract.rs`), and is at most `max_request_bytes`;
//! - a connection with no request in flight for `idle_timeout` is closed;
//! - over HTTPS, the handshake is done within `header_read_timeout`, after
//!   the caps above took the connection's place.
//!
//! On shutdown the listener stops accepting and every connection is asked
//! to finish what it is serving, within a drain deadline; connections still
//! open then are cut.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tower::ServiceExt;

mod idle;
mod sniff;

use idle::{Activity, Guarded};
use sniff::Sniffed;

/// What one connection may hold, and how many connections there may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    pub max_connections: usize,
    /// 0: no per-address cap (behind a proxy every client has its address).
    pub max_connections_per_ip: usize,
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub body_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed
    /// (HTTP/2 has no idle limit of its own).
    pub idle_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            max_connections_per_ip: 64,
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            body_read_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
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

/// A TCP listener whose connections send each write at once
/// (`TCP_NODELAY`). A stream's events are small writes; with Nagle's
/// algorithm on, each one after the first waits for the client's delayed
/// ACK (about 40 ms on Linux), so a stream took 40 ms more than its
/// upstream.
pub fn tcp_no_delay(
    listener: tokio::net::TcpListener,
) -> axum::serve::TapIo<tokio::net::TcpListener, fn(&mut tokio::net::TcpStream)> {
    use axum::serve::ListenerExt;
    fn no_delay(tcp: &mut tokio::net::TcpStream) {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set on a client connection");
        }
    }
    listener.tap_io(no_delay as fn(&mut tokio::net::TcpStream))
}

/// Serves `app` on the connections `listener` accepts, within `limits`
/// (over TLS when `tls` is given), until `shutdown` completes; then stops
/// accepting and lets the connections finish their requests, for up to
/// `drain`. Connections still open then are cut: dropping a call settles
/// what it served.
pub async fn serve<L>(
    mut listener: L,
    app: Router,
    limits: HttpLimits,
    tls: Option<meridian_link::PublicTls>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    drain: Duration,
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
        // The caps apply before anything else, a TLS handshake included.
        let Some(slot) = admit(&open, addr.ip(), &limits) else {
            tracing::debug!(peer = %addr, "connection refused: too many open");
            continue;
        };
        let conn = Conn {
            addr,
            builder: builder.clone(),
            app: app.clone(),
            limits,
            closed: closed.clone(),
        };
        let tls = tls.clone();
        tasks.spawn(async move {
            let _slot = slot;
            match tls {
                None => conn.serve(io).await,
                Some(tls) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config());
                    match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(io))
                        .await
                    {
                        Ok(Ok(io)) => conn.serve(io).await,
                        Ok(Err(e)) => tracing::debug!(peer = %addr, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(peer = %addr, "TLS handshake not done within the header timeout"),
                    }
                }
            }
        });
    }
    drop(listener);
    let _ = closing.send(true);
    let drained =
        tokio::time::timeout(drain, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(
            connections = tasks.len(),
            "calls still running at the shutdown deadline are cut; each is billed for what it served"
        );
        tasks.shutdown().await;
    }
}

/// One admitted connection, served.
struct Conn {
    addr: SocketAddr,
    builder: Arc<auto::Builder<TokioExecutor>>,
    app: Router,
    limits: HttpLimits,
    closed: watch::Receiver<bool>,
}

impl Conn {
    async fn serve<IO>(mut self, io: IO)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let addr = self.addr;
        // hyper-util reads the first bytes to tell HTTP/2 from HTTP/1
        // before hyper's own header timer starts, with no deadline of its
        // own: a connection that sends nothing would be held forever.
        let io = match tokio::time::timeout(self.limits.header_read_timeout, Sniffed::read(io))
            .await
        {
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
        let activity = Activity::new();
        let app = self.app.clone();
        let watched = activity.clone();
        let service = tower::service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let request = watched.start();
            let app = app.clone();
            async move {
                let response = app.oneshot(req).await?;
                Ok::<_, std::convert::Infallible>(response.map(|inner| {
                    axum::body::Body::new(Guarded {
                        inner,
                        _request: request,
                    })
                }))
            }
        });
        let conn = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(service));
        tokio::pin!(conn);
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(peer = %addr, error = %e, "connection ended");
                }
                return;
            }
            _ = self.closed.wait_for(|c| *c) => conn.as_mut().graceful_shutdown(),
            () = activity.idle_for(self.limits.idle_timeout) => {
                tracing::debug!(peer = %addr, "connection closed: idle");
                conn.as_mut().graceful_shutdown();
            }
        }
        if let Err(e) = conn.await {
            tracing::debug!(peer = %addr, error = %e, "connection ended while closing");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn client_connections_send_each_write_at_once() {
        let tcp = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .unwrap();
        let addr = tcp.local_addr().unwrap();
        let mut listener = tcp_no_delay(tcp);
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (io, _) = axum::serve::Listener::accept(&mut listener).await;
        assert!(io.nodelay().unwrap(), "Nagle's algorithm is on");
    }

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
