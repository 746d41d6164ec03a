//! Shared by the router-tier tests: a one-node region in process, called with
//! `oneshot` (no sockets).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use http::Request;
use meridian_node::clock::{SeededRng, SystemClock};
use meridian_node::config;
use meridian_node::node::{Node, Seams};
use meridian_node::runtime::{NodeBuilder, Peers};
use meridian_node::secret::Secret;
use meridian_node::upstream::HttpUpstream;
use serde_json::{Value, json};
use tower::ServiceExt;

pub const MASTER: &str = "sk-admin-tier-master";
pub const MOCKS: &str = "model_list:\n  - model_name: gpt\n    litellm_params: {model: mock/chat}\n  - model_name: claude\n    litellm_params: {model: mock/chat}\n";

pub async fn node(extra: &str) -> Arc<Node> {
    node_yaml(&format!("{MOCKS}{extra}")).await
}

pub async fn node_yaml(yaml: &str) -> Arc<Node> {
    let env = BTreeMap::<String, String>::new();
    let config = config::parse_str(yaml, "t.yaml", &env, false).unwrap();
    let seams = Seams {
        upstream: Arc::new(HttpUpstream::new().unwrap()),
        clock: Arc::new(SystemClock),
        rng: SeededRng::from_seed(5),
    };
    let store: Arc<dyn meridian_storage::Store> = Arc::new(meridian_storage::MemStore::new());
    NodeBuilder::new(config, Secret::new(MASTER), seams, store)
        .peers(Peers::Alone)
        .start()
        .await
        .unwrap()
        .node
}

pub async fn call(
    node: &Arc<Node>,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let (status, _, body) = call_with_headers(node, method, path, key, body).await;
    (status, body)
}

/// A call whose answer's headers matter too.
pub async fn call_with_headers(
    node: &Arc<Node>,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> (u16, http::HeaderMap, Value) {
    send(node, method, path, key, &[], body).await
}

/// A call with extra request headers.
pub async fn send(
    node: &Arc<Node>,
    method: &str,
    path: &str,
    key: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> (u16, http::HeaderMap, Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json");
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .unwrap();
    let resp = meridian_node::api::router(node.clone())
        .oneshot(req)
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    (
        status,
        headers,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

pub async fn post(node: &Arc<Node>, path: &str, key: &str, body: Value) -> (u16, Value) {
    call(node, "POST", path, Some(key), Some(body)).await
}

pub async fn get(node: &Arc<Node>, path: &str, key: &str) -> (u16, Value) {
    call(node, "GET", path, Some(key), None).await
}

pub async fn chat(node: &Arc<Node>, key: &str, model: &str) -> (u16, Value) {
    post(
        node,
        "/v1/chat/completions",
        key,
        json!({ "model": model, "messages": [{ "role": "user", "content": "hi" }] }),
    )
    .await
}

pub fn ok(reply: (u16, Value)) -> Value {
    assert_eq!(reply.0, 200, "{}", reply.1);
    reply.1
}

/// A GET whose answer is text (`/metrics`): status, content type, body.
pub async fn text(node: &Arc<Node>, path: &str, key: Option<&str>) -> (u16, String, String) {
    let mut req = Request::get(path);
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    let resp = meridian_node::api::router(node.clone())
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    (
        status,
        content_type,
        String::from_utf8(bytes.to_vec()).unwrap(),
    )
}
