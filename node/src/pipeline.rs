//! The request lifecycle, in order. Each stage says why it sits where it does.
//!
//! ```text
//! authenticate (api extractor) → [admit: limits and budgets, later]
//!   → route: model group → deployment
//!   → call: provider adapter over the injected upstream client
//!   → settle: usage → exact cost (on completion, stream end or disconnect)
//! ```
//!
//! Nothing here waits on another node: routing reads memory, and the only I/O is
//! the upstream call.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::time::Instant;

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
}

/// The result of the call stage, with what the edge needs for its headers.
pub struct Called<T> {
    pub deployment: Arc<Deployment>,
    pub output: T,
    /// Time spent waiting on the provider (for the overhead header).
    pub upstream_time: Duration,
}

/// Route, then call. Routing comes first because the deployment decides the
/// adapter, the URL, the timeouts and the price.
pub async fn route_and_call<T, F>(
    node: &Node,
    ctx: &RequestCtx,
    model: &str,
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
    let cx = CallContext {
        deployment: &deployment,
        upstream: node.upstream.as_ref(),
        clock: node.clock.as_ref(),
    };
    let started = Instant::now();
    let result = call(node.providers.get(deployment.provider), cx).await;
    let upstream_time = started.elapsed();
    match result {
        Ok(output) => Ok(Called {
            deployment,
            output,
            upstream_time,
        }),
        Err(e) => {
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
    usage: Usage,
    settled: Option<Cost>,
}

impl Settlement {
    pub fn new(request_id: String, deployment: Arc<Deployment>) -> Self {
        Self {
            request_id,
            deployment,
            usage: Usage::default(),
            settled: None,
        }
    }

    /// Records the latest usage report (providers send cumulative usage).
    pub fn observe(&mut self, usage: Usage) {
        self.usage = usage;
    }

    pub fn usage(&self) -> Usage {
        self.usage
    }

    pub fn finish(&mut self) -> Cost {
        if let Some(cost) = self.settled {
            return cost;
        }
        let cost = cost_of(&self.deployment, &self.usage);
        self.settled = Some(cost);
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
