//! `POST /v1/messages`: Anthropic's Messages API in front of any provider. The
//! request becomes an OpenAI chat request, runs through the same pipeline as
//! every other call, and the answer (or stream) is translated back.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use bytes::Bytes;

use super::error_response::{ApiError, Format, ratelimit_headers};
use super::extract::{Ctx, JsonBody};
use super::messages_translate::{chat_response_to_messages, messages_to_chat};
use super::respond::{anthropic_stream, json_response, meridian_headers, settlement};
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
    let mut tags = ctx.tags.clone();
    if let Some(fields) = body.as_object_mut() {
        crate::tags::take_from_body(fields, &mut tags).map_err(fail)?;
    }
    let fallbacks = match body.as_object_mut() {
        Some(fields) => crate::config::request_fallbacks(fields).map_err(fail)?,
        None => None,
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
    let headroom = called.reservation.headroom;
    let tries = called.tries;
    let mut s = settlement(
        &node,
        &ctx,
        &called.deployment,
        called.reservation,
        called.attempt,
    );
    let mut response = match called.output {
        Outcome::Complete(done) => {
            s.observe(done.usage);
            let chat: serde_json::Value = serde_json::from_slice(&done.body).map_err(|e| {
                fail(Error::protocol(
                    &called.deployment.id,
                    format!("response is not JSON: {e}"),
                ))
            })?;
            let message = chat_response_to_messages(&chat, &model)
                .map_err(|reason| fail(Error::protocol(&called.deployment.id, reason)))?;
            let cost = s.finish();
            s.durable().await;
            json_response(Bytes::from(message.to_string()), cost)
        }
        Outcome::Stream(chunks) => anthropic_stream(chunks, s, &model, ctx.request_id.clone()),
    };
    ratelimit_headers(response.headers_mut(), &headroom);
    meridian_headers(
        response.headers_mut(),
        &node,
        &ctx,
        &called.deployment,
        called.upstream_time,
        tries,
    );
    Ok(response)
}
