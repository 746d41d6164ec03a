//! Stage 1, **authorize**: may this caller make this request, and for whom?
//! The caller's key must allow the model group; a blocked customer is
//! refused; the customer's `allowed_model_region` narrows the key's. First
//! because nothing else may run (or be counted) for a request that is
//! refused, and because its answer (the residency) shapes routing.

use crate::admission::Demand;
use crate::error::{Error, Result};
use crate::node::Node;

use super::RequestCtx;

/// The longest `user` (customer id) a request may name: it is logged with
/// every spend row.
const MAX_USER_BYTES: usize = 256;

/// What an authorized request may use: the regions its deployments may be
/// in (`None`: any).
pub struct Authorized {
    pub residency: Option<Vec<String>>,
}

pub fn authorize(
    node: &Node,
    ctx: &RequestCtx,
    model: &str,
    demand: &Demand,
) -> Result<Authorized> {
    if !ctx.principal.may_use_model(model) {
        return Err(Error::ModelNotAllowed {
            model: model.to_owned(),
            allowed: ctx.principal.allowed_models().join(", "),
        });
    }
    let residency = customer_policy(node, demand, ctx.principal.residency())?;
    Ok(Authorized { residency })
}

/// Refuses a request for a blocked customer (the request's `user`), and
/// narrows the caller's residency by the customer's `allowed_model_region`.
fn customer_policy(
    node: &Node,
    demand: &Demand,
    residency: Option<Vec<String>>,
) -> Result<Option<Vec<String>>> {
    let Some(id) = demand.customer.as_deref() else {
        return Ok(residency);
    };
    if id.len() > MAX_USER_BYTES || id.chars().any(char::is_control) {
        return Err(Error::invalid(
            format!("`user` must be at most {MAX_USER_BYTES} bytes, without control characters"),
            Some("user"),
        ));
    }
    let (blocked, region) = node.metadata.read(|s| {
        s.customer(id)
            .map(|c| (c.blocked, c.allowed_model_region.clone()))
            .unwrap_or_default()
    });
    if blocked {
        return Err(Error::Forbidden(format!("customer `{id}` is blocked")));
    }
    Ok(match (residency, region) {
        (Some(r), Some(c)) => Some(crate::auth::intersect_regions(&r, &[c])),
        (r, c) => r.or(c.map(|c| vec![c])),
    })
}
