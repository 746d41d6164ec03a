//! The world's LLM provider: an OpenAI-compatible chat endpoint on a simulated
//! host, whose errors and slowness the fault schedule switches on and off. It
//! answers with the recorded chat answer every fake upstream shares
//! (`fixtures/openai/chat.json`), reporting its own usage.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// Tokens every answer reports (so every served request costs the same).
/// They replace the fixture's usage: the worlds' budgets and the checkers'
/// bounds are calibrated to the cost of these counts.
pub const PROMPT_TOKENS: u64 = 10;
pub const COMPLETION_TOKENS: u64 = 20;

/// The shared fixture, parsed once. It is compiled in; one that did not
/// parse would be answered as an object of the fields set below only.
static CHAT: LazyLock<Value> = LazyLock::new(|| {
    serde_json::from_str(include_str!("../../fixtures/openai/chat.json")).unwrap_or_default()
});

/// The `n`-th answer for `model`: the fixture with its own id, the model
/// asked for, and the world's usage.
fn answer(n: u64, model: Value) -> Value {
    let mut body = CHAT.clone();
    body["id"] = json!(format!("chatcmpl-sim-{n}"));
    body["model"] = model;
    body["usage"] = json!({
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": COMPLETION_TOKENS,
        "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
    });
    body
}

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
    Json(answer(n, model)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_the_fixture_with_the_worlds_usage() {
        let body = answer(3, json!("gpt-sim"));
        assert_eq!(body["object"], "chat.completion");
        assert_eq!(
            body["choices"][0]["message"]["content"],
            "Hello from the fake upstream."
        );
        assert_eq!(body["id"], "chatcmpl-sim-3");
        assert_eq!(body["model"], "gpt-sim");
        assert_eq!(body["usage"]["prompt_tokens"], 10);
        assert_eq!(body["usage"]["completion_tokens"], 20);
        assert_eq!(body["usage"]["total_tokens"], 30);
    }
}
