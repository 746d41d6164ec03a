//! Shared by the TLS tests: a CA and its nodes' files in a temporary
//! directory, hand-built client configurations, a one-method gRPC service
//! that records what `peer_identity` says, and a TLS echo server.

#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::StreamExt as _;
use meridian_link::certs::{self, PemPair};
use meridian_link::{
    CallError, ClusterTls, Dialer, NodeIdentity, TlsAcceptor, peer_identity, serve_tls,
};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::time::timeout;
use tonic::body::Body;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::server::NamedService;
use tonic::service::Routes;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;

/// Longer than anything here should take, short enough to fail fast.
pub const BOUND: Duration = Duration::from_secs(10);

/// A CA and the files of the nodes it certified, in a temporary directory.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: PemPair,
    pub ca_path: PathBuf,
}

impl Pki {
    pub fn new(name: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = certs::generate_ca(name, 1).unwrap();
        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&ca_path, &ca.cert_pem).unwrap();
        Self { dir, ca, ca_path }
    }

    pub fn issue(&self, region: &str, node: u64) -> PemPair {
        let id = NodeIdentity::new(region, node).unwrap();
        certs::issue_node_cert(&self.ca.cert_pem, &self.ca.key_pem, &id, &[], 1).unwrap()
    }

    /// Writes a pair under `name` and returns (cert, key) paths.
    pub fn write(&self, name: &str, pair: &PemPair) -> (PathBuf, PathBuf) {
        let cert = self.dir.path().join(format!("{name}.pem"));
        let key = self.dir.path().join(format!("{name}.key"));
        std::fs::write(&cert, &pair.cert_pem).unwrap();
        certs::write_private(&key, &pair.key_pem).unwrap();
        (cert, key)
    }

    pub fn node(&self, region: &str, node: u64) -> (ClusterTls, PemPair) {
        let pair = self.issue(region, node);
        let (cert, key) = self.write(&format!("{region}-{node}"), &pair);
        (ClusterTls::load(&self.ca_path, cert, key).unwrap(), pair)
    }
}

pub fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

/// A client configuration built by hand, to be what `ClusterTls` never is:
/// without a certificate, or with one from elsewhere.
pub fn client_config(trusted_ca_pem: &str, identity: Option<&PemPair>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(der(trusted_ca_pem)).unwrap();
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots);
    let mut config = match identity {
        Some(pair) => builder
            .with_client_auth_cert(
                vec![der(&pair.cert_pem)],
                PrivateKeyDer::from_pem_slice(pair.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

pub fn dialer_with(config: Arc<ClientConfig>) -> Dialer {
    Dialer::with_connector(tower::service_fn(move |uri: http::Uri| {
        let config = Arc::clone(&config);
        async move {
            let addr = uri.authority().unwrap().as_str().to_owned();
            let tcp = TcpStream::connect(addr).await?;
            let name = ServerName::try_from(meridian_link::NODE_SERVER_NAME).unwrap();
            tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
        }
    }))
}

/// A one-method gRPC service that records what `peer_identity` says about
/// each call it receives.
#[derive(Clone, Default)]
pub struct Probe {
    pub seen: Arc<Mutex<Vec<Option<NodeIdentity>>>>,
}

impl Probe {
    pub fn seen(&self) -> Vec<Option<NodeIdentity>> {
        self.seen.lock().unwrap().clone()
    }
}

impl NamedService for Probe {
    const NAME: &'static str = "meridian.test.Probe";
}

impl tower::Service<http::Request<Body>> for Probe {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let ping = Ping(Arc::clone(&self.seen));
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(ProstCodec::<(), ()>::default());
            Ok(grpc.unary(ping, request).await)
        })
    }
}

pub struct Ping(Arc<Mutex<Vec<Option<NodeIdentity>>>>);

impl tonic::server::UnaryService<()> for Ping {
    type Response = ();
    type Future = std::future::Ready<Result<Response<()>, Status>>;

    fn call(&mut self, request: Request<()>) -> Self::Future {
        self.0
            .lock()
            .unwrap()
            .push(peer_identity(&request).cloned());
        std::future::ready(Ok(Response::new(())))
    }
}

pub async fn ping(channel: Channel) -> Result<(), CallError> {
    let mut grpc = tonic::client::Grpc::new(channel);
    let path = PathAndQuery::from_static("/meridian.test.Probe/Ping");
    meridian_link::with_deadline(BOUND, async move {
        grpc.ready()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        grpc.unary(Request::new(()), path, ProstCodec::<(), ()>::default())
            .await
    })
    .await
}

/// A Probe served with mutual TLS; stops when the returned sender drops.
pub async fn serve_probe(tls: ClusterTls) -> (SocketAddr, Probe, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let probe = Probe::default();
    let (stop, stopped) = oneshot::channel::<()>();
    let routes = Routes::new(probe.clone());
    tokio::spawn(serve_tls(listener, tls, routes, async {
        let _ = stopped.await;
    }));
    (addr, probe, stop)
}

/// An echo server on `acceptor`'s connections; stops when dropped.
pub async fn echo(acceptor: TlsAcceptor) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut incoming = acceptor.incoming(listener);
    tokio::spawn(async move {
        while let Some(mut connection) = incoming.next().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                while let Ok(n @ 1..) = connection.read(&mut buf).await {
                    if connection.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

pub async fn echoes<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    text: &[u8],
) {
    timeout(BOUND, async {
        stream.write_all(text).await.unwrap();
        let mut back = vec![0u8; text.len()];
        stream.read_exact(&mut back).await.unwrap();
        assert_eq!(back, text);
    })
    .await
    .unwrap();
}

pub fn presented(stream: &tokio_rustls::client::TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream.get_ref().1.peer_certificates().unwrap()[0].clone()
}
