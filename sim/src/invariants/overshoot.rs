//! Guarantees: an `available` budget overshoots by no more than the
//! documented bound — `(k − 1) × limit` for a cluster cut into `k` sides,
//! plus what the other nodes admit within one gossip staleness window and
//! one reservation per node (README, "Guarantees of available mode").

use std::time::Duration;

use super::{End, Invariant, View, is_key_spend, key_entity};
use crate::faults::{Fault, Plan};
use crate::world::{AVAILABLE, Spec};

pub struct AvailableOvershootBounded {
    entity: String,
    limit: u64,
    bound: u64,
    worst: f64,
}

/// Longest a node's view of another can lag while they are not cut apart:
/// a gossip interval, the network's largest latency, and the deadline of a
/// call lost on a broken connection (after which the next one carries it).
fn staleness(spec: &Spec) -> Duration {
    spec.gossip_interval + Duration::from_millis(100) + Duration::from_secs(2)
}

/// The most sides the cluster is cut into at once by the plan's faults.
fn most_sides(spec: &Spec, plan: &Plan) -> u64 {
    plan.events
        .iter()
        .map(|at| {
            plan.events
                .iter()
                .filter(|e| e.start <= at.start && at.start < e.end)
                .map(|e| match e.fault {
                    Fault::SplitRegions => spec.regions.len() as u64 - 1,
                    Fault::Isolate(_) => 1,
                    _ => 0,
                })
                .sum::<u64>()
        })
        .max()
        .unwrap_or(0)
        + 1
}

impl AvailableOvershootBounded {
    pub fn new(spec: &Spec) -> Self {
        let plan = Plan::generate(spec);
        let limit = spec.budget_pico();
        let sides = most_sides(spec, &plan);
        let calls_per_sec = spec.regions.len() as f64 / spec.call_every.as_secs_f64() / 3.0;
        let stale_calls = (calls_per_sec * staleness(spec).as_secs_f64()).ceil() as u64;
        let nodes = spec.node_hosts().len() as u64;
        let bound = (sides - 1) * limit + (stale_calls + nodes) * spec.worst_call();
        Self {
            entity: key_entity(AVAILABLE),
            limit,
            bound,
            worst: 0.0,
        }
    }
}

impl Invariant for AvailableOvershootBounded {
    fn name(&self) -> &'static str {
        "available_overshoot_bounded"
    }

    fn guarantee(&self) -> &'static str {
        "an available budget overshoots by at most (k-1) x limit + one staleness window + one reservation per node"
    }

    fn after(&mut self, view: &View, _end: &End<'_>) -> Result<(), String> {
        let Some(node) = view.nodes.first() else {
            return Ok(());
        };
        for (id, counter) in &node.counters {
            if !is_key_spend(id, &self.entity) {
                continue;
            }
            let over = counter.value().saturating_sub(self.limit);
            self.worst = self.worst.max(over as f64 / self.limit as f64);
            if over > self.bound {
                return Err(format!(
                    "period {}: {} pico$ spent of an available budget of {} (overshoot {over} > bound {})",
                    id.period,
                    counter.value(),
                    self.limit,
                    self.bound
                ));
            }
        }
        Ok(())
    }

    fn measure(&self) -> Option<f64> {
        Some(self.worst)
    }
}
