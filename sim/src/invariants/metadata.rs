//! Guarantees: metadata is identical across regions after the heal — every
//! node holds the same records, field for field.

use super::{End, Invariant, View, first_difference};

pub struct MetadataIdentical;

impl Invariant for MetadataIdentical {
    fn name(&self) -> &'static str {
        "metadata_identical"
    }

    fn guarantee(&self) -> &'static str {
        "every node of every region holds the same records after the heal"
    }

    fn after(&mut self, view: &View, _end: &End<'_>) -> Result<(), String> {
        let Some(first) = view.nodes.first() else {
            return Err("no node is running".into());
        };
        let records = first.records();
        for other in &view.nodes[1..] {
            if let Some(id) = first_difference(&records, &other.records()) {
                return Err(format!(
                    "{} and {} differ on {id:?}",
                    first.host, other.host
                ));
            }
        }
        Ok(())
    }
}
