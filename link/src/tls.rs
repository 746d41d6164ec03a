//! TLS material read from files, swapped whole on reload: [`ClusterTls`] for
//! mutual TLS between nodes, [`PublicTls`] for a node's public HTTPS
//! listener. Each handshake takes the configuration current at that moment,
//! so a reload applies to new connections and leaves open ones alone.

use std::fmt;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject as _};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::Error;
use crate::identity::{Expect, NODE_SERVER_NAME, NodeIdentity};

/// How long the TLS handshake of an outgoing connection may take once TCP is
/// up: a peer that accepts but never answers must not hold a dial forever.
pub(crate) const DIAL_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// Polling faster than this would mostly measure `stat` calls.
const MIN_RELOAD_INTERVAL: Duration = Duration::from_millis(100);

const H2: &[u8] = b"h2";
const HTTP11: &[u8] = b"http/1.1";

/// Mutual TLS between nodes, from a CA bundle, this node's certificate chain
/// and its key. TLS 1.3 only, both ways: every connection presents a node
/// certificate and verifies the other's against the bundle, which may hold
/// several CAs so that a CA can be rotated with overlap. Cheap to clone.
#[derive(Clone)]
pub struct ClusterTls {
    shared: Arc<Reloadable<ClusterMaterial>>,
}

struct ClusterMaterial {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    identity: NodeIdentity,
}

impl ClusterTls {
    /// Reads the three PEM files. This node's certificate must carry a node
    /// identity and chain to the bundle, and the key must fit it: a node
    /// whose peers would refuse it fails here, not at its first call.
    pub fn load(
        ca_path: impl AsRef<Path>,
        cert_path: impl AsRef<Path>,
        key_path: impl AsRef<Path>,
    ) -> Result<Self, Error> {
        let (ca, cert, key) = (
            ca_path.as_ref().to_owned(),
            cert_path.as_ref().to_owned(),
            key_path.as_ref().to_owned(),
        );
        let paths = vec![ca.clone(), cert.clone(), key.clone()];
        let load = move || load_cluster(&ca, &cert, &key);
        Ok(Self {
            shared: Arc::new(Reloadable::new("cluster TLS", paths, Box::new(load))?),
        })
    }

    /// Re-reads the files and, if they make a valid configuration, makes it
    /// the one new connections use. On error the previous one stays.
    pub fn reload(&self) -> Result<(), Error> {
        self.shared.reload()
    }

    /// The identity in this node's current certificate.
    pub fn identity(&self) -> NodeIdentity {
        self.shared.current().identity.clone()
    }

    /// The configuration for accepting peers right now.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.shared.current().server)
    }

    /// The configuration for dialing peers right now.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        Arc::clone(&self.shared.current().client)
    }

    /// Opens a TCP connection to `addr` (`host:port`) and runs the TLS
    /// handshake over it, verifying the server as a node of this cluster.
    /// TCP connect and handshake each have their own deadline. With TLS 1.3
    /// the server checks the client's certificate after this returns: a
    /// refusal shows as an error on the first read.
    pub async fn connect(
        &self,
        addr: &str,
    ) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        self.connect_to(addr, &Expect::Any).await
    }

    /// [`Self::connect`], then checks that the server's certificate names
    /// `expect`; a connection to anyone else is closed, and is an error.
    pub async fn connect_to(
        &self,
        addr: &str,
        expect: &Expect,
    ) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let stream = self.handshake(addr).await?;
        if *expect == Expect::Any {
            return Ok(stream);
        }
        let found = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|cert| NodeIdentity::from_cert_der(cert));
        match found {
            Some(Ok(found)) if expect.admits(&found) => Ok(stream),
            Some(Ok(found)) => Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{addr} is {found}, not {expect}"),
            )),
            _ => Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{addr} presented no node identity"),
            )),
        }
    }

    async fn handshake(
        &self,
        addr: &str,
    ) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let tcp = tokio::time::timeout(crate::CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| {
                io::Error::new(io::ErrorKind::TimedOut, format!("connecting to {addr}"))
            })??;
        // Heartbeats and gossip are small: Nagle would hold them back.
        tcp.set_nodelay(true)?;
        let connector = tokio_rustls::TlsConnector::from(self.client_config());
        let server_name = ServerName::try_from(NODE_SERVER_NAME)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        tokio::time::timeout(DIAL_HANDSHAKE_TIMEOUT, connector.connect(server_name, tcp))
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("TLS handshake with {addr}"),
                )
            })?
    }

    /// Reloads whenever one of the three files changes (modification time,
    /// length or inode, polled every `interval`) until `shutdown` completes.
    /// A failed reload keeps the previous material and is logged; it is
    /// retried when the files change again (an operator replacing the
    /// certificate and then the key sees one warning, then the reload).
    pub fn spawn_reload_on_change(
        self,
        interval: Duration,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> JoinHandle<()> {
        spawn_watch(self.shared, interval, shutdown)
    }
}

