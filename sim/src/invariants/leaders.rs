//! Guarantees: at most one leader per term in each region (Raft's election
//! safety), on every sample while faults run.

use std::collections::BTreeMap;

use super::{Invariant, View};

/// Which node led each term of each region, as seen so far: Raft's election
/// safety, checked one observation at a time (this invariant, and the Raft
/// scenarios in `sim/tests/`).
#[derive(Default)]
pub struct TermLeaders {
    /// (region, term) → the node that led it.
    seen: BTreeMap<(String, u64), String>,
}

impl TermLeaders {
    /// Records that `node` leads `term` of `region`; an error if another
    /// node led that term.
    pub fn observe(&mut self, region: &str, term: u64, node: &str) -> Result<(), String> {
        match self.seen.get(&(region.to_owned(), term)) {
            Some(other) if other != node => Err(format!(
                "{other} and {node} both led term {term} of {region}"
            )),
            Some(_) => Ok(()),
            None => {
                self.seen.insert((region.to_owned(), term), node.to_owned());
                Ok(())
            }
        }
    }
}

#[derive(Default)]
pub struct OneLeaderPerTerm {
    leaders: TermLeaders,
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
            self.leaders.observe(&node.region, node.term, &node.host)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::TermLeaders;

    #[test]
    fn a_second_leader_of_a_term_is_refused() {
        let mut leaders = TermLeaders::default();
        leaders.observe("us-east", 3, "us-east-1").unwrap();
        // The same node, seen again, is the same leader.
        leaders.observe("us-east", 3, "us-east-1").unwrap();
        let err = leaders.observe("us-east", 3, "us-east-2").unwrap_err();
        assert!(
            err.contains("us-east-1 and us-east-2 both led term 3"),
            "{err}"
        );
    }

    #[test]
    fn leaders_of_other_terms_or_regions_are_not_rivals() {
        let mut leaders = TermLeaders::default();
        leaders.observe("us-east", 3, "us-east-1").unwrap();
        leaders.observe("us-east", 4, "us-east-2").unwrap();
        leaders.observe("eu-west", 3, "eu-west-1").unwrap();
        // An old leader still claiming its own term is no rival either.
        leaders.observe("us-east", 3, "us-east-1").unwrap();
    }
}
