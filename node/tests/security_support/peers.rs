//! Real regions whose nodes talk over mutual TLS with certificates made by
//! the test, and clients of the inter-node port that an attacker would
//! write: without a certificate, with someone else's, in plain text, or
//! sending raw bytes as a gRPC message (`security_peers*.rs`). Every call
//! and handshake is bounded in time.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf as _, BufMut as _};
use hyper_util::rt::TokioIo;
use meridian_link::certs::{self, PemPair};
use meridian_link::{ClusterTls, Dialer, NodeIdentity};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::{Channel, Endpoint};

use crate::process_support::{self, MASTER, MOCK_MODELS, Proc, free_port};

/// How long one inter-node call or handshake may take here.
pub const CALL_WITHIN: Duration = Duration::from_secs(10);

/// A CA and where its certificate is written.
pub struct Ca {
    pub pem: PemPair,
    pub cert_path: PathBuf,
}

impl Ca {
    /// A new CA, its certificate written to `dir/<name>.pem`.
    pub fn new(dir: &Path, name: &str) -> Ca {
        let pem = certs::generate_ca(name, 1).unwrap();
        let cert_path = dir.join(format!("{name}.pem"));
        std::fs::write(&cert_path, &pem.cert_pem).unwrap();
        Ca { pem, cert_path }
    }

    /// A node certificate for `region`/`node`, written to
    /// `dir/<region>-<node>.{pem,key}`; the paths.
    pub fn node_files(&self, dir: &Path, region: &str, node: u64) -> (PathBuf, PathBuf) {
        let pair = self.node(region, node);
        let cert = dir.join(format!("{region}-{node}.pem"));
        let key = dir.join(format!("{region}-{node}.key"));
        std::fs::write(&cert, &pair.cert_pem).unwrap();
        certs::write_private(&key, &pair.key_pem).unwrap();
        (cert, key)
    }

    /// A node certificate for `region`/`node`, in memory.
    pub fn node(&self, region: &str, node: u64) -> PemPair {
        let id = NodeIdentity::new(region, node).unwrap();
        certs::issue_node_cert(&self.pem.cert_pem, &self.pem.key_pem, &id, &[], 1).unwrap()
    }

    /// Node `region`/`node`'s TLS as a peer would load it, trusting the
    /// CAs in `bundle` (written beside the certificate).
    pub fn node_tls(&self, dir: &Path, region: &str, node: u64, bundle: &[&Ca]) -> ClusterTls {
        let (cert, key) = self.node_files(dir, region, node);
        let bundle_path = dir.join(format!("{region}-{node}-bundle.pem"));
        let text: String = bundle.iter().map(|ca| ca.pem.cert_pem.clone()).collect();
        std::fs::write(&bundle_path, text).unwrap();
        ClusterTls::load(&bundle_path, &cert, &key).unwrap()
    }
}

/// A region of real nodes on loopback whose inter-node links are mutual
/// TLS under `ca` (no cluster secret: the certificates are all there is
/// between an attacker and the services). Killed when dropped.
pub struct TlsRegion {
    pub dir: tempfile::TempDir,
    pub ca: Ca,
    pub name: &'static str,
    pub nodes: Vec<Proc>,
    pub http: reqwest::Client,
}

impl TlsRegion {
    /// `size` nodes of region `name`, started and with a leader.
    pub async fn start(name: &'static str, size: u64) -> TlsRegion {
        meridian_node::upstream::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new(dir.path(), "ca-a");
        let nodes: Vec<Proc> = (1..=size)
            .map(|raft_id| Proc {
                region: name,
                raft_id,
                api_port: free_port(),
                cluster_port: free_port(),
                config: dir.path().join(format!("{name}-{raft_id}.yaml")),
                child: None,
            })
            .collect();
        let peers: String = nodes
            .iter()
            .map(|n| {
                format!(
                    "    - {{raft_id: {}, cluster_addr: \"127.0.0.1:{}\", api_url: \"{}\"}}\n",
                    n.raft_id,
                    n.cluster_port,
                    n.url()
                )
            })
            .collect();
        for n in &nodes {
            let (cert, key) = ca.node_files(dir.path(), name, n.raft_id);
            let yaml = format!(
                "{MOCK_MODELS}meridian:\n  node_id: {name}-{id}\n  region: {name}\n  port: {port}\n  data_dir: {data}\n  raft_id: {id}\n  cluster_listen: 127.0.0.1:{cport}\n  cluster_tls_ca: {ca}\n  cluster_tls_cert: {cert}\n  cluster_tls_key: {key}\n  peers:\n{peers}",
                id = n.raft_id,
                port = n.api_port,
                data = dir.path().join(format!("data-{}", n.raft_id)).display(),
                cport = n.cluster_port,
                ca = ca.cert_path.display(),
                cert = cert.display(),
                key = key.display(),
            );
            std::fs::write(&n.config, yaml).unwrap();
        }
        let mut region = TlsRegion {
            dir,
            ca,
            name,
            nodes,
            http: reqwest::Client::new(),
        };
        for i in 0..region.nodes.len() {
            let log = region.dir.path().join(format!("node-{}.log", i + 1));
            region.nodes[i].child = Some(spawn_logged(&region.nodes[i].config, &log));
        }
        region.leader().await;
        region
    }

