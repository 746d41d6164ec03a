//! Accepting TLS connections: a TCP listener turned into a stream of
//! connections whose handshake has succeeded. Handshakes run in their own
//! tasks, bounded in time and in number, so a slow or silent client delays
//! nobody else and a flood of them cannot exhaust memory.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use rustls::ServerConfig;
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::server::TlsStream;

use crate::identity::NodeIdentity;
use crate::tls::{ClusterTls, PublicTls};

/// How long a client has to complete its handshake once accepted (a node's
/// dialer gives up after two seconds).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);

/// How many handshakes one address may have in flight: one address cannot
/// take every place of [`MAX_CONCURRENT_HANDSHAKES`].
pub const MAX_HANDSHAKES_PER_ADDRESS: usize = 16;

/// How many handshakes may run at once. Beyond this, new connections are
/// closed at once: queueing them would let a flood of silent clients delay
/// real ones by a full handshake timeout each.
pub const MAX_CONCURRENT_HANDSHAKES: usize = 256;

/// Handshaken connections waiting for the server to take them.
const ACCEPTED_QUEUE: usize = 64;

/// Turns TCP connections into TLS ones with the configuration current at
/// each accept. Built for mutual TLS between nodes ([`TlsAcceptor::cluster`])
/// or for a public listener ([`TlsAcceptor::public`]). Cheap to clone.
#[derive(Clone)]
pub struct TlsAcceptor {
    config: Arc<dyn Fn() -> Arc<ServerConfig> + Send + Sync>,
    /// Whether a connection must come with a node identity: between nodes a
    /// certificate the CA signed without one (a public server certificate,
    /// say) is not a node's.
    require_identity: bool,
    handshake_timeout: Duration,
    max_handshakes: usize,
}

impl TlsAcceptor {
    /// Mutual TLS: each connection carries its peer's [`NodeIdentity`].
    pub fn cluster(tls: ClusterTls) -> Self {
        Self::new(Arc::new(move || tls.server_config()), true)
    }

    /// Server-authenticated TLS for clients outside the cluster.
    pub fn public(tls: PublicTls) -> Self {
        Self::new(Arc::new(move || tls.server_config()), false)
    }

    fn new(
        config: Arc<dyn Fn() -> Arc<ServerConfig> + Send + Sync>,
        require_identity: bool,
    ) -> Self {
        Self {
            config,
            require_identity,
            handshake_timeout: HANDSHAKE_TIMEOUT,
            max_handshakes: MAX_CONCURRENT_HANDSHAKES,
        }
    }

    /// Replaces [`HANDSHAKE_TIMEOUT`].
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Replaces [`MAX_CONCURRENT_HANDSHAKES`] (at least one).
    pub fn with_max_handshakes(mut self, max: usize) -> Self {
        self.max_handshakes = max.max(1);
        self
    }

    /// Accepts on `listener` until the returned stream is dropped, yielding
    /// only connections whose handshake succeeded. Failed handshakes are
    /// logged at debug with the peer's address and are never fatal. Spawns
    /// the accept task, so call it on the runtime.
    pub fn incoming(self, listener: TcpListener) -> TlsIncoming {
        let (sender, receiver) = mpsc::channel(ACCEPTED_QUEUE);
        tokio::spawn(self.accept_loop(listener, sender));
        TlsIncoming { receiver }
    }

