//! Guarantees: no committed metadata is lost — every key whose creation a
//! client saw acknowledged exists on every node of every region after the
//! heal.

use super::{End, Invariant, View};

pub struct CommittedMetadataKept;

impl Invariant for CommittedMetadataKept {
    fn name(&self) -> &'static str {
        "committed_metadata_kept"
    }

    fn guarantee(&self) -> &'static str {
        "every acknowledged metadata write is on every node after the heal"
    }

    fn after(&mut self, view: &View, end: &End<'_>) -> Result<(), String> {
        for key in end.oracle.created.keys() {
            if let Some(node) = view.nodes.iter().find(|n| !n.has_key(key)) {
                return Err(format!(
                    "{key} was acknowledged but {} does not hold it",
                    node.host
                ));
            }
        }
        Ok(())
    }
}
