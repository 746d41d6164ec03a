//! The harness of the metadata sync tests: real regions over TCP on
//! loopback, each a Raft group on in-memory storage serving Raft and sync on
//! one listener per node, with a directory that can cut a region off.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meridian_consensus::grpc::{GrpcTransport, raft_service};
use meridian_consensus::metadata::{Command, Kind, Outcome, token_bytes};
use meridian_consensus::metadata_sync::{
    MetadataSync, RemoteRegion, RemoteRegions, SyncConfig, SyncStats, sync_service,
};
use meridian_consensus::raft::Member;
use meridian_consensus::{Region, RegionConfig, RegionId};
use meridian_link::Peer;
use meridian_link::{ClusterSecret, Dialer};
use meridian_storage::{MemStore, Store};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::time::{Instant, sleep};
use tonic::service::Routes;

pub const US: &str = "us-east";
pub const EU: &str = "eu-west";
pub const SECRET: &str = "metadata-sync-test-secret";
pub const AT_MS: u64 = 1_800_000_000_000;

pub fn secret() -> ClusterSecret {
    ClusterSecret::new(Some(SECRET)).unwrap()
}

pub fn token(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

/// Who can reach whom: every region's node addresses, and the regions cut
/// off from the others (their sync tasks and their peers' see only a dead
/// address).
#[derive(Default)]
pub struct Directory {
    pub regions: BTreeMap<String, Vec<String>>,
    pub cut: BTreeSet<String>,
    pub dead: String,
    /// Holds `dead`'s port, bound and never listening: a connection to it is
    /// refused at once, and no other test can take the port (a released one
    /// could become another test's server, where a call may hang to its
    /// deadline).
    _holds_dead: Option<tokio::net::TcpSocket>,
}

pub type SharedDirectory = Arc<Mutex<Directory>>;

pub async fn directory() -> SharedDirectory {
    // A port nobody listens on, held for the test's length.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let dead = socket.local_addr().unwrap().to_string();
    Arc::new(Mutex::new(Directory {
        dead,
        _holds_dead: Some(socket),
        ..Directory::default()
    }))
}

pub fn remotes_of(me: &str, directory: &SharedDirectory) -> RemoteRegions {
    let me = me.to_owned();
    let directory = directory.clone();
    Arc::new(move || {
        let d = directory.lock().unwrap();
        d.regions
            .iter()
            .filter(|(name, _)| **name != me)
            .map(|(name, addrs)| {
                let cut = d.cut.contains(&me) || d.cut.contains(name);
                let addrs = if cut {
                    std::slice::from_ref(&d.dead)
                } else {
                    addrs.as_slice()
                };
                RemoteRegion {
                    name: name.clone(),
                    peers: addrs.iter().map(Peer::new).collect(),
                }
            })
            .collect()
    })
}

pub struct Node {
    pub region: Region,
    pub sync: Arc<MetadataSync>,
}

pub struct TestRegion {
    pub name: &'static str,
    pub nodes: Vec<Node>,
}

pub fn sync_config() -> SyncConfig {
    SyncConfig {
        interval: Duration::from_millis(50),
        deadline: Duration::from_secs(3),
        // Small batches: catching up takes several pushes.
        max_docs: 8,
        ..SyncConfig::default()
    }
}

/// Starts a region of `size` nodes, each serving Raft and sync and running
/// its sync task, and lists it in `directory`.
pub async fn start_region(
    name: &'static str,
    size: u64,
    directory: &SharedDirectory,
) -> TestRegion {
    let mut listeners = Vec::new();
    for _ in 0..size {
        listeners.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    let members: BTreeMap<u64, Member> = (1..)
        .zip(&listeners)
        .map(|(id, l)| {
            let member = Member {
                raft_addr: l.local_addr().unwrap().to_string(),
                api_url: String::new(),
            };
            (id, member)
        })
        .collect();
    let mut nodes = Vec::new();
    for (id, listener) in (1..).zip(listeners) {
        let config = RegionConfig {
            region: RegionId::new(name),
            node_id: id,
            initial_members: members.clone(),
            seed: id,
            heartbeat: Duration::from_millis(100),
            election_timeout: (Duration::from_millis(400), Duration::from_millis(800)),
            snapshot_every: 5000,
        };
        let store: Arc<dyn Store> = Arc::new(MemStore::new());
        let transport = Arc::new(GrpcTransport::new(name, secret(), Dialer::tcp()));
        let region = Region::start(config, store, transport).await.unwrap();
        let routes = Routes::new(raft_service(region.clone(), secret(), name.to_owned()))
            .add_service(sync_service(region.clone(), secret()));
        tokio::spawn(meridian_link::serve(
            listener,
            routes,
            std::future::pending(),
        ));
        let sync = MetadataSync::new(
            region.clone(),
            remotes_of(name, directory),
            Dialer::tcp(),
            secret(),
            sync_config(),
        );
        tokio::spawn(sync.clone().run(std::future::pending()));
        nodes.push(Node { region, sync });
    }
    directory.lock().unwrap().regions.insert(
        name.to_owned(),
        members.values().map(|m| m.raft_addr.clone()).collect(),
    );
    let region = TestRegion { name, nodes };
    eventually(&format!("a leader in {name}"), || region.leader().is_some()).await;
    region
}

impl TestRegion {
    pub fn leader(&self) -> Option<&Node> {
        self.nodes.iter().find(|n| n.region.is_leader())
    }

    /// Proposes on the last node (a follower, most often: forwarded).
    pub async fn propose(&self, command: Command) -> Outcome {
        let node = self.nodes.last().unwrap();
        let outcome = node.region.propose(command, AT_MS).await.unwrap();
        assert!(
            matches!(outcome, Outcome::Done { .. }),
            "{}: {outcome:?}",
            self.name
        );
        outcome
    }

    pub fn all(&self, check: impl Fn(&Region) -> bool) -> bool {
        self.nodes.iter().all(|n| check(&n.region))
    }

    pub fn stats(&self) -> SyncStats {
        self.nodes.iter().fold(SyncStats::default(), |sum, n| {
            let s = n.sync.stats();
            SyncStats {
                rounds: sum.rounds + s.rounds,
                pushes: sum.pushes + s.pushes,
                docs_sent: sum.docs_sent + s.docs_sent,
                failures: sum.failures + s.failures,
            }
        })
    }
}

/// Polls `check` every 20 ms; fails the test after 10 s.
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let within = Duration::from_secs(10);
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        sleep(Duration::from_millis(20)).await;
    }
}

