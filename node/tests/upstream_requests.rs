//! What reaches the upstream: for each provider, over real sockets, the exact
//! path, query, headers and translated body the fake upstream received — and
//! how many calls got there (none for a request the gateway refuses).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use meridian_loadtest::fake_upstream::{FakeUpstream, Recorded};
use serde_json::{Value, json};
use support::{MASTER_KEY, start_yaml};

fn one(fake: &FakeUpstream) -> Recorded {
    let mut reqs = fake.take_requests();
    assert_eq!(
        reqs.len(),
        1,
        "expected exactly one upstream call, got {reqs:#?}"
    );
    reqs.remove(0)
}

#[tokio::test]
async fn openai_requests_are_forwarded_with_the_upstream_model_and_usage_requested() {
    let fake = FakeUpstream::start(true).await.unwrap();
    let gw = start_yaml(&format!(
        "model_list:\n  - model_name: gpt\n    litellm_params: {{model: openai/gpt-4o-mini, api_base: {}/v1, api_key: sk-upstream}}\n  - model_name: embed\n    litellm_params: {{model: openai/text-embedding-3-small, api_base: {}/v1, api_key: sk-upstream}}\n  - model_name: instruct\n    litellm_params: {{model: text-completion-openai/gpt-3.5-turbo-instruct, api_base: {}/v1, api_key: sk-upstream}}\n",
        fake.base_url(), fake.base_url(), fake.base_url()
    ))
    .await;

    let body = json!({ "model": "gpt", "messages": [{ "role": "user", "content": "hi" }],
                       "seed": 7, "logit_bias": { "50256": -100 }, "temperature": 0.2 });
    assert_eq!(
        gw.post("/v1/chat/completions", body.clone()).await.status,
        200
    );
    let up = one(&fake);
    assert_eq!(
        (up.method.as_str(), up.path.as_str()),
        ("POST", "/v1/chat/completions")
    );
    assert_eq!(
        up.headers.get("authorization").map(String::as_str),
        Some("Bearer sk-upstream")
    );
    assert!(
        !up.headers.contains_key("x-api-key"),
        "the client's key must not be forwarded"
    );
    let mut expected = body.clone();
    expected["model"] = json!("gpt-4o-mini");
    assert_eq!(
        up.body, expected,
        "unknown parameters pass through untouched"
    );
    // Tags are the gateway's: taken out of what is forwarded.
    let mut tagged = body.clone();
    tagged["tags"] = json!(["eng"]);
    tagged["metadata"] = json!({ "tags": ["ops"], "trace": "t-1" });
    assert_eq!(gw.post("/v1/chat/completions", tagged).await.status, 200);
    let mut expected_tagged = expected.clone();
    expected_tagged["metadata"] = json!({ "trace": "t-1" });
    assert_eq!(one(&fake).body, expected_tagged);

    let mut stream = body.clone();
    stream["stream"] = json!(true);
    let reply = gw.post("/chat/completions", stream).await;
    assert_eq!(reply.status, 200);
    let up = one(&fake);
    assert_eq!(up.body["stream"], true);
    assert_eq!(
        up.body["stream_options"],
        json!({ "include_usage": true }),
        "usage is always requested upstream"
    );

    let r = gw
        .post(
            "/v1/embeddings",
            json!({ "model": "embed", "input": ["a", "b"] }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let up = one(&fake);
    assert_eq!(up.path, "/v1/embeddings");
    assert_eq!(
        up.body,
        json!({ "model": "text-embedding-3-small", "input": ["a", "b"] })
    );

    let r = gw
        .post(
            "/v1/completions",
            json!({ "model": "instruct", "prompt": "Say", "max_tokens": 5 }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.json()["choices"][0]["text"],
        "Hello from the fake upstream."
    );
    let up = one(&fake);
    assert_eq!(up.path, "/v1/completions");
    assert_eq!(
        up.body,
        json!({ "model": "gpt-3.5-turbo-instruct", "prompt": "Say", "max_tokens": 5 })
    );

    // Refused at the gateway: nothing reaches the upstream.
    assert_eq!(
        gw.post_raw("/v1/chat/completions", body.to_string(), Some("sk-wrong"))
            .await
            .status,
        401
    );
    assert_eq!(
        gw.post(
            "/v1/chat/completions",
            json!({ "model": "nope", "messages": [] })
        )
        .await
        .status,
        400
    );
    assert!(fake.take_requests().is_empty());
}

#[tokio::test]
async fn azure_requests_use_deployment_urls_api_version_and_api_key() {
    let fake = FakeUpstream::start(true).await.unwrap();
    let gw = start_yaml(&format!(
        "model_list:\n  - model_name: gpt\n    litellm_params:\n      model: azure/prod-gpt4o\n      api_base: {}/\n      api_key: sk-azure\n      api_version: \"2024-06-01\"\n    model_info: {{base_model: gpt-4o}}\n  - model_name: embed\n    litellm_params: {{model: azure/prod-embed, api_base: {}, api_key: sk-azure}}\n",
        fake.base_url(), fake.base_url()
    ))
    .await;
    let r = gw
        .post(
            "/v1/chat/completions",
            json!({ "model": "gpt", "messages": [{ "role": "user", "content": "hi" }] }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    // Priced as its base model: 12 × $2.5/M + 7 × $10/M.
    assert_eq!(r.header("x-meridian-response-cost"), Some("0.0001"));
    let up = one(&fake);
    assert_eq!(up.path, "/openai/deployments/prod-gpt4o/chat/completions");
    assert_eq!(up.query.as_deref(), Some("api-version=2024-06-01"));
    assert_eq!(
        up.headers.get("api-key").map(String::as_str),
        Some("sk-azure")
    );
    assert!(!up.headers.contains_key("authorization"));
    assert_eq!(up.body["model"], "prod-gpt4o");

    let r = gw
        .post("/v1/chat/completions", json!({ "model": "gpt", "stream": true, "messages": [{ "role": "user", "content": "hi" }] }))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(one(&fake).body["stream_options"]["include_usage"], true);

    assert_eq!(
        gw.post("/v1/embeddings", json!({ "model": "embed", "input": "a" }))
            .await
            .status,
        200
    );
    let up = one(&fake);
    assert_eq!(up.path, "/openai/deployments/prod-embed/embeddings");
    assert_eq!(
        up.query.as_deref(),
        Some("api-version=2024-10-21"),
        "the default API version"
    );
}

#[tokio::test]
async fn anthropic_requests_are_translated_to_the_messages_api() {
    let fake = FakeUpstream::start(true).await.unwrap();
    let gw = start_yaml(&format!(
        "model_list:\n  - model_name: claude\n    litellm_params: {{model: anthropic/claude-3-5-sonnet-20241022, api_base: {}, api_key: sk-ant-upstream}}\n",
        fake.base_url()
    ))
    .await;
    let body = json!({
        "model": "claude",
        "messages": [
            { "role": "system", "content": "You are terse." },
            { "role": "user", "content": [
                { "type": "text", "text": "What is in this image?" },
                { "type": "image_url", "image_url": { "url": "data:image/png;base64,iVBORw0KGgo=" } } ] },
            { "role": "assistant", "content": null, "tool_calls": [
                { "id": "call_1", "type": "function", "function": { "name": "lookup", "arguments": "{\"q\":\"x\"}" } } ] },
            { "role": "tool", "tool_call_id": "call_1", "content": "found it" }
        ],
        "tools": [{ "type": "function", "function": { "name": "lookup", "description": "Look up",
                    "parameters": { "type": "object", "properties": { "q": { "type": "string" } } } } }],
        "tool_choice": "required",
        "stop": "END",
        "temperature": 0.5,
        "user": "customer-7"
    });
    let r = gw.post("/v1/chat/completions", body).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let up = one(&fake);
    assert_eq!(up.path, "/v1/messages");
    assert_eq!(
        up.headers.get("x-api-key").map(String::as_str),
        Some("sk-ant-upstream")
    );
    assert_eq!(
        up.headers.get("anthropic-version").map(String::as_str),
        Some("2023-06-01")
    );
    assert!(!up.headers.contains_key("authorization"));
    let expected = json!({
        "model": "claude-3-5-sonnet-20241022",
        "system": "You are terse.",
        "messages": [
            { "role": "user", "content": [
                { "type": "text", "text": "What is in this image?" },
                { "type": "image", "source": { "type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo=" } } ] },
            { "role": "assistant", "content": [
                { "type": "tool_use", "id": "call_1", "name": "lookup", "input": { "q": "x" } } ] },
            { "role": "user", "content": [
                { "type": "tool_result", "tool_use_id": "call_1", "content": "found it" } ] }
        ],
        "tools": [{ "name": "lookup", "description": "Look up",
                    "input_schema": { "type": "object", "properties": { "q": { "type": "string" } } } }],
        "tool_choice": { "type": "any" },
        "max_tokens": 4096,
        "stop_sequences": ["END"],
        "temperature": 0.5,
        "metadata": { "user_id": "customer-7" }
    });
    assert_eq!(sorted(&up.body), sorted(&expected));
    // The tool_use answer comes back as an OpenAI tool call.
    let answer = r.json();
    assert_eq!(
        answer.pointer("/choices/0/message/tool_calls/0/function/arguments"),
        Some(&json!("{\"city\":\"Paris\"}"))
    );
    assert_eq!(
        answer.pointer("/choices/0/message/content"),
        Some(&json!("Let me check."))
    );

    let r = gw
        .post(
            "/v1/chat/completions",
            json!({ "model": "claude", "stream": true, "max_tokens": 50,
                                               "messages": [{ "role": "user", "content": "hi" }] }),
        )
        .await;
    assert_eq!(r.status, 200);
    let up = one(&fake);
    assert_eq!(
        (up.body["stream"].as_bool(), up.body["max_tokens"].as_u64()),
        (Some(true), Some(50))
    );
    // 12 input + 7 output tokens at claude-3-5-sonnet's built-in price.
    assert!(
        r.text.contains(": x-meridian-response-cost=0.000141\n"),
        "{}",
        r.text
    );
}

#[tokio::test]
async fn the_anthropic_endpoint_reaches_openai_upstreams_and_back() {
    let fake = FakeUpstream::start(true).await.unwrap();
    let gw = start_yaml(&format!(
        "model_list:\n  - model_name: gpt\n    litellm_params: {{model: openai/gpt-4o, api_base: {}/v1}}\n",
        fake.base_url()
    ))
    .await;
    let r = gw
        .client
        .post(format!("{}/v1/messages", gw.base))
        .header("x-api-key", MASTER_KEY)
        .header("anthropic-version", "2023-06-01")
        .body(
            json!({ "model": "gpt", "max_tokens": 64, "system": "Be terse.",
                    "messages": [{ "role": "user", "content": "hi" }] })
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let up = one(&fake);
    assert_eq!(up.path, "/v1/chat/completions");
    assert_eq!(
        up.body,
        json!({ "model": "gpt-4o", "messages": [
            { "role": "system", "content": "Be terse." }, { "role": "user", "content": "hi" } ], "max_tokens": 64 })
    );
}

/// Same format, same body: an Anthropic client on an Anthropic deployment
/// has its body passed through with only `model` changed (and the
/// gateway's own fields taken out), so fields the chat format has no place
/// for reach the provider; the answer and the stream come back as the
/// upstream sent them, billed from the usage they report.
#[tokio::test]
async fn anthropic_clients_on_anthropic_deployments_pass_through() {
    let fake = FakeUpstream::start(true).await.unwrap();
    let gw = start_yaml(&format!(
        "model_list:\n  - model_name: claude\n    litellm_params: {{model: anthropic/claude-3-5-sonnet-20241022, api_base: {}, api_key: sk-ant-upstream}}\n  - model_name: gpt\n    litellm_params: {{model: openai/gpt-4o, api_base: {}/v1}}\n",
        fake.base_url(),
        fake.base_url()
    ))
    .await;
    let body = json!({
        "model": "claude", "max_tokens": 64, "top_k": 5,
        "thinking": { "type": "enabled", "budget_tokens": 1024 },
        "system": [{ "type": "text", "text": "Be terse.", "cache_control": { "type": "ephemeral" } }],
        "messages": [{ "role": "user", "content": [
            { "type": "text", "text": "hi", "citations": null },
            { "type": "search_result", "source": "s", "title": "t", "content": [] } ] }],
        "service_tier": "auto",
    });
    let mut tagged = body.clone();
    tagged["tags"] = json!(["eng"]);
    let r = gw.post("/v1/messages", tagged).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let up = one(&fake);
    assert_eq!(up.path, "/v1/messages");
    let mut expected = body.clone();
    expected["model"] = json!("claude-3-5-sonnet-20241022");
    assert_eq!(up.body, expected, "only the model changes");
    let fixture: Value =
        serde_json::from_str(include_str!("../../fixtures/anthropic/messages.json")).unwrap();
    assert_eq!(r.json(), fixture, "the answer comes back as sent");
    // 12 input + 7 output tokens at claude-3-5-sonnet's built-in price.
    assert_eq!(
        r.headers
            .get("x-meridian-response-cost")
            .and_then(|v| v.to_str().ok()),
        Some("0.000141")
    );

    let mut stream = body.clone();
    stream["stream"] = json!(true);
    let r = gw.post("/v1/messages", stream.clone()).await;
    assert_eq!(r.status, 200);
    let mut expected = stream;
    expected["model"] = json!("claude-3-5-sonnet-20241022");
    assert_eq!(one(&fake).body, expected);
    let events: Vec<Value> = include_str!("../../fixtures/anthropic/messages_stream.jsonl")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let relayed: Vec<Value> = r
        .text
        .split("\n\n")
        .filter_map(|frame| {
            let event = frame.strip_prefix("event: ")?;
            let (name, data) = event.split_once("\ndata: ")?;
            Some(json!({ "event": name, "data": serde_json::from_str::<Value>(data).ok()? }))
        })
        .collect();
    assert_eq!(relayed, events, "every event relayed as sent, in order");

    // A block the chat format has no place for: another provider refuses
    // it, naming it, and is never called.
    let mut elsewhere = body.clone();
    elsewhere["model"] = json!("gpt");
    let r = gw.post("/v1/messages", elsewhere).await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(
        r.text
            .contains("content block type `search_result` is not supported"),
        "{}",
        r.text
    );
    assert!(fake.take_requests().is_empty());

    // Server tools are billed per use, which the gateway does not price:
    // refused even for Anthropic, before any call.
    let mut searching = body.clone();
    searching["tools"] = json!([{ "type": "web_search_20250305", "name": "web_search" }]);
    let r = gw.post("/v1/messages", searching).await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.text.contains("web_search_20250305"), "{}", r.text);
    assert!(fake.take_requests().is_empty());
}

/// The gateway relays each event as it arrives: with the upstream holding its
/// stream half-way, the client already has the first events. A gateway that
/// buffered the stream would hand over nothing until the upstream finished.
#[tokio::test]
async fn streams_are_relayed_chunk_by_chunk_not_buffered() {
    let fake = FakeUpstream::start(false).await.unwrap();
    let gw = start_yaml(&format!(
        "model_list:\n  - model_name: gpt\n    litellm_params: {{model: openai/gpt-gated, api_base: {}/v1}}\n  - model_name: claude\n    litellm_params: {{model: anthropic/claude-gated, api_base: {}}}\n",
        fake.base_url(),
        fake.base_url()
    ))
    .await;
    for (path, model, first) in [
        ("/v1/chat/completions", "gpt", "\"role\":\"assistant\""),
        ("/v1/chat/completions", "claude", "\"role\":\"assistant\""),
        ("/v1/messages", "gpt", "event: message_start"),
    ] {
        let body = json!({ "model": model, "stream": true, "max_tokens": 20, "messages": [{ "role": "user", "content": "hi" }] });
        let mut resp = gw
            .client
            .post(format!("{}{path}", gw.base))
            .bearer_auth(MASTER_KEY)
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let mut seen = String::new();
        while !seen.contains(first) {
            let chunk = tokio::time::timeout(std::time::Duration::from_secs(10), resp.chunk())
                .await
                .unwrap_or_else(|_| {
                    panic!("{path} {model}: nothing relayed while the upstream holds its stream")
                })
                .unwrap()
                .expect("stream open");
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
        assert!(
            !seen.contains("[DONE]") && !seen.contains("message_stop"),
            "{path} {model}: ended early: {seen}"
        );
        fake.open_gate();
        while let Some(chunk) = resp.chunk().await.unwrap() {
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
        assert!(
            seen.contains("data: [DONE]") || seen.contains("event: message_stop"),
            "{path} {model}: {seen}"
        );
    }
}

/// Object keys sorted, so comparisons ignore key order but nothing else.
fn sorted(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<_> = m.keys().collect();
            keys.sort();
            Value::Object(
                keys.into_iter()
                    .map(|k| (k.clone(), sorted(&m[k])))
                    .collect(),
            )
        }
        Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

/// A client that goes away mid-stream is billed for the call (the upstream
/// had not reported usage yet, so its reservation is charged), the call's
/// spend-log row is written, and its parallel slot is given back.
#[tokio::test]
async fn a_client_that_disconnects_mid_stream_is_settled_logged_and_released() {
    let fake = FakeUpstream::start(false).await.unwrap();
    let gw = start_yaml(&format!(
        "model_list:\n  - model_name: held\n    litellm_params: {{model: openai/gpt-gated, api_base: {base}/v1, input_cost_per_token: 0.000001, output_cost_per_token: 0.000002}}\n  - model_name: quick\n    litellm_params: {{model: openai/gpt-4o, api_base: {base}/v1, input_cost_per_token: 0.000001, output_cost_per_token: 0.000002}}\n",
        base = fake.base_url()
    ))
    .await;
    let made = gw
        .post("/key/generate", json!({ "max_parallel_requests": 1 }))
        .await;
    assert_eq!(made.status, 200, "{}", made.text);
    let key = made.json()["key"].as_str().unwrap().to_owned();

    let body = json!({ "model": "held", "stream": true, "max_tokens": 20, "messages": [{ "role": "user", "content": "hi" }] });
    let mut resp = gw
        .client
        .post(format!("{}/v1/chat/completions", gw.base))
        .bearer_auth(&key)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let request_id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    let first = tokio::time::timeout(std::time::Duration::from_secs(10), resp.chunk())
        .await
        .expect("a first event")
        .unwrap()
        .expect("stream open");
    assert!(String::from_utf8_lossy(&first).contains("data:"));
    // While the stream is held, the key's one parallel slot is taken.
    let quick = json!({ "model": "quick", "messages": [{ "role": "user", "content": "hi" }] });
    let busy = gw
        .post_raw("/v1/chat/completions", quick.to_string(), Some(&key))
        .await;
    assert_eq!(busy.status, 429, "{}", busy.text);
    drop(resp);

    // Within a few seconds: the slot is back, the call is billed and logged.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let (spend, row) = loop {
        let info = gw
            .get(&format!("/key/info?key={key}"), Some(MASTER_KEY))
            .await;
        let spend = info.json()["info"]["spend"].as_f64().unwrap_or(0.0);
        let logs = gw
            .get(
                &format!("/spend/logs?request_id={request_id}"),
                Some(MASTER_KEY),
            )
            .await;
        let row = logs.json().as_array().and_then(|r| r.first().cloned());
        if let Some(row) = row.filter(|_| spend > 0.0) {
            break (spend, row);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not settled: spend {spend}, logs {}",
            logs.text
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    // The reservation: the prompt's estimate and the 20 tokens asked for.
    assert!(spend >= 20.0 * 0.000002, "charged {spend}");
    assert_eq!(row["request_id"], json!(request_id), "{row}");
    assert!(row["spend"].as_f64().unwrap() > 0.0, "{row}");
    let again = gw
        .post_raw("/v1/chat/completions", quick.to_string(), Some(&key))
        .await;
    assert_eq!(
        again.status, 200,
        "the slot was not given back: {}",
        again.text
    );
}
