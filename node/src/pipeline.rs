//! The request lifecycle, in order. Each stage says why it sits where it does.
//!
//! ```text
//! authenticate (api extractor) → route: model group → deployment
//!   → admit: budgets and rate limits; reserve the worst case (admission.rs)
//!   → call: provider adapter over the injected upstream client
//!   → settle: usage → exact cost → counters (on completion, stream end or
//!     disconnect); the cost is acknowledged once it is durable
//! ```
//!
//! Routing comes before admission because the chosen deployment prices the
//! reservation. Nothing here waits on another node: routing and admission read
//! memory, and the only I/O is the upstream call and one batched local write.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::time::Instant;

use crate::admission::{self, Demand, Reservation};
use crate::auth::Principal;
use crate::config::Deployment;
use crate::error::{Error, Result};
use crate::node::Node;
use crate::pricing::Cost;
use crate::providers::{CallContext, Provider};
use crate::types::Usage;

/// Per-request facts the stages share.
pub struct RequestCtx {
    pub request_id: String,
    pub principal: Principal,
    /// When the gateway received the request.
    pub received: Instant,
    /// Tags from the `x-litellm-tags` header (the body's are added to the
    /// request's [`Demand`]).
    pub tags: Vec<String>,
}

/// Every tag a request carries: its header's, then its body's (taken out of
/// the body, which is forwarded without them).
pub fn request_tags(
    ctx: &RequestCtx,
    extra: &mut serde_json::Map<String, serde_json::Value>,
) -> Result<Vec<String>> {
    let mut tags = ctx.tags.clone();
    crate::tags::take_from_body(extra, &mut tags)?;
    Ok(tags)
}

/// The result of the call stage, with what the edge needs for its headers.
pub struct Called<T> {
    pub deployment: Arc<Deployment>,
    pub output: T,
    /// Time spent waiting on the provider (for the overhead header).
    pub upstream_time: Duration,
    /// What the request holds on the counters; settled with the answer.
    pub reservation: Reservation,
}

/// Route, admit, then call. Routing comes first because the deployment
/// decides the adapter, the URL, the timeouts and the price.
pub async fn route_and_call<T, F>(
    node: &Node,
    ctx: &RequestCtx,
    model: &str,
    demand: &Demand,
    call: F,
) -> Result<Called<T>>
where
    F: for<'a> FnOnce(&'a dyn Provider, CallContext<'a>) -> BoxFuture<'a, Result<T>>,
{
    if !ctx.principal.may_use_model(model) {
        return Err(Error::ModelNotAllowed {
            model: model.to_owned(),
            allowed: ctx.principal.allowed_models().join(", "),
        });
    }
    node.refresh_models();
    let deployment = node
        .router
        .pick(model, &node.rng)
        .ok_or_else(|| Error::ModelNotFound {
            model: model.to_owned(),
        })?;
    let limiter = admission::Limiter {
        counters: &node.counters,
        rights: &node.rights,
        metadata: &node.metadata,
        default: node.default_enforcement,
        wait: node.strict_wait,
    };
    let reservation =
        admission::admit(&limiter, &ctx.principal, demand, &deployment, node.now_ms()).await?;
    let cx = CallContext {
        deployment: &deployment,
        upstream: node.upstream.as_ref(),
        clock: node.clock.as_ref(),
        output_cap: reservation.output_cap,
    };
    let started = Instant::now();
    let result = call(node.providers.get(deployment.provider), cx).await;
    let upstream_time = started.elapsed();
    match result {
        Ok(output) => Ok(Called {
            deployment,
            output,
            upstream_time,
            reservation,
        }),
        Err(e) => {
            reservation.release();
            tracing::warn!(
                request_id = %ctx.request_id,
                deployment = %deployment.id,
                model_group = %deployment.model_group,
                error = %e,
                "upstream call failed"
            );
            Err(e)
        }
    }
}

/// Settles one request: real usage → exact cost. Runs exactly once, when the
/// answer is complete, the stream ends, or — through `Drop` — when the client
/// goes away mid-stream, so a disconnect is billed for what was served.
pub struct Settlement {
    request_id: String,
    deployment: Arc<Deployment>,
    reservation: Reservation,
    usage: Usage,
    /// Whether the provider reported usage at all.
    observed: bool,
    settled: Option<(Cost, meridian_replication::Ticket)>,
    log: LogTarget,
}

/// Where and how a settled request is logged (`/spend/logs`).
pub struct LogTarget {
    pub log: Arc<crate::spendlog::SpendLog>,
    pub clock: Arc<dyn crate::clock::Clock>,
    pub region: String,
    pub node: String,
    pub received: Instant,
}

impl Settlement {
    pub fn new(
        request_id: String,
        deployment: Arc<Deployment>,
        reservation: Reservation,
        log: LogTarget,
    ) -> Self {
        Self {
            request_id,
            deployment,
            reservation,
            usage: Usage::default(),
            observed: false,
            settled: None,
            log,
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
        let cost = cost_of(&self.deployment, &self.usage);
        let ticket = self.reservation.settle(&self.usage, cost);
        self.settled = Some((cost, ticket));
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
            spend: cost.0 as f64 / 1e12,
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
    pub async fn durable(&self) {
        if let Some((_, ticket)) = self.settled {
            self.reservation.durable(ticket).await;
        }
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

pub fn cost_of(deployment: &Deployment, usage: &Usage) -> Cost {
    deployment.price.map(|p| p.cost(usage)).unwrap_or_default()
}
