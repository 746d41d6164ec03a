//! Guarantees: an `available` budget overshoots by no more than the
//! documented bound — `(k − 1) × limit` for a cluster cut into `k` sides,
//! plus what the other nodes admit within one gossip staleness window and
//! one reservation per node (README, "Guarantees of available mode").
//!
//! The world is set up so that the bound means something: a gateway that
//! enforced nothing would overshoot it by a wide margin (`Spec`'s available
//! budget against its call rate). Each world measures that margin from its
//! own traffic, and a world too weak to tell the two apart is a violation,
//! not a pass.

use std::time::Duration;

use super::{End, Invariant, View, is_key_spend, key_entity, served_floor};
use crate::faults::{Fault, Plan};
use crate::oracle::Oracle;
use crate::world::{AVAILABLE, Spec};

pub struct AvailableOvershootBounded {
    entity: String,
    limit: u64,
    bound: u64,
    served_call: u64,
    periods: u64,
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

/// The available key's calls per second, all regions together (each
/// region's client rotates over three keys).
fn key_calls_per_sec(spec: &Spec) -> f64 {
    spec.regions.len() as f64 / spec.call_every.as_secs_f64() / 3.0
}

/// The overshoot the guarantee allows this world's plan, in picodollars.
pub fn bound(spec: &Spec) -> u64 {
    let plan = Plan::generate(spec);
    let sides = most_sides(spec, &plan);
    let stale_calls = (key_calls_per_sec(spec) * staleness(spec).as_secs_f64()).ceil() as u64;
    let nodes = spec.node_hosts().len() as u64;
    (sides - 1) * spec.available_budget_pico() + (stale_calls + nodes) * spec.worst_call()
}

/// What a gateway that enforced nothing would have spent over the limit in
/// one period of this world: every call served (the ones served, and the
/// ones refused for the budget), averaged over the periods the traffic
/// spans.
pub fn unenforced(spec: &Spec, oracle: &Oracle) -> u64 {
    unenforced_of(
        oracle,
        spec.served_call(),
        spec.available_periods(),
        spec.available_budget_pico(),
    )
}

fn unenforced_of(oracle: &Oracle, served_call: u64, periods: u64, limit: u64) -> u64 {
    let calls = oracle.calls.get(AVAILABLE).cloned().unwrap_or_default();
    let spent = (calls.served + calls.over_budget) * served_call;
    (spent / periods.max(1)).saturating_sub(limit)
}

impl AvailableOvershootBounded {
    pub fn new(spec: &Spec) -> Self {
        Self {
            entity: key_entity(AVAILABLE),
            limit: spec.available_budget_pico(),
            bound: bound(spec),
            served_call: spec.served_call(),
            periods: spec.available_periods(),
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

    fn after(&mut self, view: &View, end: &End<'_>) -> Result<(), String> {
        served_floor(end.oracle, AVAILABLE, self.limit, self.served_call)?;
        let unenforced = unenforced_of(end.oracle, self.served_call, self.periods, self.limit);
        if unenforced <= self.bound {
            return Err(format!(
                "this world cannot test the bound: with no enforcement the key would have overshot by {unenforced} pico$, within the bound of {}",
                self.bound
            ));
        }
        // Every node's view: after the heal they agree, but a node that
        // counts more than the others is the one to report.
        for node in &view.nodes {
            for (id, counter) in &node.counters {
                if !is_key_spend(id, &self.entity) {
                    continue;
                }
                let over = counter.value().saturating_sub(self.limit);
                self.worst = self.worst.max(over as f64 / self.limit as f64);
                if over > self.bound {
                    return Err(format!(
                        "{}, period {}: {} pico$ spent of an available budget of {} (overshoot {over} > bound {}; with no enforcement: {unenforced})",
                        node.host,
                        id.period,
                        counter.value(),
                        self.limit,
                        self.bound
                    ));
                }
            }
        }
        Ok(())
    }

    fn measure(&self) -> Option<f64> {
        Some(self.worst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On the default world, with the calls the clients make, no
    /// enforcement would overshoot at least twice the bound, on every seed's
    /// fault plan (the sides it is cut into vary).
    #[test]
    fn the_default_world_can_tell_enforcement_from_none() {
        for seed in 1..=40 {
            let spec = Spec::new(seed);
            assert_eq!(spec.available_periods(), 1, "one budget period per world");
            let traffic = spec.heal_at() - Duration::from_secs(3);
            let calls = key_calls_per_sec(&spec) * traffic.as_secs_f64() * 0.8;
            let unenforced =
                (calls as u64 * spec.served_call()).saturating_sub(spec.available_budget_pico());
            let bound = bound(&spec);
            assert!(
                unenforced >= 2 * bound,
                "seed {seed}: no enforcement overshoots by {unenforced}, the bound is {bound}"
            );
        }
    }
}
