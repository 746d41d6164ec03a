//! Meridian's own families (`meridian_*`), read from the node when scraped:
//! its region's Raft, its gossip with every peer (and how stale another
//! region's view of this node's counts may be), its spend log, its build.
//! What no single-database gateway has to show: a partition, a lagging
//! region or a stuck leader, seen from each node.

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::node::Node;

type Labels = Vec<(&'static str, String)>;

/// One gauge family being filled for a scrape.
struct Set {
    family: Family<Labels, Gauge<f64, AtomicU64>>,
}

impl Set {
    fn new() -> Self {
        Self {
            family: Family::default(),
        }
    }

    fn put(&self, labels: Labels, value: f64) {
        self.family.get_or_create(&labels).set(value);
    }

    fn one(&self, value: f64) {
        self.put(Vec::new(), value);
    }
}

/// One counter family being filled for a scrape from totals the node
/// keeps (exposed with `_total`, so `rate()` reads them as counters).
struct Counts {
    family: Family<Labels, Counter<u64>>,
}

impl Counts {
    fn new() -> Self {
        Self {
            family: Family::default(),
        }
    }

    fn put(&self, labels: Labels, value: u64) {
        self.family.get_or_create(&labels).inc_by(value);
    }
}

/// Registers the cluster families, filled from `node` now.
pub fn register(registry: &mut Registry, node: &Node) {
    raft(registry, node);
    gossip(registry, node);
    let queued = Set::new();
    queued.one(node.spend_log.queued() as f64);
    registry.register(
        "meridian_spend_log_queue_rows",
        "Spend-log rows waiting to be written",
        queued.family,
    );
    let build = Set::new();
    build.put(vec![("version", env!("CARGO_PKG_VERSION").to_owned())], 1.0);
    registry.register("meridian_build_info", "This node's build", build.family);
}

fn raft(registry: &mut Registry, node: &Node) {
    let status = node.metadata.status();
    let [
        term,
        leader,
        is_leader,
        state,
        last,
        applied,
        lag,
        snapshot,
        member_lag,
    ] = std::array::from_fn(|_| Set::new());
    term.one(status.term as f64);
    leader.one(status.leader.unwrap_or(0) as f64);
    is_leader.one(f64::from(u8::from(status.leader == Some(status.node_id))));
    state.put(vec![("state", status.state.clone())], 1.0);
    let last_index = status.last_log_index.unwrap_or(0);
    let applied_index = status.applied_index.unwrap_or(0);
    last.one(last_index as f64);
    applied.one(applied_index as f64);
    lag.one(last_index.saturating_sub(applied_index) as f64);
    snapshot.one(status.snapshot_index.unwrap_or(0) as f64);
    for member in &status.members {
        if let Some(behind) = member.lag {
            member_lag.put(vec![("member", member.node_id.to_string())], behind as f64);
        }
    }
    for (name, help, set) in [
        (
            "meridian_raft_term",
            "The region's Raft term, as this node knows it",
            term,
        ),
        (
            "meridian_raft_leader_id",
            "The Raft id of the region's leader (0: none known)",
            leader,
        ),
        (
            "meridian_raft_is_leader",
            "1 when this node leads its region",
            is_leader,
        ),
        (
            "meridian_raft_state",
            "This node's Raft role (1 for the current one)",
            state,
        ),
        (
            "meridian_raft_last_log_index",
            "The last entry in this node's Raft log",
            last,
        ),
        (
            "meridian_raft_applied_index",
            "The last entry this node applied",
            applied,
        ),
        (
            "meridian_raft_apply_lag_entries",
            "Entries in this node's log not yet applied",
            lag,
        ),
        (
            "meridian_raft_snapshot_index",
            "The last entry in this node's latest snapshot",
            snapshot,
        ),
        (
            "meridian_raft_member_lag_entries",
            "Entries each member is behind (the leader's view; only the leader reports it)",
            member_lag,
        ),
    ] {
        registry.register(name, help, set.family);
    }
}

fn gossip(registry: &mut Registry, node: &Node) {
    let Some(stats) = &node.gossip else {
        return;
    };
    let now = node.now_ms();
    let (peers_up, silent, stale) = (Set::new(), Set::new(), Set::new());
    let [
        pushes,
        push_failures,
        syncs,
        sync_failures,
        sent,
        received,
        repaired,
    ] = std::array::from_fn(|_| Counts::new());
    let mut worst = std::collections::BTreeMap::<String, u64>::new();
    let seconds = |ms: u64| ms as f64 / 1000.0;
    let peers = stats.snapshot();
    peers_up.one(peers.len() as f64);
    for (addr, s) in peers {
        let labels = vec![("peer", addr), ("peer_region", s.region.clone())];
        if let Some(at) = s.last_answer_ms {
            silent.put(labels.clone(), seconds(now.saturating_sub(at)));
        }
        pushes.put(labels.clone(), s.pushes);
        push_failures.put(labels.clone(), s.push_failures);
        syncs.put(labels.clone(), s.syncs);
        sync_failures.put(labels.clone(), s.sync_failures);
        sent.put(labels.clone(), s.bytes_sent);
        received.put(labels.clone(), s.bytes_received);
        repaired.put(labels, s.repaired);
        let age = s.unacked.map_or(0, |(since, _)| now.saturating_sub(since));
        let region = worst.entry(s.region).or_default();
        *region = (*region).max(age);
    }
    for (region, age) in worst {
        stale.put(vec![("peer_region", region)], seconds(age));
    }
    for (name, help, set) in [
        (
            "meridian_gossip_peers",
            "Peers this node gossips with (every region)",
            peers_up,
        ),
        (
            "meridian_gossip_last_answer_age_seconds",
            "Seconds since each peer last answered a gossip call",
            silent,
        ),
        (
            "meridian_convergence_unacked_age_seconds",
            "Per region: how long its nodes may have lacked some of this node's counts \
             (since the oldest change a push failed to deliver, until a sync shows it held); \
             the staleness that bounds `available` overshoot",
            stale,
        ),
    ] {
        registry.register(name, help, set.family);
    }
    for (name, help, counts) in [
        (
            "meridian_gossip_pushes",
            "Pushes of this node's changes a peer took",
            pushes,
        ),
        (
            "meridian_gossip_push_failures",
            "Pushes that failed or were skipped",
            push_failures,
        ),
        (
            "meridian_gossip_syncs",
            "Anti-entropy exchanges with a peer that completed",
            syncs,
        ),
        (
            "meridian_gossip_sync_failures",
            "Anti-entropy exchanges that failed",
            sync_failures,
        ),
        (
            "meridian_gossip_sent_bytes",
            "Gossip bytes sent to a peer",
            sent,
        ),
        (
            "meridian_gossip_received_bytes",
            "Anti-entropy bytes received from a peer",
            received,
        ),
        (
            "meridian_gossip_repaired_slots",
            "Counter slots anti-entropy with a peer changed here",
            repaired,
        ),
    ] {
        registry.register(name, help, counts.family);
    }
}
