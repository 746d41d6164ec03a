//! Stage 3, **admit**: budgets and rate limits, with the worst case of this
//! attempt reserved on the counters (`admission.rs` holds the decision).
//! After routing because the deployment prices the reservation; before the
//! call because nothing may reach a provider that the limits refuse.
//! Memory only, except a `strict` limit that waits for rights from its
//! home region.

use crate::admission::{self, Demand, Reservation};
use crate::config::Deployment;
use crate::error::Result;
use crate::node::Node;

use super::RequestCtx;

/// Admits `demand` on `deployment` for the caller, or says which limit
/// refused it.
pub async fn admit(
    node: &Node,
    ctx: &RequestCtx,
    demand: &Demand,
    deployment: &Deployment,
) -> Result<Reservation> {
    let limiter = admission::Limiter {
        counters: &node.counters,
        rights: &node.rights,
        metadata: &node.metadata,
        default: node.default_enforcement,
        wait: node.strict_wait,
    };
    let admitted =
        admission::admit(&limiter, &ctx.principal, demand, deployment, node.now_ms()).await;
    node.metrics.admission(&admitted);
    admitted
}
