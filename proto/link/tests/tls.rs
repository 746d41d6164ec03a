//! Mutual TLS between nodes over real sockets on 127.0.0.1: who gets in, who
//! does not, what a served call learns about its peer, and reloads. Every
//! wait is bounded, so a hang fails the test instead of stalling the run.

#![allow(clippy::unwrap_used, clippy::expect_used)]

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
    CallError, ClusterTls, Dialer, NodeIdentity, PublicTls, TlsAcceptor, peer_identity, serve,
    serve_tls,
};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::time::{Instant, timeout};
use tonic::body::Body;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::server::NamedService;
use tonic::service::Routes;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;

/// Longer than anything here should take, short enough to fail fast.
const BOUND: Duration = Duration::from_secs(10);

/// A CA and the files of the nodes it certified, in a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
    ca: PemPair,
    ca_path: PathBuf,
}

impl Pki {
    fn new(name: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = certs::generate_ca(name, 1).unwrap();
        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&ca_path, &ca.cert_pem).unwrap();
        Self { dir, ca, ca_path }
    }

    fn issue(&self, region: &str, node: u64) -> PemPair {
        let id = NodeIdentity::new(region, node).unwrap();
        certs::issue_node_cert(&self.ca.cert_pem, &self.ca.key_pem, &id, &[], 1).unwrap()
    }

    /// Writes a pair under `name` and returns (cert, key) paths.
    fn write(&self, name: &str, pair: &PemPair) -> (PathBuf, PathBuf) {
        let cert = self.dir.path().join(format!("{name}.pem"));
        let key = self.dir.path().join(format!("{name}.key"));
        std::fs::write(&cert, &pair.cert_pem).unwrap();
        certs::write_private(&key, &pair.key_pem).unwrap();
        (cert, key)
    }

    fn node(&self, region: &str, node: u64) -> (ClusterTls, PemPair) {
        let pair = self.issue(region, node);
        let (cert, key) = self.write(&format!("{region}-{node}"), &pair);
        (ClusterTls::load(&self.ca_path, cert, key).unwrap(), pair)
    }
}

fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

