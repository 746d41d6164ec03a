//! Raft RPC over tonic (gRPC): [`GrpcTransport`], the production
//! [`Transport`], and [`raft_service`], which answers peers' calls with
//! [`Region::handle`].
//!
//! Both ends take their connections from outside (a connector to dial, a
//! stream of accepted connections to serve) so the same code runs over TCP in
//! production and over turmoil's simulated network in simulations, without
//! this crate knowing about turmoil. Every call names its region and carries
//! the cluster secret; the server refuses a call without the secret or for
//! another region before it reaches Raft. Traffic is plain HTTP/2: the secret
//! keeps strangers and misconfigured nodes out, not an on-path attacker.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::{self, Stream, StreamExt};
use hyper_util::rt::TokioIo;
use meridian_proto::raft::v1 as wire;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Code, Request, Response, Status};
use tower::ServiceExt;
use wire::raft_client::RaftClient;
use wire::raft_server::Raft as RaftRpc;
pub use wire::raft_server::RaftServer;

use crate::Error;
use crate::raft::Member;
use crate::region::Region;
use crate::transport::{RpcKind, Transport, TransportError};

/// The metadata header that carries the cluster secret.
pub const SECRET_HEADER: &str = "x-meridian-cluster-secret";

/// The largest message either way: a snapshot of a whole region ships as one
/// message (see `RaftNetworkV2::full_snapshot` in `transport`).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// How long dialing a peer may take. A dial to a partitioned host otherwise
/// waits out the OS's SYN retries (minutes) while the peer's calls queue
/// behind it; after a failed dial the next call dials again.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// HTTP/2 pings, sent by both ends even when idle: a peer that vanished
/// without closing its socket (host lost, partition) is noticed within
/// interval + timeout and redialed, instead of every later call timing out on
/// a dead connection.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(2);

/// A pause after a failed `accept`, so running out of file descriptors does
/// not turn the accept loop into a busy loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Builds a lazily connecting channel to an endpoint: over TCP, or over the
/// connector a simulation injected.
type Dial = dyn Fn(Endpoint) -> Channel + Send + Sync;

/// Raft calls to peers over gRPC: one lazily connected channel per peer
/// address, reused by every call to it. Cheap to clone.
#[derive(Clone)]
pub struct GrpcTransport {
    inner: Arc<Inner>,
}

struct Inner {
    region: String,
    /// Marked sensitive: never printed, never indexed by HPACK.
    secret: Option<AsciiMetadataValue>,
    dial: Box<Dial>,
    /// Keyed by `raft_addr`.
    clients: Mutex<BTreeMap<String, RaftClient<Channel>>>,
}

impl GrpcTransport {
    /// Dials peers over TCP (plain HTTP/2). `secret` is sent with every call;
    /// it must be printable ASCII, since it travels in a header.
    pub fn new(region: impl Into<String>, secret: Option<String>) -> Result<Self, Error> {
        Self::build(
            region.into(),
            secret,
            Box::new(|endpoint: Endpoint| endpoint.connect_lazy()),
        )
    }

    /// Dials peers through `connector`, which opens a byte stream to the
    /// `http://{raft_addr}` URI it is given (simulations pass one over their
    /// simulated network). It is called again whenever a connection is lost.
    pub fn with_connector<C>(
        region: impl Into<String>,
        secret: Option<String>,
        connector: C,
    ) -> Result<Self, Error>
    where
        C: tower::Service<http::Uri> + Clone + Send + Sync + 'static,
        C::Response: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        C::Future: Send + 'static,
        C::Error: std::error::Error + Send + Sync + 'static,
    {
        let dial = move |endpoint: Endpoint| {
            endpoint.connect_with_connector_lazy(connector.clone().map_response(TokioIo::new))
        };
        Self::build(region.into(), secret, Box::new(dial))
    }