    async fn accept_loop(self, listener: TcpListener, sender: mpsc::Sender<TlsConnection>) {
        let handshakes = Arc::new(Semaphore::new(self.max_handshakes));
        let per_address: Arc<Mutex<HashMap<IpAddr, usize>>> = Arc::default();
        loop {
            let accepted = tokio::select! {
                // Nobody takes connections any more: stop, closing the listener.
                () = sender.closed() => return,
                accepted = listener.accept() => accepted,
            };
            let (tcp, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a TLS connection");
                    // Out of file descriptors would otherwise be a busy loop.
                    tokio::time::sleep(crate::ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            let Some(mine) = AddressSlot::take(&per_address, peer.ip()) else {
                tracing::debug!(%peer, "too many TLS handshakes from this address; connection closed");
                continue;
            };
            let Ok(permit) = Arc::clone(&handshakes).try_acquire_owned() else {
                tracing::debug!(%peer, "too many TLS handshakes in flight; connection closed");
                continue;
            };
            // Heartbeats and gossip are small: Nagle would hold them back.
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(%peer, error = %e, "TCP_NODELAY on an accepted connection");
            }
            // Read now, at accept: a reload applies from the next connection.
            let acceptor = tokio_rustls::TlsAcceptor::from((self.config)());
            let (timeout, require_identity) = (self.handshake_timeout, self.require_identity);
            let sender = sender.clone();
            tokio::spawn(async move {
                let handshake = tokio::time::timeout(timeout, acceptor.accept(tcp)).await;
                drop((permit, mine));
                let stream = match handshake {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, ?timeout, "TLS handshake timed out");
                        return;
                    }
                };
                let Some(connection) = TlsConnection::new(stream, peer, require_identity) else {
                    return;
                };
                // Fails only when the stream was dropped: the connection closes.
                let _ = sender.send(connection).await;
            });
        }
    }
}

/// One handshake in flight from an address; dropping it frees the place.
struct AddressSlot {
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl AddressSlot {
    fn take(counts: &Arc<Mutex<HashMap<IpAddr, usize>>>, ip: IpAddr) -> Option<Self> {
        let mut map = counts.lock().unwrap_or_else(PoisonError::into_inner);
        let n = map.entry(ip).or_insert(0);
        if *n >= MAX_HANDSHAKES_PER_ADDRESS {
            return None;
        }
        *n += 1;
        Some(Self {
            counts: counts.clone(),
            ip,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut map = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = map.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

impl fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsAcceptor")
            .field("require_identity", &self.require_identity)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("max_handshakes", &self.max_handshakes)
            .finish_non_exhaustive()
    }
}

/// Handshaken TLS connections, from [`TlsAcceptor::incoming`]. Dropping it
/// stops accepting and closes the listener.
#[derive(Debug)]
pub struct TlsIncoming {
    receiver: mpsc::Receiver<TlsConnection>,
}

impl Stream for TlsIncoming {
    type Item = TlsConnection;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.receiver.poll_recv(cx)
    }
}

/// An accepted connection whose TLS handshake succeeded.
pub struct TlsConnection {
    stream: TlsStream<TcpStream>,
    peer_addr: SocketAddr,
    identity: Option<NodeIdentity>,
}

impl TlsConnection {
    /// `None` when a node identity is required and the verified client
    /// certificate carries none.
    fn new(
        stream: TlsStream<TcpStream>,
        peer_addr: SocketAddr,
        require_identity: bool,
    ) -> Option<Self> {
        let identity = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|certs| certs.first())
            .map(|cert| NodeIdentity::from_cert_der(cert));
        let identity = match identity {
            Some(Ok(identity)) => Some(identity),
            Some(Err(e)) if require_identity => {
                // The CA signed it, so this is a misissued or misused
                // certificate, not noise from the internet.
                tracing::warn!(peer = %peer_addr, error = %e, "refused a peer certificate without a node identity");
                return None;
            }
            None if require_identity => {
                tracing::warn!(peer = %peer_addr, "refused a peer without a client certificate");
                return None;
            }
            _ => None,
        };
        Some(Self {
            stream,
            peer_addr,
            identity,
        })
    }

    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    /// The node identity in the client certificate the handshake verified.
    /// Always present on connections from [`TlsAcceptor::cluster`].
    pub fn identity(&self) -> Option<&NodeIdentity> {
        self.identity.as_ref()
    }

    /// The certificate chain the client presented, if any.
    pub fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        self.stream.get_ref().1.peer_certificates()
    }

    /// The application protocol agreed by ALPN (`h2`, `http/1.1`).
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.stream.get_ref().1.alpn_protocol()
    }
}

impl fmt::Debug for TlsConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConnection")
            .field("peer_addr", &self.peer_addr)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
