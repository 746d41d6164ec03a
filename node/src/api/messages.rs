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
use super::respond::{answered, anthropic_stream, json_response};
use crate::admission::Demand;
use crate::error::Error;
use crate::node::Node;
use crate::pipeline;
use crate::providers::Outcome;

pub async fn create(
    State(node): State<Arc<Node>>,
    Ctx(ctx): Ctx,
    JsonBody(mut body): JsonBody<serde_json::Value>,
) -> Result<Response, ApiError> {
    let fail = |e| ApiError::new(e, Format::Anthropic).with_request_id(&ctx.request_id);
    let (tags, fallbacks) = match body.as_object_mut() {
        Some(fields) => pipeline::routing_fields(&ctx, fields).map_err(fail)?,
        None => (ctx.tags.clone(), None),
    };
    let req = messages_to_chat(body).map_err(fail)?;
    let model = req.model.clone();
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
        |p, cx| p.chat(cx, req.clone()),
    )
    .await
    .map_err(fail)?;
    let (output, mut s, answered) = answered(&node, &ctx, called);
    let mut response = match output {
        Outcome::Complete(done) => {
            s.observe(done.usage);
            let chat: serde_json::Value = serde_json::from_slice(&done.body).map_err(|e| {
                fail(Error::protocol(
                    &answered.deployment().id,
                    format!("response is not JSON: {e}"),
                ))
            })?;
            let message = chat_response_to_messages(&chat, &model)
                .map_err(|reason| fail(Error::protocol(&answered.deployment().id, reason)))?;
            let cost = s.finish();
            s.durable().await;
            json_response(Bytes::from(message.to_string()), cost)
        }
        Outcome::Stream(chunks) => anthropic_stream(chunks, s, &model, ctx.request_id.clone()),
    };
    answered.headers(&mut response, &node, &ctx);
    Ok(response)
}
