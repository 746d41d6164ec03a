//! Escrow rights for `strict` limits (a bounded counter): the holder's side.
//!
//! A `strict` limit's headroom is handed out as rights by a single issuer, the
//! ledger in the Raft log of the entity's home region
//! (`meridian_consensus::metadata::ledger`; the two together are
//! property-tested in `consensus/tests/escrow_ledger.rs`). A node consumes only rights it
//! holds, so the limit holds at every instant with no coordination on the
//! request path. What a node holds is its own slot of a companion counter
//! ([`Metric::rights`](super::Metric::rights)): `p` is everything the ledger
//! issued to it (a total the ledger reports, so a lost reply costs nothing),
//! `n` everything it gave back. Then
//!
//! ```text
//! available(i) = issued(i) − returned(i) − consumed(i)  ≥ 0
//! ```
//!
//! where `consumed(i)` is `i`'s own slot of the limited counter. Every term is
//! written by `i` itself, so `i`'s view of them is exact, and
//! `Σ consumed ≤ Σ (issued − returned) ≤ limit` whatever the delivery order or
//! delay. Rights move between nodes through the issuer: one node gives back
//! (durably, before telling the ledger), the ledger grants them again.
//! Rights held by a node that disappears are lost: safe, but that headroom is
//! gone for the period.

use super::counter::Slot;

/// What a holder may still consume: `rights` is its own slot of the rights
/// counter, `consumed` its own slot of the limited counter.
pub fn available(rights: &Slot, consumed: &Slot) -> u64 {
    rights.net().saturating_sub(consumed.net())
}

/// What to add to the holder's `p` to record that the ledger has issued it
/// `issued` in all (0 when that is known already: replies may repeat or
/// arrive out of order).
pub fn grant_delta(rights: &Slot, issued: u64) -> u64 {
    issued.saturating_sub(rights.p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_and_stale_replies_add_nothing() {
        let mut rights = Slot::default();
        rights.p += grant_delta(&rights, 5);
        assert_eq!(grant_delta(&rights, 5), 0);
        assert_eq!(grant_delta(&rights, 3), 0);
        assert_eq!(grant_delta(&rights, 9), 4);
        let consumed = Slot {
            p: 7,
            n: 2,
            version: 0,
        };
        assert_eq!(available(&rights, &consumed), 0);
    }
}
