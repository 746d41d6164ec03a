//! OpenAI-format endpoints: chat completions, text completions, embeddings and
//! the model list. Each handler runs the pipeline and shapes the answer.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::error_response::{ApiError, Format};
use super::extract::{Auth, Ctx, JsonBody};
use super::respond::{answered, json_response, openai_stream};
use crate::admission::Demand;
use crate::node::Node;
use crate::pipeline::{self, RequestCtx};
use crate::providers::Outcome;
use crate::types::{ChatRequest, CompletionRequest, EmbeddingsRequest};

pub async fn chat(
    State(node): State<Arc<Node>>,
    Ctx(ctx): Ctx,
    JsonBody(mut req): JsonBody<ChatRequest>,
) -> Result<Response, ApiError> {
    let fail = |e| ApiError::new(e, Format::OpenAi).with_request_id(&ctx.request_id);
    if req.messages.is_empty() {
        return Err(fail(crate::error::Error::invalid(
            "`messages` must not be empty",
            Some("messages"),
        )));
    }
    let wants_usage = req.wants_stream_usage();
    let model = req.model.clone();
    let (tags, fallbacks) = pipeline::routing_fields(&ctx, &mut req.extra).map_err(fail)?;
    let demand = Demand {
        tags,
        ..Demand::for_chat(&req)
    };
    let called = pipeline::route_and_call(
        &node,
        &ctx,
        &model,
        &demand,
        fallbacks.as_deref(),
        |p, cx| {
            let mut req = req.clone();
            if let Some(cap) = cx.output_cap {
                req.cap_output(cap);
            }
            p.chat(cx, req)
        },
    )
    .await
    .map_err(fail)?;
    Ok(finish(&node, &ctx, called, wants_usage).await)
}

pub async fn completion(
    State(node): State<Arc<Node>>,
    Ctx(ctx): Ctx,
    JsonBody(mut req): JsonBody<CompletionRequest>,
) -> Result<Response, ApiError> {
    let wants_usage = req
        .stream_options
        .as_ref()
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    let fail = |e| ApiError::new(e, Format::OpenAi).with_request_id(&ctx.request_id);
    let model = req.model.clone();
    let (tags, fallbacks) = pipeline::routing_fields(&ctx, &mut req.extra).map_err(fail)?;
    let demand = Demand {
        tags,
        ..Demand::for_completion(&req)
    };
    let called = pipeline::route_and_call(
        &node,
        &ctx,
        &model,
        &demand,
        fallbacks.as_deref(),
        |p, cx| {
            let mut req = req.clone();
            if req.max_tokens.is_none()
                && let Some(cap) = cx.output_cap
            {
                req.max_tokens = Some(u32::try_from(cap).unwrap_or(u32::MAX));
            }
            p.completion(cx, req)
        },
    )
    .await
    .map_err(fail)?;
    Ok(finish(&node, &ctx, called, wants_usage).await)
}

async fn finish(
    node: &Node,
    ctx: &RequestCtx,
    called: pipeline::Called<Outcome>,
    wants_usage: bool,
) -> Response {
    let (output, mut s, answered) = answered(node, ctx, called);
    let mut response = match output {
        Outcome::Complete(done) => {
            s.observe(done.usage);
            let cost = s.finish();
            s.durable().await;
            json_response(done.body, cost)
        }
        Outcome::Stream(chunks) => openai_stream(chunks, s, wants_usage, ctx.request_id.clone()),
    };
    answered.headers(&mut response, node, ctx);
    response
}

pub async fn embeddings(
    State(node): State<Arc<Node>>,
    Ctx(ctx): Ctx,
    JsonBody(mut req): JsonBody<EmbeddingsRequest>,
) -> Result<Response, ApiError> {
    let fail = |e| ApiError::new(e, Format::OpenAi).with_request_id(&ctx.request_id);
    let model = req.model.clone();
    let (tags, fallbacks) = pipeline::routing_fields(&ctx, &mut req.extra).map_err(fail)?;
    let demand = Demand {
        tags,
        ..Demand::for_embeddings(&req)
    };
    let called = pipeline::route_and_call(
        &node,
        &ctx,
        &model,
        &demand,
        fallbacks.as_deref(),
        |p, cx| p.embeddings(cx, req.clone()),
    )
    .await
    .map_err(fail)?;
    let (output, mut s, answered) = answered(&node, &ctx, called);
    s.observe(output.usage);
    let cost = s.finish();
    s.durable().await;
    let mut response = json_response(output.body, cost);
    answered.headers(&mut response, &node, &ctx);
    Ok(response)
}

/// `GET /v1/models`: the model groups the caller may use.
pub async fn models(State(node): State<Arc<Node>>, Auth(principal): Auth) -> Response {
    node.refresh_models();
    let data: Vec<_> = node
        .router
        .group_names()
        .into_iter()
        .filter(|g| principal.may_use_model(g))
        .map(|g| json!({ "id": g, "object": "model", "created": 1_677_610_602u64, "owned_by": "meridian" }))
        .collect();
    Json(json!({ "object": "list", "data": data })).into_response()
}
