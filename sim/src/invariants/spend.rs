//! Guarantees: no acknowledged spend is lost, and nothing is counted twice —
//! after the heal, every node's spend of each key lies between what clients
//! were told they were charged and that plus at most one reservation per call
//! whose answer never arrived. While faults run, at every sample: the nodes'
//! own contributions to a key's spend, summed, cover what clients had been
//! told (a node makes a cost durable before it answers; a node that is down
//! counts what its store holds).

use super::{End, Invariant, View, is_key_spend, key_entity};
use crate::world::Spec;

pub struct AcknowledgedSpendKept {
    nodes: usize,
    /// Most a call can be charged without its client hearing of it (its
    /// reservation: a prompt of "hi" is far below 100 tokens).
    worst_call: u64,
}

impl AcknowledgedSpendKept {
    pub fn new(spec: &Spec) -> Self {
        Self {
            nodes: spec.node_hosts().len(),
            worst_call: spec.worst_call(),
        }
    }
}

impl Invariant for AcknowledgedSpendKept {
    fn name(&self) -> &'static str {
        "acknowledged_spend_kept"
    }

    fn guarantee(&self) -> &'static str {
        "converged spend = acknowledged spend (+ at most the reservations of unanswered calls)"
    }

    fn during(&mut self, view: &View) -> Result<(), String> {
        if view.nodes.len() + view.down.len() < self.nodes {
            return Err(format!(
                "{} nodes running and {} down with counters in their stores, of {}",
                view.nodes.len(),
                view.down.len(),
                self.nodes
            ));
        }
        for (key, acknowledged) in &view.acknowledged {
            let own = view.own_spend(&key_entity(key));
            if own < *acknowledged {
                let down: Vec<&str> = view.down.iter().map(|d| d.host.as_str()).collect();
                return Err(format!(
                    "the nodes' own slots hold {own} pico$ for {key} (down, read from their stores: {down:?}), but clients had been charged {acknowledged}"
                ));
            }
        }
        Ok(())
    }

    fn after(&mut self, view: &View, end: &End<'_>) -> Result<(), String> {
        for (key, calls) in &end.oracle.calls {
            if calls.uncosted > 0 {
                return Err(format!(
                    "{} answers for {key} carried no readable cost header",
                    calls.uncosted
                ));
            }
            let entity = key_entity(key);
            let floor = calls.acknowledged_pico;
            let ceiling = floor + calls.in_doubt * self.worst_call;
            for node in &view.nodes {
                let total: u64 = node
                    .counters
                    .iter()
                    .filter(|(id, _)| is_key_spend(id, &entity))
                    .map(|(_, c)| c.value())
                    .sum();
                if total < floor {
                    return Err(format!(
                        "{} counts {total} pico$ for {key}, but clients were charged {floor} ({} calls)",
                        node.host, calls.served
                    ));
                }
                if total > ceiling {
                    return Err(format!(
                        "{} counts {total} pico$ for {key}: more than the {floor} acknowledged plus {} unanswered calls",
                        node.host, calls.in_doubt
                    ));
                }
            }
        }
        Ok(())
    }
}
