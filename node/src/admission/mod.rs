//! Admission: budgets and rate limits, against this node's view of the global
//! counters — memory only, no network or disk wait (but see `strict` below).
//!
//! Sits after routing (the chosen deployment prices the reservation) and
//! before the provider call. A request reserves its worst case on every
//! counter that limits it — one request, its prompt estimate plus `max_tokens`
//! tokens, their price — and settles with the real usage when the answer or
//! stream ends, or when the client goes away. Checks and reservation happen
//! under one lock, so two requests on one node never both take the last unit.
//!
//! A limit admits while `view + reservation ≤ limit`, `view` being this
//! node's merged value. Other nodes' admissions reach this node one gossip
//! interval plus one network delay later: that is the overshoot bound of
//! `available` mode (see the README's guarantees).
//!
//! A `strict` limit admits while this node holds enough rights to it
//! (`crate::rights`), granted by the entity's home region:
//! never more than the limit in all. Spending held rights is as local as the
//! `available` check; only a node that runs out waits, bounded, for a grant.
//!
//! Modules: [`demand`] (what a request asks), [`subjects`] (whom it is
//! charged to, with their limits), `decide` (the check and reservation under
//! one lock), [`reservation`] (what is held until settlement), `strict`
//! (asking for rights) and [`refusal`] (what a refusal says).

mod decide;
pub mod demand;
pub mod refusal;
pub mod reservation;
mod strict;
pub mod subjects;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use meridian_consensus::Region;
use meridian_consensus::metadata::Enforcement;
use meridian_replication::Counters;

use self::decide::{Step, try_admit};
pub use self::demand::{DEFAULT_OUTPUT_RESERVE, Demand, STRICT_OUTPUT_CAP};
pub use self::refusal::{Exceeded, Headroom, LimitKind};
pub use self::reservation::{Reservation, Who};
pub use self::subjects::{Entity, budget_now, budget_window, spend_report};
use crate::auth::Principal;
use crate::config::Deployment;
use crate::error::{Error, Result};
use crate::rights::Rights;

/// What admission works with: this node's counters, rights and metadata.
pub struct Limiter<'a> {
    pub counters: &'a Arc<Counters>,
    pub rights: &'a Rights,
    pub metadata: &'a Region,
    /// Enforcement where an entity names none (`meridian.enforcement`).
    pub default: Enforcement,
    /// How long a request may wait for `strict` rights.
    pub wait: Duration,
}

/// Rounds of "ask for rights, try again" before a request is refused: other
/// requests on this node may take what one round brought.
const STRICT_ROUNDS: usize = 3;

/// Admits or refuses a request for `deployment`, reserving on admission.
/// Proxy admins and the master key are not limited (their spend is not
/// attributed to any entity either).
///
/// `available` limits are checked against this node's view with no wait.
/// `strict` limits spend rights this node holds; when it holds too few, the
/// request waits (at most `wait`) for the home region's ledger to grant
/// more, and is refused — saying where the headroom is — when it cannot.
pub async fn admit(
    limiter: &Limiter<'_>,
    principal: &Principal,
    demand: &Demand,
    deployment: &Deployment,
    now_ms: u64,
) -> Result<Reservation> {
    for round in 1..=STRICT_ROUNDS {
        let step = limiter.metadata.read(|state| {
            try_admit(
                limiter.counters,
                state,
                principal,
                demand,
                deployment,
                now_ms,
                limiter.default,
            )
        })?;
        let shorts = match step {
            Step::Admitted {
                reservation,
                strict,
            } => {
                if let Some((ticket, asks)) = strict {
                    for ask in &asks {
                        limiter.rights.touch(ask);
                    }
                    // Spent rights must survive a crash before the provider
                    // is called, or a restarted node could spend them again.
                    if limiter.counters.durable(ticket).await.is_err() {
                        reservation.release().await;
                        return Err(Error::StorageFailing);
                    }
                }
                return Ok(*reservation);
            }
            Step::Short(shorts) => shorts,
        };
        let asking =
            futures_util::future::join_all(shorts.iter().map(|s| limiter.rights.obtain(&s.ask)));
        let Ok(answers) = tokio::time::timeout(limiter.wait, asking).await else {
            let s = &shorts[0];
            return Err(s.refuse(
                limiter.rights,
                format!(
                    "It is enforced strictly, and region {} (which issues its rights) did not grant more within {} ms.",
                    s.ask.home,
                    limiter.wait.as_millis()
                ),
            ));
        };
        for (s, answer) in shorts.iter().zip(answers) {
            match answer {
                Ok(None) => {}
                Ok(Some(reply)) if reply.granted > 0 => {}
                Ok(Some(reply)) => return Err(s.exhausted(limiter.rights, &reply)),
                Err(e) => {
                    // The reason names inter-node addresses: logged, not
                    // told to the client.
                    tracing::debug!(home = %s.ask.home, error = %e, "no rights from the home region");
                    let note = match e {
                        Error::RightsUnreachable { .. } => format!(
                            "It is enforced strictly, and region {} (which issues its rights) could not be reached.",
                            s.ask.home
                        ),
                        _ => format!(
                            "It is enforced strictly, and the rights ledger of region {} is not available.",
                            s.ask.home
                        ),
                    };
                    return Err(s.refuse(limiter.rights, note));
                }
            }
        }
        if round == STRICT_ROUNDS {
            return Err(shorts[0].refuse(
                limiter.rights,
                "It is enforced strictly, and other requests on this node took the rights it obtained.".into(),
            ));
        }
    }
    Err(Error::Internal("admission ended without an answer".into()))
}
