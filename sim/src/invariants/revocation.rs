//! Guarantees: a revoked key is refused on every node within a bound after
//! the heal (a block made in one region reaches every region).

use std::time::Duration;

use super::{End, Invariant, View};
use crate::world::Spec;

pub struct RevokedKeyRefused {
    heal_at: Duration,
    within: Duration,
    nodes: usize,
}

impl RevokedKeyRefused {
    pub fn new(spec: &Spec) -> Self {
        Self {
            heal_at: spec.heal_at(),
            within: spec.revoke_within,
            nodes: spec.node_hosts().len(),
        }
    }
}

impl Invariant for RevokedKeyRefused {
    fn name(&self) -> &'static str {
        "revoked_key_refused"
    }

    fn guarantee(&self) -> &'static str {
        "a blocked key is refused on every node within the bound after the heal"
    }

    fn after(&mut self, _view: &View, end: &End<'_>) -> Result<(), String> {
        if end.oracle.blocked_at.is_none() {
            return Err("the block was never acknowledged".into());
        }
        if end.oracle.refused_revoked.len() != self.nodes {
            return Err(format!(
                "the blocked key was tried on {} of {} nodes",
                end.oracle.refused_revoked.len(),
                self.nodes
            ));
        }
        for (node, refused) in &end.oracle.refused_revoked {
            match refused {
                Some(t) if t.saturating_sub(self.heal_at) <= self.within => {}
                _ => {
                    return Err(format!(
                        "{node} still accepted the blocked key {:?} after the heal",
                        self.within
                    ));
                }
            }
        }
        Ok(())
    }
}
