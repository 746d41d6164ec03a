//! Building responses: the `x-meridian-*` headers every LLM answer carries, and
//! the SSE bodies for OpenAI- and Anthropic-format streams. Streams are sent
//! chunk by chunk as the provider produces them; usage is read on the way
//! through and settled when the stream ends (or is dropped by the client).

use std::convert::Infallible;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use http_body::Frame;
use http_body_util::StreamBody;

use super::error_response::{anthropic_body, openai_body};
use crate::config::Deployment;
use crate::error::Error;
use crate::node::Node;
use crate::pipeline::{Answered, RequestCtx, Settlement};
use crate::pricing::Cost;
use crate::providers::{Chunk, ChunkStream};
use crate::sse;
use crate::wire::anthropic::StreamEvent;
use crate::wire::anthropic::stream::ChunksToEvents;

pub const COST_HEADER: &str = "x-meridian-response-cost";

/// The identity and timing headers of every LLM response.
pub fn meridian_headers(
    headers: &mut HeaderMap,
    node: &Node,
    ctx: &RequestCtx,
    deployment: &Deployment,
    upstream_time: std::time::Duration,
    tries: crate::pipeline::Tries,
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
    let (retries, fallbacks) = (
        HeaderValue::from(tries.retries),
        HeaderValue::from(tries.fallbacks),
    );
    headers.insert(
        HeaderName::from_static("x-meridian-attempted-retries"),
        retries.clone(),
    );
    headers.insert(
        HeaderName::from_static("x-meridian-attempted-fallbacks"),
        fallbacks.clone(),
    );
    headers.insert(
        HeaderName::from_static("x-litellm-attempted-retries"),
        retries,
    );
    headers.insert(
        HeaderName::from_static("x-litellm-attempted-fallbacks"),
        fallbacks,
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

/// How one client-facing stream format writes its events. The relay below
/// drives it; the encoders only say what bytes each step produces.
trait Encoder: Send + 'static {
    /// Frames for one upstream chunk (possibly none).
    fn chunk(&mut self, chunk: &Chunk) -> Vec<Bytes>;
    /// Frames for a failure after the stream started; the stream ends after them.
    fn error(&mut self, e: &Error) -> Vec<Bytes>;
    /// Frames that close a finished stream.
    fn end(&mut self, cost: Cost) -> Vec<Bytes>;
}

/// Relays provider chunks to the client as they arrive, observing usage on the
/// way and settling exactly once at the end (or, through the settlement's
/// `Drop`, when the client goes away). The cost trailer is the last frame.
fn relay(chunks: ChunkStream, settlement: Settlement, encoder: impl Encoder) -> Response {
    struct State<E> {
        chunks: ChunkStream,
        settlement: Settlement,
        encoder: E,
        /// Frames to send before reading on, in order.
        pending: std::collections::VecDeque<Frame<Bytes>>,
        done: bool,
    }
    let state = State {
        chunks,
        settlement,
        encoder,
        pending: Default::default(),
        done: false,
    };
    let frames = futures_util::stream::unfold(state, |mut s| async move {
        loop {
            if let Some(frame) = s.pending.pop_front() {
                return Some((frame, s));
            }
            if s.done {
                return None;
            }
            // `trailer`: the stream is over; with `Some(cost)` when its cost
            // is durable and may be acknowledged.
            let (frames, trailer) = match s.chunks.next().await {
                Some(Ok(chunk)) => {
                    s.settlement.chunk_seen();
                    if let Some(usage) = chunk.usage() {
                        s.settlement.observe(usage);
                    }
                    s.pending
                        .extend(s.encoder.chunk(&chunk).into_iter().map(Frame::data));
                    continue;
                }
                Some(Err(e)) => {
                    let cost = s.settlement.finish();
                    match s.settlement.durable().await {
                        Ok(()) => (s.encoder.error(&e), Some(cost)),
                        Err(not_durable) => (s.encoder.error(&not_durable), None),
                    }
                }
                None => {
                    // The cost goes out only once it is durable here; when
                    // it cannot be made durable the stream ends in an error
                    // instead of its end and cost.
                    let cost = s.settlement.finish();
                    match s.settlement.durable().await {
                        Ok(()) => (s.encoder.end(cost), Some(cost)),
                        Err(not_durable) => (s.encoder.error(&not_durable), None),
                    }
                }
            };
            s.pending.extend(frames.into_iter().map(Frame::data));
            s.done = true;
            if let Some(cost) = trailer {
                s.pending.push_back(cost_trailer(cost));
            }
        }
    });
    sse_response(frames)
}

/// OpenAI's format: each chunk as `data:`, the usage chunk only if the client
/// asked for it, then the cost as an SSE comment and `[DONE]`.
struct OpenAiEncoder {
    wants_usage: bool,
    request_id: String,
}

impl Encoder for OpenAiEncoder {
    fn chunk(&mut self, chunk: &Chunk) -> Vec<Bytes> {
        match chunk {
            Chunk::OpenAi { .. } if chunk.usage_only() && !self.wants_usage => Vec::new(),
            Chunk::OpenAi { json, .. } => vec![sse::data_frame(json)],
            // An OpenAI operation is never answered in Anthropic's format.
            Chunk::Anthropic { .. } => Vec::new(),
        }
    }

    fn error(&mut self, e: &Error) -> Vec<Bytes> {
        let (_, body) = openai_body(e, Some(&self.request_id));
        vec![sse::data_frame(body.to_string().as_bytes())]
    }

    fn end(&mut self, cost: Cost) -> Vec<Bytes> {
        vec![
            Bytes::from(format!(": {COST_HEADER}={cost}\n\n")),
            Bytes::from_static(sse::DONE_FRAME),
        ]
    }
}

/// Anthropic's format: events passed through from an Anthropic deployment
/// as they came, or translated from another provider's OpenAI chunks as
/// they arrive.
struct AnthropicEncoder {
    events: ChunksToEvents,
    /// Whether the stream is an Anthropic deployment's own (it closed
    /// itself); otherwise the translation closes it.
    passed_through: bool,
    request_id: String,
}

fn event_frames(events: Vec<StreamEvent>) -> Vec<Bytes> {
    events
        .into_iter()
        .filter_map(|event| {
            let data = serde_json::to_vec(&event).ok()?;
            Some(sse::named_frame(event.name(), &data))
        })
        .collect()
}

impl Encoder for AnthropicEncoder {
    fn chunk(&mut self, chunk: &Chunk) -> Vec<Bytes> {
        match chunk {
            Chunk::Anthropic { name, json, .. } => {
                self.passed_through = true;
                vec![sse::named_frame(name, json)]
            }
            Chunk::OpenAi { parsed, usage, .. } => {
                let frames = event_frames(self.events.on_chunk(parsed));
                if let Some(usage) = usage {
                    self.events.observe_usage(*usage);
                }
                frames
            }
        }
    }

    fn error(&mut self, e: &Error) -> Vec<Bytes> {
        let (_, body) = anthropic_body(e, Some(&self.request_id));
        vec![sse::named_frame("error", body.to_string().as_bytes())]
    }

    fn end(&mut self, _cost: Cost) -> Vec<Bytes> {
        if self.passed_through {
            Vec::new()
        } else {
            event_frames(self.events.finish())
        }
    }
}

pub fn openai_stream(
    chunks: ChunkStream,
    settlement: Settlement,
    wants_usage: bool,
    request_id: String,
) -> Response {
    relay(
        chunks,
        settlement,
        OpenAiEncoder {
            wants_usage,
            request_id,
        },
    )
}

pub fn anthropic_stream(
    chunks: ChunkStream,
    settlement: Settlement,
    model: &str,
    request_id: String,
) -> Response {
    let events = ChunksToEvents::new(model, &format!("msg_{request_id}"));
    relay(
        chunks,
        settlement,
        AnthropicEncoder {
            events,
            passed_through: false,
            request_id,
        },
    )
}

/// Sets the rate-limit and `x-meridian-*` headers of an answer.
pub fn answer_headers(response: &mut Response, node: &Node, ctx: &RequestCtx, answered: &Answered) {
    super::error_response::ratelimit_headers(response.headers_mut(), &answered.headroom);
    meridian_headers(
        response.headers_mut(),
        node,
        ctx,
        &answered.deployment,
        answered.upstream_time,
        answered.tries,
    );
    // For the request metrics, counted at the edge (`metrics::track`).
    response.extensions_mut().insert(ctx.asker.clone());
}
