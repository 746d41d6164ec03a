//! Request extractors: the caller's identity and a size-limited, typed JSON body
//! whose errors name the offending field. Both answer in the route's format.

use std::sync::Arc;

use axum::extract::{FromRequest, FromRequestParts, Request};
use bytes::Bytes;
use http::request::Parts;
use serde::de::DeserializeOwned;

use super::error_response::{ApiError, Format};
use crate::auth::Principal;
use crate::error::Error;
use crate::node::Node;
use crate::pipeline::RequestCtx;

/// When the request reached the gateway, stamped by the outermost layer so the
/// overhead header counts body reading and parsing too.
#[derive(Clone, Copy)]
pub struct Received(pub tokio::time::Instant);

pub async fn stamp_arrival(
    mut req: Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    req.extensions_mut()
        .insert(Received(tokio::time::Instant::now()));
    next.run(req).await
}

/// An authenticated LLM request's context: caller, request id (the caller's
/// `x-request-id` if it sent a sane one, else a fresh one) and arrival time.
pub struct Ctx(pub RequestCtx);

impl FromRequestParts<Arc<Node>> for Ctx {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, node: &Arc<Node>) -> Result<Self, ApiError> {
        let received = parts
            .extensions
            .get::<Received>()
            .map_or_else(tokio::time::Instant::now, |r| r.0);
        let Auth(principal) = Auth::from_request_parts(parts, node).await?;
        let request_id = parts
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
            .map_or_else(|| node.request_id(), str::to_owned);
        let tags = crate::tags::from_header(&parts.headers)
            .map_err(|e| ApiError::new(e, Format::for_path(parts.uri.path())))?;
        let asker = node.metrics.asker(node.metrics.who(&principal), "", false);
        Ok(Ctx(RequestCtx {
            request_id,
            principal,
            received,
            tags,
            asker,
        }))
    }
}

/// The authenticated caller.
pub struct Auth(pub Principal);

impl FromRequestParts<Arc<Node>> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, node: &Arc<Node>) -> Result<Self, ApiError> {
        let path = parts.uri.path();
        let fail = |e| ApiError::new(e, Format::for_path(path));
        let principal = node
            .auth
            .authenticate(&parts.headers, &node.metadata, node.clock.unix_secs())
            .map_err(fail)?;
        if !principal.may_call_route(path) {
            return Err(fail(Error::Forbidden(format!(
                "this key may not call {path}: it is limited by its allowed_routes or key_type"
            ))));
        }
        Ok(Auth(principal))
    }
}

/// A JSON body of type `T`: at most the node's `max_request_bytes` on the
/// LLM routes (prompts carry images), [`MAX_ADMIN_BODY_BYTES`] elsewhere; at
/// most [`MAX_JSON_VALUES`] JSON values; parsed within the node's parse
/// budget ([`ParseBudget`]).
pub struct JsonBody<T>(pub T);

/// The largest body an admin route reads: records are small.
pub const MAX_ADMIN_BODY_BYTES: usize = 1024 * 1024;

/// The most JSON values a body may hold. Parsed, a value takes tens of
/// bytes however short its text (`0,` is two): a body of small values is
/// what makes a parse costly, not its length.
pub const MAX_JSON_VALUES: usize = 1_000_000;

/// What a parsed value costs in memory, about, for the parse budget.
const BYTES_PER_VALUE: usize = 96;

/// Memory the node lets bodies being parsed take at once, in KiB permits: a
/// burst of costly bodies waits its turn instead of exhausting memory.
pub struct ParseBudget(tokio::sync::Semaphore);

impl ParseBudget {
    /// 256 MiB.
    const KIB: u32 = 256 * 1024;

    pub fn new() -> Self {
        Self(tokio::sync::Semaphore::new(Self::KIB as usize))
    }
}

impl Default for ParseBudget {
    fn default() -> Self {
        Self::new()
    }
}

fn is_llm_route(path: &str) -> bool {
    let path = path.strip_prefix("/v1").unwrap_or(path);
    matches!(
        path,
        "/chat/completions" | "/completions" | "/embeddings" | "/messages"
    )
}

/// How many JSON values `bytes` holds, counting no further than `limit + 1`
/// (values start at `[`, `{` and after `,`; string contents are skipped).
fn json_values(bytes: &[u8], limit: usize) -> usize {
    let (mut count, mut in_string, mut escaped) = (1usize, false, false);
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' | b',' => {
                count += 1;
                if count > limit {
                    return count;
                }
            }
            _ => {}
        }
    }
    count
}

