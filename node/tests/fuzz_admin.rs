//! Fuzzing the admin routes' request bodies in process, with the master key:
//! arbitrary bytes, arbitrary JSON and valid bodies with mutated fields. An
//! admin body that passes validation is proposed to the region's Raft group
//! and applied, so these properties also try the state machine with
//! whatever validation let through. The answer is a 2xx or a 4xx in OpenAI's
//! error shape, and afterwards the region still accepts writes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fuzz_support;
mod router_support;

use std::sync::Arc;

use fuzz_support::{arb_json, arb_mutated, assert_clean, check, post, post_bodies, runtime, send};
use meridian_node::node::Node;
use proptest::prelude::*;
use router_support::MASTER;
use serde_json::{Value, json};

/// A key made before fuzzing, so `/key/update` has something to update.
const TARGET_KEY: &str = "sk-fuzz-target-key";

fn routes() -> Vec<(&'static str, Value)> {
    vec![
        (
            "/key/generate",
            json!({
                "models": ["gpt"],
                "key_alias": "fuzzed",
                "duration": "1h",
                "max_budget": 10.5,
                "budget_duration": "30d",
                "rpm_limit": 100,
                "tpm_limit": 1000,
                "max_parallel_requests": 2,
                "model_rpm_limit": { "gpt": 5 },
                "model_max_budget": { "gpt": { "budget_limit": 1.0, "time_period": "1d" } },
                "metadata": { "env": "fuzz" },
                "allowed_routes": ["/v1/chat/completions"],
                "enforcement": "available"
            }),
        ),
        (
            "/key/update",
            json!({ "key": TARGET_KEY, "models": ["gpt", "claude"], "rpm_limit": 10, "duration": "2h", "blocked": false }),
        ),
        (
            "/team/new",
            json!({
                "team_alias": "fuzz-team",
                "models": ["gpt"],
                "max_budget": 5,
                "budget_duration": "1mo",
                "tpm_limit": 10,
                "rpm_limit": 10,
                "members_with_roles": [{ "role": "admin", "user_id": "lead" }],
                "metadata": { "k": "v" }
            }),
        ),
        (
            "/model/new",
            json!({
                "model_name": "added",
                "litellm_params": { "model": "mock/chat", "rpm": 10, "input_cost_per_token": 0.000001 },
                "model_info": { "mode": "chat" },
                "regions": ["*"]
            }),
        ),
    ]
}

async fn admin_node() -> Arc<Node> {
    let node = router_support::node("").await;
    let r = send(
        &node,
        post(
            "/key/generate",
            Some(MASTER),
            json!({ "key": TARGET_KEY }).to_string(),
        ),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    node
}

/// Raft still commits: a new key can be made, and the model list answers.
async fn assert_alive(node: &Arc<Node>) {
    let r = send(node, post("/key/generate", Some(MASTER), "{}")).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let models = http::Request::get("/v1/models")
        .header("authorization", format!("Bearer {MASTER}"))
        .body(axum::body::Body::empty())
        .unwrap();
    assert_eq!(send(node, models).await.status, 200);
}

/// The starting bodies are accepted, so a failure below is the mutation's.
#[test]
fn the_starting_bodies_are_valid() {
    let rt = runtime();
    rt.block_on(async {
        let node = admin_node().await;
        for (path, body) in routes() {
            let r = send(&node, post(path, Some(MASTER), body.to_string())).await;
            assert_eq!(
                r.status,
                200,
                "{path}: {}",
                String::from_utf8_lossy(&r.body)
            );
        }
        assert_alive(&node).await;
    });
}

fn fuzz_bodies(cases: u32, bodies: impl Strategy<Value = Vec<u8>>) {
    let rt = runtime();
    let node = rt.block_on(admin_node());
    let paths: Vec<&str> = routes().into_iter().map(|(p, _)| p).collect();
    post_bodies(&rt, &node, MASTER, paths, cases, bodies);
    rt.block_on(assert_alive(&node));
}

/// (a) Bytes, valid UTF-8 or not.
#[test]
fn arbitrary_bytes_are_a_clean_error() {
    fuzz_bodies(256, prop::collection::vec(any::<u8>(), 0..512));
}

/// (b) Any JSON value.
#[test]
fn arbitrary_json_is_a_clean_error() {
    fuzz_bodies(
        256,
        arb_json().prop_map(|v| serde_json::to_vec(&v).unwrap()),
    );
}

/// (c) Valid bodies with one or two fields broken.
#[test]
fn mutated_bodies_are_applied_or_refused_cleanly() {
    let rt = runtime();
    let node = rt.block_on(admin_node());
    let mutated = prop::sample::select(routes())
        .prop_flat_map(|(path, base)| (Just(path), arb_mutated(base)));
    check(256, mutated, |(path, body)| {
        let r = rt.block_on(send(&node, post(path, Some(MASTER), body)));
        assert_clean(path, &r)
    });
    rt.block_on(assert_alive(&node));
}
