//! OpenAI, and every server that speaks its API (vLLM, Ollama, Groq, Together,
//! ...): the request is already in the right format, so the adapter swaps the
//! model name, always asks for stream usage, and reads usage back out.

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{HeaderMap, HeaderValue, Method, header};

use super::stream::{Mapped, sse_chunks};
use super::{CallContext, Chunk, Completed, Outcome, Provider, stream_error, upstream_error};
use crate::config::Deployment;
use crate::error::{Error, Result};
use crate::upstream::{self, UpstreamRequest};
use crate::wire::openai::{
    ChatChunk, ChatRequest, CompletionRequest, EmbeddingsRequest, StreamOptions, Usage, UsageProbe,
};

pub struct OpenAi;

impl Provider for OpenAi {
    fn chat<'a>(&'a self, cx: CallContext<'a>, req: ChatRequest) -> BoxFuture<'a, Result<Outcome>> {
        Box::pin(async move {
            let url = format!("{}/chat/completions", cx.deployment.api_base);
            chat(cx, req, url, bearer_headers(cx.deployment)?).await
        })
    }

    fn completion<'a>(
        &'a self,
        cx: CallContext<'a>,
        req: CompletionRequest,
    ) -> BoxFuture<'a, Result<Outcome>> {
        Box::pin(async move {
            let url = format!("{}/completions", cx.deployment.api_base);
            completion(cx, req, url, bearer_headers(cx.deployment)?).await
        })
    }

    fn embeddings<'a>(
        &'a self,
        cx: CallContext<'a>,
        req: EmbeddingsRequest,
    ) -> BoxFuture<'a, Result<Completed>> {
        Box::pin(async move {
            let url = format!("{}/embeddings", cx.deployment.api_base);
            embeddings(cx, req, url, bearer_headers(cx.deployment)?).await
        })
    }
}

fn bearer_headers(d: &Deployment) -> Result<HeaderMap> {
    let mut headers = json_headers();
    if let Some(key) = &d.api_key {
        headers.insert(
            header::AUTHORIZATION,
            secret_header(&format!("Bearer {}", key.expose()))?,
        );
    }
    Ok(headers)
}

pub(super) fn json_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers
}

/// A header value carrying a credential: marked sensitive so it never appears
/// in debug output.
pub(super) fn secret_header(value: &str) -> Result<HeaderValue> {
    let mut v = HeaderValue::from_str(value).map_err(|_| {
        Error::Internal("an api_key contains characters not allowed in a header".into())
    })?;
    v.set_sensitive(true);
    Ok(v)
}

/// The chat call shared by OpenAI and Azure (which differ only in URL and auth).
pub(super) async fn chat(
    cx: CallContext<'_>,
    mut req: ChatRequest,
    url: String,
    headers: HeaderMap,
) -> Result<Outcome> {
    req.model = cx.deployment.upstream_model.clone();
    let stream = req.is_stream();
    if stream {
        // Always ask for usage: the gateway prices every stream exactly, and
        // strips the usage chunk again for clients that did not ask for it.
        req.stream_options
            .get_or_insert_with(StreamOptions::default)
            .include_usage = Some(true);
    }
    send(cx, url, headers, encode(&req)?, stream).await
}

pub(super) async fn completion(
    cx: CallContext<'_>,
    mut req: CompletionRequest,
    url: String,
    headers: HeaderMap,
) -> Result<Outcome> {
    req.model = cx.deployment.upstream_model.clone();
    let stream = req.stream.unwrap_or(false);
    if stream {
        req.stream_options
            .get_or_insert_with(StreamOptions::default)
            .include_usage = Some(true);
    }
    send(cx, url, headers, encode(&req)?, stream).await
}

fn encode(body: &impl serde::Serialize) -> Result<Bytes> {
    serde_json::to_vec(body)
        .map(Bytes::from)
        .map_err(|e| Error::Internal(format!("encoding request: {e}")))
}

pub(super) async fn embeddings(
    cx: CallContext<'_>,
    mut req: EmbeddingsRequest,
    url: String,
    headers: HeaderMap,
) -> Result<Completed> {
    req.model = cx.deployment.upstream_model.clone();
    let body =
        serde_json::to_vec(&req).map_err(|e| Error::Internal(format!("encoding request: {e}")))?;
    match send(cx, url, headers, body.into(), false).await? {
        Outcome::Complete(c) => Ok(c),
        Outcome::Stream(_) => Err(Error::Internal("embeddings never stream".into())),
    }
}

async fn send(
    cx: CallContext<'_>,
    url: String,
    headers: HeaderMap,
    body: Bytes,
    stream: bool,
) -> Result<Outcome> {
    let d = cx.deployment;
    let deadline = if stream { d.stream_timeout } else { d.timeout };
    let req = UpstreamRequest {
        method: Method::POST,
        url,
        headers,
        body,
    };
    let resp = upstream::send(cx.upstream, req, &d.id, deadline).await?;
    if !resp.status.is_success() {
        let body = upstream::read_body(resp.body, &d.id, deadline).await?;
        return Err(upstream_error(resp.status, &resp.headers, &body));
    }
    if !stream {
        let body = upstream::read_body(resp.body, &d.id, d.timeout).await?;
        let probe: UsageProbe = serde_json::from_slice(&body).map_err(|e| {
            Error::protocol(&d.id, format!("response is not the expected JSON: {e}"))
        })?;
        let usage = probe.usage.map(Usage::from).unwrap_or_default();
        return Ok(Outcome::Complete(Completed { body, usage }));
    }
    let body = upstream::with_idle_timeout(resp.body, d.id.clone(), d.stream_timeout);
    let deployment = d.id.clone();
    Ok(Outcome::Stream(sse_chunks(
        body,
        d.id.clone(),
        move |event| {
            let data = event.data.trim();
            if data == "[DONE]" {
                return Ok(Mapped::End(Vec::new()));
            }
            let parsed: ChatChunk = serde_json::from_str(data).map_err(|e| {
                Error::protocol(
                    &deployment,
                    format!("stream chunk is not the expected JSON: {e}"),
                )
            })?;
            if let Some(message) = parsed.error_message() {
                return Err(stream_error(message));
            }
            // The upstream's own bytes go to OpenAI clients.
            let json = if data.len() == event.data.len() {
                Bytes::from(event.data)
            } else {
                Bytes::copy_from_slice(data.as_bytes())
            };
            Ok(Mapped::Chunks(vec![Chunk::OpenAi {
                json,
                usage: parsed.usage.clone().map(Usage::from),
                parsed: Box::new(parsed),
            }]))
        },
    )))
}
