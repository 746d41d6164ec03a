//! The two halves of `strict` limits together: the holders' escrow rights
//! (`meridian_replication::crdt::escrow`) against the issuing ledger
//! (`metadata::ledger`), under any interleaving of asks, lost or reordered
//! replies, spends, refunds and give-backs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use meridian_consensus::metadata::{GrantReply, GrantRequest, Holder, Ledger};
use meridian_replication::crdt::Slot;
use meridian_replication::crdt::escrow::{available, grant_delta};
use proptest::prelude::*;

const N: usize = 3;

#[derive(Clone, Debug)]
enum Op {
    /// A holder asks the ledger for `need`; the reply is in flight.
    Ask(usize, u64),
    /// One in-flight reply reaches its holder (any order, any delay).
    Deliver(usize, usize),
    /// One in-flight reply is lost.
    Lose(usize, usize),
    /// A holder consumes `amount` if its rights allow it.
    Spend(usize, u64),
    /// A holder settles: part of what it consumed is refunded.
    Refund(usize, u64),
    /// A holder gives back all it holds; the ledger hears of it with the
    /// holder's next request.
    GiveBack(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..N, 1u64..30).prop_map(|(h, x)| Op::Ask(h, x)),
        (0..N, 0usize..4).prop_map(|(h, k)| Op::Deliver(h, k)),
        (0..N, 0usize..4).prop_map(|(h, k)| Op::Lose(h, k)),
        (0..N, 1u64..30).prop_map(|(h, x)| Op::Spend(h, x)),
        (0..N, 1u64..30).prop_map(|(h, x)| Op::Refund(h, x)),
        (0..N).prop_map(Op::GiveBack),
    ]
}

fn holder(i: usize) -> Holder {
    Holder {
        region: ["us-east", "eu-west", "ap-south"][i % 3].into(),
        node: i as u64,
        incarnation: 1,
    }
}

/// Runs `ops` against a ledger with `limit`, holders computing what they
/// may spend with `available`; the first instant the escrow invariant
/// breaks, says how.
fn check(limit: u64, ops: &[Op], available: fn(&Slot, &Slot) -> u64) -> Result<(), String> {
    let mut ledger = Ledger::default();
    let mut rights = [Slot::default(); N];
    let mut consumed = [Slot::default(); N];
    let mut in_flight: [Vec<GrantReply>; N] = Default::default();
    for op in ops {
        match *op {
            Op::Ask(h, need) => in_flight[h].push(ledger.grant(&GrantRequest {
                counter: b"c".to_vec(),
                holder: holder(h),
                need,
                returned: rights[h].n,
                limit,
                limit_version: 1,
                ends_at_ms: None,
            })),
            Op::Deliver(h, k) if k < in_flight[h].len() => {
                let reply = in_flight[h].remove(k);
                rights[h].p += grant_delta(&rights[h], reply.issued);
            }
            Op::Lose(h, k) if k < in_flight[h].len() => {
                in_flight[h].remove(k);
            }
            Op::Spend(h, x) if available(&rights[h], &consumed[h]) >= x => {
                consumed[h].p += x;
            }
            Op::Refund(h, x) => consumed[h].n += x.min(consumed[h].net()),
            Op::GiveBack(h) => rights[h].n += available(&rights[h], &consumed[h]),
            _ => {}
        }
        let spent: u64 = consumed.iter().map(Slot::net).sum();
        if spent > limit {
            return Err(format!("consumed {spent} > limit {limit} after {op:?}"));
        }
        if ledger.outstanding() > limit {
            return Err(format!("the ledger issued beyond {limit}"));
        }
    }
    Ok(())
}

proptest! {
    /// The escrow invariant: whatever the interleaving — replies lost,
    /// repeated or reordered, rights given back and granted again —
    /// consumption never exceeds the limit.
    #[test]
    fn rights_never_exceed_the_headroom(
        limit in 0u64..100,
        ops in proptest::collection::vec(op(), 1..300),
    ) {
        prop_assert_eq!(check(limit, &ops, available), Ok(()));
    }
}

/// The checker is not vacuous: a holder that forgets what it gave back
/// spends rights the ledger has granted to another.
#[test]
fn a_holder_that_forgets_its_returns_is_caught() {
    fn forgets_returns(rights: &Slot, consumed: &Slot) -> u64 {
        rights.p.saturating_sub(consumed.net())
    }
    let ops = [
        Op::Ask(0, 10),
        Op::Deliver(0, 0),
        Op::GiveBack(0),
        Op::Ask(0, 0),
        Op::Ask(1, 10),
        Op::Deliver(1, 0),
        Op::Spend(1, 10),
        Op::Spend(0, 10),
    ];
    assert_eq!(check(10, &ops, available), Ok(()));
    let caught = check(10, &ops, forgets_returns).unwrap_err();
    assert!(caught.contains("consumed 20 > limit 10"), "{caught}");
}