impl fmt::Debug for ClusterTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterTls")
            .field("identity", &self.identity())
            .field("files", &self.shared.paths)
            .finish()
    }
}

/// TLS for a node's public listener: a server certificate, no client
/// certificates, TLS 1.2 and 1.3 (clients are not ours to upgrade), ALPN
/// `h2` and `http/1.1`. Cheap to clone; reloadable like [`ClusterTls`].
#[derive(Clone)]
pub struct PublicTls {
    shared: Arc<Reloadable<Arc<ServerConfig>>>,
}

impl PublicTls {
    pub fn load(cert_path: impl AsRef<Path>, key_path: impl AsRef<Path>) -> Result<Self, Error> {
        let (cert, key) = (cert_path.as_ref().to_owned(), key_path.as_ref().to_owned());
        let paths = vec![cert.clone(), key.clone()];
        let load = move || load_public(&cert, &key);
        Ok(Self {
            shared: Arc::new(Reloadable::new("public TLS", paths, Box::new(load))?),
        })
    }

    /// As [`ClusterTls::reload`].
    pub fn reload(&self) -> Result<(), Error> {
        self.shared.reload()
    }

    /// The configuration for accepting clients right now.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.shared.current())
    }

    /// As [`ClusterTls::spawn_reload_on_change`].
    pub fn spawn_reload_on_change(
        self,
        interval: Duration,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> JoinHandle<()> {
        spawn_watch(self.shared, interval, shutdown)
    }
}

impl fmt::Debug for PublicTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicTls")
            .field("files", &self.shared.paths)
            .finish()
    }
}

fn provider() -> Arc<CryptoProvider> {
    // Named explicitly rather than taken from the process default: which
    // provider is installed globally is up to whichever crate runs first.
    Arc::new(rustls::crypto::ring::default_provider())
}

fn load_cluster(
    ca_path: &Path,
    cert_path: &Path,
    key_path: &Path,
) -> Result<ClusterMaterial, Error> {
    let roots = Arc::new(read_roots(ca_path)?);
    // The node's certificate first, then any intermediates.
    let chain = read_certs(cert_path)?;
    let key = read_key(key_path)?;
    let own = &chain[0];
    let identity = NodeIdentity::from_cert_der(own).map_err(|e| file_error(cert_path, e))?;
    let provider = provider();

    let server_verifier =
        WebPkiServerVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(&provider))
            .build()
            .map_err(|e| file_error(ca_path, format!("unusable as a CA bundle: {e}")))?;
    // The check a peer dialing this node will make. It reads the wall clock,
    // as every handshake does: validity is judged in real time.
    let server_name = ServerName::try_from(NODE_SERVER_NAME)
        .map_err(|e| Error::Tls(format!("server name {NODE_SERVER_NAME:?}: {e}")))?;
    rustls::client::danger::ServerCertVerifier::verify_server_cert(
        server_verifier.as_ref(),
        own,
        &chain[1..],
        &server_name,
        &[],
        UnixTime::now(),
    )
    .map_err(|e| {
        file_error(
            cert_path,
            format!(
                "not valid as a node certificate under {}: {e}",
                ca_path.display()
            ),
        )
    })?;
    let client_verifier = WebPkiClientVerifier::builder_with_provider(roots, Arc::clone(&provider))
        .build()
        .map_err(|e| file_error(ca_path, format!("unusable as a CA bundle: {e}")))?;

    let mut server = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(|e| key_error(key_path, cert_path, e))?;
    server.alpn_protocols = vec![H2.to_vec()];

    let mut client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_webpki_verifier(server_verifier)
        .with_client_auth_cert(chain, key)
        .map_err(|e| key_error(key_path, cert_path, e))?;
    client.alpn_protocols = vec![H2.to_vec()];

    Ok(ClusterMaterial {
        server: Arc::new(server),
        client: Arc::new(client),
        identity,
    })
}

fn load_public(cert_path: &Path, key_path: &Path) -> Result<Arc<ServerConfig>, Error> {
    // The server's certificate first, then any intermediates.
    let chain = read_certs(cert_path)?;
    let key = read_key(key_path)?;
    let mut server = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| key_error(key_path, cert_path, e))?;
    server.alpn_protocols = vec![H2.to_vec(), HTTP11.to_vec()];
    Ok(Arc::new(server))
}

fn read_file(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| file_error(path, format!("cannot read: {e}")))
}

