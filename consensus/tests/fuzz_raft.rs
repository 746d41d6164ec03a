//! Fuzzing the Raft RPCs a node answers (`Region::handle`, the JSON inside
//! every `RaftRequest`): arbitrary bytes, arbitrary JSON, and real messages
//! recorded between the two nodes of another region, replayed in any order.
//! Every call gets a JSON `Ok`/`Err` reply in time, and nothing panics —
//! neither the handler nor Raft's core task behind it, which a process-wide
//! panic hook watches. Recorded messages with values changed made openraft's
//! core panic in two ways, kept below as ignored tests; the property leaves
//! them out until `Region::handle` refuses such messages.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures_util::future::BoxFuture;
use meridian_consensus::metadata::{Command, Kind};
use meridian_consensus::raft::Member;
use meridian_consensus::transport::{RpcKind, Transport, TransportError};
use meridian_consensus::{Region, RegionConfig, RegionId};
use meridian_storage::{MemStore, Store};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Value, json};

const AT_MS: u64 = 1_800_000_000_000;

/// Panics anywhere in the process, spawned tasks included.
static PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            default(info);
        }));
    });
}

/// Delivers calls between regions of this process, recording each one.
#[derive(Default)]
struct Loopback {
    regions: OnceLock<BTreeMap<String, Region>>,
    recorded: Mutex<Vec<(RpcKind, Vec<u8>)>>,
}

impl Transport for Loopback {
    fn call(
        &self,
        _target_id: Option<u64>,
        target: &Member,
        kind: RpcKind,
        payload: Vec<u8>,
        _deadline: Duration,
    ) -> BoxFuture<'static, Result<Vec<u8>, TransportError>> {
        self.recorded.lock().unwrap().push((kind, payload.clone()));
        let region = self
            .regions
            .get()
            .and_then(|r| r.get(&target.raft_addr))
            .cloned();
        Box::pin(async move {
            match region {
                Some(r) => Ok(r.handle(kind, &payload, None).await),
                None => Err(TransportError::Unreachable("no such node".into())),
            }
        })
    }
}

fn member(id: u64) -> Member {
    Member {
        raft_addr: format!("node-{id}"),
        api_url: String::new(),
    }
}

fn config(node_id: u64, members: &[u64]) -> RegionConfig {
    RegionConfig {
        region: RegionId::new("fuzz"),
        node_id,
        initial_members: members.iter().map(|id| (*id, member(*id))).collect(),
        seed: node_id,
        heartbeat: Duration::from_millis(50),
        election_timeout: (Duration::from_millis(200), Duration::from_millis(400)),
        snapshot_every: 5000,
    }
}

fn team(id: &str) -> Command {
    Command::Create {
        kind: Kind::Team,
        record: json!({ "team_id": id }),
    }
}

