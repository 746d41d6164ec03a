//! `POST /v1/messages`: Anthropic's Messages API in front of any provider.
//! The body is read (and validated) here; the pipeline routes and admits it
//! as the chat it reads as, passes it through to an Anthropic deployment,
//! and answers in Anthropic's format whichever provider served it.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use serde_json::Value;

use super::error_response::{ApiError, Format};
use super::extract::{Ctx, JsonBody};
use super::respond::{answer_headers, anthropic_stream, json_response};
use crate::error::Error;
use crate::node::Node;
use crate::pipeline::{self, Operation, Output, Routing};
use crate::wire::anthropic::read_request::MessagesRequest;

pub async fn create(
    State(node): State<Arc<Node>>,
    Ctx(mut ctx): Ctx,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response, ApiError> {
    if let Some(model) = body.get("model").and_then(Value::as_str) {
        ctx.asks_for(&node, model);
    }
    let ctx = ctx;
    let fail = |e| ApiError::of(e, Format::Anthropic, &ctx);
    let Value::Object(mut body) = body else {
        return Err(fail(Error::invalid(
            "request body must be a JSON object",
            None,
        )));
    };
    // The gateway's own fields, before the body is read or passed on.
    let routing = Routing::take(&mut body, &ctx.tags).map_err(fail)?;
    let req = MessagesRequest::read(body).map_err(fail)?;
    let model = req.chat.model.clone();
    let op = Operation::Messages(Box::new(req));
    let finished = pipeline::run(&node, &ctx, op, Some(routing))
        .await
        .map_err(fail)?;
    let mut response = match finished.output {
        Output::Complete { body, cost, .. } => json_response(body, cost),
        Output::Stream { chunks, settlement } => {
            anthropic_stream(chunks, *settlement, &model, ctx.request_id.clone())
        }
    };
    answer_headers(&mut response, &node, &ctx, &finished.answered);
    Ok(response)
}
