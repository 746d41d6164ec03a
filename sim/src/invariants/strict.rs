//! Guarantees: a `strict` budget is never exceeded at any instant — the
//! true global consumption (every node's own contribution, summed, whether
//! or not the others know of it yet) stays within the limit, partitions and
//! crashes included.

use std::collections::BTreeMap;

use meridian_replication::crdt::CounterId;

use super::{End, Invariant, View, is_key_spend, key_entity, served_floor};
use crate::world::{STRICT, Spec};

pub struct StrictNeverExceeded {
    entity: String,
    limit: u64,
    served_call: u64,
    /// Each node's own contribution, as last seen (a crashed node keeps what
    /// it had made durable).
    own: BTreeMap<(String, CounterId), u64>,
    worst: f64,
}

impl StrictNeverExceeded {
    pub fn new(spec: &Spec) -> Self {
        Self {
            entity: key_entity(STRICT),
            limit: spec.budget_pico(),
            served_call: spec.served_call(),
            own: BTreeMap::new(),
            worst: 0.0,
        }
    }

    fn check(&mut self) -> Result<(), String> {
        let mut totals: BTreeMap<&CounterId, u64> = BTreeMap::new();
        for ((_, id), net) in &self.own {
            *totals.entry(id).or_default() += net;
        }
        for (id, total) in totals {
            let over = total.saturating_sub(self.limit) as f64 / self.limit as f64;
            self.worst = self.worst.max(over);
            if total > self.limit {
                return Err(format!(
                    "period {}: {total} pico$ consumed of a strict budget of {}",
                    id.period, self.limit
                ));
            }
        }
        Ok(())
    }
}

impl Invariant for StrictNeverExceeded {
    fn name(&self) -> &'static str {
        "strict_never_exceeded"
    }

    fn guarantee(&self) -> &'static str {
        "a strict budget's global consumption never exceeds it, at any instant"
    }

    fn during(&mut self, view: &View) -> Result<(), String> {
        for node in &view.nodes {
            for (id, counter) in &node.counters {
                if is_key_spend(id, &self.entity) {
                    let net = counter.slot(&node.me).net();
                    self.own.insert((node.host.clone(), id.clone()), net);
                }
            }
        }
        self.check()
    }

    fn after(&mut self, view: &View, end: &End<'_>) -> Result<(), String> {
        self.during(view)?;
        served_floor(end.oracle, STRICT, self.limit, self.served_call)
    }

    fn measure(&self) -> Option<f64> {
        Some(self.worst)
    }
}
