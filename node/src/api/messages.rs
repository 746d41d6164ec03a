//! `POST /v1/messages`: Anthropic's Messages API in front of any provider. The
//! request becomes an OpenAI chat request, runs through the same pipeline as
//! every other call, and the answer (or stream) is translated back.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use bytes::Bytes;

use super::error_response::{ApiError, Format};
use super::extract::{Ctx, JsonBody};
use super::messages_translate::{chat_response_to_messages, messages_to_chat};
use super::respond::{answer_headers, anthropic_stream, json_response};
use crate::error::Error;
use crate::node::Node;
use crate::pipeline::{self, Operation, Output, Routing};

pub async fn create(
    State(node): State<Arc<Node>>,
    Ctx(ctx): Ctx,
    JsonBody(mut body): JsonBody<serde_json::Value>,
) -> Result<Response, ApiError> {
    let fail = |e| ApiError::new(e, Format::Anthropic).with_request_id(&ctx.request_id);
    // The gateway's own fields, before the body is translated.
    let routing = match body.as_object_mut() {
        Some(fields) => Routing::take(fields, &ctx.tags).map_err(fail)?,
        None => Routing {
            tags: ctx.tags.clone(),
            fallbacks: None,
        },
    };
    let req = messages_to_chat(body).map_err(fail)?;
    let model = req.model.clone();
    let finished = pipeline::run(&node, &ctx, Operation::Chat(req), Some(routing))
        .await
        .map_err(fail)?;
    let deployment = &finished.answered.deployment.id;
    let mut response = match finished.output {
        Output::Complete { body, cost, usage } => {
            let chat: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
                fail(Error::protocol(
                    deployment,
                    format!("response is not JSON: {e}"),
                ))
            })?;
            let message = chat_response_to_messages(&chat, &model, Some(usage))
                .map_err(|reason| fail(Error::protocol(deployment, reason)))?;
            json_response(Bytes::from(message.to_string()), cost)
        }
        Output::Stream { chunks, settlement } => {
            anthropic_stream(chunks, *settlement, &model, ctx.request_id.clone())
        }
    };
    answer_headers(&mut response, &node, &ctx, &finished.answered);
    Ok(response)
}
