//! `meridian-link`: how Meridian nodes reach each other over gRPC, with no
//! knowledge of what they say. Raft (`meridian-consensus`) and gossip
//! (`meridian-replication`) both use it, over one listener per node. It owns
//! the transport and who may use it; it must not depend on any Meridian crate
//! nor know any service.
//!
//! - [`Dialer`]: lazily connected, cached channels per peer address, over TCP,
//!   over mutual TLS ([`Dialer::tls`]) or over a connector a simulation
//!   injects; keepalives and a dial timeout so a vanished peer is noticed
//!   instead of waited on.
//! - [`serve`] / [`serve_tls`] / [`serve_incoming`]: serve a set of tonic
//!   services on a TCP listener, plain or with mutual TLS, or on any stream of
//!   accepted connections.
//! - [`NodeIdentity`]: a node's region and raft id, carried in its
//!   certificate as a `meridian://node/<region>/<id>` URI; [`peer_identity`]
//!   reads the verified identity of a served call's peer ([`PeerInfo`]).
//! - [`ClusterTls`]: the CA bundle, node certificate and key, TLS 1.3 with
//!   client certificates required both ways, reloaded from disk without a
//!   restart. [`PublicTls`] is its counterpart for a node's public HTTPS
//!   listener; [`TlsAcceptor`] accepts for either, with bounded handshakes.
//! - [`certs`]: making a CA, node certificates and server certificates.
//! - [`ClusterSecret`]: stamped on every call, checked on every served call
//!   before anything else; never printed. [`ClusterSecret::admit`] also checks
//!   what a call claims about its sender ([`Claim`]) against the sender's
//!   certificate.
//! - [`CallError`]: a failed call classified by which side failed.
//!
//! With [`ClusterTls`] configured, traffic between nodes is TLS 1.3 and each
//! end proves with a CA-signed certificate which node it is; the cluster
//! secret is then an optional second factor. Plain HTTP/2 ([`Dialer::tcp`],
//! [`serve`]) is for simulations and explicitly insecure test clusters only:
//! there the secret keeps strangers and misconfigured nodes out, not an
//! on-path attacker.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::stream::{self, Stream, StreamExt};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tonic::service::Routes;
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Code, Status};
use tower::ServiceExt;

mod accept;
pub mod certs;
mod identity;
mod peer;
mod secret;
mod tls;

pub use accept::{
    HANDSHAKE_TIMEOUT, MAX_CONCURRENT_HANDSHAKES, MAX_HANDSHAKES_PER_ADDRESS, TlsAcceptor,
    TlsConnection, TlsIncoming,
};
pub use identity::{Expect, NODE_SERVER_NAME, NodeIdentity, PeerInfo, peer_identity};
pub use peer::Peer;
pub use secret::{Claim, ClusterSecret};
pub use tls::{ClusterTls, PublicTls};

/// The metadata header that carries the cluster secret.
pub const SECRET_HEADER: &str = "x-meridian-cluster-secret";

/// How long dialing a peer may take. A dial to a partitioned host otherwise
/// waits out the OS's SYN retries (minutes) while calls queue behind it; after
/// a failed dial the next call dials again.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// HTTP/2 pings, sent by both ends even when idle: a peer that vanished
/// without closing its socket (host lost, partition) is noticed within
/// interval + timeout and redialed, instead of every later call timing out on
/// a dead connection.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(2);

/// A pause after a failed `accept`, so running out of file descriptors does
/// not turn the accept loop into a busy loop.
pub(crate) const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Config(String),
    #[error("serving peers: {0}")]
    Serve(String),
    /// A TLS file that cannot be read or does not hold what it must. The
    /// reason never quotes the file's content.
    #[error("{}: {reason}", path.display())]
    File { path: PathBuf, reason: String },
    /// Material that reads fine but does not make a TLS configuration.
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// A certificate that cannot be made or read.
    #[error("certificate: {0}")]
    Certificate(String),
    /// A node identity that is malformed, missing or ambiguous.
    #[error("node identity: {0}")]
    Identity(String),
}

/// Why a call to a peer failed, by which side failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CallError {
    /// No answer within the deadline (the peer may still have acted).
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The peer could not be reached, or the connection broke.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The peer answered with an error of its own (wrong secret, malformed call).
    #[error("refused by the peer: {0}")]
    Remote(String),
}

/// Which side a failed call's status comes from. tonic reports connection and
/// protocol failures as `Unavailable`, `Cancelled`, `Unknown` or `Internal`,
/// codes Meridian's services never answer with; any other code is the peer's
/// decision.
pub fn classify(status: &Status, deadline: Duration) -> CallError {
    match status.code() {
        Code::DeadlineExceeded => CallError::Timeout(deadline),
        // What tonic's server answers when the call's `grpc-timeout` passes.
        Code::Cancelled if status.message() == tonic::TimeoutExpired(()).to_string() => {
            CallError::Timeout(deadline)
        }
        Code::Unavailable | Code::Cancelled | Code::Unknown | Code::Internal => {
            CallError::Unreachable(describe(status))
        }
        code => CallError::Remote(format!("{code:?}: {}", status.message())),
    }
}

