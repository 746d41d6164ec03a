//! A fake LLM provider speaking OpenAI's, Azure's and Anthropic's wire formats,
//! answering from the shared fixtures in `fixtures/`. The model name picks the
//! behaviour, as with Meridian's built-in mock:
//!
//! | model contains  | behaviour                                              |
//! |-----------------|--------------------------------------------------------|
//! | `error-<code>`  | HTTP `<code>` with the provider's error shape           |
//! | `garbage`       | HTTP 200 with a body that is not JSON                   |
//! | `timeout`       | never answers                                           |
//! | `slow-<ms>`     | answers after `<ms>` milliseconds                       |
//! | `gated`         | streams its first two events, then waits for [`FakeUpstream::open_gate`] |
//! | anything else   | the fixture answer (a tool call when `tools` are sent)  |
//!
//! With recording on, every request (method, path, query, headers, JSON body) is
//! kept so tests can assert exactly what reached the upstream.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::net::TcpListener;

const OPENAI_CHAT: &str = include_str!("../../fixtures/openai/chat.json");
const OPENAI_CHAT_TOOL: &str = include_str!("../../fixtures/openai/chat_tool_call.json");
const OPENAI_CHAT_STREAM: &str = include_str!("../../fixtures/openai/chat_stream.jsonl");
const OPENAI_COMPLETION: &str = include_str!("../../fixtures/openai/completion.json");
const OPENAI_COMPLETION_STREAM: &str =
    include_str!("../../fixtures/openai/completion_stream.jsonl");
const OPENAI_EMBEDDINGS: &str = include_str!("../../fixtures/openai/embeddings.json");
const ANTHROPIC_MESSAGES: &str = include_str!("../../fixtures/anthropic/messages.json");
const ANTHROPIC_TOOL_USE: &str = include_str!("../../fixtures/anthropic/messages_tool_use.json");
const ANTHROPIC_STREAM: &str = include_str!("../../fixtures/anthropic/messages_stream.jsonl");

/// One request as the fake received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// Lower-case header names.
    pub headers: BTreeMap<String, String>,
    pub body: Value,
}

#[derive(Default)]
struct Shared {
    record: bool,
    recorded: Mutex<Vec<Recorded>>,
    /// Holds `gated` streams mid-way until a test opens it.
    gate: tokio::sync::Notify,
}

pub struct FakeUpstream {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeUpstream {
    /// Starts on an ephemeral port of 127.0.0.1.
    pub async fn start(record: bool) -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        Ok(Self::serve(listener, record))
    }

