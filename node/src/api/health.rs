//! Health endpoints, as LiteLLM names them: liveliness (process up), readiness
//! (this node can serve: local storage and cluster state, never an external
//! database), and an admin's deep check that calls every deployment.
//!
//! Liveliness and readiness answer without a key (load balancers and GeoDNS
//! probe them), so without an admin key they say only whether the node is up
//! and ready: no paths, no members. The deep check spends real provider calls
//! and shows where providers live, so it is for admins only.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::extract::Auth;
use crate::node::Node;
use crate::router::Member;

pub async fn liveliness() -> Json<&'static str> {
    Json("I'm alive!")
}

pub async fn readiness(State(node): State<Arc<Node>>, headers: http::HeaderMap) -> Response {
    // The store says whether it is still usable (on disk: its directory is
    // still there; a volume gone or unmounted is not; its writes are not
    // failing). A Raft member stopped for good (by a storage failure it
    // could not survive) needs a restart.
    let storage_ok = meridian_storage::Store::check(&*node.store).is_ok();
    let raft_running = node.metadata.status().state != "shutdown";
    let ready = storage_ok && raft_running;
    let status = if ready { "healthy" } else { "unhealthy" };
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let reader = node
        .auth
        .authenticate(&headers, &node.metadata, node.clock.unix_secs())
        .is_ok_and(|p| p.may_read_all());
    if !reader {
        return (code, Json(json!({ "status": status, "db": "not used" }))).into_response();
    }
    let cluster = node.metadata.status();
    let body = json!({
        "status": status,
        "node": node.node_id,
        "region": node.region,
        "storage": {
            "data_dir": node.data_dir.display().to_string(),
            "ok": storage_ok,
            "writes_failing": meridian_storage::Store::writable(&*node.store).is_err(),
        },
        // Serving LLM calls needs no leader (keys are read from the applied
        // state), so a region without one is reported, not "unready".
        "cluster": {
            "raft_id": cluster.node_id,
            "role": cluster.state,
            "leader": cluster.leader,
            "term": cluster.term,
            "members": cluster.members.len(),
            "applied_index": cluster.applied_index,
        },
        "db": "not used",
        "version": env!("CARGO_PKG_VERSION"),
    });
    (code, Json(body)).into_response()
}

#[derive(Deserialize)]
pub struct HealthQuery {
    model: Option<String>,
    model_id: Option<String>,
}

/// `GET /health`: probes each deployment (optionally one group or one id) with a
/// tiny real call, all at once, and lists which answered. With background
/// health checks on, the unfiltered list is the latest background round.
pub async fn deep(
    State(node): State<Arc<Node>>,
    Auth(p): Auth,
    Query(q): Query<HealthQuery>,
) -> Result<Json<Value>, super::ApiError> {
    super::admin::policy::admin(&p, "the deep health check (it calls every deployment)")?;
    let unfiltered = q.model.is_none() && q.model_id.is_none();
    if unfiltered && let Some(report) = node.health.latest() {
        return Ok(Json(report));
    }
    let targets: Vec<Member> = node
        .router
        .all()
        .into_iter()
        .filter(|m| {
            q.model
                .as_ref()
                .is_none_or(|g| *g == m.deployment.model_group)
        })
        .filter(|m| q.model_id.as_ref().is_none_or(|id| *id == m.deployment.id))
        .collect();
    Ok(Json(crate::health::check(&node, &targets).await))
}
