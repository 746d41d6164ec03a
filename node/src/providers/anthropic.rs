//! Anthropic's Messages API. An OpenAI client's chat request is translated
//! to a Messages body and the answer back (`wire::anthropic`); a
//! `/v1/messages` client's body passes through with only `model` changed,
//! so provider-only fields (`top_k`, `thinking`, …) reach Anthropic and its
//! answer (or stream) comes back as Anthropic sent it.

use std::borrow::Cow;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{HeaderMap, HeaderValue, Method, header};
use serde_json::Value;

use super::openai::secret_header;
use super::stream::{Mapped, sse_chunks};
use super::{CallContext, Chunk, Completed, Outcome, Provider, stream_error, upstream_error};
use crate::error::{Error, Result};
use crate::sse::SseEvent;
use crate::upstream::{self, UpstreamRequest, UpstreamResponse};
use crate::wire::anthropic::read_request::MessagesRequest;
use crate::wire::anthropic::stream::EventsToChunks;
use crate::wire::anthropic::{AnthropicUsage, Message, StreamEvent, response, write_request};
use crate::wire::openai::ChatRequest;

pub struct Anthropic;

/// The API version every request declares.
const ANTHROPIC_VERSION: &str = "2023-06-01";
/// Anthropic requires `max_tokens`; OpenAI clients often leave it out.
const DEFAULT_MAX_TOKENS: u32 = 4096;

impl Provider for Anthropic {
    fn chat<'a>(&'a self, cx: CallContext<'a>, req: ChatRequest) -> BoxFuture<'a, Result<Outcome>> {
        Box::pin(async move {
            let d = cx.deployment;
            let stream = req.is_stream();
            let body =
                write_request::chat_to_messages(&req, &d.upstream_model, DEFAULT_MAX_TOKENS)?;
            let body = serde_json::to_vec(&body)
                .map_err(|e| Error::Internal(format!("encoding request: {e}")))?;
            let resp = send(cx, Bytes::from(body), stream).await?;
            let created = cx.clock.unix_secs();
            if !stream {
                let body = upstream::read_body(resp.body, &d.id, d.timeout).await?;
                let message: Message = parse(&d.id, &body)?;
                let (chat, usage) = response::to_chat(message, &d.upstream_model, created)
                    .map_err(|reason| Error::protocol(&d.id, reason))?;
                let body = serde_json::to_vec(&chat)
                    .map_err(|e| Error::Internal(format!("encoding an answer: {e}")))?;
                return Ok(Outcome::Complete(Completed {
                    body: Bytes::from(body),
                    usage,
                }));
            }
            let mut events = EventsToChunks::new(&d.upstream_model, created);
            Ok(Outcome::Stream(event_stream(cx, resp, move |_, event| {
                let mut out = Vec::new();
                for chunk in events.on_event(&event).map_err(stream_error)? {
                    out.push(Chunk::openai(chunk, None)?);
                }
                if event == StreamEvent::MessageStop {
                    out.push(Chunk::openai(events.usage_chunk(), Some(events.usage()))?);
                    return Ok(Mapped::End(out));
                }
                Ok(Mapped::Chunks(out))
            })))
        })
    }

    fn messages<'a>(
        &'a self,
        cx: CallContext<'a>,
        req: &'a MessagesRequest,
    ) -> BoxFuture<'a, Result<Outcome>> {
        Box::pin(async move {
            let d = cx.deployment;
            let stream = req.chat.is_stream();
            let mut body = req.body.clone();
            body.insert("model".into(), Value::String(d.upstream_model.clone()));
            let body = serde_json::to_vec(&body)
                .map_err(|e| Error::Internal(format!("encoding request: {e}")))?;
            let resp = send(cx, Bytes::from(body), stream).await?;
            if !stream {
                let body = upstream::read_body(resp.body, &d.id, d.timeout).await?;
                let probe: response::UsageProbe = parse(&d.id, &body)?;
                return Ok(Outcome::Complete(Completed {
                    usage: probe.usage(),
                    body,
                }));
            }
            let mut usage = AnthropicUsage::default();
            Ok(Outcome::Stream(event_stream(
                cx,
                resp,
                move |raw, event| {
                    let seen = event.usage().map(|fields| {
                        usage.update(fields);
                        usage.to_usage()
                    });
                    let name = match &event {
                        StreamEvent::Other => Cow::Owned(raw.event.unwrap_or_default()),
                        known => Cow::Borrowed(known.name()),
                    };
                    let chunk = Chunk::Anthropic {
                        name,
                        json: Bytes::from(raw.data),
                        usage: seen,
                    };
                    if event == StreamEvent::MessageStop {
                        return Ok(Mapped::End(vec![chunk]));
                    }
                    Ok(Mapped::Chunks(vec![chunk]))
                },
            )))
        })
    }
}

/// Sends a Messages body; an error status becomes the provider's error.
async fn send(cx: CallContext<'_>, body: Bytes, stream: bool) -> Result<UpstreamResponse> {
    let d = cx.deployment;
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        "anthropic-version",
        HeaderValue::from_static(ANTHROPIC_VERSION),
    );
    if let Some(key) = &d.api_key {
        headers.insert("x-api-key", secret_header(key.expose())?);
    }
    let deadline = if stream { d.stream_timeout } else { d.timeout };
    let request = UpstreamRequest {
        method: Method::POST,
        url: format!("{}/v1/messages", d.api_base),
        headers,
        body,
    };
    let resp = upstream::send(cx.upstream, request, &d.id, deadline).await?;
    if !resp.status.is_success() {
        let body = upstream::read_body(resp.body, &d.id, deadline).await?;
        return Err(upstream_error(resp.status, &resp.headers, &body));
    }
    Ok(resp)
}

fn parse<T: serde::de::DeserializeOwned>(deployment: &str, body: &[u8]) -> Result<T> {
    serde_json::from_slice(body).map_err(|e| {
        Error::protocol(
            deployment,
            format!("response is not the expected JSON: {e}"),
        )
    })
}

/// An Anthropic event stream, each event parsed once and handed to `map`
/// with its raw SSE event; an `error` event ends the stream with
/// Anthropic's message.
fn event_stream<F>(cx: CallContext<'_>, resp: UpstreamResponse, mut map: F) -> super::ChunkStream
where
    F: FnMut(SseEvent, StreamEvent) -> Result<Mapped> + Send + 'static,
{
    let d = cx.deployment;
    let body = upstream::with_idle_timeout(resp.body, d.id.clone(), d.stream_timeout);
    let deployment = d.id.clone();
    sse_chunks(body, d.id.clone(), move |raw| {
        let event: StreamEvent = serde_json::from_str(&raw.data).map_err(|e| {
            Error::protocol(
                &deployment,
                format!("stream event is not the expected JSON: {e}"),
            )
        })?;
        if let StreamEvent::Error { error } = &event {
            return Err(stream_error(error.message.clone().unwrap_or_else(|| {
                "Anthropic stream reported an error without a message".into()
            })));
        }
        map(raw, event)
    })
}