    /// Serves on a listener the caller bound.
    pub fn serve(listener: TcpListener, record: bool) -> Self {
        let addr = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
        let shared = Arc::new(Shared {
            record,
            ..Shared::default()
        });
        let app = router(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, shared, task }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Lets one held `gated` stream continue.
    pub fn open_gate(&self) {
        self.shared.gate.notify_one();
    }

    /// Every request received so far, in order, and forgets them.
    pub fn take_requests(&self) -> Vec<Recorded> {
        std::mem::take(
            &mut *self
                .shared
                .recorded
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        )
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn router_for_binary() -> Router {
    router(Arc::new(Shared::default()))
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new().fallback(handle).with_state(shared)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Api {
    Chat,
    Completion,
    Embeddings,
    Messages,
}

async fn handle(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    let bytes = axum::body::to_bytes(body, 64 * 1024 * 1024)
        .await
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if shared.record {
        let headers = parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    v.to_str().unwrap_or("<binary>").to_owned(),
                )
            })
            .collect();
        let recorded = Recorded {
            method: parts.method.to_string(),
            path: path.clone(),
            query: parts.uri.query().map(str::to_owned),
            headers,
            body: body.clone(),
        };
        shared
            .recorded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(recorded);
    }
    let api = if path.ends_with("/chat/completions") {
        Api::Chat
    } else if path.ends_with("/messages") {
        Api::Messages
    } else if path.ends_with("/completions") {
        Api::Completion
    } else if path.ends_with("/embeddings") {
        Api::Embeddings
    } else {
        return (StatusCode::NOT_FOUND, "no such endpoint").into_response();
    };
    // Azure names the model in the path, everyone else in the body.
    let model = path
        .split("/deployments/")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .or_else(|| body.get("model").and_then(Value::as_str))
        .unwrap_or_default()
        .to_owned();
    if let Some(code) = after(&model, "error-").and_then(|c| c.parse::<u16>().ok()) {
        return error(api, code);
    }
    if model.contains("garbage") {
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/html")],
            "<html>502 Bad Gateway</html>",
        )
            .into_response();
    }
    if model.contains("timeout") {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    if let Some(ms) = after(&model, "slow-").and_then(|c| c.parse::<u64>().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let include_usage = body
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let tools = body
        .get("tools")
        .and_then(Value::as_array)
        .is_some_and(|t| !t.is_empty());
    let gate = model.contains("gated").then_some(shared);
    match (api, stream) {
        (Api::Chat, false) => json_body(if tools { OPENAI_CHAT_TOOL } else { OPENAI_CHAT }),
        (Api::Chat, true) => sse(openai_frames(OPENAI_CHAT_STREAM, include_usage), gate),
        (Api::Completion, false) => json_body(OPENAI_COMPLETION),
        (Api::Completion, true) => {
            sse(openai_frames(OPENAI_COMPLETION_STREAM, include_usage), gate)
        }
        (Api::Embeddings, _) => json_body(OPENAI_EMBEDDINGS),
        (Api::Messages, false) => json_body(if tools {
            ANTHROPIC_TOOL_USE
        } else {
            ANTHROPIC_MESSAGES
        }),
        (Api::Messages, true) => sse(anthropic_frames(), gate),
    }
}

fn after<'a>(model: &'a str, marker: &str) -> Option<&'a str> {
    let start = model.find(marker)? + marker.len();
    let rest = model.get(start..)?;
    Some(
        rest.split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap_or(rest),
    )
}

fn json_body(text: &'static str) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        text.trim_end(),
    )
        .into_response()
}

fn error(api: Api, code: u16) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = match api {
        Api::Messages => {
            json!({"type": "error", "error": {"type": "fake_error", "message": format!("fake upstream error {code}")}})
        }
        _ => {
            json!({"error": {"message": format!("fake upstream error {code}"), "type": "fake_error", "param": null, "code": format!("fake_{code}")}})
        }
    };
    let mut response = (status, axum::Json(body)).into_response();
    if code == 429 {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("7"));
    }
    response
}

/// Events sent before a `gated` stream waits.
const GATED_AFTER: usize = 2;

fn sse(frames: Vec<String>, gate: Option<Arc<Shared>>) -> Response {
    let stream = futures_util::stream::unfold(
        (frames.into_iter().enumerate(), gate),
        |(mut it, gate)| async move {
            let (i, frame) = it.next()?;
            if i == GATED_AFTER
                && let Some(shared) = &gate
            {
                shared.gate.notified().await;
            }
            Some((Ok::<_, Infallible>(Bytes::from(frame)), (it, gate)))
        },
    );
    let mut response = Response::new(Body::from_stream(stream));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    response
}

/// OpenAI's streaming: chunks as `data:` lines; the usage chunk (the last line)
/// only when asked for; then `[DONE]`.
fn openai_frames(jsonl: &str, include_usage: bool) -> Vec<String> {
    let lines: Vec<&str> = jsonl.lines().filter(|l| !l.trim().is_empty()).collect();
    let keep = if include_usage {
        lines.len()
    } else {
        lines.len().saturating_sub(1)
    };
    let mut frames: Vec<String> = lines[..keep]
        .iter()
        .map(|l| format!("data: {l}\n\n"))
        .collect();
    frames.push("data: [DONE]\n\n".into());
    frames
}

fn anthropic_frames() -> Vec<String> {
    ANTHROPIC_STREAM
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|v| {
            format!(
                "event: {}\ndata: {}\n\n",
                v["event"].as_str().unwrap_or("message"),
                v["data"]
            )
        })
        .collect()
}
