//! Fuzzing the LLM routes' request bodies in process (router tier, no
//! sockets): arbitrary bytes, arbitrary JSON, valid requests with mutated
//! fields, nesting past the parser's recursion limit and bodies over the size
//! limit. Whatever the body, the answer is a 2xx or a 4xx in the route's error
//! shape — never a 5xx, never a panic — and the node keeps answering.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fuzz_support;
mod router_support;

use std::sync::Arc;

use axum::body::Body;
use fuzz_support::{arb_json, arb_mutated, assert_clean, check, post, post_bodies, runtime, send};
use http::Request;
use meridian_node::node::Node;
use proptest::prelude::*;
use router_support::MASTER;
use serde_json::{Value, json};

/// Each route with a valid body to start mutating from.
fn routes() -> Vec<(&'static str, Value)> {
    vec![
        (
            "/v1/chat/completions",
            json!({
                "model": "gpt",
                "messages": [
                    { "role": "system", "content": "Be brief." },
                    { "role": "user", "content": [
                        { "type": "text", "text": "hi" },
                        { "type": "image_url", "image_url": { "url": "https://example.invalid/a.png" } }
                    ]},
                    { "role": "assistant", "content": null, "tool_calls": [
                        { "id": "c1", "type": "function", "function": { "name": "f", "arguments": "{}" } }
                    ]},
                    { "role": "tool", "tool_call_id": "c1", "content": "42" },
                    { "role": "user", "content": "and now?" }
                ],
                "stream": false,
                "stream_options": { "include_usage": true },
                "max_tokens": 16,
                "temperature": 0.5,
                "stop": ["\n"],
                "tools": [{ "type": "function", "function": { "name": "f", "parameters": { "type": "object" } } }],
                "tool_choice": "auto",
                "user": "customer-1",
                "tags": ["team-a"],
                "metadata": { "tags": ["from-metadata"] },
                "fallbacks": ["claude"],
                "n": 1
            }),
        ),
        (
            "/v1/completions",
            json!({ "model": "gpt", "prompt": ["Say hi", "twice"], "max_tokens": 8, "stream": false, "user": "u" }),
        ),
        (
            "/v1/embeddings",
            json!({ "model": "vectors", "input": ["a", "b"], "user": "u", "encoding_format": "float" }),
        ),
        (
            "/v1/messages",
            json!({
                "model": "claude",
                "max_tokens": 32,
                "system": [{ "type": "text", "text": "Be brief." }],
                "messages": [
                    { "role": "user", "content": [
                        { "type": "text", "text": "hi" },
                        { "type": "image", "source": { "type": "base64", "media_type": "image/png", "data": "AAAA" } }
                    ]},
                    { "role": "assistant", "content": [{ "type": "tool_use", "id": "t1", "name": "f", "input": {} }] },
                    { "role": "user", "content": [{ "type": "tool_result", "tool_use_id": "t1", "content": "42" }] }
                ],
                "tools": [{ "name": "f", "input_schema": { "type": "object" } }],
                "tool_choice": { "type": "auto" },
                "stop_sequences": ["x"],
                "temperature": 0.2,
                "metadata": { "user_id": "u" },
                "stream": false
            }),
        ),
    ]
}

const VECTORS: &str = "  - model_name: vectors\n    litellm_params: {model: mock/embedding}\n    model_info: {mode: embedding}\n";

async fn llm_node(extra: &str) -> Arc<Node> {
    router_support::node(&format!("{VECTORS}{extra}")).await
}

