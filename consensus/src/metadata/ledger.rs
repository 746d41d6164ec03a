//! The rights ledger of `strict` limits: the single issuer of a limit's
//! rights, kept in the Raft log of the entity's home region.
//!
//! A `strict` limit is never exceeded because nodes spend only rights they
//! hold (`meridian_replication::crdt::escrow`), and rights come from here. One
//! ledger per counter and period (the counter is opaque bytes to this crate):
//! the limit, and per holder (a node's replica) the rights issued to it and
//! the rights it gave back. Applied through Raft, the ledger is linearizable:
//! whichever node leads the region, two grants never hand out the same
//! headroom, so `Σ (issued − returned) ≤ limit` at every log index.
//!
//! Grants and returns carry totals, not increments, so a lost or repeated
//! reply costs nothing: the holder learns its total on its next request, and a
//! return reported twice counts once.
//!
//! A changed limit takes effect for rights not yet granted: the newest limit
//! (by the entity's `updated_at`) wins, so a node with stale metadata cannot
//! bring an old one back; rights already out stay out.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A node's replica: what holds rights.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Holder {
    pub region: String,
    pub node: u64,
    pub incarnation: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holding {
    pub issued: u64,
    pub returned: u64,
}

impl Holding {
    fn outstanding(&self) -> u64 {
        self.issued.saturating_sub(self.returned)
    }
}

/// A ledger for one counter and period.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    pub limit: u64,
    /// Which version of the limit `limit` is (the entity's `updated_at`).
    pub limit_version: u64,
    /// When the period ends (Unix ms); `None`: never. The ledger is dropped
    /// [`LEDGER_GRACE_MS`] after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ends_at_ms: Option<u64>,
    /// In holder order (JSON maps cannot have struct keys).
    #[serde(default)]
    pub holdings: Vec<(Holder, Holding)>,
}

/// How long a ledger outlives its period: nodes with a slow clock may still
/// ask for it, and then find it spent rather than new.
pub const LEDGER_GRACE_MS: u64 = 3_600_000;

/// Whether a period ending at `ends_at_ms` is over by more than the grace at
/// `now_ms`: its ledger may be dropped, and no new one is made for it.
pub fn long_over(ends_at_ms: Option<u64>, now_ms: u64) -> bool {
    ends_at_ms.is_some_and(|end| end.saturating_add(LEDGER_GRACE_MS) < now_ms)
}

/// A grant is at least this fraction of the limit (when the pool allows), so
/// a busy limit takes a bounded number of grants per period.
const MIN_GRANT_DIVISOR: u64 = 64;

/// A grant takes at most this fraction of what is left, so other nodes still
/// find rights when they ask.
const POOL_SHARE_DIVISOR: u64 = 4;

/// One holder's request: rights it needs now (0: only report), the totals
/// it gave back, and the limit as its metadata knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantRequest {
    #[serde(with = "super::command::base64_bytes")]
    pub counter: Vec<u8>,
    pub holder: Holder,
    pub need: u64,
    /// Everything `holder` has given back of this counter, in all.
    pub returned: u64,
    pub limit: u64,
    pub limit_version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ends_at_ms: Option<u64>,
}

/// The answer to a [`GrantRequest`] (the one record of its outcome).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantReply {
    /// Everything issued to the holder so far, this grant included.
    pub issued: u64,
    /// What this grant added (0 when the pool could not cover `need`).
    pub granted: u64,
    /// Rights not issued to anyone.
    pub pool: u64,
    pub limit: u64,
    /// Rights issued and not given back, per region (consumed ones included).
    pub outstanding_by_region: BTreeMap<String, u64>,
}

impl Ledger {
    pub fn outstanding(&self) -> u64 {
        self.holdings
            .iter()
            .fold(0u64, |sum, (_, h)| sum.saturating_add(h.outstanding()))
    }

    pub fn pool(&self) -> u64 {
        self.limit.saturating_sub(self.outstanding())
    }

    fn holding(&mut self, holder: &Holder) -> &mut Holding {
        let at = match self.holdings.binary_search_by(|(h, _)| h.cmp(holder)) {
            Ok(at) => at,
            Err(at) => {
                self.holdings
                    .insert(at, (holder.clone(), Holding::default()));
                at
            }
        };
        &mut self.holdings[at].1
    }