/// A status's message and its causes: for a failed dial the message alone is
/// just "transport error"; the cause says what happened (refused, timed out).
fn describe(status: &Status) -> String {
    let mut text = status.message().to_owned();
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Runs `call` with `deadline` both sent (as `grpc-timeout`, so the peer drops
/// the work when nobody waits for it any more) and enforced locally (so a lost
/// reply cannot hold the caller).
pub async fn with_deadline<T, F>(deadline: Duration, call: F) -> Result<T, CallError>
where
    F: Future<Output = Result<tonic::Response<T>, Status>>,
{
    match tokio::time::timeout(deadline, call).await {
        Ok(Ok(reply)) => Ok(reply.into_inner()),
        Ok(Err(status)) => Err(classify(&status, deadline)),
        Err(_) => Err(CallError::Timeout(deadline)),
    }
}

/// Builds a lazily connecting channel to an endpoint.
type Dial = dyn Fn(Endpoint, &Expect) -> Channel + Send + Sync;

/// A call abandoned at its deadline resets its stream; its answer may still
/// arrive. HTTP/2 ignores frames for a stream it remembers resetting and
/// answers frames for one it forgot with another reset. How long it remembers
/// is measured on the real clock (in `h2`), so under the simulator a short
/// memory made the number of messages on the wire depend on how fast the
/// machine ran. Remembering many, long, keeps it independent of the real
/// clock, and costs a few dozen bytes per stream.
const RESET_STREAMS_KEPT: usize = 4096;
const RESET_STREAMS_FOR: Duration = Duration::from_secs(600);

/// One lazily connected channel per peer address, reused by every call to it.
/// Cheap to clone.
#[derive(Clone)]
pub struct Dialer {
    dial: Arc<Dial>,
    /// Bounds a whole dial, as tonic applies it: TCP connect, and for TLS the
    /// handshake after it.
    connect_timeout: Duration,
    channels: Arc<Mutex<BTreeMap<(String, Expect), Channel>>>,
}

impl Dialer {
    /// Dials peers over TCP.
    pub fn tcp() -> Self {
        Self::build(Arc::new(|endpoint: Endpoint, _: &Expect| {
            endpoint.connect_lazy()
        }))
    }

    /// Dials peers through `connector`, which opens a byte stream to the
    /// `http://{addr}` URI it is given (simulations pass one over their
    /// simulated network). It is called again whenever a connection is lost.
    pub fn with_connector<C>(connector: C) -> Self
    where
        C: tower::Service<http::Uri> + Clone + Send + Sync + 'static,
        C::Response: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        C::Future: Send + 'static,
        C::Error: std::error::Error + Send + Sync + 'static,
    {
        Self::build(Arc::new(move |endpoint: Endpoint, _: &Expect| {
            endpoint.connect_with_connector_lazy(connector.clone().map_response(TokioIo::new))
        }))
    }

    /// Dials peers over TCP with mutual TLS: each new connection takes the
    /// client configuration current at that moment (so a reload applies to the
    /// next connection), presents this node's certificate and verifies the
    /// peer's as [`NODE_SERVER_NAME`] under the CA bundle. Channels keep their
    /// `http://` URIs: TLS is in the stream, below HTTP/2.
    pub fn tls(tls: ClusterTls) -> Self {
        let mut dialer = Self::build(Arc::new(move |endpoint: Endpoint, expect: &Expect| {
            let (tls, expect) = (tls.clone(), expect.clone());
            let connector = tower::service_fn(move |uri: http::Uri| {
                let (tls, expect) = (tls.clone(), expect.clone());
                async move {
                    let addr = uri
                        .authority()
                        .map(|a| a.as_str().to_owned())
                        .ok_or_else(|| {
                            io::Error::new(
                                io::ErrorKind::InvalidInput,
                                format!("no address in {uri}"),
                            )
                        })?;
                    tls.connect_to(&addr, &expect).await
                }
            });
            endpoint.connect_with_connector_lazy(connector.map_response(TokioIo::new))
        }));
        // TCP keeps CONNECT_TIMEOUT inside `ClusterTls::connect`; tonic's
        // deadline over the whole dial leaves room for the handshake.
        dialer.connect_timeout = CONNECT_TIMEOUT + tls::DIAL_HANDSHAKE_TIMEOUT;
        dialer
    }

    fn build(dial: Arc<Dial>) -> Self {
        Self {
            dial,
            connect_timeout: CONNECT_TIMEOUT,
            channels: Arc::default(),
        }
    }

    /// The channel to any node of the cluster at `addr` (`host:port`),
    /// dialing lazily on first use. Creating a channel spawns its worker
    /// task, so call this on the runtime (inside the call's future).
    pub fn channel(&self, addr: &str) -> Result<Channel, CallError> {
        self.channel_to(addr, &Expect::Any)
    }

    /// The channel to `expect` at `addr`: over TLS, a connection to a
    /// server whose certificate names another node (or region) is refused
    /// before any request is sent, so a node of the cluster that answers at
    /// another's address learns nothing the caller meant for that one.
    pub fn channel_to(&self, addr: &str, expect: &Expect) -> Result<Channel, CallError> {
        let mut channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (addr.to_owned(), expect.clone());
        if let Some(channel) = channels.get(&key) {
            return Ok(channel.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| CallError::Unreachable(format!("invalid peer address {addr:?}: {e}")))?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .http2_max_concurrent_reset_streams(RESET_STREAMS_KEPT)
            .http2_reset_stream_duration(RESET_STREAMS_FOR);
        let channel = (self.dial)(endpoint, expect);
        channels.insert(key, channel.clone());
        Ok(channel)
    }
}

impl fmt::Debug for Dialer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dialer").finish_non_exhaustive()
    }
}

/// Serves `routes` on `listener` until `shutdown` completes, then lets calls
/// in flight finish.
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    serve_incoming(tcp_incoming(listener), routes, shutdown).await
}

