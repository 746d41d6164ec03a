//! The world's LLM provider: an OpenAI-compatible chat endpoint on a simulated
//! host, whose errors and slowness the fault schedule switches on and off.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// Tokens every answer reports (so every served request costs the same).
pub const PROMPT_TOKENS: u64 = 10;
pub const COMPLETION_TOKENS: u64 = 20;

/// What the provider is doing wrong right now.
#[derive(Clone, Copy, Debug, Default)]
pub struct Trouble {
    /// Every `n`-th request is answered 500 (0: none).
    pub fail_every: u64,
    /// Added before every answer.
    pub slow: Duration,
}

#[derive(Default)]
pub struct Provider {
    trouble: Mutex<Trouble>,
    served: AtomicU64,
    /// Requests received per `user` field (who the data belonged to).
    users: Mutex<std::collections::BTreeMap<String, u64>>,
}

impl Provider {
    pub fn set(&self, trouble: Trouble) {
        *self.trouble.lock().unwrap_or_else(|p| p.into_inner()) = trouble;
    }

    pub fn current(&self) -> Trouble {
        *self.trouble.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Requests received for `user` so far.
    pub fn received_for(&self, user: &str) -> u64 {
        self.users
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(user)
            .copied()
            .unwrap_or(0)
    }
}

/// Serves the provider on `0.0.0.0:9000` of the current host until the host
/// stops.
pub async fn serve(provider: Arc<Provider>) -> std::io::Result<()> {
    let app = axum::Router::new()
        .route("/v1/chat/completions", axum::routing::post(chat))
        .with_state(provider);
    let listener = crate::SimListener(turmoil::net::TcpListener::bind("0.0.0.0:9000").await?);
    axum::serve(listener, app).await
}

async fn chat(State(provider): State<Arc<Provider>>, Json(body): Json<Value>) -> Response {
    let n = provider.served.fetch_add(1, Ordering::Relaxed) + 1;
    if let Some(user) = body.get("user").and_then(Value::as_str) {
        *provider
            .users
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(user.to_owned())
            .or_default() += 1;
    }
    let trouble = provider.current();
    if !trouble.slow.is_zero() {
        tokio::time::sleep(trouble.slow).await;
    }
    if trouble.fail_every > 0 && n % trouble.fail_every == 0 {
        let error = json!({"error": {"message": "the simulated provider failed", "type": "server_error", "param": null, "code": null}});
        return (StatusCode::INTERNAL_SERVER_ERROR, Json(error)).into_response();
    }
    let model = body.get("model").cloned().unwrap_or(Value::Null);
    Json(json!({
        "id": format!("chatcmpl-sim-{n}"),
        "object": "chat.completion",
        "created": 1_800_000_000u64,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS, "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS}
    }))
    .into_response()
}
