//! The HTTP surface in-process (router tier, no sockets): authentication, error
//! shapes and statuses, body limits, the model list and the health endpoints,
//! against the built-in mock models.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use http::{Request, StatusCode};
use meridian_node::clock::{SeededRng, SystemClock};
use meridian_node::config::{self, Config};
use meridian_node::node::{Node, Seams};
use meridian_node::runtime::{NodeBuilder, Peers};
use meridian_node::secret::Secret;
use meridian_node::upstream::HttpUpstream;
use serde_json::{Value, json};
use tower::ServiceExt;

const KEY: &str = "sk-router-tier";

async fn node_with(config: Config, data_dir: &std::path::Path) -> Arc<Node> {
    node_on(
        config,
        data_dir,
        Arc::new(meridian_storage::MemStore::new()),
    )
    .await
}

async fn node_on(
    mut config: Config,
    data_dir: &std::path::Path,
    store: Arc<dyn meridian_storage::Store>,
) -> Arc<Node> {
    config.node.data_dir = data_dir.to_path_buf();
    let seams = Seams {
        upstream: Arc::new(HttpUpstream::new().unwrap()),
        clock: Arc::new(SystemClock),
        rng: SeededRng::from_seed(1),
    };
    NodeBuilder::new(config, Secret::new(KEY), seams, store)
        .peers(Peers::Alone)
        .start()
        .await
        .unwrap()
        .node
}

fn yaml(text: &str) -> Config {
    config::parse_str(text, "test.yaml", &BTreeMap::<String, String>::new(), false).unwrap()
}

const MOCKS: &str = "model_list:\n  - model_name: mock-chat\n    litellm_params: {model: mock/chat}\n  - model_name: broken\n    litellm_params: {model: mock/error-503}\n  - model_name: vectors\n    litellm_params: {model: mock/embedding}\n    model_info: {mode: embedding}\n";

struct Reply {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Value,
}

async fn call(node: &Arc<Node>, req: Request<Body>) -> Reply {
    let resp = meridian_node::api::router(node.clone())
        .oneshot(req)
        .await
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    Reply {
        status,
        headers,
        body,
    }
}

fn post(path: &str, key: Option<&str>, body: impl Into<String>) -> Request<Body> {
    let mut b = Request::post(path).header("content-type", "application/json");
    if let Some(k) = key {
        b = b.header("authorization", format!("Bearer {k}"));
    }
    b.body(Body::from(body.into())).unwrap()
}

fn get(path: &str, key: Option<&str>) -> Request<Body> {
    let mut b = Request::get(path);
    if let Some(k) = key {
        b = b.header("authorization", format!("Bearer {k}"));
    }
    b.body(Body::empty()).unwrap()
}

fn assert_openai_error(r: &Reply, status: u16, kind: &str) {
    assert_eq!(r.status.as_u16(), status, "{}", r.body);
    assert_eq!(r.body["error"]["type"], kind, "{}", r.body);
    assert_eq!(r.body["error"]["code"], status.to_string(), "{}", r.body);
    assert!(
        r.body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
    assert!(r.body["error"].get("param").is_some());
}

#[tokio::test]
async fn keys_are_required_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with(yaml(MOCKS), dir.path()).await;
    let chat = json!({ "model": "mock-chat", "messages": [{ "role": "user", "content": "hi" }] })
        .to_string();

    let r = call(&node, post("/v1/chat/completions", None, chat.clone())).await;
    assert_openai_error(&r, 401, "auth_error");
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("No api key passed in")
    );
    assert_openai_error(
        &call(
            &node,
            post("/v1/chat/completions", Some("sk-nope"), chat.clone()),
        )
        .await,
        401,
        "auth_error",
    );
    assert_eq!(
        call(&node, post("/v1/chat/completions", Some(KEY), chat.clone()))
            .await
            .status,
        200
    );

    // Anthropic clients send x-api-key and get Anthropic-shaped errors.
    let messages = json!({ "model": "mock-chat", "max_tokens": 10, "messages": [{ "role": "user", "content": "hi" }] }).to_string();
    let r = call(&node, post("/v1/messages", None, messages.clone())).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.body,
        json!({ "type": "error", "error": { "type": "authentication_error",
        "message": "No api key passed in. Send it as `Authorization: Bearer <key>` or `x-api-key: <key>`." } })
    );
    let req = Request::post("/v1/messages")
        .header("x-api-key", KEY)
        .body(Body::from(messages))
        .unwrap();
    let r = call(&node, req).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["type"], "message");
}

