//! The adapter conformance suite: every provider adapter (OpenAI, Azure,
//! Anthropic against the fake upstream over real sockets; the built-in mock
//! in-process) must pass the same checks — answers, streaming, usage and exact
//! cost, tool calls, the Anthropic-format endpoint, and error mapping.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use meridian_loadtest::fake_upstream::FakeUpstream;
use meridian_node::pricing::Cost;
use serde_json::{Value, json};
use support::{Gateway, openai_chunks, start_yaml, streamed_text};

/// Deployments for one provider: the same model groups whatever the provider,
/// so the checks below read the same for all of them. Prices are set so the
/// expected cost is `prompt × $1/M + completion × $2/M`.
fn config(provider: &str, base: &str) -> String {
    let (ok_model, extra) = match provider {
        "openai" => (
            "gpt-4o",
            format!(", api_base: {base}/v1, api_key: sk-upstream"),
        ),
        "azure" => (
            "my-deployment",
            format!(", api_base: {base}, api_key: sk-upstream, api_version: 2024-06-01"),
        ),
        "anthropic" => (
            "claude-3-5-sonnet-20241022",
            format!(", api_base: {base}, api_key: sk-upstream"),
        ),
        _ => ("chat", String::new()),
    };
    let entry = |group: &str, model: &str, more: &str| {
        format!(
            "  - model_name: {group}\n    litellm_params: {{model: {provider}/{model}{extra}, \
             input_cost_per_token: 0.000001, output_cost_per_token: 0.000002{more}}}\n"
        )
    };
    let mut yaml = String::from("model_list:\n");
    yaml += &entry("ok", ok_model, "");
    yaml += &entry("e429", "error-429", "");
    yaml += &entry("e500", "error-500", "");
    yaml += &entry("e400", "error-400", "");
    yaml += &entry("garbage", "garbage", "");
    yaml += &entry("hang", "timeout", ", timeout: 0.3, stream_timeout: 0.3");
    // Each failure reaches the client as the adapter mapped it: no retry, no
    // cooldown (the router's own behaviour is tested in `routing`).
    yaml += "router_settings:\n  num_retries: 0\n  disable_cooldowns: true\n";
    yaml
}

/// What each provider's upstream reports for `chat("ok")`, known in advance
/// rather than read back from the gateway: the fixtures' usage (12 prompt and
/// 7 completion tokens in `fixtures/openai/chat.json`, `chat_stream.jsonl`
/// and `fixtures/anthropic/messages.json`), and the mock provider's count for
/// this request (19 bytes of text over two messages: ⌈19 / 4⌉ + 3 × 2 = 11
/// prompt tokens, and 10 completion tokens for its fixed answer).
fn known_usage(provider: &str) -> (u64, u64) {
    match provider {
        "mock" => (11, 10),
        _ => (12, 7),
    }
}

/// The cost header for `prompt` and `completion` tokens at the test prices
/// ($1 and $2 per million).
fn expected_cost(prompt: u64, completion: u64) -> String {
    Cost(u128::from(prompt) * 1_000_000 + u128::from(completion) * 2_000_000).to_string()
}

fn chat(model: &str, extra: Value) -> Value {
    let mut body = json!({ "model": model, "messages": [
        { "role": "system", "content": "Be brief." },
        { "role": "user", "content": "Say hello." }
    ]});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    body
}

async fn conformance(provider: &str) {
    let fake = FakeUpstream::start(false).await.unwrap();
    let gw = start_yaml(&config(provider, &fake.base_url())).await;
    answers(&gw, provider).await;
    tool_calls(&gw, provider).await;
    messages_endpoint(&gw, provider).await;
    errors(&gw, provider).await;
}

