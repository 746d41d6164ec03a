//! A three-node region over real gRPC on loopback (in-memory storage): it
//! elects a leader, applies a proposal made on a follower everywhere, refuses
//! callers without the cluster secret or from another region, and survives
//! losing its leader.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use meridian_consensus::grpc::{self, GrpcTransport};
use meridian_consensus::metadata::{Command, Kind, Outcome, Proposal};
use meridian_consensus::raft::Member;
use meridian_consensus::transport::{RpcKind, Transport, TransportError};
use meridian_consensus::{Region, RegionConfig, RegionId};
use meridian_link::{ClusterSecret, Dialer, SECRET_HEADER};
use meridian_proto::raft::v1::RaftRequest;
use meridian_proto::raft::v1::raft_client::RaftClient;
use meridian_storage::{MemStore, Store};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, timeout};
use tonic::service::Routes;

const REGION: &str = "test-region";
const SECRET: &str = "not-a-real-cluster-secret";
const AT_MS: u64 = 1_800_000_000_000;
const FIRST: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const SECOND: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const REFUSED: &str = "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";

struct Node {
    id: u64,
    region: Region,
    member: Member,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<Result<(), meridian_link::Error>>,
}

impl Node {
    fn has_key(&self, token: &str) -> bool {
        self.region.read(|s| s.key(token).is_some())
    }

    /// Stops Raft, then the server (which lets calls in flight finish).
    async fn stop(mut self) {
        self.region.shutdown().await;
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let served = timeout(Duration::from_secs(5), self.server).await;
        assert!(
            matches!(served, Ok(Ok(Ok(())))),
            "server of node {} stopped cleanly",
            self.id
        );
    }
}

fn secret() -> ClusterSecret {
    ClusterSecret::new(Some(SECRET)).unwrap()
}

fn transport(region: &str, secret: ClusterSecret) -> GrpcTransport {
    GrpcTransport::new(region, secret, Dialer::tcp())
}

/// Binds every listener first: each node's config names all members' ports.
async fn start_region() -> Vec<Node> {
    let mut listeners = Vec::new();
    for _ in 0..3 {
        listeners.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    let members: BTreeMap<u64, Member> = (1..)
        .zip(&listeners)
        .map(|(id, l)| {
            let raft_addr = l.local_addr().unwrap().to_string();
            (
                id,
                Member {
                    raft_addr,
                    api_url: String::new(),
                },
            )
        })
        .collect();
    let mut nodes = Vec::new();
    for (id, listener) in (1..).zip(listeners) {
        let config = RegionConfig {
            region: RegionId::new(REGION),
            node_id: id,
            initial_members: members.clone(),
            seed: id,
            heartbeat: Duration::from_millis(100),
            election_timeout: (Duration::from_millis(400), Duration::from_millis(800)),
            snapshot_every: 5000,
        };
        let store: Arc<dyn Store> = Arc::new(MemStore::new());
        let transport = Arc::new(transport(REGION, secret()));
        let region = Region::start(config, store, transport).await.unwrap();
        let service = grpc::raft_service(region.clone(), secret(), REGION.to_owned());
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(meridian_link::serve(
            listener,
            Routes::new(service),
            async {
                let _ = stopped.await;
            },
        ));
        let member = members[&id].clone();
        nodes.push(Node {
            id,
            region,
            member,
            stop: Some(stop),
            server,
        });
    }
    nodes
}

/// Polls `check` every 20 ms; fails the test after `within`.
async fn eventually(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        sleep(Duration::from_millis(20)).await;
    }
}

/// The leader every node in `nodes` agrees on, if it is one of them.
fn agreed_leader(nodes: &[Node]) -> Option<u64> {
    let leader = nodes.first()?.region.status().leader?;
    let agreed = nodes
        .iter()
        .all(|n| n.region.status().leader == Some(leader));
    (agreed && nodes.iter().any(|n| n.id == leader)).then_some(leader)
}

