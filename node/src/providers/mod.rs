//! Provider adapters: one module per provider behind one trait, [`Provider`].
//!
//! An adapter translates the gateway's OpenAI-format request into its provider's
//! wire format, sends it through the [`UpstreamClient`] it is given (never a
//! client of its own, so simulations can swap the network), and translates the
//! answer back: a whole body or a stream of OpenAI chunks, with the usage the
//! pricing needs. Wire structs stay private to each module.

pub mod anthropic;
pub mod azure;
pub mod mock;
pub mod openai;
mod stream;

use std::pin::Pin;

use bytes::Bytes;
use futures_util::Stream;
use futures_util::future::BoxFuture;
use http::HeaderMap;

use crate::clock::Clock;
use crate::config::{Deployment, ProviderKind};
use crate::error::{Error, Rejection, Result};
use crate::types::{ChatRequest, CompletionRequest, EmbeddingsRequest, Usage};
use crate::upstream::UpstreamClient;

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

/// One OpenAI-format stream chunk (`chat.completion.chunk` or `text_completion`).
#[derive(Debug, Clone)]
pub struct Chunk {
    /// The chunk's JSON, without SSE framing.
    pub json: Bytes,
    /// Usage, if this chunk carries it.
    pub usage: Option<Usage>,
    /// A chunk that carries only usage (`"choices": []`). The gateway always asks
    /// upstreams for usage so it can price streams exactly; it forwards these
    /// only to clients that asked with `stream_options.include_usage`.
    pub usage_only: bool,
}

pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<Chunk>> + Send>>;

pub enum Outcome {
    Complete(Completed),
    Stream(ChunkStream),
}

pub trait Provider: Send + Sync + 'static {
    fn chat<'a>(&'a self, cx: CallContext<'a>, req: ChatRequest) -> BoxFuture<'a, Result<Outcome>>;

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
