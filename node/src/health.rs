//! Deployment health: a one-token call to each deployment, on demand
//! (`GET /health`) and, with `background_health_checks`, every
//! `health_check_interval`. A background failure leaves the deployment out of
//! routing until a later check passes; the latest round is what `/health`
//! shows.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::join_all;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::config::{Deployment, HealthChecks, Mode};
use crate::node::Node;
use crate::providers::CallContext;
use crate::router::Member;
use crate::wire::openai::{
    ChatMessage, ChatRequest, CompletionRequest, EmbeddingsRequest, Prompt, Role,
};

/// Upper bound on one deployment's health probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// The background checks' settings and their latest round.
#[derive(Debug, Default)]
pub struct Health {
    pub settings: HealthChecks,
    latest: Mutex<Option<Value>>,
}

impl Health {
    pub fn new(settings: HealthChecks) -> Self {
        Self {
            settings,
            latest: Mutex::default(),
        }
    }

    /// The latest background round, when background checks run.
    pub fn latest(&self) -> Option<Value> {
        if !self.settings.enabled {
            return None;
        }
        self.latest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Probes `members` at once; returns LiteLLM's `/health` body.
pub async fn check(node: &Node, members: &[Member]) -> Value {
    let results = join_all(members.iter().map(|m| probe(node, &m.deployment))).await;
    report(members, results)
}

/// Runs background checks until the task is dropped: every deployment not
/// opted out, every interval. A failing deployment is left out of routing
/// until the next round (when it is probed again).
pub async fn run(node: Arc<Node>) {
    let interval = node.health.settings.interval;
    loop {
        node.refresh_models();
        let members: Vec<Member> = node
            .router
            .all()
            .into_iter()
            .filter(|m| !m.deployment.health.disabled)
            .collect();
        let results = join_all(members.iter().map(|m| probe(&node, &m.deployment))).await;
        let until = Instant::now() + interval;
        for (m, result) in members.iter().zip(&results) {
            match result {
                Ok(()) => m.live.healthy(),
                Err(e) => {
                    tracing::warn!(deployment = %m.deployment.id, model_group = %m.deployment.model_group, error = %e, "health check failed; left out of routing until a check passes");
                    m.live.unhealthy_until(until, e);
                }
            }
        }
        let report = report(&members, results);
        *node.health.latest.lock().unwrap_or_else(|p| p.into_inner()) = Some(report);
        tokio::time::sleep(interval).await;
    }
}

/// LiteLLM's `/health` body for probe results.
fn report(members: &[Member], results: Vec<Result<(), String>>) -> Value {
    let (mut healthy, mut unhealthy) = (Vec::new(), Vec::new());
    for (m, result) in members.iter().zip(results) {
        let d = &m.deployment;
        let mut entry = json!({
            "model": format!("{}/{}", d.provider_name, d.upstream_model),
            "model_name": d.model_group,
            "model_id": d.id,
            "api_base": d.api_base,
        });
        if let Some(region) = &d.region_name {
            entry["region_name"] = json!(region);
        }
        match result {
            Ok(()) => healthy.push(entry),
            Err(error) => {
                entry["error"] = json!(error);
                unhealthy.push(entry);
            }
        }
    }
    json!({
        "healthy_count": healthy.len(),
        "unhealthy_count": unhealthy.len(),
        "healthy_endpoints": healthy,
        "unhealthy_endpoints": unhealthy,
    })
}

/// One one-token call, on `health_check_model` when set, within
/// `health_check_timeout` (else the deployment's timeout, at most 30 s).
pub async fn probe(node: &Node, d: &Deployment) -> Result<(), String> {
    let probed;
    let d = match &d.health.model {
        Some(model) => {
            let mut copy = d.clone();
            copy.upstream_model.clone_from(model);
            probed = copy;
            &probed
        }
        None => d,
    };
    let limit = d.health.timeout.unwrap_or(d.timeout).min(PROBE_TIMEOUT);
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
    match tokio::time::timeout(limit, call).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {}s", limit.as_secs_f64())),
    }
}