/// Proposes until the region has a leader that commits.
async fn until_it_commits(region: &Region, id: &str) {
    for _ in 0..100 {
        if region.propose(team(id), AT_MS).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no commit within 5 s");
}

/// Real messages of every kind but snapshots: two nodes elect a leader,
/// replicate, and the follower forwards a proposal.
async fn record_messages() -> Vec<(RpcKind, Vec<u8>)> {
    let net = Arc::new(Loopback::default());
    let mut regions = BTreeMap::new();
    for id in [1, 2] {
        let store: Arc<dyn Store> = Arc::new(MemStore::new());
        let r = Region::start(config(id, &[1, 2]), store, net.clone())
            .await
            .unwrap();
        regions.insert(member(id).raft_addr, r);
    }
    let _ = net.regions.set(regions.clone());
    for (n, r) in regions.values().enumerate() {
        until_it_commits(r, &format!("team-{n}")).await;
    }
    let _ = regions["node-1"].linearizable().await;
    let _ = regions["node-2"].linearizable().await;
    for r in regions.values() {
        r.shutdown().await;
    }
    net.recorded.lock().unwrap().clone()
}

/// Any JSON, shallow.
fn arb_json() -> impl Strategy<Value = Value> + Clone {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        prop::sample::select(vec![0u64, 1, 2, u64::MAX, u64::MAX - 1]).prop_map(Value::from),
        "\\PC{0,8}".prop_map(Value::from),
    ];
    leaf.prop_recursive(2, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::vec(("[a-z_]{1,10}", inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// The node under fuzz.
const TARGET: u64 = 1;

/// Whether `payload` is an append or a vote made in the name of `node`.
fn in_the_name_of(kind: RpcKind, payload: &[u8], node: u64) -> bool {
    matches!(kind, RpcKind::AppendEntries | RpcKind::Vote)
        && serde_json::from_slice::<Value>(payload)
            .ok()
            .and_then(|v| v.pointer("/vote/leader_id/voted_for")?.as_u64())
            == Some(node)
}

/// A reply is JSON of `Result<_, String>`: an object with `Ok` or `Err`.
fn is_result(reply: &[u8]) -> bool {
    serde_json::from_slice::<Value>(reply)
        .ok()
        .and_then(|v| v.as_object().cloned())
        .is_some_and(|m| m.len() == 1 && (m.contains_key("Ok") || m.contains_key("Err")))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The node under fuzz, fresh for every case (so a failure shrinks to a
/// sequence that reproduces alone): a region of one, committing.
async fn fresh_target() -> Region {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let target = Region::start(
        config(TARGET, &[TARGET]),
        store,
        Arc::new(Loopback::default()),
    )
    .await
    .unwrap();
    until_it_commits(&target, "before").await;
    target
}

/// Feeds `messages` to a fresh node: each gets a JSON `Ok`/`Err` reply
/// within 10 s, and nothing panics meanwhile.
fn replay(
    rt: &tokio::runtime::Runtime,
    messages: &[(RpcKind, Vec<u8>)],
) -> Result<(), TestCaseError> {
    rt.block_on(async {
        let target = fresh_target().await;
        let before = PANICS.load(Ordering::SeqCst);
        for (kind, payload) in messages {
            let reply =
                tokio::time::timeout(Duration::from_secs(10), target.handle(*kind, payload, None))
                    .await;
            prop_assert!(reply.is_ok(), "{kind:?}: no reply within 10 s");
            let reply = reply.unwrap();
            prop_assert!(
                is_result(&reply),
                "{kind:?}: {}",
                String::from_utf8_lossy(&reply)
            );
        }
        // Raft's core works on after the replies; give it a moment.
        tokio::time::sleep(Duration::from_millis(20)).await;
        target.shutdown().await;
        prop_assert_eq!(
            PANICS.load(Ordering::SeqCst),
            before,
            "a panic in Raft's core"
        );
        Ok(())
    })
}

fn run(cases: impl Strategy<Value = Vec<(RpcKind, Vec<u8>)>>) {
    let n = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(64);
    let rt = runtime();
    let mut runner = TestRunner::new(Config {
        cases: n,
        failure_persistence: None,
        ..Config::default()
    });
    if let Err(e) = runner.run(&cases, |messages| replay(&rt, &messages)) {
        panic!("{e}");
    }
}

/// Membership changes are left out: adding a learner waits, by design,
/// until it has caught up.
const KINDS: [RpcKind; 5] = [
    RpcKind::AppendEntries,
    RpcKind::Vote,
    RpcKind::Snapshot,
    RpcKind::Forward,
    RpcKind::ReadIndex,
];

fn recorded() -> Vec<(RpcKind, Vec<u8>)> {
    let recorded = runtime().block_on(record_messages());
    assert!(
        recorded.iter().any(|(k, _)| *k == RpcKind::AppendEntries)
            && recorded.iter().any(|(k, _)| *k == RpcKind::Vote),
        "the recording holds appends and votes"
    );
    recorded
        .into_iter()
        .filter(|(k, p)| *k != RpcKind::Membership && !in_the_name_of(*k, p, TARGET))
        .collect()
}

/// Bytes, JSON, and real messages of another region replayed in any order:
/// a reply to each, no panic.
#[test]
fn any_raft_message_gets_a_reply_and_panics_nothing() {
    count_panics();
    let message = prop_oneof![
        (
            prop::sample::select(KINDS.to_vec()),
            prop::collection::vec(any::<u8>(), 0..64)
        ),
        (
            prop::sample::select(KINDS.to_vec()),
            arb_json().prop_map(|v| v.to_string().into_bytes())
        ),
        prop::sample::select(recorded()),
    ];
    run(prop::collection::vec(message, 1..6));
}

/// Sends `append` to a fresh node; whether Raft's core panicked.
fn core_panics_on(append: &Value) -> bool {
    count_panics();
    let rt = runtime();
    let target = rt.block_on(fresh_target());
    let before = PANICS.load(Ordering::SeqCst);
    let payload = append.to_string();
    let reply = rt.block_on(target.handle(RpcKind::AppendEntries, payload.as_bytes(), None));
    assert!(is_result(&reply), "{}", String::from_utf8_lossy(&reply));
    rt.block_on(async { tokio::time::sleep(Duration::from_millis(200)).await });
    PANICS.load(Ordering::SeqCst) > before
}

/// Found by the property when recorded messages were mutated (kept out of
/// it since): an append naming this very node as the leader of a later term
/// (node 1, term 2, to node 1 leading term 1) trips openraft's
/// `assert!(self.leader.is_none())` (openraft 0.10.0-alpha.37,
/// engine/engine_impl.rs:1085) in Raft's core task, and the node's Raft
/// stops for good. `Region::handle` (consensus/src/region.rs:387) passes
/// it on: `in_name_of` compares the claimed leader only with a TLS
/// identity, and on a plain link (or from a peer sharing the node id) there
/// is none, so one call from a holder of the cluster secret stops a node.
#[test]
fn a_leader_claiming_to_be_this_node_is_refused() {
    // Standard Raft leader ids: a vote names whom it is for; a log id's
    // (committed) leader is its term alone.
    let append = json!({
        "vote": { "leader_id": { "term": 2, "voted_for": TARGET }, "committed": true },
        "prev_log_id": { "leader_id": 2, "index": 1 },
        "entries": [],
        "leader_commit": { "leader_id": 2, "index": 1 },
    });
    assert!(!core_panics_on(&append), "Raft's core panicked");
}
