//! Provider adapters: one module per provider behind one trait, [`Provider`].
//!
//! An adapter translates the gateway's OpenAI-format request into its provider's
//! wire format, sends it through the [`UpstreamClient`] it is given (never a
//! client of its own, so simulations can swap the network), and translates the
//! answer back: a whole body or a stream of chunks, with the usage the
//! pricing needs. Wire types and translations live in [`crate::wire`].
//!
//! An answer comes back in the format the operation was asked in: OpenAI's
//! for chat, completions and embeddings, Anthropic's for
//! [`Provider::messages`] — except a Messages stream from a provider that
//! is not Anthropic, whose OpenAI chunks the edge turns into events as they
//! arrive.

pub mod anthropic;
pub mod azure;
pub mod mock;
pub mod openai;
mod stream;

use std::borrow::Cow;
use std::pin::Pin;

use bytes::Bytes;
use futures_util::Stream;
use futures_util::future::BoxFuture;
use http::HeaderMap;

use crate::clock::Clock;
use crate::config::{Deployment, ProviderKind};
use crate::error::{Error, Rejection, Result};
use crate::upstream::UpstreamClient;
use crate::wire::anthropic::read_request::MessagesRequest;
use crate::wire::anthropic::response;
use crate::wire::openai::{
    ChatChunk, ChatCompletion, ChatRequest, CompletionRequest, EmbeddingsRequest, Usage,
};

/// What an adapter needs for one call.
#[derive(Clone, Copy)]
pub struct CallContext<'a> {
    pub deployment: &'a Deployment,
    pub upstream: &'a dyn UpstreamClient,
    pub clock: &'a dyn Clock,
    /// The `max_tokens` to send when the request set none (a `strict` limit
    /// needs its worst case bounded); `None`: send the request as it is.
    pub output_cap: Option<u64>,
}

/// A finished (non-streaming) answer: an OpenAI-shaped JSON body and its usage.
#[derive(Debug)]
pub struct Completed {
    pub body: Bytes,
    pub usage: Usage,
}

/// One event of a stream, parsed once where it was read.
#[derive(Debug, Clone)]
pub enum Chunk {
    /// An OpenAI chunk (`chat.completion.chunk` or `text_completion`): the
    /// bytes an OpenAI client is sent (the upstream's own, when it speaks
    /// OpenAI), and the same chunk parsed.
    OpenAi {
        json: Bytes,
        parsed: Box<ChatChunk>,
        /// Usage, if this chunk reports it (with what the OpenAI shape
        /// cannot carry, when translated from another format).
        usage: Option<Usage>,
    },
    /// An Anthropic event passed through: its SSE name and its bytes as the
    /// upstream sent them.
    Anthropic {
        name: Cow<'static, str>,
        json: Bytes,
        /// The stream's usage so far, on the events that report it.
        usage: Option<Usage>,
    },
}

impl Chunk {
    pub fn usage(&self) -> Option<Usage> {
        match self {
            Chunk::OpenAi { usage, .. } | Chunk::Anthropic { usage, .. } => *usage,
        }
    }

    /// A chunk that carries only usage (`"choices": []`). The gateway always
    /// asks upstreams for usage so it can price streams exactly; it forwards
    /// these only to clients that asked with `stream_options.include_usage`.
    pub fn usage_only(&self) -> bool {
        matches!(self, Chunk::OpenAi { parsed, .. } if parsed.usage_only())
    }

    /// An OpenAI chunk: written once, from a chunk the gateway made.
    pub fn openai(parsed: ChatChunk, usage: Option<Usage>) -> Result<Self> {
        let json = serde_json::to_vec(&parsed)
            .map_err(|e| Error::Internal(format!("encoding a stream chunk: {e}")))?;
        Ok(Chunk::OpenAi {
            json: Bytes::from(json),
            parsed: Box::new(parsed),
            usage,
        })
    }
}

pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<Chunk>> + Send>>;

pub enum Outcome {
    Complete(Completed),
    Stream(ChunkStream),
}

