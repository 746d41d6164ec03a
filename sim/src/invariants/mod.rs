//! The guarantees a world is held to, one file each. Every checker sees the
//! running nodes at each sample while faults run ([`Invariant::during`]) and
//! once after everything healed ([`Invariant::after`]), with what the clients
//! observed (the [`Oracle`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use meridian_consensus::metadata::Kind;
use meridian_node::node::Node;
use meridian_node::secret::Secret;
use meridian_replication::Counters;
use meridian_replication::crdt::{CounterId, Metric, PnCounter, Replica, Scope};
use meridian_storage::{Cf, Durability, Store};

use crate::oracle::Oracle;
use crate::world::Spec;

mod committed;
mod convergence;
pub use convergence::{Agreement, HOLD};
mod leaders;
pub use leaders::TermLeaders;
mod metadata;
pub mod overshoot;
mod revocation;
mod spend;
mod strict;

/// One guarantee.
pub trait Invariant {
    fn name(&self) -> &'static str;
    /// One line: what it guarantees.
    fn guarantee(&self) -> &'static str;
    /// Checked at every sample while the world runs.
    fn during(&mut self, _view: &View) -> Result<(), String> {
        Ok(())
    }
    /// Checked once, after the heal and the settling time.
    fn after(&mut self, _view: &View, _end: &End<'_>) -> Result<(), String> {
        Ok(())
    }
    /// A measured figure, when the checker has one (overshoot).
    fn measure(&self) -> Option<f64> {
        None
    }
}

/// Every invariant, for `spec`.
pub fn all(spec: &Spec) -> Vec<Box<dyn Invariant>> {
    vec![
        Box::new(leaders::OneLeaderPerTerm::default()),
        Box::new(committed::CommittedMetadataKept),
        Box::new(convergence::CountersConverge::new(spec)),
        Box::new(spend::AcknowledgedSpendKept::new(spec)),
        Box::new(strict::StrictNeverExceeded::new(spec)),
        Box::new(overshoot::AvailableOvershootBounded::new(spec)),
        Box::new(revocation::RevokedKeyRefused::new(spec)),
        Box::new(metadata::MetadataIdentical),
    ]
}

/// The running nodes at one instant.
pub struct View {
    pub at: Duration,
    pub nodes: Vec<NodeView>,
    /// The nodes that are down, as their stores hold them.
    pub down: Vec<DurableView>,
    /// Per key, the picodollars clients had been told they were charged.
    pub acknowledged: BTreeMap<String, u64>,
}

pub struct NodeView {
    pub host: String,
    pub region: String,
    pub state: String,
    pub term: u64,
    pub applied: Option<u64>,
    pub me: Replica,
    pub counters: BTreeMap<CounterId, PnCounter>,
    node: Arc<Node>,
}

impl NodeView {
    pub fn of(host: &str, node: &Arc<Node>) -> NodeView {
        let status = node.metadata.status();
        NodeView {
            host: host.to_owned(),
            region: node.region.clone(),
            state: status.state,
            term: status.term,
            applied: status.applied_index,
            me: node.counters.me().clone(),
            counters: node.counters.snapshot(),
            node: node.clone(),
        }
    }

    /// Every metadata record this node holds, parsed (field order aside).
    pub fn records(&self) -> BTreeMap<(Kind, String), serde_json::Value> {
        self.node.metadata.read(|s| {
            s.records()
                .into_iter()
                .map(|(kind, id, json)| {
                    let value = serde_json::from_slice(&json).unwrap_or(serde_json::Value::Null);
                    ((kind, id), value)
                })
                .collect()
        })
    }

    pub fn has_key(&self, key: &str) -> bool {
        let hash = Secret::new(key).sha256();
        self.node.metadata.read(|s| s.key_by_hash(&hash).is_some())
    }

    /// Counter values (zeros left out: a counter a node never heard of reads 0).
    pub fn values(&self) -> BTreeMap<&CounterId, u64> {
        self.counters
            .iter()
            .map(|(id, c)| (id, c.value()))
            .filter(|(_, v)| *v > 0)
            .collect()
    }

    /// Every counter with a value, slot by slot.
    pub fn states(&self) -> BTreeMap<&CounterId, &PnCounter> {
        self.counters
            .iter()
            .filter(|(_, c)| c.value() > 0)
            .collect()
    }
}

/// A node that is down: the counters it had made durable, read from its
/// store (what it will restart with).
pub struct DurableView {
    pub host: String,
    pub me: Replica,
    pub counters: BTreeMap<CounterId, PnCounter>,
}

impl DurableView {
    /// `None` when the store holds no counters at all (nothing was durable,
    /// so the node has no slot to count).
    pub fn read(
        host: &str,
        region: &str,
        raft_id: u64,
        store: Arc<dyn Store>,
    ) -> Result<Option<DurableView>, String> {
        let mut any = false;
        store
            .scan(Cf::Counters, &[], None, &mut |_, _| {
                any = true;
                Ok(())
            })
            .map_err(|e| e.to_string())?;
        if !any {
            return Ok(None);
        }
        // The store has its incarnation: opening it writes nothing.
        let counters = Counters::open(region, raft_id, store, Durability::Power, || 0)
            .map_err(|e| format!("{host}'s stored counters: {e}"))?;
        Ok(Some(DurableView {
            host: host.to_owned(),
            me: counters.me().clone(),
            counters: counters.snapshot(),
        }))
    }
}

