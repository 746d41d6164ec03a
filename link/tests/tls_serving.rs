//! The TLS listener over time, on real sockets on 127.0.0.1: reloads apply to
//! new connections and spare open ones, handshakes are bounded in time and
//! number, and the public listener serves without client certificates. Every
//! wait is bounded, so a hang fails the test instead of stalling the run.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod tls_support;

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use meridian_link::certs::{self, PemPair};
use meridian_link::{ClusterTls, Dialer, NodeIdentity, PublicTls, TlsAcceptor};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use tls_support::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::time::{Instant, timeout};

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
async fn one_address_cannot_take_every_handshake_place() {
    let pki = Pki::new("cluster CA");
    let (server, _) = pki.node("eu", 1);
    let (client, _) = pki.node("us", 2);
    let addr = echo(TlsAcceptor::cluster(server)).await;
    // Silent connections from one address take its places ...
    let mut silent = Vec::new();
    for _ in 0..meridian_link::MAX_HANDSHAKES_PER_ADDRESS {
        silent.push(TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // ... and the next from it is closed at once ...
    let mut over = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    let read = timeout(BOUND, over.read(&mut [0u8; 16])).await.unwrap();
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "closed at once");
    // ... while another address still gets a handshake.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let tcp = socket.connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(client.client_config());
    let name = rustls::pki_types::ServerName::try_from(meridian_link::NODE_SERVER_NAME).unwrap();
    let mut tls = timeout(BOUND, connector.connect(name, tcp))
        .await
        .unwrap()
        .unwrap();
    tls.write_all(b"x").await.unwrap();
    let mut echoed = [0u8; 1];
    timeout(BOUND, tls.read_exact(&mut echoed))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echoed, b"x");
    drop(silent);
}
