//! Guarantees: no acknowledged spend is lost, and nothing is counted twice —
//! after the heal, every node's spend of each key lies between what clients
//! were told they were charged and that plus at most one reservation per call
//! whose answer never arrived.

use super::{End, Invariant, View, is_key_spend, key_entity};
use crate::world::Spec;

pub struct AcknowledgedSpendKept {
    /// Most a call can be charged without its client hearing of it (its
    /// reservation: a prompt of "hi" is far below 100 tokens).
    worst_call: u64,
}

impl AcknowledgedSpendKept {
    pub fn new(spec: &Spec) -> Self {
        Self {
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

    fn after(&mut self, view: &View, end: &End<'_>) -> Result<(), String> {
        for (key, calls) in &end.oracle.calls {
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