impl<T: DeserializeOwned> FromRequest<Arc<Node>> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, node: &Arc<Node>) -> Result<Self, ApiError> {
        let format = Format::for_path(req.uri().path());
        let limit = if is_llm_route(req.uri().path()) {
            node.max_request_bytes
        } else {
            node.max_request_bytes.min(MAX_ADMIN_BODY_BYTES)
        };
        // A body trickled in slowly holds a connection and a task: it must
        // arrive within the limit, whatever its size.
        let bytes = tokio::time::timeout(node.http.body_read_timeout, read_limited(req, limit))
            .await
            .map_err(|_| ApiError::new(Error::RequestTimeout(node.http.body_read_timeout), format))?
            .map_err(|e| ApiError::new(e, format))?;
        let values = json_values(&bytes, MAX_JSON_VALUES);
        if values > MAX_JSON_VALUES {
            return Err(ApiError::new(
                Error::invalid(
                    format!("Request body holds more than {MAX_JSON_VALUES} JSON values."),
                    None,
                ),
                format,
            ));
        }
        let cost = bytes
            .len()
            .saturating_add(values.saturating_mul(BYTES_PER_VALUE));
        let kib = u32::try_from(cost.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .min(ParseBudget::KIB);
        let _permit = node.parse_budget.0.acquire_many(kib).await.map_err(|_| {
            ApiError::new(Error::Internal("the parse budget is closed".into()), format)
        })?;
        parse_json(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::new(e, format))
    }
}

async fn read_limited(req: Request, limit: usize) -> Result<Bytes, Error> {
    let too_large = Error::PayloadTooLarge { limit_bytes: limit };
    let declared = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large);
    }
    axum::body::to_bytes(req.into_body(), limit)
        .await
        .map_err(|e| {
            let over = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
                || e.to_string().contains("length limit");
            if over {
                too_large
            } else {
                Error::invalid(format!("Could not read the request body: {e}"), None)
            }
        })
}

/// Parses JSON; a wrong or missing field is reported by its path
/// (`messages[0].role`), which becomes the error's `param`.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let inner = e.inner();
        if inner.is_syntax() || inner.is_eof() {
            return Error::invalid(format!("Request body is not valid JSON: {inner}"), None);
        }
        let path = e.path().to_string();
        let mut param = (path != ".").then_some(path);
        let text = inner.to_string();
        // serde reports a missing field at its parent's path; name the field.
        if let Some(field) = text
            .strip_prefix("missing field `")
            .and_then(|r| r.split('`').next())
        {
            param = Some(match param {
                Some(parent) => format!("{parent}.{field}"),
                None => field.to_owned(),
            });
        }
        let text = text.split(" at line ").next().unwrap_or(&text).to_owned();
        let message = match &param {
            Some(p) => format!("Invalid request body: `{p}`: {text}"),
            None => format!("Invalid request body: {text}"),
        };
        Error::InvalidRequest { message, param }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn json_values_are_counted_outside_strings() {
        assert_eq!(json_values(b"1", 10), 1);
        assert_eq!(json_values(b"[0,0,0]", 10), 4);
        assert_eq!(json_values(br#"{"a":[1,2],"b":"x,y[{"}"#, 100), 5);
        assert_eq!(
            json_values(br#"["a\",b",1]"#, 100),
            3,
            "an escaped quote stays in the string"
        );
        assert_eq!(
            json_values(b"[0,0,0,0,0,0]", 3),
            4,
            "counting stops past the limit"
        );
        assert!(is_llm_route("/v1/chat/completions") && is_llm_route("/messages"));
        assert!(!is_llm_route("/key/generate") && !is_llm_route("/v1/model/info"));
    }

    use super::*;
    use crate::wire::openai::ChatRequest;

    fn param_of(body: &str) -> (Option<String>, String) {
        match parse_json::<ChatRequest>(body.as_bytes()) {
            Err(Error::InvalidRequest { param, message }) => (param, message),
            other => panic!("expected InvalidRequest, got {:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(param_of(r#"{"messages":[]}"#).0.as_deref(), Some("model"));
        assert_eq!(
            param_of(r#"{"model":5,"messages":[]}"#).0.as_deref(),
            Some("model")
        );
        let (param, message) =
            param_of(r#"{"model":"m","messages":[{"role":"bot","content":"x"}]}"#);
        assert_eq!(param.as_deref(), Some("messages[0].role"));
        assert!(message.contains("unknown variant `bot`"), "{message}");
        let (param, message) = param_of("{not json");
        assert_eq!(param, None);
        assert!(message.starts_with("Request body is not valid JSON"));
    }
}