impl View {
    /// Per node, up or down, its own slot's net of every counter of the
    /// key whose entity is `entity`: what it has made durable (a down
    /// node) or holds (a running one, which makes a cost durable before
    /// acknowledging it).
    pub fn own_spend(&self, entity: &str) -> u64 {
        let running = self.nodes.iter().map(|n| (&n.me, &n.counters));
        let down = self.down.iter().map(|n| (&n.me, &n.counters));
        running
            .chain(down)
            .flat_map(|(me, counters)| {
                counters
                    .iter()
                    .filter(|(id, _)| is_key_spend(id, entity))
                    .map(move |(_, c)| c.slot(me).net())
            })
            .sum()
    }

    /// A compact summary for replay comparisons.
    pub fn fingerprint(&self) -> String {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|n| {
                let total: u64 = n.counters.values().map(PnCounter::value).sum();
                format!(
                    "{}:{}:{}:{:?}:{}",
                    n.host, n.state, n.term, n.applied, total
                )
            })
            .collect();
        format!("{:>7} {}", self.at.as_millis(), nodes.join(" "))
    }
}

/// What the checks after the heal also see.
pub struct End<'a> {
    pub oracle: &'a Oracle,
    /// The nodes' agreement after the heal (counters and records), sample
    /// by sample: what ends the world.
    pub agreement: &'a Agreement,
    /// The same for counters alone (records are `metadata_identical`'s).
    pub counters: &'a Agreement,
}

/// Whether every node holds the same counter values and the same records.
pub fn agree(view: &View) -> bool {
    first_disagreement(view).is_none()
}

/// The first key on which two maps differ (present in one only, or with
/// different values).
pub fn first_difference<'a, K: Ord, V: PartialEq>(
    a: &'a BTreeMap<K, V>,
    b: &'a BTreeMap<K, V>,
) -> Option<&'a K> {
    a.iter()
        .find(|(k, v)| b.get(*k) != Some(*v))
        .map(|(k, _)| k)
        .or_else(|| b.keys().find(|k| !a.contains_key(*k)))
}

/// The first difference between two nodes (counters, then records),
/// described.
pub fn first_disagreement(view: &View) -> Option<String> {
    counter_disagreement(view).or_else(|| record_disagreement(view))
}

/// The first counter two nodes hold differently, described: its value, or
/// (with equal values) its slots. Converged replicas hold the same state,
/// not only the same sum: two regions that each counted only their own
/// traffic can agree on a value by coincidence (the world's clients are
/// symmetric), never on every slot.
pub fn counter_disagreement(view: &View) -> Option<String> {
    let first = view.nodes.first()?;
    let values = first.values();
    let states = first.states();
    for other in &view.nodes[1..] {
        let theirs = other.values();
        if let Some(id) = first_difference(&values, &theirs) {
            return Some(format!(
                "{} and {} differ on counter {id:?}: {:?} vs {:?}",
                first.host,
                other.host,
                values.get(*id),
                theirs.get(*id),
            ));
        }
        if let Some(id) = first_difference(&states, &other.states()) {
            return Some(format!(
                "{} and {} hold counter {id:?} with the same value but different slots",
                first.host, other.host,
            ));
        }
    }
    None
}

/// The first record two nodes hold differently, described.
pub fn record_disagreement(view: &View) -> Option<String> {
    let first = view.nodes.first()?;
    let records = first.records();
    for other in &view.nodes[1..] {
        let theirs = other.records();
        if let Some(id) = first_difference(&records, &theirs) {
            return Some(format!(
                "{} and {} differ on record {id:?}",
                first.host, other.host
            ));
        }
    }
    None
}

/// A safety check passes trivially when nothing was served: a limited key
/// must have been served at least half a budget period's worth of calls
/// for its check to mean anything.
pub fn served_floor(oracle: &Oracle, key: &str, budget: u64, call: u64) -> Result<(), String> {
    let floor = budget / call.max(1) / 2;
    let served = oracle.calls.get(key).map_or(0, |c| c.served);
    if served < floor {
        return Err(format!(
            "{key} was served {served} calls, fewer than the {floor} (half a budget period's worth) this check needs to mean anything"
        ));
    }
    Ok(())
}

/// The counter entity of a key (its stored hash).
pub fn key_entity(key: &str) -> String {
    hex::encode(Secret::new(key).sha256())
}

/// Whether `id` is the spend of the key whose entity is `entity`.
pub fn is_key_spend(id: &CounterId, entity: &str) -> bool {
    id.scope == Scope::Key && id.metric == Metric::Spend && &*id.entity == entity
}
