//! Who gets in over mutual TLS, on real sockets on 127.0.0.1: a node of the
//! cluster does, and its identity reaches the service; no certificate,
//! another CA's, a certificate without a node identity, and plaintext do not.
//! Every wait is bounded, so a hang fails the test instead of stalling the run.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod tls_support;

use meridian_link::certs::{self, PemPair};
use meridian_link::{CallError, ClusterTls, Dialer, NodeIdentity, serve};
use tls_support::*;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::service::Routes;

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
async fn a_server_certificate_of_the_same_ca_cannot_pose_as_a_node() {
    let pki = Pki::new("cluster CA");
    let (server, _) = pki.node("eu", 1);
    let (addr, probe, _stop) = serve_probe(server).await;

    // Signed by the cluster CA, but for serving only and with no identity.
    let public = certs::issue_server_cert(
        &pki.ca.cert_pem,
        &pki.ca.key_pem,
        &[meridian_link::NODE_SERVER_NAME.to_owned()],
        1,
    )
    .unwrap();
    let dialer = dialer_with(client_config(&pki.ca.cert_pem, Some(&public)));
    let refused = ping(dialer.channel(&addr.to_string()).unwrap()).await;
    assert!(
        matches!(refused, Err(CallError::Unreachable(_))),
        "{refused:?}"
    );
    assert!(probe.seen().is_empty(), "a call reached the service");
}

#[tokio::test]
async fn a_client_certificate_without_a_node_identity_is_refused() {
    let pki = Pki::new("cluster CA");
    let (server, _) = pki.node("eu", 1);
    let (addr, probe, _stop) = serve_probe(server).await;

    // Everything a node certificate has but the identity URI: only the
    // acceptor's identity check stands in its way.
    let ca_key = rcgen::KeyPair::from_pem(&pki.ca.key_pem).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&pki.ca.cert_pem, ca_key).unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec![meridian_link::NODE_SERVER_NAME.to_owned()]).unwrap();
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let anonymous = PemPair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    };
    let dialer = dialer_with(client_config(&pki.ca.cert_pem, Some(&anonymous)));
    let refused = ping(dialer.channel(&addr.to_string()).unwrap()).await;
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

#[tokio::test]
async fn a_dialer_refuses_a_server_that_is_not_who_it_expects() {
    use meridian_link::Expect;
    let pki = Pki::new("cluster CA");
    let (server, _) = pki.node("us-east", 2);
    let (client, _) = pki.node("us-east", 1);
    let (addr, probe, _stop) = serve_probe(server).await;
    let addr = addr.to_string();
    let dialer = Dialer::tls(client);
    let node = |region: &str, id| Expect::Node(NodeIdentity::new(region, id).unwrap());

    for wrong in [
        node("us-east", 3),
        node("eu-west", 2),
        Expect::Region("eu-west".into()),
    ] {
        let refused = ping(dialer.channel_to(&addr, &wrong).unwrap()).await;
        assert!(
            matches!(&refused, Err(CallError::Unreachable(m)) if m.contains("not")),
            "{wrong}: {refused:?}"
        );
    }
    assert!(probe.seen().is_empty(), "a call reached the wrong server");
    for right in [
        node("us-east", 2),
        Expect::Region("us-east".into()),
        Expect::Any,
    ] {
        ping(dialer.channel_to(&addr, &right).unwrap())
            .await
            .unwrap();
    }
    assert_eq!(probe.seen().len(), 3);
}
