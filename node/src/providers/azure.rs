//! Azure OpenAI: the OpenAI wire format addressed by deployment
//! (`/openai/deployments/{name}/...?api-version=`) and authenticated with an
//! `api-key` header.

use futures_util::future::BoxFuture;
use http::HeaderMap;

use super::openai::{chat, completion, embeddings, json_headers, secret_header};
use super::{CallContext, Completed, Outcome, Provider};
use crate::config::Deployment;
use crate::error::Result;
use crate::wire::openai::{ChatRequest, CompletionRequest, EmbeddingsRequest};

pub struct Azure;

impl Provider for Azure {
    fn chat<'a>(&'a self, cx: CallContext<'a>, req: ChatRequest) -> BoxFuture<'a, Result<Outcome>> {
        Box::pin(async move {
            chat(
                cx,
                req,
                url(cx.deployment, "chat/completions"),
                headers(cx.deployment)?,
            )
            .await
        })
    }

    fn completion<'a>(
        &'a self,
        cx: CallContext<'a>,
        req: CompletionRequest,
    ) -> BoxFuture<'a, Result<Outcome>> {
        Box::pin(async move {
            completion(
                cx,
                req,
                url(cx.deployment, "completions"),
                headers(cx.deployment)?,
            )
            .await
        })
    }

    fn embeddings<'a>(
        &'a self,
        cx: CallContext<'a>,
        req: EmbeddingsRequest,
    ) -> BoxFuture<'a, Result<Completed>> {
        Box::pin(async move {
            embeddings(
                cx,
                req,
                url(cx.deployment, "embeddings"),
                headers(cx.deployment)?,
            )
            .await
        })
    }
}

fn url(d: &Deployment, operation: &str) -> String {
    format!(
        "{}/openai/deployments/{}/{operation}?api-version={}",
        d.api_base,
        d.upstream_model,
        d.api_version.as_deref().unwrap_or_default()
    )
}

fn headers(d: &Deployment) -> Result<HeaderMap> {
    let mut headers = json_headers();
    if let Some(key) = &d.api_key {
        headers.insert("api-key", secret_header(key.expose())?);
    }
    Ok(headers)
}
