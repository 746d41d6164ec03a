//! Guarantees: at most one leader per term in each region (Raft's election
//! safety), on every sample while faults run.

use std::collections::BTreeMap;

use super::{Invariant, View};

#[derive(Default)]
pub struct OneLeaderPerTerm {
    /// (region, term) → the node that led it.
    seen: BTreeMap<(String, u64), String>,
}

impl Invariant for OneLeaderPerTerm {
    fn name(&self) -> &'static str {
        "one_leader_per_term"
    }

    fn guarantee(&self) -> &'static str {
        "at most one leader per term in each region"
    }

    fn during(&mut self, view: &View) -> Result<(), String> {
        for node in view.nodes.iter().filter(|n| n.state == "leader") {
            let slot = (node.region.clone(), node.term);
            match self.seen.get(&slot) {
                Some(other) if *other != node.host => {
                    return Err(format!(
                        "{} and {} both led term {} of {}",
                        other, node.host, node.term, node.region
                    ));
                }
                _ => {
                    self.seen.insert(slot, node.host.clone());
                }
            }
        }
        Ok(())
    }
}