pub trait Provider: Send + Sync + 'static {
    fn chat<'a>(&'a self, cx: CallContext<'a>, req: ChatRequest) -> BoxFuture<'a, Result<Outcome>>;

    /// Anthropic's Messages API. Any provider serves it through its chat
    /// call, the whole answer translated back here (a stream is translated
    /// at the edge); the Anthropic adapter passes the body through instead.
    fn messages<'a>(
        &'a self,
        cx: CallContext<'a>,
        req: &'a MessagesRequest,
    ) -> BoxFuture<'a, Result<Outcome>> {
        Box::pin(async move {
            if let Some(refusal) = &req.no_chat_form {
                return Err(refusal.error());
            }
            let model = &req.chat.model;
            match self.chat(cx, req.chat.clone()).await? {
                Outcome::Complete(done) => {
                    let d = cx.deployment;
                    let chat: ChatCompletion = serde_json::from_slice(&done.body).map_err(|e| {
                        Error::protocol(&d.id, format!("response is not the expected JSON: {e}"))
                    })?;
                    let message = response::from_chat(chat, model, Some(done.usage))
                        .map_err(|reason| Error::protocol(&d.id, reason))?;
                    let body = serde_json::to_vec(&message)
                        .map_err(|e| Error::Internal(format!("encoding a message: {e}")))?;
                    Ok(Outcome::Complete(Completed {
                        body: Bytes::from(body),
                        usage: done.usage,
                    }))
                }
                stream => Ok(stream),
            }
        })
    }

    fn completion<'a>(
        &'a self,
        cx: CallContext<'a>,
        _req: CompletionRequest,
    ) -> BoxFuture<'a, Result<Outcome>> {
        Box::pin(async move {
            Err(unsupported(
                cx.deployment,
                "text completions (/v1/completions)",
            ))
        })
    }

    fn embeddings<'a>(
        &'a self,
        cx: CallContext<'a>,
        _req: EmbeddingsRequest,
    ) -> BoxFuture<'a, Result<Completed>> {
        Box::pin(async move { Err(unsupported(cx.deployment, "embeddings")) })
    }
}

pub fn unsupported(d: &Deployment, operation: &'static str) -> Error {
    Error::Unsupported {
        model: d.model_group.clone(),
        operation,
    }
}

/// The adapter for each provider kind.
pub struct Providers {
    openai: openai::OpenAi,
    azure: azure::Azure,
    anthropic: anthropic::Anthropic,
    mock: mock::Mock,
}

impl Default for Providers {
    fn default() -> Self {
        Self {
            openai: openai::OpenAi,
            azure: azure::Azure,
            anthropic: anthropic::Anthropic,
            mock: mock::Mock,
        }
    }
}

impl Providers {
    pub fn get(&self, kind: ProviderKind) -> &dyn Provider {
        match kind {
            ProviderKind::OpenAi => &self.openai,
            ProviderKind::Azure => &self.azure,
            ProviderKind::Anthropic => &self.anthropic,
            ProviderKind::Mock => &self.mock,
        }
    }
}

/// An error a provider reported inside a stream that had already started.
pub fn stream_error(message: String) -> Error {
    Error::UpstreamStatus {
        status: 500,
        message,
        kind: None,
        code: None,
        retry_after: None,
        rejection: None,
    }
}

/// Turns a provider's error response into [`Error::UpstreamStatus`], keeping its
/// own message. Both OpenAI (`{"error":{"message","type","code"}}`) and Anthropic
/// (`{"type":"error","error":{"type","message"}}`) put the details under `error`.
pub fn upstream_error(status: http::StatusCode, headers: &HeaderMap, body: &[u8]) -> Error {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let err = parsed.as_ref().and_then(|v| v.get("error"));
    let text = |k: &str| {
        err.and_then(|e| e.get(k))
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    let message = text("message")
        .or_else(|| err.and_then(|e| e.as_str()).map(str::to_owned))
        .unwrap_or_else(|| {
            let snippet: String = String::from_utf8_lossy(body).chars().take(500).collect();
            if snippet.trim().is_empty() {
                format!("upstream returned HTTP {}", status.as_u16())
            } else {
                snippet
            }
        });
    let code = err.and_then(|e| e.get("code")).and_then(|c| match c {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    });
    let kind = text("type");
    let rejection = Rejection::read(status.as_u16(), code.as_deref(), kind.as_deref(), &message);
    Error::UpstreamStatus {
        status: status.as_u16(),
        message,
        kind,
        code,
        rejection,
        retry_after: headers
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|s| s.ceil() as u64),
    }
}

/// Rough token count for `text_bytes` bytes of text (≈4 bytes per token),
/// for estimates only — admission's reservation, the mock provider's usage;
/// real usage always comes from the provider.
pub fn estimate_tokens(text_bytes: usize) -> u64 {
    (text_bytes as u64).div_ceil(4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_errors_keep_the_providers_message() {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("2.5"),
        );
        let openai = br#"{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}"#;
        match upstream_error(http::StatusCode::TOO_MANY_REQUESTS, &headers, openai) {
            Error::UpstreamStatus {
                status,
                message,
                kind,
                code,
                retry_after,
                rejection: None,
            } => {
                assert_eq!((status, message.as_str()), (429, "Rate limit reached"));
                assert_eq!(
                    (kind.as_deref(), code.as_deref(), retry_after),
                    (Some("requests"), Some("rate_limit_exceeded"), Some(3))
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        let anthropic =
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        let e = upstream_error(
            http::StatusCode::from_u16(529).unwrap(),
            &HeaderMap::new(),
            anthropic,
        );
        assert_eq!(e.to_string(), "Overloaded");
        let e = upstream_error(http::StatusCode::BAD_GATEWAY, &HeaderMap::new(), b"");
        assert_eq!(e.to_string(), "upstream returned HTTP 502");
    }
}
