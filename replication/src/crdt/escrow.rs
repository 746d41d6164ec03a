//! Escrow rights for `strict` limits (a bounded counter).
//!
//! The headroom of a limit is split into rights held by replicas. A replica may
//! consume only rights it holds, so the limit holds at every instant without
//! any coordination on the request path:
//!
//! ```text
//! available(i) = issued(i) + Σ_j T[j→i] − Σ_j T[i→j] − consumed(i)  ≥ 0
//! ```
//!
//! `issued(i)` is what the period's issuer granted `i` (only the issuer writes
//! it, and it only grows); `T[i→j]` is what `i` has given `j` (only `i` writes
//! it, and it only grows); `consumed(i)` is `i`'s own slot of the counter the
//! rights are for. Every term a replica subtracts is written by that replica
//! itself, so its own view of them is always current; terms it adds may be
//! stale, which only makes it more cautious. Hence
//! `Σ consumed ≤ Σ issued ≤ limit` whatever the delivery order or delay. Rights
//! held by a replica that disappears are lost: safe, but that headroom is gone
//! for the period.

use std::collections::BTreeMap;

use super::counter::Replica;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Escrow {
    issued: BTreeMap<Replica, u64>,
    transfers: BTreeMap<(Replica, Replica), u64>,
}

/// A replica tried to give or spend rights it does not hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("needs {needed} rights but holds {available}")]
pub struct Insufficient {
    pub needed: u64,
    pub available: u64,
}

impl Escrow {
    /// What `me` may still consume, given what it has consumed so far.
    pub fn available(&self, me: &Replica, consumed: u64) -> u64 {
        let received = self
            .transfers
            .iter()
            .filter(|((_, to), _)| to == me)
            .fold(0u64, |sum, (_, v)| sum.saturating_add(*v));
        let given = self
            .transfers
            .iter()
            .filter(|((from, _), _)| from == me)
            .fold(0u64, |sum, (_, v)| sum.saturating_add(*v));
        self.issued(me)
            .saturating_add(received)
            .saturating_sub(given)
            .saturating_sub(consumed)
    }

    pub fn issued(&self, replica: &Replica) -> u64 {
        self.issued.get(replica).copied().unwrap_or(0)
    }

    pub fn total_issued(&self) -> u64 {
        self.issued
            .values()
            .fold(0u64, |sum, v| sum.saturating_add(*v))
    }

    /// The issuer's grant: `to` now holds `total` issued rights in all. Only
    /// the period's single issuer calls this, and never with a lower total.
    pub fn set_issued(&mut self, to: &Replica, total: u64) {
        let v = self.issued.entry(to.clone()).or_default();
        *v = (*v).max(total);
    }

    /// `me` gives `amount` of its rights to `to`.
    pub fn transfer(
        &mut self,
        me: &Replica,
        to: &Replica,
        amount: u64,
        consumed: u64,
    ) -> Result<(), Insufficient> {
        let available = self.available(me, consumed);
        if amount > available {
            return Err(Insufficient {
                needed: amount,
                available,
            });
        }
        if me != to {
            let t = self.transfers.entry((me.clone(), to.clone())).or_default();
            *t = t.saturating_add(amount);
        }
        Ok(())
    }

    pub fn transfers(&self) -> impl Iterator<Item = (&(Replica, Replica), &u64)> {
        self.transfers.iter()
    }

    pub fn grants(&self) -> impl Iterator<Item = (&Replica, &u64)> {
        self.issued.iter()
    }

    /// Pointwise maximum of every grant and transfer; whether anything changed.
    pub fn merge(&mut self, other: &Escrow) -> bool {
        let mut changed = false;
        for (r, v) in &other.issued {
            changed |= raise(self.issued.entry(r.clone()).or_default(), *v);
        }
        for (pair, v) in &other.transfers {
            changed |= raise(self.transfers.entry(pair.clone()).or_default(), *v);
        }
        changed
    }
}

