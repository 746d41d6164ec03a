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
//! | `context-window` | HTTP 400 `context_length_exceeded`, as OpenAI says it   |
//! | `content-policy` | HTTP 400 `content_policy_violation`                    |
//! | `fail-<n>-<code>` | HTTP `<code>` for the first `<n>` requests naming this model, then as usual |
//! | `gated`         | streams its first two events, then waits for [`FakeUpstream::open_gate`] |
//! | `broken`        | sends part of its answer (two events of a stream), then, 100 ms later, drops the connection |
//! | anything else   | the fixture answer (a tool call when `tools` are sent)  |
//!
//! With recording on, every request (method, path, query, headers, JSON body) is
//! kept so tests can assert exactly what reached the upstream.
//!
//! [`UpstreamOptions`] shape it for load tests: added latency, the number of
//! output tokens (chat and messages answers: the `usage` reported and, for
//! streams, the number of content chunks) and a seeded error rate. The defaults
//! answer the fixtures exactly as recorded. Every body is built once at start,
//! so a request costs a JSON peek and reference-count bumps; with recording off
//! the hot path takes no lock.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt;
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::Error;
use crate::fixtures::{
    ANTHROPIC_MESSAGES, ANTHROPIC_STREAM, ANTHROPIC_TOOL_USE, OPENAI_CHAT, OPENAI_CHAT_STREAM,
    OPENAI_CHAT_TOOL, OPENAI_COMPLETION, OPENAI_COMPLETION_STREAM, OPENAI_EMBEDDINGS,
};
use crate::seeded;

mod answers;

use answers::Answers;

/// Most output tokens [`UpstreamOptions::output_tokens`] accepts: every answer
/// is held in memory, and a load test wants realistic answers, not huge ones.
pub const MAX_OUTPUT_TOKENS: u32 = 100_000;

/// How the fake answers when the model name asks for nothing special. The
/// default is the fixtures as recorded, at once, never failing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UpstreamOptions {
    /// Waited before every answer, errors included.
    pub latency: Duration,
    /// Output tokens of chat and messages answers: the `usage` reported and,
    /// for streams, the number of content chunks (one token each). `None`
    /// keeps the fixtures' seven tokens in three chunks.
    pub output_tokens: Option<u32>,
    /// Fraction of requests answered 500 in the provider's error shape.
    pub error_rate: f64,
    /// Picks which requests fail: the n-th request received (from 0) fails
    /// when [`fails`]`(seed, error_rate, n)`, so a fixed seed fails a fixed
    /// number of any N requests, whatever order they race in.
    pub seed: u64,
}

impl UpstreamOptions {
    /// Rejects an error rate that is not a fraction (NaN included) and token
    /// counts above [`MAX_OUTPUT_TOKENS`].
    pub fn validate(&self) -> Result<(), Error> {
        if !(0.0..=1.0).contains(&self.error_rate) {
            return Err(Error::InvalidOption(format!(
                "error rate {} is not a fraction between 0 and 1",
                self.error_rate
            )));
        }
        if self.output_tokens.is_some_and(|n| n > MAX_OUTPUT_TOKENS) {
            return Err(Error::InvalidOption(format!(
                "output tokens above {MAX_OUTPUT_TOKENS}"
            )));
        }
        Ok(())
    }
}

/// Whether an upstream with this seed and error rate fails its `n`-th request.
pub fn fails(seed: u64, error_rate: f64, n: u64) -> bool {
    seeded::chance(seed, n, error_rate)
}

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

struct Shared {
    record: bool,
    recorded: Mutex<Vec<Recorded>>,
    /// Holds `gated` streams mid-way until a test opens it.
    gate: tokio::sync::Notify,
    options: UpstreamOptions,
    answers: Answers,
    /// Numbers requests for the error-rate choice; touched only when the rate
    /// is above zero.
    received: AtomicU64,
    /// Requests seen per `fail-<n>-<code>` model name.
    failing: Mutex<BTreeMap<String, u64>>,
    /// While non-zero, every request is answered with this status (an outage
    /// switched on and off by a test).
    outage: std::sync::atomic::AtomicU16,
}

impl Shared {
    fn new(record: bool, options: UpstreamOptions) -> Self {
        Self {
            record,
            recorded: Mutex::default(),
            gate: tokio::sync::Notify::new(),
            answers: Answers::build(options.output_tokens),
            options,
            received: AtomicU64::new(0),
            failing: Mutex::default(),
            outage: std::sync::atomic::AtomicU16::new(0),
        }
    }
}

pub struct FakeUpstream {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeUpstream {
    /// Starts on an ephemeral port of 127.0.0.1.
    pub async fn start(record: bool) -> std::io::Result<Self> {
        Self::start_with(record, UpstreamOptions::default()).await
    }

    /// Starts on an ephemeral port of 127.0.0.1, shaped by `options`.
    pub async fn start_with(record: bool, options: UpstreamOptions) -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        Ok(Self::serve_with(listener, record, options))
    }