#[tokio::test]
async fn bad_requests_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with(yaml(MOCKS), dir.path()).await;
    let r = call(
        &node,
        post(
            "/v1/chat/completions",
            Some(KEY),
            "{\"model\": \"mock-chat\", ",
        ),
    )
    .await;
    assert_openai_error(&r, 400, "invalid_request_error");
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("Request body is not valid JSON")
    );

    let r = call(
        &node,
        post(
            "/v1/chat/completions",
            Some(KEY),
            r#"{"model":"mock-chat","messages":[{"role":"user","content":7}]}"#,
        ),
    )
    .await;
    assert_openai_error(&r, 400, "invalid_request_error");
    assert_eq!(r.body["error"]["param"], "messages[0].content");

    let r = call(
        &node,
        post(
            "/v1/chat/completions",
            Some(KEY),
            r#"{"model":"mock-chat","messages":[],"max_tokens":"ten"}"#,
        ),
    )
    .await;
    assert_eq!(r.body["error"]["param"], "max_tokens");

    let r = call(
        &node,
        post(
            "/v1/chat/completions",
            Some(KEY),
            r#"{"model":"gpt-9","messages":[{"role":"user","content":"x"}]}"#,
        ),
    )
    .await;
    assert_openai_error(&r, 400, "invalid_request_error");
    assert_eq!(r.body["error"]["param"], "model");
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("model=gpt-9")
    );

    let r = call(
        &node,
        post(
            "/v1/messages",
            Some(KEY),
            r#"{"model":"mock-chat","messages":[{"role":"user","content":"x"}]}"#,
        ),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.body["error"]["type"], "invalid_request_error");
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_tokens"),
        "{}",
        r.body
    );

    let r = call(
        &node,
        post(
            "/v1/embeddings",
            Some(KEY),
            r#"{"model":"vectors","input":{"a":1}}"#,
        ),
    )
    .await;
    assert_openai_error(&r, 400, "invalid_request_error");
    assert_eq!(r.body["error"]["param"], "input");

    let r = call(&node, get("/v1/nothing-here", Some(KEY))).await;
    assert_openai_error(&r, 404, "invalid_request_error");
}

#[tokio::test]
async fn bodies_over_the_limit_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with(
        yaml(&format!(
            "{MOCKS}general_settings:\n  max_request_size_mb: 0.001\n"
        )),
        dir.path(),
    )
    .await;
    let big = json!({ "model": "mock-chat", "messages": [{ "role": "user", "content": "x".repeat(2000) }] }).to_string();
    let r = call(&node, post("/v1/chat/completions", Some(KEY), big.clone())).await;
    assert_openai_error(&r, 413, "invalid_request_error");
    // Without a Content-Length the limit holds while reading.
    let stream = futures_util::stream::iter(vec![Ok::<_, std::io::Error>(bytes::Bytes::from(big))]);
    let req = Request::post("/v1/chat/completions")
        .header("authorization", format!("Bearer {KEY}"))
        .body(Body::from_stream(stream))
        .unwrap();
    assert_eq!(call(&node, req).await.status, 413);
}

