//! What an admitted request holds on the counters until it settles, and the
//! settlement: the real usage and cost replace the worst case.

use std::sync::Arc;

use meridian_replication::crdt::CounterId;
use meridian_replication::{Counters, Ticket, Txn};

use super::refusal::Headroom;
use crate::pricing::Cost;
use crate::wire::openai::Usage;

/// What a request holds on the counters until it settles.
pub struct Reservation {
    pub(super) counters: Arc<Counters>,
    pub(super) held: Vec<Held>,
    pub headroom: Headroom,
    /// Who the request is charged to, for its spend log row.
    pub who: Who,
    /// The worst case reserved, and its price: what a request is charged when
    /// it ends before the provider reported usage.
    pub worst: Usage,
    pub(super) worst_cost: Cost,
    /// Set on the provider request as its `max_tokens` when the request set
    /// none and a `strict` token or budget limit needs its worst case bounded.
    pub output_cap: Option<u64>,
    pub(super) settled: bool,
}

/// The entities a request is charged to.
#[derive(Clone, Debug, Default)]
pub struct Who {
    /// SHA-256 of the virtual key; empty for the master key.
    pub api_key: String,
    pub team_id: Option<String>,
    pub user_id: Option<String>,
    pub end_user: Option<String>,
    /// Every tag of the request, its key and its team (LiteLLM's
    /// `request_tags`).
    pub tags: Vec<String>,
}

pub(super) enum Held {
    Tokens(CounterId, u64),
    Spend(CounterId, u64),
    Parallel(CounterId),
}

impl Reservation {
    /// Waits until the change behind `ticket` is durable; fails when this
    /// node's writes are failing (the change is kept and retried).
    pub async fn durable(&self, ticket: Ticket) -> Result<(), meridian_replication::Error> {
        self.counters.durable(ticket).await
    }

    /// Replaces the estimates with the real usage and cost; returns the ticket
    /// to wait on before acknowledging the cost to the client.
    pub fn settle(&mut self, usage: &Usage, cost: Cost) -> Ticket {
        self.settled = true;
        let tokens = usage.total_tokens();
        let cost = u64::try_from(cost.0).unwrap_or(u64::MAX);
        let held = std::mem::take(&mut self.held);
        let (_, ticket) = self.counters.update(|t| {
            for h in &held {
                match h {
                    Held::Tokens(id, reserved) => correct(t, id, *reserved, tokens),
                    Held::Spend(id, reserved) => correct(t, id, *reserved, cost),
                    Held::Parallel(id) => t.add(id, 0, 1),
                }
            }
        });
        ticket
    }
}

/// Counts `actual` where `reserved` was counted.
fn correct(t: &mut Txn<'_>, id: &CounterId, reserved: u64, actual: u64) {
    if actual > reserved {
        t.add(id, actual - reserved, 0);
    } else {
        t.add(id, 0, reserved - actual);
    }
}

impl Reservation {
    /// The call failed: nothing was served, everything is given back —
    /// durably before this returns, since the caller is about to answer (or
    /// to reserve again) on the strength of it. A crash after a failure is
    /// answered must not leave the failed call's reservation counted.
    pub async fn release(mut self) {
        let ticket = self.settle(&Usage::default(), Cost(0));
        // When writes are failing the release stays in memory, retried by
        // the flusher: a crash meanwhile leaves it counted (never less).
        let _ = self.durable(ticket).await;
    }
}

impl Drop for Reservation {
    /// Dropped unsettled, the request was abandoned while the provider was
    /// working on it (the client went away): the provider may bill it, so it
    /// is charged its reservation.
    fn drop(&mut self) {
        if !self.settled {
            let worst = self.worst;
            let _ = self.settle(&worst, self.worst_cost);
        }
    }
}