    /// Serves on a listener the caller bound.
    pub fn serve(listener: TcpListener, record: bool) -> Self {
        Self::serve_with(listener, record, UpstreamOptions::default())
    }

    /// Serves on a listener the caller bound, shaped by `options`.
    pub fn serve_with(listener: TcpListener, record: bool, options: UpstreamOptions) -> Self {
        let addr = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
        let shared = Arc::new(Shared::new(record, options));
        let app = router(shared.clone());
        let task = tokio::spawn(async move {
            let _ = serve_router(listener, app).await;
        });
        Self { addr, shared, task }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Answers every request with `status` from now on (`None`: as usual again).
    pub fn set_outage(&self, status: Option<u16>) {
        self.shared
            .outage
            .store(status.unwrap_or(0), Ordering::Relaxed);
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

/// Serves the fake shaped by `options`, recording off, until the process ends
/// (`meridian-loadtest upstream`).
pub async fn serve_forever(listener: TcpListener, options: UpstreamOptions) -> std::io::Result<()> {
    serve_router(listener, router_with(options)).await
}

/// Serves with Nagle's algorithm off: a stream is many small writes, and
/// Nagle holding each until the previous one is acknowledged (which a
/// delayed ACK postpones by ~40 ms) would measure the kernel, not the gateway.
async fn serve_router(listener: TcpListener, app: Router) -> std::io::Result<()> {
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).await
}

/// The fake with default options and recording off, for a standalone server.
pub fn router_for_binary() -> Router {
    router_with(UpstreamOptions::default())
}

/// The fake shaped by `options`, recording off, for a standalone server.
pub fn router_with(options: UpstreamOptions) -> Router {
    router(Arc::new(Shared::new(false, options)))
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

/// The few request fields the fake looks at, borrowed from the body where
/// possible so the hot path does not build a JSON tree.
#[derive(Default, Deserialize)]
#[serde(default)]
struct Peek<'a> {
    #[serde(borrow)]
    model: Option<Cow<'a, str>>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    /// Zero-sized elements: counting them allocates nothing.
    tools: Option<Vec<IgnoredAny>>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct StreamOptions {
    include_usage: Option<bool>,
}

impl Peek<'_> {
    /// Reads a body; one that is not JSON, or has a field of an unexpected
    /// type, is read as leniently as a JSON tree would be.
    fn parse(bytes: &[u8]) -> Peek<'_> {
        serde_json::from_slice(bytes).unwrap_or_else(|_| {
            Peek::from_value(&serde_json::from_slice(bytes).unwrap_or(Value::Null))
        })
    }

    fn from_value(body: &Value) -> Peek<'static> {
        Peek {
            model: body
                .get("model")
                .and_then(Value::as_str)
                .map(|m| Cow::Owned(m.to_owned())),
            stream: body.get("stream").and_then(Value::as_bool),
            stream_options: Some(StreamOptions {
                include_usage: body
                    .pointer("/stream_options/include_usage")
                    .and_then(Value::as_bool),
            }),
            tools: body
                .get("tools")
                .and_then(Value::as_array)
                .map(|t| vec![IgnoredAny; t.len()]),
        }
    }
}