/// Every certificate in the file, as trust anchors.
fn read_roots(path: &Path) -> Result<RootCertStore, Error> {
    let mut roots = RootCertStore::empty();
    for (i, cert) in read_certs(path)?.into_iter().enumerate() {
        roots.add(cert).map_err(|e| {
            file_error(
                path,
                format!("certificate #{} is not a usable CA: {e}", i + 1),
            )
        })?;
    }
    Ok(roots)
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let text = read_file(path)?;
    let certs = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, pem_problem(&e)))?;
    if certs.is_empty() {
        return Err(file_error(path, "holds no PEM CERTIFICATE block"));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, Error> {
    let text = read_file(path)?;
    PrivateKeyDer::from_pem_slice(&text).map_err(|e| match e {
        pem::Error::NoItemsFound => file_error(path, "holds no PEM private key"),
        e => file_error(path, pem_problem(&e)),
    })
}

/// What is wrong with a PEM file, in words of our own: the parser's messages
/// can quote a line of the file, and a key file's lines are the key.
fn pem_problem(e: &pem::Error) -> &'static str {
    match e {
        pem::Error::MissingSectionEnd { .. } => "a PEM section has no END line",
        pem::Error::IllegalSectionStart { .. } => "a PEM BEGIN line is malformed",
        pem::Error::Base64Decode(_) => "a PEM section is not valid base64",
        pem::Error::NoItemsFound => "holds no PEM block of the expected kind",
        pem::Error::SectionTooLarge => "a PEM section is too large",
        _ => "is not readable as PEM",
    }
}

/// A key rustls refused: its messages name the problem (unsupported type,
/// not the certificate's key), never the key.
fn key_error(key_path: &Path, cert_path: &Path, e: rustls::Error) -> Error {
    file_error(
        key_path,
        format!("unusable with the certificate {}: {e}", cert_path.display()),
    )
}

fn file_error(path: &Path, reason: impl fmt::Display) -> Error {
    Error::File {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// Material loaded from files, replaced whole by a successful reload.
struct Reloadable<M> {
    what: &'static str,
    paths: Vec<PathBuf>,
    load: Box<dyn Fn() -> Result<M, Error> + Send + Sync>,
    current: RwLock<Arc<M>>,
    /// The files as they were when last read, whether or not that load
    /// succeeded: the watcher reloads when they differ from this, so a change
    /// made before the watcher started is not missed, and files that failed
    /// once are not re-read every poll.
    last_read: Mutex<Vec<Option<FileStamp>>>,
}

impl<M> Reloadable<M> {
    fn new(
        what: &'static str,
        paths: Vec<PathBuf>,
        load: Box<dyn Fn() -> Result<M, Error> + Send + Sync>,
    ) -> Result<Self, Error> {
        // Stamped before reading: a file that changes while it is read
        // differs from this stamp at the next poll and is read again.
        let last_read = Mutex::new(stamps(&paths));
        let current = RwLock::new(Arc::new(load()?));
        Ok(Self {
            what,
            paths,
            load,
            current,
            last_read,
        })
    }

    fn current(&self) -> Arc<M> {
        // A panic elsewhere cannot leave a half-written Arc behind: the
        // guarded value is replaced in one assignment.
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn reload(&self) -> Result<(), Error> {
        *self
            .last_read
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = stamps(&self.paths);
        // Loaded outside the lock: handshakes keep reading the old material
        // while the files are parsed.
        let material = Arc::new((self.load)()?);
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = material;
        Ok(())
    }
}

/// What is compared between polls: a replaced file (atomic rename, a
/// Kubernetes secret's symlink swap) shows as a new inode; a file rewritten in
/// place as a new modification time or length.
#[derive(PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<FileStamp> {
    let meta = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Some(FileStamp {
        modified: meta.modified().ok(),
        len: meta.len(),
        inode,
    })
}

fn stamps(paths: &[PathBuf]) -> Vec<Option<FileStamp>> {
    paths.iter().map(|p| stamp(p)).collect()
}

/// The reload task: a named background job with a shutdown handle.
fn spawn_watch<M: Send + Sync + 'static>(
    shared: Arc<Reloadable<M>>,
    interval: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval.max(MIN_RELOAD_INTERVAL));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                _ = ticker.tick() => {}
            }
            let unchanged = stamps(&shared.paths)
                == *shared
                    .last_read
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
            if unchanged {
                continue;
            }
            match shared.reload() {
                Ok(()) => {
                    tracing::info!(what = shared.what, files = ?shared.paths, "reloaded TLS material")
                }
                Err(e) => tracing::warn!(
                    what = shared.what,
                    error = %e,
                    "TLS files changed but do not load; keeping the previous material"
                ),
            }
        }
    })
}
