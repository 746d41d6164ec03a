//! The HTTP surface, built in one place: which paths exist, in which format they
//! answer, and which halves of the API this node serves.

mod admin;
mod error_response;
pub(crate) mod extract;
mod health;
mod messages;
mod metrics;
mod openai;
mod respond;

use std::sync::Arc;

use axum::Router;
use axum::http::Uri;
use axum::routing::{MethodRouter, get, post};

pub use admin::policy::KeysMade;
pub use error_response::{ApiError, Format, reported as reported_error};
pub use extract::parse_json;
pub use respond::COST_HEADER;

use crate::error::Error;
use crate::node::Node;

pub fn router(node: Arc<Node>) -> Router {
    let llm = |handler: MethodRouter<Arc<Node>>| {
        if node.disable.llm_api {
            post(disabled_llm)
        } else {
            handler
        }
    };
    let admin = if node.disable.admin {
        // The paths stay known, so callers learn the endpoint is off here.
        admin::routes().route_layer(axum::middleware::from_fn(
            |_req: axum::extract::Request, _next: axum::middleware::Next| async {
                axum::response::IntoResponse::into_response(disabled_admin())
            },
        ))
    } else {
        admin::routes()
    };
    // Every LLM request is counted at the edge, by the status it got.
    let calls = Router::new()
        .route("/v1/chat/completions", llm(post(openai::chat)))
        .route("/chat/completions", llm(post(openai::chat)))
        .route("/v1/completions", llm(post(openai::completion)))
        .route("/completions", llm(post(openai::completion)))
        .route("/v1/embeddings", llm(post(openai::embeddings)))
        .route("/embeddings", llm(post(openai::embeddings)))
        .route("/v1/messages", llm(post(messages::create)));
    let calls = if node.metrics.on() {
        calls.route_layer(axum::middleware::from_fn_with_state(
            node.clone(),
            metrics::track,
        ))
    } else {
        calls
    };
    Router::new()
        .merge(admin)
        .merge(calls)
        .route("/metrics", get(metrics::scrape))
        .route("/metrics/", get(metrics::scrape))
        // LiteLLM keeps the model list available when the LLM API is disabled.
        .route("/v1/models", get(openai::models))
        .route("/models", get(openai::models))
        .route("/health/liveliness", get(health::liveliness))
        .route("/health/liveness", get(health::liveliness))
        .route("/health/readiness", get(health::readiness))
        .route("/health", get(health::deep))
        .fallback(not_found)
        .layer(axum::middleware::from_fn(extract::stamp_arrival))
        .with_state(node)
}

async fn disabled_llm(uri: Uri) -> ApiError {
    ApiError::new(
        Error::Disabled { feature: "LLM API" },
        Format::for_path(uri.path()),
    )
}

fn disabled_admin() -> ApiError {
    ApiError::new(Error::Disabled { feature: "admin" }, Format::OpenAi)
}

async fn not_found(uri: Uri) -> (http::StatusCode, axum::Json<serde_json::Value>) {
    (
        http::StatusCode::NOT_FOUND,
        axum::Json(serde_json::json!({
            "error": { "message": format!("Not found: {}", uri.path()), "type": "invalid_request_error", "param": null, "code": "404" }
        })),
    )
}