pub fn create_key(n: u8) -> Command {
    Command::Create {
        kind: Kind::Key,
        record: json!({ "token": token(n), "key_name": format!("sk-...{n:02x}") }),
    }
}

pub fn update(kind: Kind, id: &str, patch: Value) -> Command {
    Command::Update {
        kind,
        id: id.to_owned(),
        patch: patch.as_object().unwrap().clone(),
    }
}

pub fn has_key(region: &Region, n: u8) -> bool {
    let hash = token_bytes(&token(n)).unwrap();
    region.read(|s| s.key_by_hash(&hash).is_some())
}

pub fn json_of(region: &Region, kind: Kind, id: &str) -> Option<Value> {
    region.read(|s| s.get_json(kind, id))
}

pub fn heads_of(region: &Region, kind: Kind, id: &str) -> Vec<String> {
    region.read(|s| {
        s.document(kind, id)
            .map(|d| d.unwrap().heads().iter().map(ToString::to_string).collect())
            .unwrap_or_default()
    })
}

/// Both regions hold the same record and the same document heads for the
/// entity on every node.
pub fn converged(regions: &[&TestRegion], kind: Kind, id: &str) -> bool {
    let first = &regions[0].nodes[0].region;
    let (record, heads) = (json_of(first, kind, id), heads_of(first, kind, id));
    regions
        .iter()
        .all(|r| r.all(|n| json_of(n, kind, id) == record && heads_of(n, kind, id) == heads))
}

pub fn cut(directory: &SharedDirectory, region: &str, off: bool) {
    let mut d = directory.lock().unwrap();
    if off {
        d.cut.insert(region.to_owned());
    } else {
        d.cut.remove(region);
    }
}