fn create_key(token: &str) -> Command {
    let key_name = format!("sk-...{}", &token[60..]);
    Command::Create {
        kind: Kind::Key,
        record: json!({ "token": token, "key_name": key_name }),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_region_replicates_over_grpc_and_survives_its_leader() {
    let started = Instant::now();
    let mut nodes = start_region().await;
    eventually("a leader", Duration::from_secs(10), || {
        agreed_leader(&nodes).is_some()
    })
    .await;
    let leader = agreed_leader(&nodes).unwrap();
    println!("leader {leader} elected after {:?}", started.elapsed());

    // A proposal on a follower is forwarded to the leader and applied everywhere.
    let follower = nodes.iter().find(|n| n.id != leader).unwrap();
    let outcome = follower
        .region
        .propose(create_key(FIRST), AT_MS)
        .await
        .unwrap();
    assert!(matches!(outcome, Outcome::Done { .. }), "{outcome:?}");
    eventually("the key on every node", Duration::from_secs(2), || {
        nodes.iter().all(|n| n.has_key(FIRST))
    })
    .await;
    // A follower's read-index read asks the leader over gRPC (`ReadIndex`).
    follower.region.linearizable().await.unwrap();

    // Callers without the secret, or from another region, reach nothing.
    let leader_node = nodes.iter().find(|n| n.id == leader).unwrap();
    let last_log = leader_node.region.status().last_log_index;
    let forward = serde_json::to_vec(&Proposal {
        at_ms: AT_MS,
        command: create_key(REFUSED),
    })
    .unwrap();
    let deadline = Duration::from_secs(2);
    for secret in [Some("wrong-secret"), None] {
        let outsider = transport(REGION, ClusterSecret::new(secret).unwrap());
        let err = outsider
            .call(
                None,
                &leader_node.member,
                RpcKind::Forward,
                forward.clone(),
                deadline,
            )
            .await
            .unwrap_err();
        assert!(
            matches!(&err, TransportError::Remote(m) if m.starts_with("Unauthenticated")),
            "{err}"
        );
    }
    let elsewhere = transport("another-region", secret());
    let err = elsewhere
        .call(
            None,
            &leader_node.member,
            RpcKind::Forward,
            forward.clone(),
            deadline,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, TransportError::Remote(m) if m.starts_with("FailedPrecondition")),
        "{err}"
    );

    // A kind this node does not know (here: UNSPECIFIED) is refused, not guessed.
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", leader_node.member.raft_addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let mut raw = tonic::Request::new(RaftRequest {
        kind: 0,
        payload: forward.clone(),
        region: REGION.to_owned(),
    });
    raw.metadata_mut()
        .insert(SECRET_HEADER, SECRET.parse().unwrap());
    let status = RaftClient::new(channel).call(raw).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");

    // Nobody listening: unreachable, reported before the deadline.
    let free = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let nobody = Member {
        raft_addr: free.local_addr().unwrap().to_string(),
        api_url: String::new(),
    };
    drop(free);
    let insider = transport(REGION, secret());
    let err = insider
        .call(None, &nobody, RpcKind::Vote, b"{}".to_vec(), deadline)
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::Unreachable(_)), "{err}");

    sleep(Duration::from_millis(300)).await;
    assert!(
        nodes.iter().all(|n| !n.has_key(REFUSED)),
        "a refused call applied nothing"
    );
    assert_eq!(
        leader_node.region.status().last_log_index,
        last_log,
        "nor reached the log"
    );

    // Lose the leader: the other two elect one of themselves and keep writing.
    let old = nodes.remove(nodes.iter().position(|n| n.id == leader).unwrap());
    let old_id = old.id;
    let stopped_at = Instant::now();
    old.stop().await;
    eventually("a new leader", Duration::from_secs(10), || {
        agreed_leader(&nodes).is_some()
    })
    .await;
    let leader = agreed_leader(&nodes).unwrap();
    println!(
        "node {leader} took over {:?} after the old leader stopped",
        stopped_at.elapsed()
    );
    let survivor = nodes.iter().find(|n| n.id != leader).unwrap();
    let outcome = survivor
        .region
        .propose(create_key(SECOND), AT_MS + 1)
        .await
        .unwrap();
    assert!(matches!(outcome, Outcome::Done { .. }), "{outcome:?}");
    eventually(
        "the second key on both survivors",
        Duration::from_secs(2),
        || nodes.iter().all(|n| n.has_key(SECOND)),
    )
    .await;

    // The leader's status lists all three members; the stopped one lags.
    let leader_node = nodes.iter().find(|n| n.id == leader).unwrap();
    eventually("survivors caught up", Duration::from_secs(2), || {
        let status = leader_node.region.status();
        status
            .members
            .iter()
            .filter(|m| m.node_id != old_id)
            .all(|m| m.lag == Some(0))
    })
    .await;
    let status = leader_node.region.status();
    assert_eq!(status.state, "leader");
    assert_eq!(status.members.len(), 3, "{status:?}");
    assert!(
        status.members.iter().all(|m| m.voter && m.lag.is_some()),
        "{status:?}"
    );
    let lost = status.members.iter().find(|m| m.node_id == old_id).unwrap();
    assert!(lost.lag.is_some_and(|lag| lag > 0), "{status:?}");

    for node in nodes {
        node.stop().await;
    }
    println!("whole run: {:?}", started.elapsed());
}