    /// Node `i`'s inter-node address.
    pub fn addr(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.nodes[i].cluster_port)
    }

    /// Node `i`'s `/cluster/status` (`Null` if it does not answer 200).
    pub async fn status(&self, i: usize) -> Value {
        let (status, body) = process_support::call(
            &self.http,
            &self.nodes[i].url(),
            "GET",
            "/cluster/status",
            MASTER,
            None,
        )
        .await;
        if status == 200 { body } else { Value::Null }
    }

    /// The leader every node names, once they agree (within 30 s).
    pub async fn leader(&self) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut named = Vec::new();
            for i in 0..self.nodes.len() {
                named.push(self.status(i).await["leader"].as_u64());
            }
            if let Some(Some(first)) = named.first()
                && named.iter().all(|l| *l == Some(*first))
            {
                return *first;
            }
            assert!(
                Instant::now() < deadline,
                "no agreed leader within 30 s: {named:?}; {}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Each node's applied index: what a call that reached the region's
    /// state machine would move.
    pub async fn applied(&self) -> Vec<u64> {
        let mut out = Vec::new();
        for i in 0..self.nodes.len() {
            out.push(self.status(i).await["applied_index"].as_u64().unwrap_or(0));
        }
        out
    }

    /// Every node is still running.
    pub fn all_alive(&mut self) -> bool {
        self.nodes.iter_mut().all(|n| {
            n.child
                .as_mut()
                .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
        })
    }

    /// The last lines each node logged, for failure messages.
    pub fn logs(&self) -> String {
        (1..=self.nodes.len())
            .map(|i| {
                let path = self.dir.path().join(format!("node-{i}.log"));
                let text = std::fs::read_to_string(path).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(20).collect();
                format!(
                    "--- node {i}:\n{}\n",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect()
    }
}

/// Starts `meridian serve` with the test master key and no cluster
/// secret, its output to `log`.
pub fn spawn_logged(config: &Path, log: &Path) -> std::process::Child {
    let out = std::fs::File::create(log).unwrap();
    std::process::Command::new(process_support::BIN)
        .args(["serve", "--config", config.to_str().unwrap()])
        .env("MERIDIAN_MASTER_KEY", MASTER)
        .env_remove("MERIDIAN_CLUSTER_SECRET")
        .env("RUST_LOG", "info")
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap()
}

/// A TLS 1.3 client trusting `ca_pem`, presenting `client` if given.
pub fn client_config(ca_pem: &str, client: Option<&PemPair>) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some(pair) => {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(pair.cert_pem.as_bytes())
                    .map(Result::unwrap)
                    .collect();
            let key = PrivateKeyDer::from_pem_slice(pair.key_pem.as_bytes()).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

fn server_name() -> ServerName<'static> {
    ServerName::try_from(meridian_link::NODE_SERVER_NAME).unwrap()
}

/// What a raw TLS client saw of an inter-node port.
#[derive(Debug)]
pub struct Probe {
    /// The client's side of the handshake (with TLS 1.3 the server
    /// judges the client's certificate after this).
    pub handshake: Result<(), String>,
    /// After sending the HTTP/2 preface: the first bytes the server
    /// sent, or how the connection ended.
    pub answer: Result<Vec<u8>, String>,
}

impl Probe {
    /// The server spoke HTTP/2 (its first frame is SETTINGS): the
    /// connection was admitted.
    pub fn admitted(&self) -> bool {
        matches!(&self.answer, Ok(b) if b.len() >= 9 && b[3] == 4)
    }
}

/// Handshakes with `addr` as `config` says, sends the HTTP/2 preface
/// and reads what comes back.
pub async fn probe(addr: &str, config: Arc<rustls::ClientConfig>) -> Probe {
    let tcp = timeout(CALL_WITHIN, TcpStream::connect(addr))
        .await
        .unwrap()
        .unwrap();
    let connector = tokio_rustls::TlsConnector::from(config);
    let mut tls = match timeout(CALL_WITHIN, connector.connect(server_name(), tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            return Probe {
                handshake: Err(e.to_string()),
                answer: Err("no handshake".into()),
            };
        }
        Err(_) => {
            return Probe {
                handshake: Err("timed out".into()),
                answer: Err("no handshake".into()),
            };
        }
    };
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend([0, 0, 0, 4, 0, 0, 0, 0, 0]);
    let answer = timeout(CALL_WITHIN, async {
        tls.write_all(&hello).await.map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 1024];
        match tls.read(&mut buf).await {
            Ok(0) => Err("closed".to_owned()),
            Ok(n) => Ok(buf[..n].to_vec()),
            Err(e) => Err(e.to_string()),
        }
    })
    .await
    .unwrap_or_else(|_| Err("no answer within 10 s".into()));
    Probe {
        handshake: Ok(()),
        answer,
    }
}

/// What a plain-TCP client gets back for the HTTP/2 preface: the first
/// bytes, or how the connection ended.
pub async fn probe_plaintext(addr: &str) -> Result<Vec<u8>, String> {
    let mut tcp = timeout(CALL_WITHIN, TcpStream::connect(addr))
        .await
        .unwrap()
        .unwrap();
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend([0, 0, 0, 4, 0, 0, 0, 0, 0]);
    timeout(CALL_WITHIN, async {
        tcp.write_all(&hello).await.map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 1024];
        match tcp.read(&mut buf).await {
            Ok(0) => Err("closed".to_owned()),
            Ok(n) => Ok(buf[..n].to_vec()),
            Err(e) => Err(e.to_string()),
        }
    })
    .await
    .unwrap_or_else(|_| Err("no answer within 10 s".into()))
}

/// A gRPC channel to `addr` over TLS as `config` says.
pub fn tls_channel(addr: &str, config: Arc<rustls::ClientConfig>) -> Channel {
    let target = addr.to_owned();
    let connector = tower::service_fn(move |_: http::Uri| {
        let (config, target) = (config.clone(), target.clone());
        async move {
            let tcp = TcpStream::connect(&target).await?;
            let connector = tokio_rustls::TlsConnector::from(config);
            let tls = connector.connect(server_name(), tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    endpoint(addr).connect_with_connector_lazy(connector)
}

/// A gRPC channel to `addr` in plain text (h2c).
pub fn plaintext_channel(addr: &str) -> Channel {
    endpoint(addr).connect_lazy()
}

/// A gRPC channel to `addr` the way nodes dial each other.
pub fn node_channel(addr: &str, tls: ClusterTls) -> Channel {
    Dialer::tls(tls).channel(addr).unwrap()
}

fn endpoint(addr: &str) -> Endpoint {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(3))
        .timeout(CALL_WITHIN)
}

/// Runs one call, bounded by [`CALL_WITHIN`]; its status code and
/// message, or `Ok` with the reply.
pub async fn bounded<T>(
    call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, (tonic::Code, String)> {
    match timeout(CALL_WITHIN, call).await {
        Ok(Ok(reply)) => Ok(reply.into_inner()),
        Ok(Err(status)) => Err((status.code(), status.message().to_owned())),
        Err(_) => Err((tonic::Code::DeadlineExceeded, "no answer in 10 s".into())),
    }
}

/// Sends `bytes` as the message of the unary method `path` (e.g.
/// `/meridian.gossip.v1.Gossip/Push`), unchecked: malformed protobuf
/// reaches the server's decoder as is.
pub async fn raw_unary(
    channel: Channel,
    path: &'static str,
    bytes: Vec<u8>,
) -> Result<Vec<u8>, (tonic::Code, String)> {
    let mut grpc = tonic::client::Grpc::new(channel);
    let call = async move {
        grpc.ready()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        grpc.unary(
            tonic::Request::new(bytes),
            http::uri::PathAndQuery::from_static(path),
            RawCodec,
        )
        .await
    };
    bounded(call).await
}

/// A gRPC codec for messages that are bytes already.
#[derive(Clone, Copy, Default)]
pub struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let n = src.remaining();
        Ok(Some(src.copy_to_bytes(n).to_vec()))
    }
}
