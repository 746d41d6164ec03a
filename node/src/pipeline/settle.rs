//! Stage 5, **settle**: real usage → exact cost → counters and the spend
//! log. Last because only the finished answer (or stream) says what was
//! used. It runs exactly once: when a whole answer is in, when a stream
//! ends, or — through `Drop` — when the client goes away mid-stream (or the
//! node cuts the call at shutdown), so a disconnect is billed for what was
//! served. The cost is acknowledged to the client only once it is durable.

use std::sync::Arc;

use tokio::time::Instant;

use crate::admission::Reservation;
use crate::config::Deployment;
use crate::node::Node;
use crate::pricing::Cost;
use crate::wire::openai::Usage;

use super::RequestCtx;
use super::call::Attempt;

/// Settles one request: real usage → exact cost. Runs exactly once, when the
/// answer is complete, the stream ends, or — through `Drop` — when the client
/// goes away mid-stream, so a disconnect is billed for what was served.
pub struct Settlement {
    request_id: String,
    deployment: Arc<Deployment>,
    reservation: Reservation,
    attempt: Attempt,
    usage: Usage,
    /// Whether the provider reported usage at all.
    observed: bool,
    settled: Option<(Cost, meridian_replication::Ticket)>,
    log: LogTarget,
    /// The request's metric series.
    serving: Arc<crate::metrics::Serving>,
    /// When a stream's first chunk came, from the call's start.
    first_chunk: Option<std::time::Duration>,
}

/// Where and how a settled request is logged (`/spend/logs`).
struct LogTarget {
    log: Arc<crate::spendlog::SpendLog>,
    clock: Arc<dyn crate::clock::Clock>,
    region: String,
    node: String,
    received: Instant,
}

impl Settlement {
    /// The settlement of an answered call: it takes over the call's
    /// reservation.
    pub(super) fn new(
        node: &Node,
        ctx: &RequestCtx,
        deployment: Arc<Deployment>,
        serving: Arc<crate::metrics::Serving>,
        reservation: Reservation,
        attempt: Attempt,
    ) -> Self {
        let log = LogTarget {
            log: node.spend_log.clone(),
            clock: node.clock.clone(),
            region: node.region.clone(),
            node: node.node_id.clone(),
            received: ctx.received,
        };
        Self {
            request_id: ctx.request_id.clone(),
            deployment,
            reservation,
            attempt,
            usage: Usage::default(),
            observed: false,
            settled: None,
            log,
            serving,
            first_chunk: None,
        }
    }

    /// A stream's chunk went by (the first one times the first token).
    pub fn chunk_seen(&mut self) {
        if self.first_chunk.is_none() {
            self.first_chunk = Some(self.attempt.started.elapsed());
        }
    }

    /// Records the latest usage report (providers send cumulative usage).
    pub fn observe(&mut self, usage: Usage) {
        self.usage = usage;
        self.observed = true;
    }

    pub fn usage(&self) -> Usage {
        self.usage
    }

    /// Settles (once): the real cost replaces the reservation on the counters.
    pub fn finish(&mut self) -> Cost {
        if let Some((cost, _)) = self.settled {
            return cost;
        }
        if !self.observed {
            // Cut before the provider reported usage (it does so at the
            // end): the provider may still bill it, so the reservation is
            // charged.
            self.usage = self.reservation.worst;
        }
        self.attempt.settled(self.usage.total_tokens());
        let cost = cost_of(&self.deployment, &self.usage);
        let ticket = self.reservation.settle(&self.usage, cost);
        self.settled = Some((cost, ticket));
        self.serving.settled(
            &self.usage,
            crate::pricing::pico_to_dollars(cost.0),
            &crate::metrics::Timing {
                total: self.log.received.elapsed(),
                call: self.attempt.started.elapsed(),
                first_chunk: self.first_chunk,
            },
        );
        let end_time = self.log.clock.since_epoch().as_millis() as u64;
        let who = &self.reservation.who;
        self.log.log.record(&crate::spendlog::SpendRow {
            request_id: self.request_id.clone(),
            api_key: who.api_key.clone(),
            team_id: who.team_id.clone(),
            user: who.user_id.clone(),
            end_user: who.end_user.clone(),
            request_tags: who.tags.clone(),
            model_group: self.deployment.model_group.clone(),
            model_id: self.deployment.id.clone(),
            region: self.log.region.clone(),
            node: self.log.node.clone(),
            prompt_tokens: self.usage.prompt_tokens,
            completion_tokens: self.usage.completion_tokens,
            total_tokens: self.usage.total_tokens(),
            spend: crate::pricing::pico_to_dollars(cost.0),
            start_time: end_time.saturating_sub(self.log.received.elapsed().as_millis() as u64),
            end_time,
        });
        tracing::info!(
            request_id = %self.request_id,
            model_group = %self.deployment.model_group,
            deployment = %self.deployment.id,
            prompt_tokens = self.usage.prompt_tokens,
            completion_tokens = self.usage.completion_tokens,
            cost_usd = %cost,
            "settled"
        );
        cost
    }
}

impl Settlement {
    /// Waits until the settled cost is durable on this node: only then may it
    /// be acknowledged to the client (a crash after that loses nothing).
    /// Fails when this node's writes are failing: the cost stays counted in
    /// memory (and is written when writes work again), but the answer that
    /// would acknowledge it is withheld.
    pub async fn durable(&self) -> crate::error::Result<()> {
        if meridian_bugs::on(meridian_bugs::Bug::AckBeforeDurable) {
            return Ok(());
        }
        if let Some((_, ticket)) = self.settled {
            self.reservation
                .durable(ticket)
                .await
                .map_err(|_| crate::error::Error::StorageFailing)?;
        }
        Ok(())
    }
}

impl Drop for Settlement {
    fn drop(&mut self) {
        if self.settled.is_none() {
            tracing::info!(request_id = %self.request_id, "stream ended early; settling what was served");
            self.finish();
        }
    }
}

fn cost_of(deployment: &Deployment, usage: &Usage) -> Cost {
    deployment.price.map(|p| p.cost(usage)).unwrap_or_default()
}
