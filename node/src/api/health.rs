//! Health endpoints, as LiteLLM names them: liveliness (process up), readiness
//! (this node can serve: local storage and cluster state, never an external
//! database), and an authenticated deep check that calls every deployment.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use futures_util::future::join_all;
use http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::extract::Auth;
use crate::config::{Deployment, Mode};
use crate::node::Node;
use crate::providers::CallContext;
use crate::types::{ChatMessage, ChatRequest, CompletionRequest, EmbeddingsRequest, Prompt, Role};

/// Upper bound on one deployment's health probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn liveliness() -> Json<&'static str> {
    Json("I'm alive!")
}

pub async fn readiness(State(node): State<Arc<Node>>) -> Response {
    // A metadata read of the data directory: cheap, and it fails when the volume
    // is gone or unmounted.
    let storage_ok = std::fs::metadata(&node.data_dir)
        .map(|m| m.is_dir())
        .unwrap_or(false);
    let status = if storage_ok { "healthy" } else { "unhealthy" };
    let cluster = node.metadata.status();
    let body = json!({
        "status": status,
        "node": node.node_id,
        "region": node.region,
        "storage": { "data_dir": node.data_dir.display().to_string(), "ok": storage_ok },
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
    let code = if storage_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

#[derive(Deserialize)]
pub struct HealthQuery {
    model: Option<String>,
    model_id: Option<String>,
}

/// `GET /health`: probes each deployment (optionally one group or one id) with a
/// tiny real call, all at once, and lists which answered.
pub async fn deep(
    State(node): State<Arc<Node>>,
    _auth: Auth,
    Query(q): Query<HealthQuery>,
) -> Json<Value> {
    let targets: Vec<Arc<Deployment>> = node
        .router
        .deployments()
        .into_iter()
        .filter(|d| q.model.as_ref().is_none_or(|m| *m == d.model_group))
        .filter(|d| q.model_id.as_ref().is_none_or(|id| *id == d.id))
        .collect();
    let results = join_all(targets.iter().map(|d| probe(&node, d))).await;
    let (mut healthy, mut unhealthy) = (Vec::new(), Vec::new());
    for (d, result) in targets.iter().zip(results) {
        let mut entry = json!({
            "model": format!("{}/{}", d.provider_name, d.upstream_model),
            "model_name": d.model_group,
            "model_id": d.id,
            "api_base": d.api_base,
        });
        match result {
            Ok(()) => healthy.push(entry),
            Err(error) => {
                entry["error"] = json!(error);
                unhealthy.push(entry);
            }
        }
    }
    Json(json!({
        "healthy_count": healthy.len(),
        "unhealthy_count": unhealthy.len(),
        "healthy_endpoints": healthy,
        "unhealthy_endpoints": unhealthy,
    }))
}

async fn probe(node: &Node, d: &Deployment) -> Result<(), String> {
    let cx = CallContext {
        deployment: d,
        upstream: node.upstream.as_ref(),
        clock: node.clock.as_ref(),
        output_cap: None,
    };
    let provider = node.providers.get(d.provider);
    let call = async {
        match d.mode {
            Mode::Chat => provider
                .chat(
                    cx,
                    ChatRequest {
                        model: d.model_group.clone(),
                        messages: vec![ChatMessage::text(Role::User, "ping")],
                        max_tokens: Some(1),
                        ..ChatRequest::default()
                    },
                )
                .await
                .map(drop),
            Mode::Completion => provider
                .completion(
                    cx,
                    CompletionRequest {
                        model: d.model_group.clone(),
                        prompt: Prompt::One("ping".into()),
                        stream: None,
                        stream_options: None,
                        max_tokens: Some(1),
                        user: None,
                        extra: Default::default(),
                    },
                )
                .await
                .map(drop),
            Mode::Embedding => provider
                .embeddings(
                    cx,
                    EmbeddingsRequest {
                        model: d.model_group.clone(),
                        input: json!("ping"),
                        user: None,
                        extra: Default::default(),
                    },
                )
                .await
                .map(drop),
        }
    };
    match tokio::time::timeout(d.timeout.min(PROBE_TIMEOUT), call).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "no answer within {}s",
            d.timeout.min(PROBE_TIMEOUT).as_secs()
        )),
    }
}