    /// Applies one request. Deterministic.
    pub fn grant(&mut self, request: &GrantRequest) -> GrantReply {
        if *self == Ledger::default()
            || request.limit_version > self.limit_version
            || (request.limit_version == self.limit_version && request.limit < self.limit)
        {
            self.limit = request.limit;
            self.limit_version = request.limit_version;
        }
        if self.ends_at_ms.is_none() {
            self.ends_at_ms = request.ends_at_ms;
        }
        let holding = self.holding(&request.holder);
        // A holder cannot give back more than it was given.
        holding.returned = holding.returned.max(request.returned.min(holding.issued));
        let pool = self.pool();
        let granted = if request.need > 0 && request.need <= pool {
            request
                .need
                .max(pool / POOL_SHARE_DIVISOR)
                .max(self.limit / MIN_GRANT_DIVISOR)
                .min(pool)
        } else {
            0
        };
        let holding = self.holding(&request.holder);
        holding.issued = holding.issued.saturating_add(granted);
        let issued = holding.issued;
        let mut outstanding_by_region = BTreeMap::new();
        for (holder, h) in &self.holdings {
            let o: &mut u64 = outstanding_by_region
                .entry(holder.region.clone())
                .or_default();
            *o = o.saturating_add(h.outstanding());
        }
        GrantReply {
            issued,
            granted,
            pool: self.pool(),
            limit: self.limit,
            outstanding_by_region,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(region: &str, node: u64) -> Holder {
        Holder {
            region: region.into(),
            node,
            incarnation: 1,
        }
    }

    fn request(h: &Holder, need: u64, returned: u64, limit: u64, version: u64) -> GrantRequest {
        GrantRequest {
            counter: b"c".to_vec(),
            holder: h.clone(),
            need,
            returned,
            limit,
            limit_version: version,
            ends_at_ms: Some(60_000),
        }
    }

    #[test]
    fn grants_never_exceed_the_limit_and_shrink_with_the_pool() {
        let (a, b) = (holder("us-east", 1), holder("eu-west", 1));
        let mut ledger = Ledger::default();
        let first = ledger.grant(&request(&a, 1, 0, 20, 1));
        assert_eq!((first.granted, first.pool), (5, 15));
        let mut total = first.granted;
        for i in 0..40 {
            let who = if i % 2 == 0 { &b } else { &a };
            total += ledger.grant(&request(who, 1, 0, 20, 1)).granted;
            assert!(total <= 20);
        }
        assert_eq!(total, 20, "the pool is handed out to the last unit");
        let empty = ledger.grant(&request(&a, 1, 0, 20, 1));
        assert_eq!((empty.granted, empty.pool), (0, 0));
        assert_eq!(empty.outstanding_by_region.values().sum::<u64>(), 20);
    }

    #[test]
    fn a_need_larger_than_the_pool_takes_nothing() {
        let a = holder("us-east", 1);
        let mut ledger = Ledger::default();
        assert_eq!(ledger.grant(&request(&a, 21, 0, 20, 1)).granted, 0);
        assert_eq!(ledger.pool(), 20);
    }

    #[test]
    fn returns_count_once_and_only_up_to_what_was_issued() {
        let (a, b) = (holder("us-east", 1), holder("eu-west", 1));
        let mut ledger = Ledger::default();
        let got = ledger.grant(&request(&a, 20, 0, 20, 1));
        assert_eq!(got.issued, 20);
        assert_eq!(ledger.grant(&request(&b, 1, 0, 20, 1)).granted, 0);
        // `a` gives back 8; the report is repeated and then overstated.
        ledger.grant(&request(&a, 0, 8, 20, 1));
        ledger.grant(&request(&a, 0, 8, 20, 1));
        assert_eq!(ledger.pool(), 8);
        ledger.grant(&request(&a, 0, 500, 20, 1));
        assert_eq!(ledger.pool(), 20, "at most what was issued comes back");
    }

    #[test]
    fn the_newest_limit_wins_and_applies_to_rights_not_yet_granted() {
        let (a, b) = (holder("us-east", 1), holder("eu-west", 1));
        let mut ledger = Ledger::default();
        ledger.grant(&request(&a, 10, 0, 40, 1));
        assert_eq!(ledger.outstanding(), 10);
        // Lowered to 8 at version 2: nothing more is granted...
        assert_eq!(ledger.grant(&request(&b, 1, 0, 8, 2)).granted, 0);
        // ...and a node with the old limit cannot raise it again.
        assert_eq!(ledger.grant(&request(&b, 1, 0, 40, 1)).granted, 0);
        assert_eq!(ledger.limit, 8);
        // Raised at version 3: granted again.
        assert!(ledger.grant(&request(&b, 1, 0, 30, 3)).granted >= 1);
    }

    #[test]
    fn expiry_follows_the_period_end() {
        assert!(!long_over(Some(60_000), 60_000 + LEDGER_GRACE_MS));
        assert!(long_over(Some(60_000), 60_001 + LEDGER_GRACE_MS));
        assert!(!long_over(None, u64::MAX));
    }
}