async fn answers(gw: &Gateway, p: &str) {
    let r = gw.post("/v1/chat/completions", chat("ok", json!({}))).await;
    assert_eq!(r.status, 200, "{p}: {}", r.text);
    let body = r.json();
    let text = body
        .pointer("/choices/0/message/content")
        .and_then(Value::as_str)
        .unwrap()
        .to_owned();
    assert!(!text.is_empty(), "{p}: empty answer");
    assert_eq!(
        body.pointer("/choices/0/finish_reason"),
        Some(&json!("stop")),
        "{p}"
    );
    let usage = body["usage"].clone();
    let (prompt, completion) = known_usage(p);
    assert_eq!(
        (
            usage["prompt_tokens"].as_u64(),
            usage["completion_tokens"].as_u64(),
            usage["total_tokens"].as_u64()
        ),
        (Some(prompt), Some(completion), Some(prompt + completion)),
        "{p}: usage {usage}"
    );
    let cost = expected_cost(prompt, completion);
    assert_eq!(
        r.header("x-meridian-response-cost"),
        Some(cost.as_str()),
        "{p}: cost header"
    );
    assert_eq!(r.header("x-meridian-model-group"), Some("ok"), "{p}");
    assert!(
        r.header("x-meridian-model-id")
            .is_some_and(|id| !id.is_empty()),
        "{p}"
    );
    assert!(
        r.header("x-meridian-overhead-duration-ms")
            .and_then(|v| v.parse::<f64>().ok())
            .is_some(),
        "{p}"
    );
    assert_eq!(r.header("x-meridian-region"), Some("local"), "{p}");

    // Streamed without asking for usage: same text, no usage chunk, cost at the end.
    let r = gw
        .post(
            "/v1/chat/completions",
            chat("ok", json!({ "stream": true })),
        )
        .await;
    assert_eq!(r.status, 200, "{p}: {}", r.text);
    assert_eq!(r.header("content-type"), Some("text/event-stream"), "{p}");
    let chunks = openai_chunks(&r);
    assert_eq!(
        streamed_text(&chunks),
        text,
        "{p}: streamed text differs from the whole answer"
    );
    assert!(
        chunks
            .iter()
            .all(|c| c.get("usage").is_none_or(Value::is_null)),
        "{p}: usage chunk sent unasked"
    );
    assert!(
        chunks
            .iter()
            .any(|c| c.pointer("/choices/0/finish_reason") == Some(&json!("stop"))),
        "{p}"
    );
    assert!(
        r.text
            .contains(&format!(": x-meridian-response-cost={cost}\n")),
        "{p}: stream cost: {}",
        r.text
    );

    // With `include_usage`: exactly one usage chunk, last, with the same usage.
    let r = gw
        .post(
            "/v1/chat/completions",
            chat(
                "ok",
                json!({ "stream": true, "stream_options": { "include_usage": true } }),
            ),
        )
        .await;
    let chunks = openai_chunks(&r);
    let with_usage: Vec<&Value> = chunks
        .iter()
        .filter(|c| c.get("usage").is_some_and(|u| !u.is_null()))
        .collect();
    assert_eq!(with_usage.len(), 1, "{p}: {}", r.text);
    assert_eq!(
        chunks.last().unwrap()["choices"],
        json!([]),
        "{p}: usage chunk must be last, with no choices"
    );
    let (prompt, completion) = known_usage(p);
    assert_eq!(
        chunks.last().unwrap()["usage"]["prompt_tokens"],
        json!(prompt),
        "{p}"
    );
    assert_eq!(
        chunks.last().unwrap()["usage"]["completion_tokens"],
        json!(completion),
        "{p}"
    );
}

async fn tool_calls(gw: &Gateway, p: &str) {
    let tools = json!({ "tools": [{ "type": "function", "function": {
        "name": "get_weather", "description": "Weather in a city",
        "parameters": { "type": "object", "properties": { "city": { "type": "string" } }, "required": ["city"] } } }] });
    let r = gw.post("/v1/chat/completions", chat("ok", tools)).await;
    assert_eq!(r.status, 200, "{p}: {}", r.text);
    let body = r.json();
    assert_eq!(
        body.pointer("/choices/0/finish_reason"),
        Some(&json!("tool_calls")),
        "{p}: {body}"
    );
    let call = body.pointer("/choices/0/message/tool_calls/0").unwrap();
    assert_eq!(call["type"], "function", "{p}");
    assert_eq!(call["function"]["name"], "get_weather", "{p}");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert!(args.is_object(), "{p}: arguments must be a JSON object");
}