#[tokio::test]
async fn models_health_and_headers() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with(yaml(MOCKS), dir.path()).await;
    let r = call(&node, get("/v1/models", Some(KEY))).await;
    assert_eq!(r.status, 200);
    let ids: Vec<&str> = r.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["broken", "mock-chat", "vectors"]);
    assert_eq!(call(&node, get("/models", None)).await.status, 401);

    let r = call(&node, get("/health/liveliness", None)).await;
    assert_eq!(
        (r.status.as_u16(), r.body.clone()),
        (200, json!("I'm alive!"))
    );
    let r = call(&node, get("/health/readiness", None)).await;
    assert_eq!(
        (r.status.as_u16(), r.body.clone()),
        (200, json!({ "status": "healthy", "db": "not used" })),
        "without an admin key, readiness says only whether the node is ready"
    );
    let r = call(&node, get("/health/readiness", Some(KEY))).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        (r.body["status"].as_str(), r.body["storage"]["ok"].as_bool()),
        (Some("healthy"), Some(true))
    );
    assert_eq!(
        (
            r.body["cluster"]["role"].as_str(),
            r.body["cluster"]["members"].as_u64()
        ),
        (Some("leader"), Some(1))
    );

    assert_eq!(call(&node, get("/health", None)).await.status, 401);
    let r = call(&node, get("/health", Some(KEY))).await;
    assert_eq!(
        (
            r.body["healthy_count"].as_u64(),
            r.body["unhealthy_count"].as_u64()
        ),
        (Some(2), Some(1)),
        "{}",
        r.body
    );
    assert_eq!(r.body["unhealthy_endpoints"][0]["model_name"], "broken");
    assert!(
        r.body["unhealthy_endpoints"][0]["error"]
            .as_str()
            .unwrap()
            .contains("503")
    );
    let r = call(&node, get("/health?model=vectors", Some(KEY))).await;
    assert_eq!(r.body["healthy_endpoints"][0]["model"], "mock/embedding");

    let req = Request::post("/v1/chat/completions")
        .header("authorization", format!("Bearer {KEY}"))
        .header("x-request-id", "trace-123")
        .body(Body::from(
            json!({ "model": "mock-chat", "messages": [{ "role": "user", "content": "hi" }] })
                .to_string(),
        ))
        .unwrap();
    let r = call(&node, req).await;
    assert_eq!(r.headers["x-request-id"], "trace-123");
    assert_eq!(r.headers["x-meridian-node"], "node-1");
    assert_eq!(r.headers["x-meridian-model-group"], "mock-chat");
}

/// Readiness asks the store. One on disk whose directory is gone (a volume
/// unmounted or wiped) makes the node unready, though its open files still
/// answer; a store in memory does not depend on where `data_dir` points.
#[tokio::test]
async fn readiness_reports_a_store_whose_directory_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let store = meridian_storage::RocksStore::open(&dir.path().join("db")).unwrap();
    let node = node_on(yaml(MOCKS), dir.path(), Arc::new(store)).await;
    let ready = |r: &Reply| {
        (
            r.status.as_u16(),
            r.body["status"].as_str().map(str::to_owned),
        )
    };
    let r = call(&node, get("/health/readiness", None)).await;
    assert_eq!(ready(&r), (200, Some("healthy".into())));
    drop(dir);
    let r = call(&node, get("/health/readiness", None)).await;
    assert_eq!(ready(&r), (503, Some("unhealthy".into())));

    let elsewhere = tempfile::tempdir().unwrap();
    let in_memory = node_with(yaml(MOCKS), elsewhere.path()).await;
    drop(elsewhere);
    let r = call(&in_memory, get("/health/readiness", None)).await;
    assert_eq!(ready(&r), (200, Some("healthy".into())));
}

#[tokio::test]
async fn the_llm_api_can_be_disabled() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with(
        yaml(&format!(
            "{MOCKS}meridian:\n  disable_llm_api_endpoints: true\n"
        )),
        dir.path(),
    )
    .await;
    let chat = json!({ "model": "mock-chat", "messages": [{ "role": "user", "content": "hi" }] })
        .to_string();
    let r = call(&node, post("/v1/chat/completions", Some(KEY), chat)).await;
    assert_openai_error(&r, 403, "permission_error");
    assert_eq!(call(&node, get("/v1/models", Some(KEY))).await.status, 200);
}

#[tokio::test]
async fn embedded_default_serves_its_mock_models() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with(
        Config::embedded(&BTreeMap::<String, String>::new()),
        dir.path(),
    )
    .await;
    let r = call(
        &node,
        post(
            "/v1/embeddings",
            Some(KEY),
            r#"{"model":"mock-embedding","input":["a","b"]}"#,
        ),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["data"].as_array().unwrap().len(), 2);
    assert_eq!(r.body["data"][1]["index"], 1);
    let r = call(
        &node,
        post(
            "/v1/completions",
            Some(KEY),
            r#"{"model":"mock-chat","prompt":"Once","max_tokens":4}"#,
        ),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["choices"][0]["text"], "This is Meridian's mock");
    assert_eq!(r.body["choices"][0]["finish_reason"], "length");
}