/// After a run of hostile bodies, the node still serves a valid request on
/// every route.
async fn assert_alive(node: &Arc<Node>) {
    for (path, body) in routes() {
        let r = send(node, post(path, Some(MASTER), body.to_string())).await;
        assert_eq!(
            r.status,
            200,
            "{path}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
}

/// The valid bodies pass the checks themselves, so a property that fails
/// fails because of its input.
#[test]
fn the_starting_bodies_are_valid() {
    let rt = runtime();
    rt.block_on(async { assert_alive(&llm_node("").await).await });
}

fn fuzz_bodies(cases: u32, bodies: impl Strategy<Value = Vec<u8>>) {
    let rt = runtime();
    let node = rt.block_on(llm_node(""));
    let paths: Vec<&str> = routes().into_iter().map(|(p, _)| p).collect();
    post_bodies(&rt, &node, MASTER, paths, cases, bodies);
    rt.block_on(assert_alive(&node));
}

/// (a) Bytes, valid UTF-8 or not.
#[test]
fn arbitrary_bytes_are_a_clean_error() {
    fuzz_bodies(256, prop::collection::vec(any::<u8>(), 0..512));
}

/// (b) Any JSON value, objects made mostly of the fields the gateway reads.
#[test]
fn arbitrary_json_is_a_clean_error() {
    fuzz_bodies(
        256,
        arb_json().prop_map(|v| serde_json::to_vec(&v).unwrap()),
    );
}

/// (c) Valid requests with fields of the wrong type, out-of-range numbers,
/// odd text, missing or extra fields, and raw literals JSON forbids.
#[test]
fn mutated_requests_are_answered_or_refused_cleanly() {
    let rt = runtime();
    let node = rt.block_on(llm_node(""));
    let mutated = prop::sample::select(routes())
        .prop_flat_map(|(path, base)| (Just(path), arb_mutated(base)));
    check(256, mutated, |(path, body)| {
        let r = rt.block_on(send(&node, post(path, Some(MASTER), body)));
        assert_clean(path, &r)
    });
    rt.block_on(assert_alive(&node));
}

/// `depth` nested arrays or objects around `inner`.
fn nested(depth: usize, object: bool, inner: &str) -> String {
    let (open, close) = if object { ("{\"a\":", "}") } else { ("[", "]") };
    format!("{}{inner}{}", open.repeat(depth), close.repeat(depth))
}

/// (d) Nesting far past serde_json's recursion limit (128) is a 400, at the
/// top level and inside a field of an otherwise valid request; nesting just
/// under it is an ordinary request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_nesting_is_a_400() {
    let node = llm_node("").await;
    for (path, _) in routes() {
        for object in [false, true] {
            let bomb = nested(10_000, object, "1");
            let r = send(&node, post(path, Some(MASTER), bomb.clone())).await;
            assert_clean(path, &r).unwrap();
            assert_eq!(r.status, 400, "{path}");
            let inside = format!(
                "{{\"model\":\"gpt\",\"messages\":[{{\"role\":\"user\",\"content\":\"hi\"}}],\"extra\":{bomb}}}"
            );
            let r = send(&node, post(path, Some(MASTER), inside)).await;
            assert_eq!(r.status, 400, "{path}");
            assert_clean(path, &r).unwrap();
        }
    }
    // 100 levels parse; the request itself is valid, so the mock answers.
    let deep_but_legal = format!(
        "{{\"model\":\"gpt\",\"messages\":[{{\"role\":\"user\",\"content\":\"hi\"}}],\"extra\":{}}}",
        nested(100, true, "1")
    );
    let r = send(
        &node,
        post("/v1/chat/completions", Some(MASTER), deep_but_legal),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_alive(&node).await;
}

/// A body of exactly `n` bytes that is a valid chat request.
fn chat_of_size(n: usize) -> String {
    let head = "{\"model\":\"gpt\",\"messages\":[{\"role\":\"user\",\"content\":\"";
    let tail = "\"}]}";
    format!("{head}{}{tail}", "x".repeat(n - head.len() - tail.len()))
}

/// (d) One byte over the limit is a 413, whether the client declared the
/// length or streamed the body; a body exactly at the limit is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_one_byte_over_the_limit_are_a_413() {
    // 0.01 MiB: 10485 bytes, so the test moves kilobytes, not megabytes.
    let node = llm_node("general_settings:\n  max_request_size_mb: 0.01\n").await;
    let limit = 10_485;
    for (path, _) in routes() {
        let r = send(&node, post(path, Some(MASTER), chat_of_size(limit + 1))).await;
        assert_eq!(r.status, 413, "{path} declared");
        assert_clean(path, &r).unwrap();
        let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = chat_of_size(limit + 1)
            .into_bytes()
            .chunks(1000)
            .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
            .collect();
        let streamed = Request::post(path)
            .header("authorization", format!("Bearer {MASTER}"))
            .body(Body::from_stream(futures_util::stream::iter(chunks)))
            .unwrap();
        let r = send(&node, streamed).await;
        assert_eq!(r.status, 413, "{path} streamed");
        assert_clean(path, &r).unwrap();
    }
    let r = send(
        &node,
        post("/v1/chat/completions", Some(MASTER), chat_of_size(limit)),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_alive(&node).await;
}

/// (d) The same at the default limit of 32 MiB, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_default_limit_is_a_413() {
    let node = llm_node("").await;
    let limit = meridian_node::config::DEFAULT_MAX_REQUEST_BYTES;
    let r = send(
        &node,
        post(
            "/v1/chat/completions",
            Some(MASTER),
            chat_of_size(limit + 1),
        ),
    )
    .await;
    assert_eq!(r.status, 413);
    assert_clean("/v1/chat/completions", &r).unwrap();
    assert_alive(&node).await;
}