async fn messages_endpoint(gw: &Gateway, p: &str) {
    let whole = gw
        .post("/v1/chat/completions", chat("ok", json!({})))
        .await
        .json();
    let text = whole
        .pointer("/choices/0/message/content")
        .and_then(Value::as_str)
        .unwrap()
        .to_owned();
    let body = json!({ "model": "ok", "max_tokens": 100, "system": "Be brief.",
                       "messages": [{ "role": "user", "content": "Say hello." }] });
    let r = gw.post("/v1/messages", body.clone()).await;
    assert_eq!(r.status, 200, "{p}: {}", r.text);
    let msg = r.json();
    assert_eq!(
        (msg["type"].as_str(), msg["role"].as_str()),
        (Some("message"), Some("assistant")),
        "{p}: {msg}"
    );
    assert_eq!(
        msg.pointer("/content/0/text").and_then(Value::as_str),
        Some(text.as_str()),
        "{p}"
    );
    assert_eq!(msg["stop_reason"], "end_turn", "{p}");
    assert!(
        msg.pointer("/usage/output_tokens")
            .and_then(Value::as_u64)
            .is_some_and(|n| n > 0),
        "{p}"
    );
    assert!(r.header("x-meridian-response-cost").is_some(), "{p}");

    let mut streaming = body;
    streaming["stream"] = json!(true);
    let r = gw.post("/v1/messages", streaming).await;
    assert_eq!(r.status, 200, "{p}: {}", r.text);
    let events = r.events();
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.first(), Some(&"message_start"), "{p}: {names:?}");
    assert_eq!(names.last(), Some(&"message_stop"), "{p}: {names:?}");
    assert!(
        names.contains(&"content_block_start") && names.contains(&"message_delta"),
        "{p}: {names:?}"
    );
    let streamed: String = events
        .iter()
        .filter(|(n, _)| n == "content_block_delta")
        .filter_map(|(_, d)| d.pointer("/delta/text").and_then(Value::as_str))
        .collect();
    assert_eq!(streamed, text, "{p}");
    for (name, data) in &events {
        assert_eq!(
            data["type"].as_str(),
            Some(name.as_str()),
            "{p}: event type mismatch"
        );
    }
}

async fn errors(gw: &Gateway, p: &str) {
    let r = gw
        .post("/v1/chat/completions", chat("e429", json!({})))
        .await;
    assert_eq!(r.status, 429, "{p}: {}", r.text);
    let e = r.json();
    assert!(
        e.pointer("/error/message")
            .and_then(Value::as_str)
            .unwrap()
            .contains("error 429"),
        "{p}: {e}"
    );
    assert!(
        r.header("retry-after").is_some(),
        "{p}: retry-after must pass through"
    );
    for (group, status) in [
        ("e500", 500),
        ("e400", 400),
        ("garbage", 502),
        ("hang", 504),
    ] {
        let r = gw
            .post("/v1/chat/completions", chat(group, json!({})))
            .await;
        assert_eq!(r.status, status, "{p} {group}: {}", r.text);
        let e = r.json();
        for field in ["message", "type", "param", "code"] {
            assert!(
                e["error"].get(field).is_some(),
                "{p} {group}: error.{field} missing: {e}"
            );
        }
    }
    let r = gw
        .post(
            "/v1/chat/completions",
            chat("hang", json!({ "stream": true })),
        )
        .await;
    assert_eq!(
        r.status, 504,
        "{p}: a stream that never starts times out: {}",
        r.text
    );
    // Anthropic-format route: Anthropic-shaped error.
    let r = gw
        .post("/v1/messages", json!({ "model": "e429", "max_tokens": 5, "messages": [{ "role": "user", "content": "x" }] }))
        .await;
    assert_eq!(r.status, 429, "{p}");
    assert_eq!(r.json()["type"], "error", "{p}");
    assert_eq!(r.json()["error"]["type"], "rate_limit_error", "{p}");
}

#[tokio::test]
async fn openai_adapter_conforms() {
    conformance("openai").await;
}

#[tokio::test]
async fn azure_adapter_conforms() {
    conformance("azure").await;
}

#[tokio::test]
async fn anthropic_adapter_conforms() {
    conformance("anthropic").await;
}

#[tokio::test]
async fn mock_adapter_conforms() {
    conformance("mock").await;
}
