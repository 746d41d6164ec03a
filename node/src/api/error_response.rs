//! The edge: where an [`Error`] becomes an HTTP status and a body, in OpenAI's
//! shape (`{"error":{"message","type","param","code"}}`) or, on Anthropic-format
//! routes, Anthropic's (`{"type":"error","error":{"type","message"}}`).
//! Gateway-side failures are logged in full and answered without internals.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode};
use serde_json::json;

use crate::admission::{Headroom, LimitKind};
use crate::error::Error;
use crate::metrics::Asker;
use crate::metrics::labels::Class;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    OpenAi,
    Anthropic,
}

impl Format {
    /// Anthropic-format routes answer errors in Anthropic's shape.
    pub fn for_path(path: &str) -> Self {
        if path == "/v1/messages" || path == "/messages" {
            Format::Anthropic
        } else {
            Format::OpenAi
        }
    }
}

#[derive(Debug)]
pub struct ApiError {
    pub error: Error,
    pub format: Format,
    pub request_id: Option<String>,
    /// Who asked and for what, when known (the metrics' labels).
    pub asker: Option<Box<Asker>>,
}

impl ApiError {
    pub fn new(error: Error, format: Format) -> Self {
        Self {
            error,
            format,
            request_id: None,
            asker: None,
        }
    }

    pub fn with_request_id(mut self, id: &str) -> Self {
        self.request_id = Some(id.to_owned());
        self
    }

    /// The error of a request by an authenticated caller.
    pub fn of(error: Error, format: Format, ctx: &crate::pipeline::RequestCtx) -> Self {
        Self {
            asker: Some(Box::new(ctx.asker.clone())),
            ..Self::new(error, format).with_request_id(&ctx.request_id)
        }
    }
}

/// The status and LiteLLM exception class name an error is counted under
/// in metrics.
pub fn reported(e: &Error) -> (u16, &'static str) {
    let status = classify(e).0.as_u16();
    let name = match e {
        Error::LimitExceeded(x) if x.kind == LimitKind::Budget => "BudgetExceededError",
        Error::UpstreamUnreachable { .. } => "APIConnectionError",
        _ => class_name(status),
    };
    (status, name)
}

/// LiteLLM's exception class for a status (OpenAI's error classes).
pub fn class_name(status: u16) -> &'static str {
    match status {
        400 | 413 => "BadRequestError",
        401 => "AuthenticationError",
        403 => "PermissionDeniedError",
        404 => "NotFoundError",
        408 | 504 => "Timeout",
        422 => "UnprocessableEntityError",
        429 => "RateLimitError",
        500 => "InternalServerError",
        503 => "ServiceUnavailableError",
        _ => "APIError",
    }
}