/// Serves `routes` on `listener` with mutual TLS until `shutdown` completes,
/// then lets calls in flight finish. Only peers presenting a certificate the
/// CA bundle verifies, carrying a node identity, get as far as HTTP/2; each
/// served call can read that identity with [`peer_identity`]. A reload of
/// `tls` applies to the connections accepted after it.
pub async fn serve_tls(
    listener: TcpListener,
    tls: ClusterTls,
    routes: Routes,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let incoming = TlsAcceptor::cluster(tls)
        .incoming(listener)
        .map(|connection| {
            let info = PeerInfo {
                identity: connection.identity().cloned(),
            };
            Ok::<_, Infallible>(PeerIo {
                io: connection,
                info,
            })
        });
    serve_peers(incoming, routes, shutdown).await
}

/// Serves `routes` on the connections `incoming` yields (accepted TCP streams
/// in production, simulated ones under turmoil) until `shutdown` completes,
/// then lets calls in flight finish. A failed accept is skipped, not fatal.
pub async fn serve_incoming<I, IO, E>(
    incoming: I,
    routes: Routes,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error>
where
    I: Stream<Item = Result<IO, E>>,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // Nothing vouches for who is on the other end of a plain stream.
    let incoming = incoming.map(|accepted| {
        accepted.map(|io| PeerIo {
            io,
            info: PeerInfo::default(),
        })
    });
    serve_peers(incoming, routes, shutdown).await
}

async fn serve_peers<I, IO, E>(
    incoming: I,
    routes: Routes,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error>
where
    I: Stream<Item = Result<PeerIo<IO>, E>>,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|e| Error::Serve(e.to_string()))
}

fn tcp_incoming(listener: TcpListener) -> impl Stream<Item = io::Result<TcpStream>> {
    stream::unfold(listener, |listener| async move {
        let accepted = match listener.accept().await {
            Ok((conn, _)) => {
                // Heartbeats and gossip are small: Nagle would hold them back.
                if let Err(e) = conn.set_nodelay(true) {
                    tracing::debug!(error = %e, "TCP_NODELAY on a peer connection");
                }
                Ok(conn)
            }
            Err(e) => {
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                Err(e)
            }
        };
        Some((accepted, listener))
    })
}

/// An accepted connection as tonic's server wants it. tonic asks each
/// connection who is on the other end (`Connected`) and puts the answer into
/// every request's extensions, where [`peer_identity`] finds it.
struct PeerIo<T> {
    io: T,
    info: PeerInfo,
}

impl<T> Connected for PeerIo<T> {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}
impl<T: AsyncRead + Unpin> AsyncRead for PeerIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for PeerIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified_by_who_failed() {
        let deadline = Duration::from_secs(1);
        let timeout = CallError::Timeout(deadline);
        assert_eq!(
            classify(&Status::deadline_exceeded("late"), deadline),
            timeout
        );
        assert_eq!(
            classify(
                &Status::cancelled(tonic::TimeoutExpired(()).to_string()),
                deadline
            ),
            timeout
        );
        assert!(matches!(
            classify(&Status::unavailable("refused"), deadline),
            CallError::Unreachable(_)
        ));
        assert!(matches!(
            classify(&Status::cancelled("conn closed"), deadline),
            CallError::Unreachable(_)
        ));
        assert_eq!(
            classify(
                &Status::unauthenticated("missing or wrong cluster secret"),
                deadline
            ),
            CallError::Remote("Unauthenticated: missing or wrong cluster secret".to_owned())
        );
    }
}
