//! OpenAI-format endpoints: chat completions, text completions, embeddings and
//! the model list. Each handler decodes its request into an operation, runs
//! the pipeline and encodes the answer.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::error_response::{ApiError, Format};
use super::extract::{Auth, Ctx, JsonBody};
use super::respond::{answer_headers, json_response, openai_stream};
use crate::node::Node;
use crate::pipeline::{self, Operation, Output, RequestCtx};
use crate::wire::openai::{ChatRequest, CompletionRequest, EmbeddingsRequest};

pub async fn chat(
    State(node): State<Arc<Node>>,
    Ctx(mut ctx): Ctx,
    JsonBody(req): JsonBody<ChatRequest>,
) -> Result<Response, ApiError> {
    ctx.asks_for(&node, &req.model);
    if req.messages.is_empty() {
        return Err(ApiError::of(
            crate::error::Error::invalid("`messages` must not be empty", Some("messages")),
            Format::OpenAi,
            &ctx,
        ));
    }
    let wants_usage = req.wants_stream_usage();
    run(&node, &ctx, Operation::Chat(req), wants_usage).await
}

pub async fn completion(
    State(node): State<Arc<Node>>,
    Ctx(mut ctx): Ctx,
    JsonBody(req): JsonBody<CompletionRequest>,
) -> Result<Response, ApiError> {
    ctx.asks_for(&node, &req.model);
    let wants_usage = req
        .stream_options
        .as_ref()
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    run(&node, &ctx, Operation::Completion(req), wants_usage).await
}

pub async fn embeddings(
    State(node): State<Arc<Node>>,
    Ctx(mut ctx): Ctx,
    JsonBody(req): JsonBody<EmbeddingsRequest>,
) -> Result<Response, ApiError> {
    ctx.asks_for(&node, &req.model);
    run(&node, &ctx, Operation::Embeddings(req), false).await
}

/// Runs `op` and encodes its answer in OpenAI's format; a stream carries
/// the usage chunk only if the client asked for it.
async fn run(
    node: &Node,
    ctx: &RequestCtx,
    op: Operation,
    wants_usage: bool,
) -> Result<Response, ApiError> {
    let finished = pipeline::run(node, ctx, op, None)
        .await
        .map_err(|e| ApiError::of(e, Format::OpenAi, ctx))?;
    let mut response = match finished.output {
        Output::Complete { body, cost, .. } => json_response(body, cost),
        Output::Stream { chunks, settlement } => {
            openai_stream(chunks, *settlement, wants_usage, ctx.request_id.clone())
        }
    };
    answer_headers(&mut response, node, ctx, &finished.answered);
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
