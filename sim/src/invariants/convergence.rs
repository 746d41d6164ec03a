//! Guarantees: counters converge — after the heal every node reports the
//! same value for every counter (and holds the same records) within a bound.

use std::time::Duration;

use super::{End, Invariant, View, first_disagreement};
use crate::world::Spec;

pub struct CountersConverge {
    within: Duration,
    nodes: usize,
}

impl CountersConverge {
    pub fn new(spec: &Spec) -> Self {
        Self {
            within: spec.converge_within,
            nodes: spec.node_hosts().len(),
        }
    }
}

impl Invariant for CountersConverge {
    fn name(&self) -> &'static str {
        "counters_converge"
    }

    fn guarantee(&self) -> &'static str {
        "after the heal every node agrees on every counter within the bound"
    }

    fn after(&mut self, view: &View, end: &End<'_>) -> Result<(), String> {
        if view.nodes.len() != self.nodes {
            return Err(format!(
                "only {} of {} nodes were running after the heal",
                view.nodes.len(),
                self.nodes
            ));
        }
        match end.converged_after {
            Some(t) if t <= self.within => Ok(()),
            _ => Err(format!(
                "no agreement within {:?} of the heal: {}",
                self.within,
                first_disagreement(view).unwrap_or_else(|| "(agreed only later)".into())
            )),
        }
    }
}