fn raise(slot: &mut u64, to: u64) -> bool {
    let changed = to > *slot;
    *slot = (*slot).max(to);
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn replica(i: usize) -> Replica {
        Replica::new(["us-east", "eu-west", "ap-south"][i % 3], i as u64, 1)
    }

    #[derive(Clone, Debug)]
    enum Op {
        /// The issuer grants up to `amount` more to a replica, within the limit.
        Issue(usize, u64),
        /// A replica consumes `amount` if its own view allows it.
        Spend(usize, u64),
        /// A replica gives `amount` to another if its own view allows it.
        Give(usize, usize, u64),
        /// One replica's view reaches another (any order, any delay).
        Deliver(usize, usize),
    }

    fn op(n: usize) -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..n, 1u64..40).prop_map(|(r, a)| Op::Issue(r, a)),
            (0..n, 1u64..30).prop_map(|(r, a)| Op::Spend(r, a)),
            (0..n, 0..n, 1u64..30).prop_map(|(a, b, x)| Op::Give(a, b, x)),
            (0..n, 0..n).prop_map(|(a, b)| Op::Deliver(a, b)),
        ]
    }

    proptest! {
        /// The escrow invariant: whatever the interleaving, consumption never
        /// exceeds the limit, and rights are conserved (what can still be
        /// spent plus what was spent equals what was issued).
        #[test]
        fn rights_never_exceed_the_headroom(
            limit in 0u64..200,
            ops in proptest::collection::vec(op(4), 1..200),
        ) {
            const N: usize = 4;
            let mut views: Vec<Escrow> = vec![Escrow::default(); N];
            let mut consumed = [0u64; N];
            let mut issuer = Escrow::default();
            for op in ops {
                match op {
                    Op::Issue(r, amount) => {
                        let grant = amount.min(limit - issuer.total_issued());
                        let total = issuer.issued(&replica(r)) + grant;
                        issuer.set_issued(&replica(r), total);
                        views[r].merge(&issuer);
                    }
                    Op::Spend(r, amount) => {
                        if views[r].available(&replica(r), consumed[r]) >= amount {
                            consumed[r] += amount;
                        }
                    }
                    Op::Give(a, b, amount) => {
                        let _ = views[a].transfer(&replica(a), &replica(b), amount, consumed[a]);
                    }
                    Op::Deliver(a, b) => {
                        let from = views[a].clone();
                        views[b].merge(&from);
                    }
                }
                let spent: u64 = consumed.iter().sum();
                prop_assert!(spent <= limit, "consumed {spent} > limit {limit}");
            }
            let mut all = issuer.clone();
            for v in &views {
                all.merge(v);
            }
            let holdable: u64 = (0..N).map(|r| all.available(&replica(r), consumed[r])).sum();
            prop_assert_eq!(holdable + consumed.iter().sum::<u64>(), all.total_issued());
            prop_assert!(all.total_issued() <= limit);
        }

        #[test]
        fn merge_laws(
            a in proptest::collection::vec((0usize..3, 0usize..3, 0u64..50), 0..6),
            b in proptest::collection::vec((0usize..3, 0usize..3, 0u64..50), 0..6),
            c in proptest::collection::vec((0usize..3, 0usize..3, 0u64..50), 0..6),
        ) {
            let build = |entries: &[(usize, usize, u64)]| {
                let mut e = Escrow::default();
                for &(x, y, v) in entries {
                    e.set_issued(&replica(x), v);
                    e.merge(&Escrow { issued: BTreeMap::new(), transfers: [((replica(x), replica(y)), v)].into() });
                }
                e
            };
            let (a, b, c) = (build(&a), build(&b), build(&c));
            let join = |x: &Escrow, y: &Escrow| { let mut z = x.clone(); z.merge(y); z };
            prop_assert_eq!(join(&a, &b), join(&b, &a));
            prop_assert_eq!(join(&join(&a, &b), &c), join(&a, &join(&b, &c)));
            prop_assert_eq!(join(&a, &a), a.clone());
        }
    }

    #[test]
    fn a_replica_cannot_give_what_it_does_not_hold() {
        let (a, b) = (replica(0), replica(1));
        let mut e = Escrow::default();
        e.set_issued(&a, 10);
        assert_eq!(
            e.transfer(&a, &b, 8, 3),
            Err(Insufficient {
                needed: 8,
                available: 7
            })
        );
        e.transfer(&a, &b, 7, 3).unwrap();
        assert_eq!((e.available(&a, 3), e.available(&b, 0)), (0, 7));
    }
}
