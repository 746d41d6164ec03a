//! Gossip between real nodes over TCP: counters converge across regions,
//! a node that was away catches up by anti-entropy, and nothing without the
//! cluster secret can write a counter.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use meridian_link::{ClusterSecret, Dialer};
use meridian_proto::gossip::v1 as pb;
use meridian_replication::crdt::{CounterId, Metric, Scope, Window};
use meridian_replication::gossip::{Peer, PeerList, WallClock};
use meridian_replication::{Counters, Gossip, GossipConfig, GossipStats, gossip_service};
use meridian_storage::{Durability, MemStore};
use tokio::net::TcpListener;
use tokio::time::{Instant, sleep};
use tonic::service::Routes;

const NOW_MS: u64 = 1_800_000_000_000;

fn id(entity: &str) -> CounterId {
    CounterId {
        scope: Scope::Team,
        entity: entity.into(),
        metric: Metric::Spend,
        window: Window::Lifetime,
        period: 0,
    }
}

fn config() -> GossipConfig {
    GossipConfig {
        interval: Duration::from_millis(20),
        sync_every: Duration::from_millis(100),
        ..GossipConfig::default()
    }
}

fn secret() -> ClusterSecret {
    ClusterSecret::new(Some("gossip-test-secret")).unwrap()
}

struct TestNode {
    counters: Arc<Counters>,
    stats: Arc<GossipStats>,
}

/// Starts a node's flusher, gossip service and gossip task; `peers` is read
/// every round, so nodes can be listed before they exist.
async fn start(region: &str, node: u64, listener: TcpListener, peers: Vec<String>) -> TestNode {
    let store = Arc::new(MemStore::new());
    let counters =
        Arc::new(Counters::open(region, node, store, Durability::Process, move || node).unwrap());
    let clock: WallClock = Arc::new(|| NOW_MS);
    let service = gossip_service(counters.clone(), secret(), clock.clone(), &config());
    tokio::spawn(meridian_link::serve(
        listener,
        Routes::new(service),
        std::future::pending(),
    ));
    tokio::spawn(counters.clone().run_flusher(std::future::pending()));
    let peers: PeerList = Arc::new(move || peers.iter().map(Peer::new).collect());
    let gossip = Gossip::new(
        counters.clone(),
        Dialer::tcp(),
        secret(),
        clock,
        peers,
        config(),
    );
    let stats = gossip.stats();
    tokio::spawn(gossip.run(std::future::pending()));
    TestNode { counters, stats }
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within 10 s");
        sleep(Duration::from_millis(10)).await;
    }
}

async fn spend(node: &TestNode, entity: &str, amount: u64) {
    let (_, ticket) = node.counters.update(|t| t.add(&id(entity), amount, 0));
    node.counters.durable(ticket).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_converge_across_regions_and_a_late_node_catches_up() {
    let mut listeners = Vec::new();
    for _ in 0..4 {
        listeners.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    let addrs: Vec<String> = listeners
        .iter()
        .map(|l| l.local_addr().unwrap().to_string())
        .collect();
    let others = |me: usize| -> Vec<String> {
        addrs
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != me)
            .map(|(_, a)| a.clone())
            .collect()
    };
    let mut listeners = listeners.into_iter();
    let regions = ["us-east", "us-east", "eu-west"];
    let mut nodes = Vec::new();
    for (i, region) in regions.iter().enumerate() {
        let listener = listeners.next().unwrap();
        nodes.push(start(region, i as u64 + 1, listener, others(i)).await);
    }
    for round in 0..20u64 {
        for node in &nodes {
            spend(node, "team-a", round + 1).await;
        }
    }
    let expected = 3 * (1..=20).sum::<u64>();
    eventually("every node sees every region's spend", || {
        nodes
            .iter()
            .all(|n| n.counters.reading(&id("team-a")).value == expected)
    })
    .await;
    let reading = nodes[0].counters.reading(&id("team-a"));
    assert_eq!(reading.by_region.get("us-east"), Some(&(2 * 210)));
    assert_eq!(reading.by_region.get("eu-west"), Some(&210));

    // A fourth node that missed every push learns it all by anti-entropy.
    let late = start("eu-west", 9, listeners.next().unwrap(), others(3)).await;
    eventually("the late node catches up", || {
        late.counters.reading(&id("team-a")).value == expected
    })
    .await;
    spend(&late, "team-a", 5).await;
    eventually("and its own spend reaches the others", || {
        nodes
            .iter()
            .all(|n| n.counters.reading(&id("team-a")).value == expected + 5)
    })
    .await;
}

/// A peer that does not answer: pushes to it fail, it is reported as
/// lacking this node's changes; once it answers, a sync shows it holds
/// them and it is no longer stale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_peer_is_stale_until_a_sync_shows_it_caught_up() {
    let a_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    // B's port is bound (so nothing else takes it) but not served yet:
    // calls to it reach no gossip service and fail at their deadline.
    let b_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a_addr = a_listener.local_addr().unwrap().to_string();
    let b_addr = b_listener.local_addr().unwrap().to_string();
    let a = start("us-east", 1, a_listener, vec![b_addr.clone()]).await;
    spend(&a, "team-s", 7).await;
    let stale = |n: &TestNode| {
        n.stats
            .snapshot()
            .into_iter()
            .find(|(addr, _)| *addr == b_addr)
            .map(|(_, s)| s)
    };
    eventually("the push to the silent peer fails", || {
        stale(&a).is_some_and(|s| s.push_failures > 0 && s.unacked.is_some())
    })
    .await;
    let held = stale(&a).unwrap();
    assert_eq!((held.pushes, held.last_answer_ms), (0, None), "{held:?}");

    let b = start("eu-west", 2, b_listener, vec![a_addr]).await;
    eventually("the peer gets the change", || {
        b.counters.reading(&id("team-s")).value == 7
    })
    .await;
    eventually("a sync shows the peer holds it", || {
        stale(&a).is_some_and(|s| s.unacked.is_none() && s.syncs > 0)
    })
    .await;
    let caught_up = stale(&a).unwrap();
    assert!(caught_up.last_answer_ms.is_some() && caught_up.bytes_sent > 0);
}

#[tokio::test]
async fn nothing_without_the_secret_writes_a_counter() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let node = start("us-east", 1, listener, Vec::new()).await;
    let forged = pb::PushRequest {
        sender: Some(pb::Replica {
            region: "evil".into(),
            node: 1,
            incarnation: 1,
        }),
        since: 0,
        through: 1,
        deltas: Some(pb::Deltas {
            replicas: vec![pb::Replica {
                region: "evil".into(),
                node: 1,
                incarnation: 1,
            }],
            counters: vec![pb::Counter {
                id: id("team-a").encode(),
                slots: vec![pb::Slot {
                    replica: 0,
                    p: 1_000_000,
                    n: 0,
                    version: 1,
                }],
            }],
        }),
    };
    let channel = Dialer::tcp().channel(&addr).unwrap();
    let mut client = pb::gossip_client::GossipClient::new(channel);
    for presented in [None, Some("wrong")] {
        let mut request = tonic::Request::new(forged.clone());
        ClusterSecret::new(presented)
            .unwrap()
            .stamp(&mut request, Duration::from_secs(2));
        let status = client.push(request).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
    }
    assert_eq!(node.counters.reading(&id("team-a")).value, 0);
    // The same message with the secret is accepted: the refusal was the secret.
    let mut request = tonic::Request::new(forged);
    secret().stamp(&mut request, Duration::from_secs(2));
    client.push(request).await.unwrap();
    assert_eq!(node.counters.reading(&id("team-a")).value, 1_000_000);
}
