//! Adversarial clients of the inter-node port of a real two-node region
//! (`meridian` processes, mutual TLS under a CA the test makes, no cluster
//! secret: the certificates are all that stands between these clients and
//! Raft, gossip, metadata sync, rights and spend logs).
//!
//! A refusal only means something next to an admission: each attack runs
//! beside the same call made by a client that should get through, and
//! "nothing reached the service" is read off the region's applied index,
//! which the admitted control call moves.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod process_support;
mod security_support;

use std::time::Duration;

use meridian_proto::gossip::v1 as gossip;
use meridian_proto::raft::v1 as raft;
use meridian_proto::rights::v1 as rights;
use meridian_proto::spend::v1 as spend;
use meridian_proto::sync::v1 as sync;
use meridian_replication::crdt::{CounterId, Metric, Scope, Window};
use security_support::peers::{self, Ca, TlsRegion, bounded};
use tokio::time::{Instant, sleep};
use tonic::Code;
use tonic::transport::Channel;

const REGION: &str = "us-east";

/// A request for rights to a made-up counter of region `REGION`, in the name
/// of `holder`: admitted, it becomes an entry of the region's log.
fn grant(holder_region: &str, holder_node: u64, counter: Vec<u8>) -> rights::GrantRequest {
    rights::GrantRequest {
        home_region: REGION.into(),
        counter,
        holder_region: holder_region.into(),
        holder_node,
        holder_incarnation: 1,
        need: 1,
        returned: 0,
        limit: 10,
        limit_version: 1,
        ends_at_ms: None,
    }
}

/// The codes tonic gives a call whose connection failed (see
/// `meridian_link::classify`): the services themselves never answer with
/// them, so the call did not get as far as a service.
fn transport_failure(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable | Code::Cancelled | Code::Unknown | Code::Internal
    )
}

async fn ask_rights(channel: Channel, request: rights::GrantRequest) -> Result<(), (Code, String)> {
    let mut client = rights::rights_client::RightsClient::new(channel);
    bounded(client.grant(request)).await.map(|_| ())
}

/// Waits until every node has applied past `before` (an admitted call's
/// entry), at most 10 s.
async fn applied_past(region: &TlsRegion, before: &[u64]) -> Vec<u64> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = region.applied().await;
        if now.iter().zip(before).all(|(n, b)| n > b) {
            return now;
        }
        assert!(Instant::now() < deadline, "{before:?} -> {now:?}");
        sleep(Duration::from_millis(50)).await;
    }
}