/// A client configuration built by hand, to be what `ClusterTls` never is:
/// without a certificate, or with one from elsewhere.
fn client_config(trusted_ca_pem: &str, identity: Option<&PemPair>) -> Arc<ClientConfig> {
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

fn dialer_with(config: Arc<ClientConfig>) -> Dialer {
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
struct Probe {
    seen: Arc<Mutex<Vec<Option<NodeIdentity>>>>,
}

impl Probe {
    fn seen(&self) -> Vec<Option<NodeIdentity>> {
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

struct Ping(Arc<Mutex<Vec<Option<NodeIdentity>>>>);

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

async fn ping(channel: Channel) -> Result<(), CallError> {
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
async fn serve_probe(tls: ClusterTls) -> (SocketAddr, Probe, oneshot::Sender<()>) {
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

#[tokio::test]
async fn a_call_over_mutual_tls_carries_the_callers_identity() {
    let pki = Pki::new("cluster CA");
    let (server, _) = pki.node("eu-west", 1);
    let (client, _) = pki.node("us-east", 2);
    let (addr, probe, _stop) = serve_probe(server).await;

    let channel = Dialer::tls(client).channel(&addr.to_string()).unwrap();
    ping(channel.clone()).await.unwrap();
    ping(channel).await.unwrap();
    let caller = NodeIdentity::new("us-east", 2).unwrap();
    assert_eq!(probe.seen(), vec![Some(caller.clone()), Some(caller)]);
}

#[tokio::test]
async fn plaintext_serving_reports_no_identity() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let probe = Probe::default();
    let (_stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(serve(listener, Routes::new(probe.clone()), async {
        let _ = stopped.await;
    }));
    let channel = Dialer::tcp().channel(&addr.to_string()).unwrap();
    ping(channel).await.unwrap();
    assert_eq!(probe.seen(), vec![None]);
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    let pki = Pki::new("cluster CA");
    let (server, _) = pki.node("eu", 1);
    let (addr, probe, _stop) = serve_probe(server).await;

    let dialer = dialer_with(client_config(&pki.ca.cert_pem, None));
    let refused = ping(dialer.channel(&addr.to_string()).unwrap()).await;
    assert!(
        matches!(refused, Err(CallError::Unreachable(_))),
        "{refused:?}"
    );
    assert!(probe.seen().is_empty(), "a call reached the service");
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused_both_ways() {
    let pki = Pki::new("cluster CA");
    let stranger_pki = Pki::new("stranger CA");
    let (server, _) = pki.node("eu", 1);
    let (addr, probe, _stop) = serve_probe(server).await;

    // Trusts our CA, so it would accept the server; presents a stranger's cert.
    let stranger = stranger_pki.issue("eu", 9);
    let dialer = dialer_with(client_config(&pki.ca.cert_pem, Some(&stranger)));
    let refused = ping(dialer.channel(&addr.to_string()).unwrap()).await;
    assert!(
        matches!(refused, Err(CallError::Unreachable(_))),
        "{refused:?}"
    );

    // A node of another cluster does not accept our server either.
    let (other_cluster, _) = stranger_pki.node("eu", 2);
    let refused = ping(
        Dialer::tls(other_cluster)
            .channel(&addr.to_string())
            .unwrap(),
    )
    .await;
    assert!(
        matches!(refused, Err(CallError::Unreachable(_))),
        "{refused:?}"
    );
    assert!(probe.seen().is_empty(), "a call reached the service");
}

#[tokio::test]
async fn plaintext_http2_is_refused() {
    let pki = Pki::new("cluster CA");
    let (server, _) = pki.node("eu", 1);
    let (addr, probe, _stop) = serve_probe(server).await;

    let refused = ping(Dialer::tcp().channel(&addr.to_string()).unwrap()).await;
    assert!(
        matches!(refused, Err(CallError::Unreachable(_))),
        "{refused:?}"
    );
    assert!(probe.seen().is_empty(), "a call reached the service");
}

/// An echo server on `acceptor`'s connections; stops when dropped.
async fn echo(acceptor: TlsAcceptor) -> SocketAddr {
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

async fn echoes<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
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

fn presented(stream: &tokio_rustls::client::TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream.get_ref().1.peer_certificates().unwrap()[0].clone()
}

#[tokio::test]
async fn a_reload_applies_to_new_connections_and_spares_open_ones() {
    let pki = Pki::new("cluster CA");
    let first = pki.issue("eu", 1);
    let (cert_path, key_path) = pki.write("server", &first);
    let server = ClusterTls::load(&pki.ca_path, &cert_path, &key_path).unwrap();
    let (client, _) = pki.node("us", 2);
    let addr = echo(TlsAcceptor::cluster(server.clone())).await.to_string();

    let mut old = timeout(BOUND, client.connect(&addr))
        .await
        .unwrap()
        .unwrap();
    echoes(&mut old, b"before").await;
    assert_eq!(presented(&old), der(&first.cert_pem));

    let second = pki.issue("eu", 1);
    pki.write("server", &second);
    server.reload().unwrap();
    let mut new = timeout(BOUND, client.connect(&addr))
        .await
        .unwrap()
        .unwrap();
    echoes(&mut new, b"after").await;
    assert_eq!(presented(&new), der(&second.cert_pem));
    assert_ne!(der(&first.cert_pem), der(&second.cert_pem));
    echoes(&mut old, b"still there").await;

    // A broken key: the reload fails, names the file, quotes nothing of it,
    // and the last good material stays in use.
    std::fs::write(
        &key_path,
        "-----BEGIN PRIVATE KEY-----\nnot-base64-SECRETBYTES\n",
    )
    .unwrap();
    let err = server.reload().unwrap_err().to_string();
    assert!(err.contains(&key_path.display().to_string()), "{err}");
    assert!(!err.contains("SECRETBYTES"), "{err}");
    let mut after_failure = timeout(BOUND, client.connect(&addr))
        .await
        .unwrap()
        .unwrap();
    echoes(&mut after_failure, b"unchanged").await;
    assert_eq!(presented(&after_failure), der(&second.cert_pem));
    assert_eq!(server.identity(), NodeIdentity::new("eu", 1).unwrap());

    // A key that is a key, but not this certificate's.
    certs::write_private(&key_path, &pki.issue("eu", 1).key_pem).unwrap();
    let err = server.reload().unwrap_err().to_string();
    assert!(err.contains(&key_path.display().to_string()), "{err}");
}

#[tokio::test]
async fn a_reload_on_the_dialing_side_applies_to_its_next_connection() {
    let pki = Pki::new("cluster CA");
    let (first_server, _) = pki.node("eu", 1);
    let (second_server, _) = pki.node("eu", 2);
    let (first, first_probe, _stop_first) = serve_probe(first_server).await;
    let (second, second_probe, _stop_second) = serve_probe(second_server).await;
    let (cert_path, key_path) = pki.write("client", &pki.issue("us", 2));
    let client = ClusterTls::load(&pki.ca_path, &cert_path, &key_path).unwrap();
    let dialer = Dialer::tls(client.clone());
    ping(dialer.channel(&first.to_string()).unwrap())
        .await
        .unwrap();

    pki.write("client", &pki.issue("us", 3));
    client.reload().unwrap();
    ping(dialer.channel(&second.to_string()).unwrap())
        .await
        .unwrap();
    // The first connection is still the one made before the reload.
    ping(dialer.channel(&first.to_string()).unwrap())
        .await
        .unwrap();

    let (us2, us3) = (
        NodeIdentity::new("us", 2).unwrap(),
        NodeIdentity::new("us", 3).unwrap(),
    );
    assert_eq!(first_probe.seen(), vec![Some(us2.clone()), Some(us2)]);
    assert_eq!(second_probe.seen(), vec![Some(us3)]);
}

#[tokio::test]
async fn changed_files_are_reloaded_by_the_watcher() {
    let pki = Pki::new("cluster CA");
    let first = pki.issue("eu", 1);
    let (cert_path, key_path) = pki.write("server", &first);
    let server = ClusterTls::load(&pki.ca_path, &cert_path, &key_path).unwrap();
    let (client, _) = pki.node("us", 2);
    let addr = echo(TlsAcceptor::cluster(server.clone())).await.to_string();
    let (stop, stopped) = oneshot::channel::<()>();
    let watcher = server
        .clone()
        .spawn_reload_on_change(Duration::from_millis(100), async {
            let _ = stopped.await;
        });

    // The certificate of another node: the identity changes with it.
    let second = pki.issue("eu", 7);
    pki.write("server", &second);
    let deadline = Instant::now() + BOUND;
    while server.identity().node != 7 {
        assert!(Instant::now() < deadline, "the watcher never reloaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let connection = timeout(BOUND, client.connect(&addr))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(presented(&connection), der(&second.cert_pem));

    drop(stop);
    timeout(BOUND, watcher).await.unwrap().unwrap();
}

#[tokio::test]
async fn a_silent_client_is_dropped_at_the_handshake_timeout_and_delays_nobody() {
    let pki = Pki::new("cluster CA");
    let (server, _) = pki.node("eu", 1);
    let (client, _) = pki.node("us", 2);
    let handshake_timeout = Duration::from_millis(1500);
    let acceptor = TlsAcceptor::cluster(server).with_handshake_timeout(handshake_timeout);
    let addr = echo(acceptor).await.to_string();

    let started = Instant::now();
    let mut silent = TcpStream::connect(&addr).await.unwrap();
    // Meanwhile a real client gets through, well before the silent one's
    // handshake times out.
    let mut real = timeout(handshake_timeout, client.connect(&addr))
        .await
        .unwrap()
        .unwrap();
    echoes(&mut real, b"hello").await;
    assert!(
        started.elapsed() < handshake_timeout,
        "the real client waited"
    );

    let mut buf = [0u8; 16];
    let read = timeout(BOUND, silent.read(&mut buf)).await.unwrap();
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let waited = started.elapsed();
    assert!(waited >= handshake_timeout, "dropped after {waited:?}");
    echoes(&mut real, b"still served").await;
}

#[tokio::test]
async fn connections_beyond_the_handshake_cap_are_closed_at_once() {
    let pki = Pki::new("cluster CA");
    let (server, _) = pki.node("eu", 1);
    let (client, _) = pki.node("us", 2);
    let acceptor = TlsAcceptor::cluster(server).with_max_handshakes(1);
    let addr = echo(acceptor).await.to_string();

    // Holds the only handshake slot for the default ten seconds.
    let silent = TcpStream::connect(&addr).await.unwrap();
    let started = Instant::now();
    let mut over_cap = TcpStream::connect(&addr).await.unwrap();
    let mut buf = [0u8; 16];
    let read = timeout(BOUND, over_cap.read(&mut buf)).await.unwrap();
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "queued, not closed"
    );

    // The slot comes back when the silent client goes away.
    drop(silent);
    let deadline = Instant::now() + BOUND;
    loop {
        if let Ok(Ok(mut real)) = timeout(BOUND, client.connect(&addr)).await
            && timeout(BOUND, async {
                real.write_all(b"x").await?;
                real.read_exact(&mut [0u8; 1]).await
            })
            .await
            .is_ok_and(|read| read.is_ok())
        {
            break;
        }
        assert!(Instant::now() < deadline, "the slot never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_public_listener_serves_without_client_certificates() {
    let pki = Pki::new("cluster CA");
    let pair = certs::issue_server_cert(
        &pki.ca.cert_pem,
        &pki.ca.key_pem,
        &["gateway.example".to_owned(), "127.0.0.1".to_owned()],
        1,
    )
    .unwrap();
    let (cert, key) = pki.write("public", &pair);
    let public = PublicTls::load(cert, key).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut incoming = TlsAcceptor::public(public).incoming(listener);

    let mut roots = RootCertStore::empty();
    roots.add(der(&pki.ca.cert_pem)).unwrap();
    // A TLS 1.2 client with HTTP/1.1 only: the public side is not ours to upgrade.
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("gateway.example").unwrap();
    let client = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp);
    let (client, accepted) = timeout(BOUND, async { tokio::join!(client, incoming.next()) })
        .await
        .unwrap();
    let client = client.unwrap();
    let accepted = accepted.unwrap();
    assert_eq!(accepted.identity(), None);
    assert_eq!(accepted.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(
        client.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );

    // A node certificate's key cannot pose as this listener's.
    let wrong_key = pki.issue("eu", 1);
    let (cert, key) = pki.write(
        "mismatched",
        &PemPair {
            cert_pem: pair.cert_pem.clone(),
            key_pem: wrong_key.key_pem,
        },
    );
    assert!(PublicTls::load(cert, key).is_err());
}

#[tokio::test]
async fn loading_refuses_material_peers_would_refuse() {
    let pki = Pki::new("cluster CA");
    let other = Pki::new("other CA");
    let (cert, key) = pki.write("stranger", &other.issue("eu", 1));
    let err = ClusterTls::load(&pki.ca_path, &cert, &key)
        .unwrap_err()
        .to_string();
    assert!(err.contains("stranger.pem"), "{err}");

    // A server certificate has no node identity.
    let server =
        certs::issue_server_cert(&pki.ca.cert_pem, &pki.ca.key_pem, &["a.example".into()], 1)
            .unwrap();
    let (cert, key) = pki.write("server", &server);
    assert!(ClusterTls::load(&pki.ca_path, &cert, &key).is_err());

    // A bundle of two CAs: nodes of either are accepted, for rotation.
    let bundle = pki.dir.path().join("bundle.pem");
    std::fs::write(&bundle, format!("{}{}", pki.ca.cert_pem, other.ca.cert_pem)).unwrap();
    let (cert, key) = pki.write("old-ca-node", &pki.issue("eu", 1));
    let old_ca_node = ClusterTls::load(&bundle, cert, key).unwrap();
    let (cert, key) = pki.write("new-ca-node", &other.issue("eu", 2));
    let new_ca_node = ClusterTls::load(&bundle, cert, key).unwrap();
    let (addr, probe, _stop) = serve_probe(old_ca_node).await;
    ping(Dialer::tls(new_ca_node).channel(&addr.to_string()).unwrap())
        .await
        .unwrap();
    assert_eq!(
        probe.seen(),
        vec![Some(NodeIdentity::new("eu", 2).unwrap())]
    );

    let missing = pki.dir.path().join("missing.pem");
    let err = ClusterTls::load(&missing, &missing, &missing)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("missing.pem") && err.contains("cannot read"),
        "{err}"
    );
}