/// Status and OpenAI `type` for each error.
fn classify(e: &Error) -> (StatusCode, &'static str) {
    match e {
        Error::InvalidRequest { .. } | Error::ModelNotFound { .. } | Error::Unsupported { .. } => {
            (StatusCode::BAD_REQUEST, "invalid_request_error")
        }
        Error::MissingKey | Error::InvalidKey | Error::KeyRefused(_) => {
            (StatusCode::UNAUTHORIZED, "auth_error")
        }
        Error::Forbidden(_) | Error::ModelNotAllowed { .. } => {
            (StatusCode::FORBIDDEN, "permission_error")
        }
        Error::NotFound(_) => (StatusCode::NOT_FOUND, "not_found_error"),
        Error::Conflict(_) => (StatusCode::BAD_REQUEST, "invalid_request_error"),
        Error::Consensus(
            meridian_consensus::Error::NoLeader(_)
            | meridian_consensus::Error::Uncertain
            | meridian_consensus::Error::Unreachable(_),
        ) => (StatusCode::SERVICE_UNAVAILABLE, "service_unavailable"),
        Error::StorageFailing | Error::Consensus(meridian_consensus::Error::WritesFailing) => {
            (StatusCode::SERVICE_UNAVAILABLE, "service_unavailable")
        }
        Error::PayloadTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "invalid_request_error"),
        Error::RequestTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "invalid_request_error"),
        Error::LimitExceeded(e) => (
            StatusCode::TOO_MANY_REQUESTS,
            match e.kind {
                LimitKind::Budget => "budget_exceeded",
                _ => "rate_limit_exceeded",
            },
        ),
        Error::Disabled { .. } => (StatusCode::FORBIDDEN, "permission_error"),
        Error::NoDeployments {
            retry_after: Some(_),
            ..
        } => (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error"),
        Error::NoDeployments { .. } => (StatusCode::BAD_REQUEST, "invalid_request_error"),
        Error::UpstreamStatus { status, .. } => {
            let code = StatusCode::from_u16(*status)
                .ok()
                .filter(|s| s.is_client_error() || s.is_server_error())
                .unwrap_or(StatusCode::BAD_GATEWAY);
            let kind = match code.as_u16() {
                400 | 404 | 409 | 413 | 422 => "invalid_request_error",
                401 => "authentication_error",
                403 => "permission_error",
                429 => "rate_limit_error",
                _ => "api_error",
            };
            (code, kind)
        }
        Error::UpstreamTimeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
        Error::UpstreamUnreachable { .. } | Error::UpstreamProtocol { .. } => {
            (StatusCode::BAD_GATEWAY, "api_error")
        }
        Error::Config { .. }
        | Error::Io { .. }
        | Error::Internal(_)
        | Error::Consensus(_)
        | Error::RightsUnreachable { .. }
        | Error::RightsLedger(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal_server_error"),
    }
}

/// Anthropic's error `type` for a status.
fn anthropic_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 413 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        _ => "api_error",
    }
}

/// `(status, OpenAI-shaped body)` for an error, used by the edge and by stream
/// error events.
pub fn openai_body(e: &Error, request_id: Option<&str>) -> (StatusCode, serde_json::Value) {
    let (status, default_kind) = classify(e);
    let message =
        if status == StatusCode::INTERNAL_SERVER_ERROR && e.side() == crate::error::Side::Gateway {
            match request_id {
                Some(id) => format!("Internal server error (request id {id})"),
                None => "Internal server error".to_owned(),
            }
        } else {
            e.to_string()
        };
    let (kind, param, code) = match e {
        Error::InvalidRequest { param, .. } => (
            default_kind.to_owned(),
            param.clone(),
            status.as_u16().to_string(),
        ),
        Error::ModelNotFound { .. } => (
            default_kind.to_owned(),
            Some("model".to_owned()),
            status.as_u16().to_string(),
        ),
        Error::UpstreamStatus { kind, code, .. } => (
            kind.clone().unwrap_or_else(|| default_kind.to_owned()),
            None,
            code.clone().unwrap_or_else(|| status.as_u16().to_string()),
        ),
        _ => (default_kind.to_owned(), None, status.as_u16().to_string()),
    };
    let body =
        json!({ "error": { "message": message, "type": kind, "param": param, "code": code } });
    (status, body)
}

pub fn anthropic_body(e: &Error, request_id: Option<&str>) -> (StatusCode, serde_json::Value) {
    let (status, openai) = openai_body(e, request_id);
    let message = openai
        .pointer("/error/message")
        .cloned()
        .unwrap_or_default();
    let body =
        json!({ "type": "error", "error": { "type": anthropic_type(status), "message": message } });
    (status, body)
}

