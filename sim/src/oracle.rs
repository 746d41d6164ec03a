//! What the clients observed: the acknowledged results that the invariants
//! hold the cluster to.

use std::collections::BTreeMap;
use std::time::Duration;

/// Per key, the fate of the LLM calls made with it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Calls {
    /// Answered 200: the client was told it cost this much (picodollars).
    pub served: u64,
    pub acknowledged_pico: u64,
    /// Answered 200 without a cost it could read: what it was charged is
    /// unknown, which fails the spend check (never counted as $0).
    pub uncosted: u64,
    /// Answered with an error status: nothing may be charged.
    pub refused: u64,
    /// Of those, refused because the key's budget was spent
    /// (`budget_exceeded`): the calls a gateway without enforcement would
    /// have served.
    pub over_budget: u64,
    /// Sent, never answered: charged at most its reservation.
    pub in_doubt: u64,
    /// Could not connect: never reached a node.
    pub unsent: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Oracle {
    pub calls: BTreeMap<String, Calls>,
    /// Keys whose creation was acknowledged, and when.
    pub created: BTreeMap<String, Duration>,
    /// When the block of the revoked key was acknowledged.
    pub blocked_at: Option<Duration>,
    /// Per node, when it first refused the revoked key after the heal (None:
    /// it never did within the bound).
    pub refused_revoked: BTreeMap<String, Option<Duration>>,
    /// Every observation in order, for replay checks.
    pub trace: Vec<String>,
}

impl Oracle {
    pub fn note(&mut self, at: Duration, what: impl AsRef<str>) {
        self.trace
            .push(format!("{:>7} {}", at.as_millis(), what.as_ref()));
    }
}

/// Dollars as the cost header states them → picodollars.
pub fn picodollars(dollars: &str) -> Option<u64> {
    let value: f64 = dollars.trim().parse().ok()?;
    (value.is_finite() && value >= 0.0).then(|| meridian_node::pricing::dollars_to_pico(value))
}
