//! `GET /metrics`, and the edge's count of every LLM request by the status
//! it was answered with.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};

use super::error_response::{ApiError, Format, class_name};
use super::extract::Auth;
use crate::error::Error;
use crate::metrics::labels::Class;
use crate::metrics::{Asker, Ended};
use crate::node::Node;

/// Counts an LLM request once its answer's head is out: who asked, for
/// what, on which route, and the status. The handler (or its error) leaves
/// the labels in the response; a request refused before it was read (no
/// key, a body too large) is counted with none.
pub async fn track(State(node): State<Arc<Node>>, req: Request, next: Next) -> Response {
    let route = route_of(req.uri().path());
    let response = next.run(req).await;
    let status = response.status().as_u16();
    let extensions = response.extensions();
    let class = (status >= 400).then(|| {
        extensions
            .get::<Class>()
            .copied()
            .unwrap_or(Class(class_name(status)))
    });
    let ended = Ended { status, class };
    match extensions.get::<Asker>() {
        Some(asker) => node.metrics.request(asker, route, &ended),
        None => node.metrics.request(&node.metrics.nobody(), route, &ended),
    }
    response
}

/// The `route` label: the LLM routes by name, as LiteLLM labels them.
fn route_of(path: &str) -> &'static str {
    match path.strip_prefix("/v1").unwrap_or(path) {
        "/chat/completions" => "/chat/completions",
        "/completions" => "/completions",
        "/embeddings" => "/embeddings",
        "/messages" => "/v1/messages",
        _ => "other",
    }
}

/// `GET /metrics`: every family, in Prometheus's text format. Admins and
/// the master key only, unless `require_auth_for_metrics_endpoint: false`.
pub async fn scrape(State(node): State<Arc<Node>>, req: Request) -> Result<Response, ApiError> {
    if !node.metrics.on() {
        return Err(ApiError::new(
            Error::Disabled { feature: "metrics" },
            Format::OpenAi,
        ));
    }
    if node.metrics_require_auth {
        let (mut parts, _) = req.into_parts();
        let Auth(principal) = Auth::from_request_parts(&mut parts, &node).await?;
        if !principal.may_read_all() {
            return Err(ApiError::new(
                Error::Forbidden("only admins may read /metrics".into()),
                Format::OpenAi,
            ));
        }
    }
    let body = crate::metrics::render(&node).map_err(|e| {
        ApiError::new(
            Error::Internal(format!("encoding metrics: {e}")),
            Format::OpenAi,
        )
    })?;
    let mut response = body.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
    );
    *response.status_mut() = StatusCode::OK;
    Ok(response)
}