    fn build(region: String, secret: Option<String>, dial: Box<Dial>) -> Result<Self, Error> {
        let secret = match secret {
            Some(secret) => {
                // The value is not echoed: a config error must not print the secret.
                let mut value = AsciiMetadataValue::try_from(secret.as_str()).map_err(|_| {
                    Error::Config("the cluster secret must be printable ASCII".to_owned())
                })?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        let clients = Mutex::new(BTreeMap::new());
        Ok(Self {
            inner: Arc::new(Inner {
                region,
                secret,
                dial,
                clients,
            }),
        })
    }
}

impl fmt::Debug for GrpcTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcTransport")
            .field("region", &self.inner.region)
            .field("secret", &self.inner.secret.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl Inner {
    /// The client for `addr`, dialing lazily on first use. Creating a channel
    /// spawns its worker task, so this runs inside the call's future (on the
    /// runtime), and holds the lock only while nothing awaits.
    fn client(&self, addr: &str) -> Result<RaftClient<Channel>, TransportError> {
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(client) = clients.get(addr) {
            return Ok(client.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| {
                TransportError::Unreachable(format!("invalid peer address {addr:?}: {e}"))
            })?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
        let client = RaftClient::new((self.dial)(endpoint))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        clients.insert(addr.to_owned(), client.clone());
        Ok(client)
    }
}

impl Transport for GrpcTransport {
    fn call(
        &self,
        target: &Member,
        kind: RpcKind,
        payload: Vec<u8>,
        deadline: Duration,
    ) -> BoxFuture<'static, Result<Vec<u8>, TransportError>> {
        let inner = self.inner.clone();
        let addr = target.raft_addr.clone();
        Box::pin(async move {
            let mut client = inner.client(&addr)?;
            let mut request = Request::new(wire::RaftRequest {
                kind: wire_kind(kind).into(),
                payload,
                region: inner.region.clone(),
            });
            // The deadline travels as `grpc-timeout`, so the peer drops the
            // work when nobody waits for it any more; the local timeout bounds
            // the wait even when the reply is lost on the way.
            request.set_timeout(deadline);
            if let Some(secret) = &inner.secret {
                request.metadata_mut().insert(SECRET_HEADER, secret.clone());
            }
            match tokio::time::timeout(deadline, client.call(request)).await {
                Ok(Ok(reply)) => Ok(reply.into_inner().payload),
                Ok(Err(status)) => Err(classify(&status, deadline)),
                Err(_) => Err(TransportError::Timeout(deadline)),
            }
        })
    }
}

/// Which side a failed call's status comes from. tonic reports connection and
/// protocol failures as `Unavailable`, `Cancelled`, `Unknown` or `Internal`,
/// codes [`RaftService`] never answers with; any other code is the peer's
/// decision (wrong secret, wrong region, malformed call).
fn classify(status: &Status, deadline: Duration) -> TransportError {
    match status.code() {
        Code::DeadlineExceeded => TransportError::Timeout(deadline),
        // What tonic's server answers when the call's `grpc-timeout` passes.
        Code::Cancelled if status.message() == tonic::TimeoutExpired(()).to_string() => {
            TransportError::Timeout(deadline)
        }
        Code::Unavailable | Code::Cancelled | Code::Unknown | Code::Internal => {
            TransportError::Unreachable(describe(status))
        }
        code => TransportError::Remote(format!("{code:?}: {}", status.message())),
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

fn wire_kind(kind: RpcKind) -> wire::RpcKind {
    match kind {
        RpcKind::AppendEntries => wire::RpcKind::AppendEntries,
        RpcKind::Vote => wire::RpcKind::Vote,
        RpcKind::Snapshot => wire::RpcKind::Snapshot,
        RpcKind::Forward => wire::RpcKind::Forward,
        RpcKind::ReadIndex => wire::RpcKind::ReadIndex,
    }
}

/// `None` for `UNSPECIFIED` and for values this build does not know (a newer
/// peer's).
fn domain_kind(value: i32) -> Option<RpcKind> {
    match wire::RpcKind::try_from(value).ok()? {
        wire::RpcKind::Unspecified => None,
        wire::RpcKind::AppendEntries => Some(RpcKind::AppendEntries),
        wire::RpcKind::Vote => Some(RpcKind::Vote),
        wire::RpcKind::Snapshot => Some(RpcKind::Snapshot),
        wire::RpcKind::Forward => Some(RpcKind::Forward),
        wire::RpcKind::ReadIndex => Some(RpcKind::ReadIndex),
    }
}

/// Answers peers' Raft calls for one region; built by [`raft_service`].
pub struct RaftService {
    region: Region,
    region_name: String,
    /// SHA-256 of the cluster secret: comparing digests takes the same time
    /// whatever the presented secret, and the secret itself is not kept.
    secret_digest: Option<[u8; 32]>,
}

/// The gRPC service for `region`, ready for [`serve`], [`serve_incoming`] or a
/// `tonic` router. With `secret`, calls without it are refused; calls for a
/// region other than `region_name` are refused.
pub fn raft_service(
    region: Region,
    secret: Option<String>,
    region_name: String,
) -> RaftServer<RaftService> {
    let secret_digest = secret.map(|s| Sha256::digest(s.as_bytes()).into());
    RaftServer::new(RaftService {
        region,
        region_name,
        secret_digest,
    })
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// Whether `metadata` carries the secret whose digest is `expected` (anything
/// does when no secret is configured).
fn admitted(expected: Option<&[u8; 32]>, metadata: &MetadataMap) -> bool {
    let Some(expected) = expected else {
        return true;
    };
    let Some(presented) = metadata.get(SECRET_HEADER) else {
        return false;
    };
    let presented: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    // No early exit: the time taken says nothing about how much matched.
    presented
        .iter()
        .zip(expected)
        .fold(0u8, |diff, (a, b)| diff | (a ^ b))
        == 0
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn call(
        &self,
        request: Request<wire::RaftRequest>,
    ) -> Result<Response<wire::RaftReply>, Status> {
        // Authentication first: an outsider learns nothing, not even the region.
        if !admitted(self.secret_digest.as_ref(), request.metadata()) {
            tracing::debug!("refused a Raft call without the cluster secret");
            return Err(Status::unauthenticated("missing or wrong cluster secret"));
        }
        let request = request.into_inner();
        if request.region != self.region_name {
            return Err(Status::failed_precondition(format!(
                "this node serves region {:?}, not {:?}",
                self.region_name, request.region
            )));
        }
        let kind = domain_kind(request.kind).ok_or_else(|| {
            Status::invalid_argument(format!("unknown Raft RPC kind {}", request.kind))
        })?;
        let payload = self.region.handle(kind, &request.payload).await;
        Ok(Response::new(wire::RaftReply { payload }))
    }
}

/// Serves peers on `listener` until `shutdown` completes, then lets calls in
/// flight finish.
pub async fn serve(
    listener: TcpListener,
    service: RaftServer<RaftService>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    serve_incoming(tcp_incoming(listener), service, shutdown).await
}

/// Serves peers on the connections `incoming` yields (accepted TCP streams in
/// production, simulated ones under turmoil) until `shutdown` completes, then
/// lets calls in flight finish. A failed accept is skipped, not fatal.
pub async fn serve_incoming<I, IO, E>(
    incoming: I,
    service: RaftServer<RaftService>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error>
where
    I: Stream<Item = Result<IO, E>>,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let incoming = incoming.map(|accepted| accepted.map(PeerIo));
    Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|e| Error::Serve(e.to_string()))
}

fn tcp_incoming(listener: TcpListener) -> impl Stream<Item = io::Result<TcpStream>> {
    stream::unfold(listener, |listener| async move {
        let accepted = match listener.accept().await {
            Ok((conn, _)) => {
                // Heartbeats are small: Nagle would hold them back.
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
/// connection who is on the other end (`Connected`); injected streams cannot
/// say, and nothing here needs it.
struct PeerIo<T>(T);

impl<T> Connected for PeerIo<T> {
    type ConnectInfo = ();

    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl<T: AsyncRead + Unpin> AsyncRead for PeerIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for PeerIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [RpcKind; 5] = [
        RpcKind::AppendEntries,
        RpcKind::Vote,
        RpcKind::Snapshot,
        RpcKind::Forward,
        RpcKind::ReadIndex,
    ];

    #[test]
    fn every_kind_survives_the_wire() {
        for kind in ALL {
            assert_eq!(domain_kind(wire_kind(kind).into()), Some(kind));
        }
        assert_eq!(domain_kind(wire::RpcKind::Unspecified.into()), None);
        assert_eq!(
            domain_kind(99),
            None,
            "a newer peer's kind is not guessed at"
        );
    }

    fn with_secret(secret: &str) -> MetadataMap {
        let mut metadata = MetadataMap::new();
        if let Ok(value) = AsciiMetadataValue::try_from(secret) {
            metadata.insert(SECRET_HEADER, value);
        }
        metadata
    }

    #[test]
    fn only_the_cluster_secret_is_admitted() {
        let expected: [u8; 32] = Sha256::digest(b"s3cret").into();
        assert!(admitted(Some(&expected), &with_secret("s3cret")));
        assert!(!admitted(Some(&expected), &with_secret("s3cre")));
        assert!(!admitted(Some(&expected), &with_secret("s3cret ")));
        assert!(!admitted(Some(&expected), &MetadataMap::new()));
        assert!(
            admitted(None, &MetadataMap::new()),
            "no secret configured: open"
        );
    }

    #[test]
    fn statuses_are_classified_by_who_failed() {
        let deadline = Duration::from_secs(1);
        let timeout = TransportError::Timeout(deadline);
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
            TransportError::Unreachable(_)
        ));
        assert!(matches!(
            classify(&Status::cancelled("conn closed"), deadline),
            TransportError::Unreachable(_)
        ));
        assert_eq!(
            classify(
                &Status::unauthenticated("missing or wrong cluster secret"),
                deadline
            ),
            TransportError::Remote("Unauthenticated: missing or wrong cluster secret".to_owned())
        );
        assert!(matches!(
            classify(&Status::failed_precondition("region"), deadline),
            TransportError::Remote(_)
        ));
    }

    #[test]
    fn the_secret_must_fit_a_header_and_never_prints() {
        assert!(matches!(
            GrpcTransport::new("r", Some("line\nbreak".to_owned())),
            Err(Error::Config(_))
        ));
        let transport = GrpcTransport::new("eu-west", Some("hunter2hunter2".to_owned()));
        let shown = format!("{transport:?}");
        assert!(
            shown.contains("eu-west") && !shown.contains("hunter2"),
            "{shown}"
        );
    }
}
