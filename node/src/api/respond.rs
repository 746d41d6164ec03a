//! Building responses: the `x-meridian-*` headers every LLM answer carries, and
//! the SSE bodies for OpenAI- and Anthropic-format streams. Streams are sent
//! chunk by chunk as the provider produces them; usage is read on the way
//! through and settled when the stream ends (or is dropped by the client).

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use http_body::Frame;
use http_body_util::StreamBody;

use super::error_response::{anthropic_body, openai_body};
use super::messages_translate::ChunksToEvents;
use crate::config::Deployment;
use crate::node::Node;
use crate::pipeline::{RequestCtx, Settlement};
use crate::pricing::Cost;
use crate::providers::ChunkStream;
use crate::sse;

pub const COST_HEADER: &str = "x-meridian-response-cost";

/// The identity and timing headers of every LLM response.
pub fn meridian_headers(
    headers: &mut HeaderMap,
    node: &Node,
    ctx: &RequestCtx,
    deployment: &Deployment,
    upstream_time: std::time::Duration,
) {
    let overhead = ctx.received.elapsed().saturating_sub(upstream_time);
    let mut put = |name: &'static str, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            headers.insert(HeaderName::from_static(name), v);
        }
    };
    put("x-request-id", &ctx.request_id);
    put("x-meridian-model-id", &deployment.id);
    put("x-meridian-model-group", &deployment.model_group);
    put("x-meridian-region", &node.region);
    put("x-meridian-node", &node.node_id);
    put(
        "x-meridian-overhead-duration-ms",
        &format!("{:.3}", overhead.as_secs_f64() * 1000.0),
    );
}

pub fn json_response(body: Bytes, cost: Cost) -> Response {
    let mut response = Response::new(Body::from(body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(&cost.to_string()) {
        headers.insert(COST_HEADER, v);
    }
    response
}

fn sse_response(
    frames: impl futures_util::Stream<Item = Frame<Bytes>> + Send + 'static,
) -> Response {
    let body = Body::new(StreamBody::new(frames.map(Ok::<_, Infallible>)));
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // The exact cost is known only at the end: it is sent as a trailer (to
    // clients that accept them) and, in OpenAI streams, as a final SSE comment.
    headers.insert(header::TRAILER, HeaderValue::from_static(COST_HEADER));
    response
}

fn cost_trailer(cost: Cost) -> Frame<Bytes> {
    let mut trailers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&cost.to_string()) {
        trailers.insert(COST_HEADER, v);
    }
    Frame::trailers(trailers)
}

enum Phase {
    Chunks,
    Done,
}

/// An OpenAI-format stream: each chunk as `data:`, the usage chunk only if the
/// client asked for it, then the cost and `[DONE]`.
pub fn openai_stream(
    chunks: ChunkStream,
    settlement: Settlement,
    wants_usage: bool,
    request_id: String,
) -> Response {
    struct S {
        chunks: ChunkStream,
        settlement: Settlement,
        wants_usage: bool,
        request_id: String,
        phase: Phase,
        tail: Vec<Frame<Bytes>>,
    }
    let state = S {
        chunks,
        settlement,
        wants_usage,
        request_id,
        phase: Phase::Chunks,
        tail: Vec::new(),
    };
    let frames = futures_util::stream::unfold(state, |mut s| async move {
        loop {
            if let Some(frame) = s.tail.pop() {
                return Some((frame, s));
            }
            if let Phase::Done = s.phase {
                return None;
            }
            match s.chunks.next().await {
                Some(Ok(chunk)) => {
                    if let Some(usage) = chunk.usage {
                        s.settlement.observe(usage);
                    }
                    if chunk.usage_only && !s.wants_usage {
                        continue;
                    }
                    return Some((Frame::data(sse::data_frame(&chunk.json)), s));
                }
                Some(Err(e)) => {
                    let cost = s.settlement.finish();
                    let (_, body) = openai_body(&e, Some(&s.request_id));
                    s.phase = Phase::Done;
                    // Popped from the back: error event, then the trailer.
                    s.tail = vec![
                        cost_trailer(cost),
                        Frame::data(sse::data_frame(body.to_string().as_bytes())),
                    ];
                }
                None => {
                    let cost = s.settlement.finish();
                    s.phase = Phase::Done;
                    let comment = Bytes::from(format!(": {COST_HEADER}={cost}\n\n"));
                    s.tail = vec![
                        cost_trailer(cost),
                        Frame::data(Bytes::from_static(sse::DONE_FRAME)),
                        Frame::data(comment),
                    ];
                }
            }
        }
    });
    sse_response(frames)
}

/// An Anthropic-format stream, translated from OpenAI chunks as they arrive.
pub fn anthropic_stream(
    chunks: ChunkStream,
    settlement: Settlement,
    model: &str,
    request_id: String,
) -> Response {
    struct S {
        chunks: ChunkStream,
        settlement: Settlement,
        events: ChunksToEvents,
        request_id: String,
        phase: Phase,
        tail: Vec<Frame<Bytes>>,
    }
    let events = ChunksToEvents::new(model, &format!("msg_{request_id}"));
    let state = S {
        chunks,
        settlement,
        events,
        request_id,
        phase: Phase::Chunks,
        tail: Vec::new(),
    };
    let named = |evs: Vec<(&'static str, serde_json::Value)>| -> Vec<Frame<Bytes>> {
        evs.into_iter()
            .map(|(name, data)| Frame::data(sse::named_frame(name, data.to_string().as_bytes())))
            .rev()
            .collect()
    };
    let frames = futures_util::stream::unfold(state, move |mut s| async move {
        loop {
            if let Some(frame) = s.tail.pop() {
                return Some((frame, s));
            }
            if let Phase::Done = s.phase {
                return None;
            }
            match s.chunks.next().await {
                Some(Ok(chunk)) => {
                    if let Some(usage) = chunk.usage {
                        s.settlement.observe(usage);
                    }
                    let Ok(value) = serde_json::from_slice::<serde_json::Value>(&chunk.json) else {
                        continue;
                    };
                    s.tail = named(s.events.on_chunk(&value));
                }
                Some(Err(e)) => {
                    let cost = s.settlement.finish();
                    let (_, body) = anthropic_body(&e, Some(&s.request_id));
                    s.phase = Phase::Done;
                    s.tail = vec![
                        cost_trailer(cost),
                        Frame::data(sse::named_frame("error", body.to_string().as_bytes())),
                    ];
                }
                None => {
                    let cost = s.settlement.finish();
                    s.phase = Phase::Done;
                    let mut tail = named(s.events.finish());
                    tail.insert(0, cost_trailer(cost));
                    s.tail = tail;
                }
            }
        }
    });
    sse_response(frames)
}

/// The settlement for a call, shared by the stream bodies.
pub fn settlement(ctx: &RequestCtx, deployment: &Arc<Deployment>) -> Settlement {
    Settlement::new(ctx.request_id.clone(), deployment.clone())
}