/// Admin and other OpenAI-format routes use `?` on crate errors.
impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        ApiError::new(error, Format::OpenAi)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let id = self.request_id.as_deref();
        if self.error.side() == crate::error::Side::Gateway {
            tracing::error!(request_id = id.unwrap_or("-"), error = %self.error, "request failed inside the gateway");
        }
        let (status, body) = match self.format {
            Format::OpenAi => openai_body(&self.error, id),
            Format::Anthropic => anthropic_body(&self.error, id),
        };
        let mut response = (status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        if let Some(secs) = self.error.upstream_retry_after() {
            headers.insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Error::NoDeployments {
            retry_after: Some(d),
            ..
        } = &self.error
        {
            let secs = d.as_secs_f64().ceil().max(1.0) as u64;
            headers.insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Error::LimitExceeded(e) = &self.error {
            if let Some(secs) = e.retry_after_s {
                headers.insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
            }
            ratelimit_headers(headers, &e.headroom);
        }
        if let Some(Ok(v)) = id.map(HeaderValue::from_str) {
            headers.insert("x-request-id", v);
        }
        // For the request metrics, counted at the edge (`metrics::track`).
        let extensions = response.extensions_mut();
        extensions.insert(Class(reported(&self.error).1));
        if let Some(asker) = self.asker {
            extensions.insert(*asker);
        }
        response
    }
}

/// LiteLLM's (and OpenAI's) `x-ratelimit-*` headers for the tightest
/// request and token limits that applied.
pub fn ratelimit_headers(headers: &mut http::HeaderMap, headroom: &Headroom) {
    use http::HeaderName;
    // Names are static and numbers are written straight into header values:
    // no per-call name parsing or string formatting (this runs on every answer).
    const NAMES: [[HeaderName; 3]; 2] = [
        [
            HeaderName::from_static("x-ratelimit-limit-requests"),
            HeaderName::from_static("x-ratelimit-remaining-requests"),
            HeaderName::from_static("x-ratelimit-reset-requests"),
        ],
        [
            HeaderName::from_static("x-ratelimit-limit-tokens"),
            HeaderName::from_static("x-ratelimit-remaining-tokens"),
            HeaderName::from_static("x-ratelimit-reset-tokens"),
        ],
    ];
    let mut reset = None;
    for ([limit_name, remaining_name, reset_name], slot) in
        NAMES.into_iter().zip([headroom.requests, headroom.tokens])
    {
        let Some((limit, remaining)) = slot else {
            continue;
        };
        headers.insert(limit_name, HeaderValue::from(limit));
        headers.insert(remaining_name, HeaderValue::from(remaining));
        let reset = reset.get_or_insert_with(|| {
            HeaderValue::try_from(format!("{}s", headroom.reset_s))
                .unwrap_or(HeaderValue::from_static("0s"))
        });
        headers.insert(reset_name, reset.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn statuses_and_shapes() {
        let (s, b) = openai_body(&Error::invalid("bad", Some("messages[0].role")), None);
        assert_eq!(s, 400);
        assert_eq!(
            b,
            json!({"error": {"message": "bad", "type": "invalid_request_error", "param": "messages[0].role", "code": "400"}})
        );
        assert_eq!(openai_body(&Error::InvalidKey, None).0, 401);
        assert_eq!(
            openai_body(&Error::PayloadTooLarge { limit_bytes: 1 }, None).0,
            413
        );
        let timeout = Error::UpstreamTimeout {
            deployment: "d".into(),
            after: Duration::from_secs(1),
        };
        assert_eq!(openai_body(&timeout, None).0, 504);
        assert_eq!(openai_body(&Error::protocol("d", "junk"), None).0, 502);
        let upstream = Error::UpstreamStatus {
            status: 429,
            message: "slow down".into(),
            kind: None,
            code: None,
            retry_after: None,
            rejection: None,
        };
        let (s, b) = anthropic_body(&upstream, None);
        assert_eq!(s, 429);
        assert_eq!(
            b,
            json!({"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}})
        );
    }

    #[test]
    fn internal_errors_do_not_leak() {
        let e = Error::io("reading /etc/secret/path", std::io::Error::other("denied"));
        let (s, b) = openai_body(&e, Some("abc"));
        assert_eq!(s, 500);
        assert_eq!(
            b["error"]["message"],
            "Internal server error (request id abc)"
        );
    }
}
