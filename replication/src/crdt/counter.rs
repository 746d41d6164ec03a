//! A PN-counter whose slots are owned by replicas: a replica only ever raises
//! its own slot's `p` (increments) and `n` (refunds); merging takes the
//! pointwise maximum, so applying a delta twice, late or out of order changes
//! nothing.

use std::collections::BTreeMap;
use std::sync::Arc;

/// One writer of counters: a node in a region, in one life of its data
/// directory. A node whose data was wiped comes back with a new incarnation and
/// so a fresh slot: it can never write a slot lower than what peers already
/// hold for it (they would keep the higher value and its new counts would
/// vanish).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Replica {
    pub region: Arc<str>,
    pub node: u64,
    pub incarnation: u64,
}

impl Replica {
    pub fn new(region: impl Into<Arc<str>>, node: u64, incarnation: u64) -> Self {
        Self {
            region: region.into(),
            node,
            incarnation,
        }
    }
}

/// One replica's contribution. All three fields only grow. `version` is the
/// owner's change sequence number at its last change of this slot: it lets
/// anti-entropy ship exactly the slots a peer has not seen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Slot {
    pub p: u64,
    pub n: u64,
    pub version: u64,
}

impl Slot {
    /// The slot's net contribution (`p - n`; a slot never refunds more than
    /// it counted, but a corrupt peer must not make the sum wrap).
    pub fn net(&self) -> u64 {
        self.p.saturating_sub(self.n)
    }

    /// Pointwise maximum; whether `self` changed.
    fn join(&mut self, other: &Slot) -> bool {
        let before = *self;
        self.p = self.p.max(other.p);
        self.n = self.n.max(other.n);
        self.version = self.version.max(other.version);
        *self != before
    }
}

/// Counts contributed by several replicas. The value is `Σp − Σn`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PnCounter {
    slots: BTreeMap<Replica, Slot>,
}

impl PnCounter {
    pub fn value(&self) -> u64 {
        self.slots
            .values()
            .fold(0u64, |sum, s| sum.saturating_add(s.net()))
    }

    /// The value contributed by one region's replicas.
    pub fn region_values(&self) -> BTreeMap<Arc<str>, u64> {
        let mut out = BTreeMap::<Arc<str>, u64>::new();
        for (r, s) in &self.slots {
            let v = out.entry(r.region.clone()).or_default();
            *v = v.saturating_add(s.net());
        }
        out
    }

    pub fn slot(&self, replica: &Replica) -> Slot {
        self.slots.get(replica).copied().unwrap_or_default()
    }

    pub fn slots(&self) -> impl Iterator<Item = (&Replica, &Slot)> {
        self.slots.iter()
    }

    /// The owner's change: `add` more counted, `refund` more given back, as
    /// the owner's change number `version`. Only `me` may call this for `me`.
    pub fn apply_own(&mut self, me: &Replica, add: u64, refund: u64, version: u64) -> Slot {
        let slot = self.slots.entry(me.clone()).or_default();
        slot.p = slot.p.saturating_add(add);
        slot.n = slot.n.saturating_add(refund);
        slot.version = slot.version.max(version);
        *slot
    }

    /// Merges one slot as received from a peer; whether anything changed.
    pub fn merge_slot(&mut self, replica: &Replica, slot: &Slot) -> bool {
        match self.slots.get_mut(replica) {
            Some(mine) if meridian_bugs::on(meridian_bugs::Bug::MergeAdds) => {
                mine.p += slot.p;
                mine.n += slot.n;
                slot.p + slot.n > 0
            }
            Some(mine) => mine.join(slot),
            None => {
                self.slots.insert(replica.clone(), *slot);
                true
            }
        }
    }

    /// Drops `replica`'s slot (only the simulator's injected bugs do this).
    pub fn forget(&mut self, replica: &Replica) {
        self.slots.remove(replica);
    }

    /// Merges a whole counter; whether anything changed.
    pub fn merge(&mut self, other: &PnCounter) -> bool {
        let mut changed = false;
        for (r, s) in &other.slots {
            changed |= self.merge_slot(r, s);
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn replica(i: u8) -> Replica {
        Replica::new(
            if i.is_multiple_of(2) {
                "us-east"
            } else {
                "eu-west"
            },
            u64::from(i),
            1,
        )
    }

    /// A counter built from arbitrary (replica, p, n, version) slots.
    fn counter() -> impl Strategy<Value = PnCounter> {
        proptest::collection::vec((0u8..4, 0u64..1000, 0u64..1000, 0u64..50), 0..8).prop_map(
            |slots| {
                let mut c = PnCounter::default();
                for (r, p, n, v) in slots {
                    c.merge_slot(&replica(r), &Slot { p, n, version: v });
                }
                c
            },
        )
    }

    fn merged(a: &PnCounter, b: &PnCounter) -> PnCounter {
        let mut out = a.clone();
        out.merge(b);
        out
    }

    proptest! {
        #[test]
        fn merge_is_commutative(a in counter(), b in counter()) {
            prop_assert_eq!(merged(&a, &b), merged(&b, &a));
        }

        #[test]
        fn merge_is_associative(a in counter(), b in counter(), c in counter()) {
            prop_assert_eq!(merged(&merged(&a, &b), &c), merged(&a, &merged(&b, &c)));
        }

        #[test]
        fn merge_is_idempotent(a in counter(), b in counter()) {
            let once = merged(&a, &b);
            prop_assert_eq!(merged(&once, &b), once.clone());
            prop_assert_eq!(merged(&a, &a), a);
        }

        /// Replicas that each count on their own and exchange deltas in any
        /// order, with duplicates, all reach the exact total.
        #[test]
        fn deltas_in_any_order_reach_the_total(
            ops in proptest::collection::vec((0u8..4, 1u64..100, 0u64..100), 1..40),
            order in proptest::collection::vec(any::<prop::sample::Index>(), 0..80),
        ) {
            let mut owners: Vec<PnCounter> = vec![PnCounter::default(); 4];
            let mut deltas = Vec::new();
            let mut expected = 0u64;
            for (version, (r, add, refund)) in ops.into_iter().enumerate() {
                let refund = refund.min(add);
                expected += add - refund;
                let me = replica(r);
                let slot = owners[usize::from(r)].apply_own(&me, add, refund, version as u64 + 1);
                deltas.push((me, slot));
            }
            let mut observer = PnCounter::default();
            for pick in order {
                let (r, s) = pick.get(&deltas);
                observer.merge_slot(r, s);
            }
            // Then every delta once more: late and duplicate delivery is harmless.
            for (r, s) in &deltas {
                observer.merge_slot(r, s);
            }
            prop_assert_eq!(observer.value(), expected);
        }
    }

    #[test]
    fn regions_are_reported_apart() {
        let mut c = PnCounter::default();
        c.apply_own(&replica(0), 10, 3, 1);
        c.apply_own(&replica(1), 5, 0, 1);
        c.apply_own(&replica(2), 1, 0, 1);
        assert_eq!(c.value(), 13);
        let regions = c.region_values();
        assert_eq!(regions.get("us-east"), Some(&8));
        assert_eq!(regions.get("eu-west"), Some(&5));
    }

    #[test]
    fn a_stale_delta_does_not_lower_a_slot() {
        let me = replica(0);
        let mut c = PnCounter::default();
        let old = c.apply_own(&me, 5, 0, 1);
        c.apply_own(&me, 5, 2, 2);
        assert!(!c.merge_slot(&me, &old));
        assert_eq!(c.value(), 8);
        assert_eq!(c.slot(&me).version, 2);
    }
}