async fn handle(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path();
    let bytes = axum::body::to_bytes(body, 64 * 1024 * 1024)
        .await
        .unwrap_or_default();
    let peek = if shared.record {
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let peek = Peek::from_value(&body);
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
            path: path.to_owned(),
            query: parts.uri.query().map(str::to_owned),
            headers,
            body,
        };
        shared
            .recorded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(recorded);
        peek
    } else {
        Peek::parse(&bytes)
    };
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
    let options = &shared.options;
    // Numbered on arrival, before any wait, so the n-th request is the n-th to arrive.
    let failed = options.error_rate > 0.0
        && fails(
            options.seed,
            options.error_rate,
            shared.received.fetch_add(1, Ordering::Relaxed),
        );
    if !options.latency.is_zero() {
        tokio::time::sleep(options.latency).await;
    }
    if failed {
        let body = match api {
            Api::Messages => shared.answers.anthropic_500.clone(),
            _ => shared.answers.openai_500.clone(),
        };
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response();
    }
    // Azure names the model in the path, everyone else in the body.
    let model = path
        .split("/deployments/")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .or(peek.model.as_deref())
        .unwrap_or_default();
    if let Some(code) = after(model, "error-").and_then(|c| c.parse::<u16>().ok()) {
        return error(api, code);
    }
    match shared.outage.load(Ordering::Relaxed) {
        0 => {}
        code => return error(api, code),
    }
    for (marker, code, message) in [
        (
            "context-window",
            "context_length_exceeded",
            "This model's maximum context length is 8192 tokens.",
        ),
        (
            "content-policy",
            "content_policy_violation",
            "Your request was rejected by the safety system.",
        ),
    ] {
        if model.contains(marker) {
            let body = json!({"error": {"message": message, "type": "invalid_request_error", "param": "messages", "code": code}});
            return (StatusCode::BAD_REQUEST, axum::Json(body)).into_response();
        }
    }
    if let Some((n, code)) = fail_first(model) {
        let mut seen = shared.failing.lock().unwrap_or_else(|p| p.into_inner());
        let count = seen.entry(model.to_owned()).or_default();
        *count += 1;
        if *count <= n {
            return error(api, code);
        }
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
    if let Some(ms) = after(model, "slow-").and_then(|c| c.parse::<u64>().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let stream = peek.stream.unwrap_or(false);
    let include_usage = peek
        .stream_options
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    let tools = peek.tools.is_some_and(|t| !t.is_empty());
    let gated = model.contains("gated");
    let answers = &shared.answers;
    if model.contains("broken") {
        let whole = match (api, stream) {
            (Api::Chat, false) => vec![answers.chat.clone()],
            (Api::Messages, false) => vec![answers.messages.clone()],
            (Api::Chat, true) => answers.chat_stream.pick(include_usage).to_vec(),
            (Api::Messages, true) => answers.messages_stream.to_vec(),
            _ => vec![Bytes::from_static(OPENAI_COMPLETION.as_bytes())],
        };
        return broken(whole, stream);
    }
    let frames = match (api, stream) {
        (Api::Chat, false) => {
            return json_body(if tools {
                Bytes::from_static(OPENAI_CHAT_TOOL.trim_ascii_end().as_bytes())
            } else {
                answers.chat.clone()
            });
        }
        (Api::Completion, false) => {
            return json_body(Bytes::from_static(
                OPENAI_COMPLETION.trim_ascii_end().as_bytes(),
            ));
        }
        (Api::Embeddings, _) => {
            return json_body(Bytes::from_static(
                OPENAI_EMBEDDINGS.trim_ascii_end().as_bytes(),
            ));
        }
        (Api::Messages, false) => {
            return json_body(if tools {
                Bytes::from_static(ANTHROPIC_TOOL_USE.trim_ascii_end().as_bytes())
            } else {
                answers.messages.clone()
            });
        }
        (Api::Chat, true) => answers.chat_stream.pick(include_usage),
        (Api::Completion, true) => answers.completion_stream.pick(include_usage),
        (Api::Messages, true) => answers.messages_stream.clone(),
    };
    sse(frames, gated.then_some(shared))
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

/// `fail-<n>-<code>`: `(n, code)`.
fn fail_first(model: &str) -> Option<(u64, u16)> {
    let n: u64 = after(model, "fail-")?.parse().ok()?;
    let code = after(model, &format!("fail-{n}-"))?.parse().ok()?;
    Some((n, code))
}

/// Part of an answer, then a transport error: two events of a stream, or
/// half of a JSON body.
fn broken(mut parts: Vec<Bytes>, stream: bool) -> Response {
    if stream {
        parts.truncate(GATED_AFTER);
    } else if let Some(body) = parts.first_mut() {
        *body = body.slice(..body.len() / 2);
    }
    // The break comes a moment later, so the part sent is on its way first
    // (a gateway has handed a stream to its client by then).
    let cut = futures_util::stream::once(async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Err(std::io::Error::other(
            "the fake upstream broke the connection",
        ))
    });
    let items = futures_util::StreamExt::chain(
        futures_util::stream::iter(parts.into_iter().map(Ok::<_, std::io::Error>)),
        cut,
    );
    let mut response = Response::new(Body::from_stream(items));
    let kind = if stream {
        "text/event-stream"
    } else {
        "application/json"
    };
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    response
}

fn json_body(body: Bytes) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn error(api: Api, code: u16) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, axum::Json(error_body(api, code))).into_response();
    if code == 429 {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("7"));
    }
    response
}

/// The provider's error shape for an HTTP `code`.
fn error_body(api: Api, code: u16) -> Value {
    match api {
        Api::Messages => {
            json!({"type": "error", "error": {"type": "fake_error", "message": format!("fake upstream error {code}")}})
        }
        _ => {
            json!({"error": {"message": format!("fake upstream error {code}"), "type": "fake_error", "param": null, "code": format!("fake_{code}")}})
        }
    }
}

/// Events sent before a `gated` stream waits.
const GATED_AFTER: usize = 2;

fn sse(frames: Arc<[Bytes]>, gate: Option<Arc<Shared>>) -> Response {
    let stream = futures_util::stream::unfold((0, frames, gate), |(i, frames, gate)| async move {
        let frame = frames.get(i)?.clone();
        if i == GATED_AFTER
            && let Some(shared) = &gate
        {
            shared.gate.notified().await;
        }
        Some((Ok::<_, Infallible>(frame), (i + 1, frames, gate)))
    });
    let mut response = Response::new(Body::from_stream(stream));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    response
}

#[cfg(test)]
mod tests;