/// After the attacks: nobody crashed, the leader is the one from before,
/// and the region still takes writes.
async fn region_unharmed(region: &mut TlsRegion, leader: u64) {
    assert!(region.all_alive(), "{}", region.logs());
    assert_eq!(region.leader().await, leader, "the leader changed");
    let before = region.applied().await;
    let (status, body) = process_support::call(
        &region.http,
        &region.nodes[1].url(),
        "POST",
        "/key/generate",
        process_support::MASTER,
        Some(serde_json::json!({})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    applied_past(region, &before).await;
}

/// An attacker's client is refused, and its grant never reaches the log;
/// the certified control client's grant does.
async fn refused_but_control_admitted(
    region: &mut TlsRegion,
    attacker: Channel,
    what: &str,
) -> (Code, String) {
    let before = region.applied().await;
    let err = ask_rights(attacker, grant("eu-west", 7, b"attack".to_vec()))
        .await
        .expect_err(what);
    sleep(Duration::from_millis(500)).await;
    assert_eq!(region.applied().await, before, "{what}: a call got through");
    let control = peers::node_channel(
        &region.addr(0),
        region
            .ca
            .node_tls(region.dir.path(), "eu-west", 7, &[&region.ca]),
    );
    ask_rights(control, grant("eu-west", 7, b"control".to_vec()))
        .await
        .expect("the control grant");
    let after = applied_past(region, &before).await;
    eprintln!("{what}: refused with {err:?}; the control moved applied {before:?} -> {after:?}");
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_a_certificate_is_refused_in_the_handshake() {
    let mut region = TlsRegion::start(REGION, 2).await;
    let leader = region.leader().await;
    let ca = region.ca.pem.cert_pem.clone();
    let bare = peers::client_config(&ca, None);
    let certified = peers::client_config(&ca, Some(&region.ca.node("eu-west", 7)));
    for i in 0..region.nodes.len() {
        let control = peers::probe(&region.addr(i), certified.clone()).await;
        assert!(
            control.admitted(),
            "a node certificate is admitted: {control:?}"
        );
        let probe = peers::probe(&region.addr(i), bare.clone()).await;
        eprintln!("no certificate, node {}: {probe:?}", i + 1);
        assert!(!probe.admitted(), "{probe:?}");
    }
    let attacker = peers::tls_channel(&region.addr(0), bare);
    let (code, _) = refused_but_control_admitted(&mut region, attacker, "no certificate").await;
    assert!(transport_failure(code), "{code:?}");
    region_unharmed(&mut region, leader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_from_another_ca_or_without_a_node_identity_are_refused() {
    let mut region = TlsRegion::start(REGION, 2).await;
    let leader = region.leader().await;
    let ca_b = Ca::new(region.dir.path(), "ca-b");
    let ca_a = region.ca.pem.cert_pem.clone();
    // The identity of a real member, signed by a CA the region does not
    // trust.
    let imposter = ca_b.node(REGION, 2);
    // The region's own CA, but a server certificate: no node identity, and
    // not for client authentication.
    let server_only = meridian_link::certs::issue_server_cert(
        &region.ca.pem.cert_pem,
        &region.ca.pem.key_pem,
        &[meridian_link::NODE_SERVER_NAME.to_owned()],
        1,
    )
    .unwrap();
    for (name, pair) in [("CA B", &imposter), ("a server certificate", &server_only)] {
        for i in 0..region.nodes.len() {
            let probe =
                peers::probe(&region.addr(i), peers::client_config(&ca_a, Some(pair))).await;
            eprintln!("{name}, node {}: {probe:?}", i + 1);
            assert!(!probe.admitted(), "{name}: {probe:?}");
        }
    }
    // The production dialer, loaded with CA B's certificate for node 2 and a
    // bundle that trusts both CAs (so it accepts the server).
    let dir = region.dir.path().join("ca-b-node");
    std::fs::create_dir_all(&dir).unwrap();
    let tls = ca_b.node_tls(&dir, REGION, 2, &[&region.ca, &ca_b]);
    let attacker = peers::node_channel(&region.addr(0), tls);
    let (code, _) = refused_but_control_admitted(&mut region, attacker, "CA B").await;
    assert!(transport_failure(code), "{code:?}");
    region_unharmed(&mut region, leader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_http2_is_refused() {
    let mut region = TlsRegion::start(REGION, 2).await;
    let leader = region.leader().await;
    for i in 0..region.nodes.len() {
        let answer = peers::probe_plaintext(&region.addr(i)).await;
        eprintln!("h2c preface, node {}: {answer:?}", i + 1);
        // Whatever comes back (a TLS alert, a close), it is not HTTP/2.
        if let Ok(bytes) = &answer {
            assert!(bytes.len() < 9 || bytes[3] != 4, "{bytes:?}");
        }
    }
    let attacker = peers::plaintext_channel(&region.addr(0));
    let (code, _) = refused_but_control_admitted(&mut region, attacker, "h2c").await;
    assert!(transport_failure(code), "{code:?}");
    region_unharmed(&mut region, leader).await;
}

fn replica(region: &str, node: u64) -> gossip::Replica {
    gossip::Replica {
        region: region.into(),
        node,
        incarnation: 1,
    }
}

/// A push from `sender` carrying one slot of `owner` on a real counter id
/// (ids a receiver cannot decode are skipped, not refused).
fn push(sender: gossip::Replica, owner: gossip::Replica, p: u64) -> gossip::PushRequest {
    let id = CounterId {
        scope: Scope::Key,
        entity: "attacked-key".into(),
        metric: Metric::Requests,
        window: Window::Lifetime,
        period: 0,
    };
    gossip::PushRequest {
        sender: Some(sender),
        since: 0,
        through: 1,
        deltas: Some(gossip::Deltas {
            replicas: vec![owner],
            counters: vec![gossip::Counter {
                id: id.encode(),
                slots: vec![gossip::Slot {
                    replica: 0,
                    p,
                    n: 0,
                    version: 1,
                }],
            }],
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certified_node_cannot_speak_for_another_node_or_region() {
    let mut region = TlsRegion::start(REGION, 2).await;
    let leader = region.leader().await;
    // A real certificate of the cluster's CA: node 7 of region eu-west.
    let tls = region
        .ca
        .node_tls(region.dir.path(), "eu-west", 7, &[&region.ca]);
    let ch = peers::node_channel(&region.addr(0), tls);
    let before = region.applied().await;

    let mut raft = raft::raft_client::RaftClient::new(ch.clone());
    let call = |region: &str| raft::RaftRequest {
        kind: raft::RpcKind::Vote.into(),
        payload: br#"{}"#.to_vec(),
        region: region.into(),
    };
    let posing = bounded(raft.call(call(REGION))).await.unwrap_err();
    assert_eq!(
        posing.0,
        Code::PermissionDenied,
        "Raft as {REGION}: {posing:?}"
    );
    // Honest about its region, it passes the identity check and meets the
    // region check instead.
    let honest = bounded(raft.call(call("eu-west"))).await.unwrap_err();
    assert_eq!(honest.0, Code::FailedPrecondition, "{honest:?}");

    let mut gossip = gossip::gossip_client::GossipClient::new(ch.clone());
    let me = replica("eu-west", 7);
    let as_other = bounded(gossip.push(push(replica(REGION, 1), replica(REGION, 1), 5))).await;
    assert_eq!(as_other.unwrap_err().0, Code::PermissionDenied);
    let forged = 1_000_000_000_000;
    let others_slot = bounded(gossip.push(push(me.clone(), replica(REGION, 1), forged))).await;
    assert_eq!(others_slot.unwrap_err().0, Code::InvalidArgument);
    bounded(gossip.push(push(me.clone(), me.clone(), 5)))
        .await
        .expect("its own slot");
    // What the node holds now: the control slot, and nothing forged.
    let held = bounded(gossip.sync(gossip::Digest::default()))
        .await
        .unwrap();
    let deltas = held.missing.unwrap_or_default();
    let slots: Vec<(gossip::Replica, u64)> = deltas
        .counters
        .iter()
        .flat_map(|c| &c.slots)
        .map(|s| (deltas.replicas[s.replica as usize].clone(), s.p))
        .collect();
    assert!(slots.contains(&(me.clone(), 5)), "{slots:?}");
    assert!(slots.iter().all(|(_, p)| *p != forged), "{slots:?}");

    let other_holder = ask_rights(ch.clone(), grant(REGION, 1, b"c".to_vec())).await;
    assert_eq!(other_holder.unwrap_err().0, Code::PermissionDenied);

    let mut spend = spend::spend_logs_client::SpendLogsClient::new(ch.clone());
    let query = |region: &str| spend::QueryRequest {
        region: region.into(),
        limit: 10,
        ..Default::default()
    };
    let posing = bounded(spend.query(query(REGION))).await.unwrap_err();
    assert_eq!(posing.0, Code::PermissionDenied, "{posing:?}");
    let foreign = bounded(spend.query(query("eu-west"))).await.unwrap_err();
    assert_eq!(foreign.0, Code::PermissionDenied, "{foreign:?}");

    let mut sync = sync::metadata_sync_client::MetadataSyncClient::new(ch.clone());
    let cursor = |from: &str| sync::CursorRequest {
        from_region: from.into(),
        to_region: REGION.into(),
    };
    let posing = bounded(sync.cursor(cursor(REGION))).await.unwrap_err();
    assert_eq!(posing.0, Code::PermissionDenied, "{posing:?}");
    let pushed = bounded(sync.push(sync::PushRequest {
        from_region: REGION.into(),
        to_region: REGION.into(),
        since: 0,
        through: 1,
        entities: vec![],
    }))
    .await;
    assert_eq!(pushed.unwrap_err().0, Code::PermissionDenied);
    bounded(sync.cursor(cursor("eu-west")))
        .await
        .expect("its own region's cursor");

    sleep(Duration::from_millis(300)).await;
    assert_eq!(
        region.applied().await,
        before,
        "a refused call reached the log"
    );
    // The same grant in its own name is admitted: the refusals above were
    // the identity check's.
    ask_rights(ch, grant("eu-west", 7, b"c".to_vec()))
        .await
        .unwrap();
    applied_past(&region, &before).await;
    region_unharmed(&mut region, leader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_malformed_messages_are_refused() {
    let mut region = TlsRegion::start(REGION, 2).await;
    let leader = region.leader().await;
    // A node certificate of the right region; its claims are its own.
    let tls = region
        .ca
        .node_tls(region.dir.path(), REGION, 3, &[&region.ca]);
    let ch = peers::node_channel(&region.addr(0), tls);
    let me = replica(REGION, 3);

    // Gossip's limit is 64 MiB: 80 MiB of counter id.
    let mut huge = push(me.clone(), me.clone(), 1);
    huge.deltas.as_mut().unwrap().counters[0].id = vec![7; 80 << 20];
    let start = Instant::now();
    let mut gossip = gossip::gossip_client::GossipClient::new(ch.clone());
    let err = bounded(gossip.push(huge)).await.unwrap_err();
    eprintln!("gossip push of 80 MiB: {err:?} after {:?}", start.elapsed());
    assert!(
        matches!(err.0, Code::OutOfRange | Code::ResourceExhausted),
        "{err:?}"
    );

    // Rights: an 8 KiB counter passes the transport but not the service's
    // bound on a counter (4 KiB); 1 MiB does not pass the transport.
    let long = ask_rights(ch.clone(), grant(REGION, 3, vec![1; 8 << 10])).await;
    assert_eq!(
        long.as_ref().unwrap_err().0,
        Code::InvalidArgument,
        "{long:?}"
    );
    let mib = ask_rights(ch.clone(), grant(REGION, 3, vec![1; 1 << 20])).await;
    assert!(
        matches!(
            mib.as_ref().unwrap_err().0,
            Code::OutOfRange | Code::ResourceExhausted
        ),
        "{mib:?}"
    );
    // Spend logs take 64 KiB queries at most.
    let mut spend = spend::spend_logs_client::SpendLogsClient::new(ch.clone());
    let big_query = spend::QueryRequest {
        region: REGION.into(),
        api_key: Some("k".repeat(100 * 1024)),
        limit: 1,
        ..Default::default()
    };
    let err = bounded(spend.query(big_query)).await.unwrap_err();
    assert!(
        matches!(err.0, Code::OutOfRange | Code::ResourceExhausted),
        "{err:?}"
    );
    eprintln!("rights 8 KiB: {long:?}; 1 MiB: {mib:?}; spend query 100 KiB: {err:?}");

    // Bytes that are not the protobuf they claim to be.
    let garbage: [(&str, &[u8]); 4] = [
        (
            "a length past the end",
            &[0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f],
        ),
        ("a truncated varint", &[0x08, 0xff]),
        ("wire type 7", &[0x0f, 0x00]),
        (
            "an 11-byte varint",
            &[
                0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
            ],
        ),
    ];
    let methods = [
        "/meridian.raft.v1.Raft/Call",
        "/meridian.gossip.v1.Gossip/Push",
        "/meridian.gossip.v1.Gossip/Sync",
        "/meridian.sync.v1.MetadataSync/Cursor",
        "/meridian.sync.v1.MetadataSync/Push",
        "/meridian.rights.v1.Rights/Grant",
        "/meridian.spend.v1.SpendLogs/Query",
    ];
    let mut codes = std::collections::BTreeMap::<String, usize>::new();
    for method in methods {
        for (name, bytes) in garbage {
            let reply = peers::raw_unary(ch.clone(), method, bytes.to_vec()).await;
            let (code, message) = reply.expect_err(&format!("{method}: {name}"));
            // The server's decoder refused it (not a lost connection).
            assert!(
                message.contains("decode"),
                "{method}: {name}: {code:?} {message}"
            );
            *codes.entry(format!("{code:?}: {message}")).or_default() += 1;
        }
    }
    eprintln!(
        "malformed protobuf: {} calls, codes {codes:?}",
        methods.len() * garbage.len()
    );

    // Well-formed gRPC, but the Raft payload inside is not Raft JSON, or
    // the kind is unknown.
    let mut raft = raft::raft_client::RaftClient::new(ch.clone());
    for kind in [
        raft::RpcKind::AppendEntries,
        raft::RpcKind::Vote,
        raft::RpcKind::Snapshot,
    ] {
        let reply = bounded(raft.call(raft::RaftRequest {
            kind: kind.into(),
            payload: b"\xff\x00 not json".to_vec(),
            region: REGION.into(),
        }))
        .await
        .unwrap();
        let text = String::from_utf8_lossy(&reply.payload).into_owned();
        assert!(text.starts_with("{\"Err\""), "{kind:?}: {text}");
    }
    let unknown = bounded(raft.call(raft::RaftRequest {
        kind: 99,
        payload: vec![],
        region: REGION.into(),
    }))
    .await;
    assert_eq!(unknown.unwrap_err().0, Code::InvalidArgument);
    region_unharmed(&mut region, leader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_outside_the_regions_membership_writes_nothing() {
    use meridian_consensus::metadata::{Command, Kind, Proposal};
    let region = TlsRegion::start(REGION, 2).await;
    let leader = region.leader().await;
    let leader_index = usize::try_from(leader - 1).unwrap();
    // A valid certificate of this region, for a node that is not a member
    // (a spare, or one an admin removed).
    let tls = region
        .ca
        .node_tls(region.dir.path(), REGION, 9, &[&region.ca]);
    let mut raft =
        raft::raft_client::RaftClient::new(peers::node_channel(&region.addr(leader_index), tls));
    let ask = |kind: raft::RpcKind, payload: Vec<u8>| raft::RaftRequest {
        kind: kind.into(),
        payload,
        region: REGION.into(),
    };
    let write = serde_json::to_vec(&Proposal {
        at_ms: 1,
        command: Command::Create {
            kind: Kind::User,
            record: serde_json::json!({ "user_id": "intruder", "user_role": "proxy_admin", "created_at": 0, "updated_at": 0 }),
        },
    })
    .unwrap();
    let join = br#"{"Add":{"node_id":9,"member":{"raft_addr":"127.0.0.1:9","api_url":"http://127.0.0.1:9"}}}"#.to_vec();
    for (kind, payload) in [
        (raft::RpcKind::Forward, write),
        (raft::RpcKind::Membership, join),
        (raft::RpcKind::ReadIndex, b"null".to_vec()),
    ] {
        let reply = bounded(raft.call(ask(kind, payload)))
            .await
            .expect("an answer");
        let text = String::from_utf8_lossy(&reply.payload).to_string();
        assert!(
            text.contains("refused") && text.contains("of this region"),
            "{kind:?}: {text}"
        );
    }
    let status = region.status(leader_index).await;
    assert_eq!(status["members"].as_array().unwrap().len(), 2, "{status}");
    let (code, _) = process_support::call(
        &reqwest::Client::new(),
        &format!("http://127.0.0.1:{}", region.nodes[leader_index].api_port),
        "GET",
        "/user/info?user_id=intruder",
        process_support::MASTER,
        None,
    )
    .await;
    assert_eq!(code, 404, "the forwarded write was not made");
}
