//! Counters ⇄ `meridian.gossip.v1` messages, for the wire and for storage.

use std::collections::BTreeMap;

use meridian_proto::gossip::v1 as pb;
use prost::Message;

use crate::Error;
use crate::counters::SlotDelta;
use crate::crdt::{CounterId, PnCounter, Replica, Slot};

fn replica_to_wire(r: &Replica) -> pb::Replica {
    pb::Replica {
        region: r.region.to_string(),
        node: r.node,
        incarnation: r.incarnation,
    }
}

fn replica_from_wire(r: &pb::Replica) -> Replica {
    Replica::new(r.region.as_str(), r.node, r.incarnation)
}

/// Builds a `Deltas` message, listing each replica once.
#[derive(Default)]
struct DeltasBuilder {
    replicas: BTreeMap<Replica, u32>,
    counters: BTreeMap<Vec<u8>, Vec<pb::Slot>>,
}

impl DeltasBuilder {
    fn slot(&mut self, id: &[u8], replica: &Replica, slot: &Slot) {
        let next = u32::try_from(self.replicas.len()).unwrap_or(u32::MAX);
        let index = *self.replicas.entry(replica.clone()).or_insert(next);
        self.counters
            .entry(id.to_vec())
            .or_default()
            .push(pb::Slot {
                replica: index,
                p: slot.p,
                n: slot.n,
                version: slot.version,
            });
    }

    fn build(self) -> pb::Deltas {
        let mut replicas: Vec<(u32, pb::Replica)> = self
            .replicas
            .iter()
            .map(|(r, i)| (*i, replica_to_wire(r)))
            .collect();
        replicas.sort_by_key(|(i, _)| *i);
        pb::Deltas {
            replicas: replicas.into_iter().map(|(_, r)| r).collect(),
            counters: self
                .counters
                .into_iter()
                .map(|(id, slots)| pb::Counter { id, slots })
                .collect(),
        }
    }
}

pub fn deltas<'a>(
    slots: impl IntoIterator<Item = (&'a CounterId, &'a Replica, &'a Slot)>,
) -> pb::Deltas {
    let mut b = DeltasBuilder::default();
    for (id, r, s) in slots {
        b.slot(&id.encode(), r, s);
    }
    b.build()
}

/// The slots of a `Deltas` message. Counters whose id this build cannot read
/// (a newer peer's) and slots naming no listed replica are skipped.
pub fn slots(deltas: &pb::Deltas) -> Vec<SlotDelta> {
    raw_slots(deltas)
        .into_iter()
        .filter_map(|(id, r, s)| Some((CounterId::decode(id).ok()?, r, s)))
        .collect()
}

fn raw_slots(deltas: &pb::Deltas) -> Vec<(&[u8], Replica, Slot)> {
    let replicas: Vec<Replica> = deltas.replicas.iter().map(replica_from_wire).collect();
    let mut out = Vec::new();
    for counter in &deltas.counters {
        for s in &counter.slots {
            let Some(replica) = usize::try_from(s.replica)
                .ok()
                .and_then(|i| replicas.get(i))
            else {
                continue;
            };
            let slot = Slot {
                p: s.p,
                n: s.n,
                version: s.version,
            };
            out.push((counter.id.as_slice(), replica.clone(), slot));
        }
    }
    out
}

pub fn digest_to_wire(digest: &BTreeMap<Replica, u64>) -> pb::Digest {
    pb::Digest {
        replicas: digest.keys().map(replica_to_wire).collect(),
        versions: digest.values().copied().collect(),
    }
}

pub fn digest_from_wire(digest: &pb::Digest) -> BTreeMap<Replica, u64> {
    digest
        .replicas
        .iter()
        .zip(&digest.versions)
        .map(|(r, v)| (replica_from_wire(r), *v))
        .collect()
}

pub fn replica(r: &Replica) -> pb::Replica {
    replica_to_wire(r)
}

pub fn replica_of(r: &pb::Replica) -> Replica {
    replica_from_wire(r)
}

/// A stored counter: its slots as a `Deltas` message of one counter (the id
/// is the storage key, so the message's is empty).
pub fn encode_counter(counter: &PnCounter) -> Vec<u8> {
    let mut b = DeltasBuilder::default();
    for (r, s) in counter.slots() {
        b.slot(&[], r, s);
    }
    b.build().encode_to_vec()
}

pub fn decode_counter(bytes: &[u8]) -> Result<PnCounter, Error> {
    let deltas =
        pb::Deltas::decode(bytes).map_err(|e| Error::Corrupt(format!("stored counter: {e}")))?;
    let mut counter = PnCounter::default();
    for (_, r, s) in raw_slots(&deltas) {
        counter.merge_slot(&r, &s);
    }
    Ok(counter)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crdt::{Metric, Scope, Window};

    /// A push of changed key counters (64-hex-digit entities, the largest
    /// ids in practice) costs about a hundred bytes per counter; the
    /// performance target is well under 1 KiB.
    #[test]
    fn a_changed_counter_costs_about_a_hundred_bytes_on_the_wire() {
        let me = Replica::new("us-east", 3, 0x1234_5678_9abc_def0);
        let ids: Vec<CounterId> = (0..1000u64)
            .map(|i| CounterId {
                scope: Scope::Key,
                entity: format!("{:064x}", i * 7919).into(),
                metric: Metric::Spend,
                window: Window::Budget("30d".parse().unwrap_or(crate::crdt::PeriodSpec::Months(1))),
                period: 680,
            })
            .collect();
        let slot = Slot {
            p: 123_456_789_000,
            n: 1_000_000,
            version: 1_000_000,
        };
        let deltas = deltas(ids.iter().map(|id| (id, &me, &slot)));
        let per_counter = deltas.encode_to_vec().len() / ids.len();
        println!("{per_counter} bytes per changed counter");
        assert!(per_counter < 160, "{per_counter} bytes per counter");
        let back = slots(&deltas);
        assert_eq!(back.len(), ids.len());
        assert!(back.iter().all(|(_, r, s)| *r == me && *s == slot));
    }
}
