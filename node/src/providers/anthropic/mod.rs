//! Anthropic's Messages API. Requests are translated from OpenAI chat
//! ([`translate`]), answers and stream events back to OpenAI's shapes
//! ([`stream`]), so any OpenAI client can call Claude models through the gateway.

pub mod stream;
pub mod translate;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{HeaderMap, HeaderValue, Method, header};

use super::openai::secret_header;
use super::stream::{Mapped, sse_chunks};
use super::{CallContext, Chunk, Completed, Outcome, Provider, upstream_error};
use crate::error::{Error, Result};
use crate::types::ChatRequest;
use crate::upstream::{self, UpstreamRequest};

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
            let body = translate::chat_to_messages(&req, &d.upstream_model, DEFAULT_MAX_TOKENS)?;
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
                body: Bytes::from(body.to_string()),
            };
            let resp = upstream::send(cx.upstream, request, &d.id, deadline).await?;
            if !resp.status.is_success() {
                let body = upstream::read_body(resp.body, &d.id, deadline).await?;
                return Err(upstream_error(resp.status, &resp.headers, &body));
            }
            let created = cx.clock.unix_secs();
            if !stream {
                let body = upstream::read_body(resp.body, &d.id, d.timeout).await?;
                let value: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
                    Error::protocol(&d.id, format!("response is not the expected JSON: {e}"))
                })?;
                let (chat, usage) =
                    translate::messages_response_to_chat(&value, &d.upstream_model, created)
                        .map_err(|reason| Error::protocol(&d.id, reason))?;
                return Ok(Outcome::Complete(Completed {
                    body: Bytes::from(chat.to_string()),
                    usage,
                }));
            }
            let body = upstream::with_idle_timeout(resp.body, d.id.clone(), d.stream_timeout);
            let mut events = stream::EventsToChunks::new(&d.upstream_model, created);
            let deployment = d.id.clone();
            Ok(Outcome::Stream(sse_chunks(
                body,
                d.id.clone(),
                move |event| {
                    let data: serde_json::Value =
                        serde_json::from_str(&event.data).map_err(|e| {
                            Error::protocol(&deployment, format!("stream event is not JSON: {e}"))
                        })?;
                    let name = event
                        .event
                        .as_deref()
                        .or_else(|| data.get("type").and_then(|t| t.as_str()))
                        .unwrap_or_default()
                        .to_owned();
                    let chunks =
                        events
                            .on_event(&name, &data)
                            .map_err(|message| Error::UpstreamStatus {
                                status: 500,
                                message,
                                kind: None,
                                code: None,
                                retry_after: None,
                                rejection: None,
                            })?;
                    let mut out: Vec<Chunk> = chunks
                        .iter()
                        .map(|c| Chunk {
                            json: Bytes::from(c.to_string()),
                            usage: None,
                            usage_only: false,
                        })
                        .collect();
                    if name == "message_stop" {
                        out.push(Chunk {
                            json: Bytes::from(events.usage_chunk().to_string()),
                            usage: Some(events.usage()),
                            usage_only: true,
                        });
                        return Ok(Mapped::End(out));
                    }
                    Ok(Mapped::Chunks(out))
                },
            )))
        })
    }
}
