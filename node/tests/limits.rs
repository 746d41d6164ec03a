//! Budgets and rate limits on one node (router tier): what is admitted, what
//! is refused and how (429, OpenAI shape, `x-ratelimit-*`, `retry-after`), and
//! that reservations are settled with the real usage — also when the call fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod router_support;

use std::sync::Arc;

use meridian_node::node::Node;
use router_support::*;
use serde_json::{Value, json};

/// `priced` costs $1 per million input tokens and $2 per million output tokens.
const MODELS: &str = "model_list:
  - model_name: gpt
    litellm_params: {model: mock/chat}
  - model_name: claude
    litellm_params: {model: mock/chat}
  - model_name: priced
    litellm_params: {model: mock/chat, input_cost_per_token: 0.000001, output_cost_per_token: 0.000002}
  - model_name: slow
    litellm_params: {model: mock/slow-400}
  - model_name: broken
    litellm_params: {model: mock/error-500}
";

async fn gateway() -> Arc<Node> {
    node_yaml(MODELS).await
}

async fn key(n: &Arc<Node>, settings: Value) -> String {
    let created = ok(post(n, "/key/generate", MASTER, settings).await);
    created["key"].as_str().unwrap().to_owned()
}

async fn ask(n: &Arc<Node>, key: &str, body: Value) -> (u16, http::HeaderMap, Value) {
    call_with_headers(n, "POST", "/v1/chat/completions", Some(key), Some(body)).await
}

fn hi(model: &str) -> Value {
    json!({ "model": model, "messages": [{ "role": "user", "content": "hi" }] })
}

fn header<'a>(headers: &'a http::HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .map(|v| v.to_str().unwrap())
        .unwrap_or_else(|| panic!("no {name} header"))
}

#[tokio::test]
async fn requests_per_minute_are_limited_with_openai_headers() {
    let n = gateway().await;
    let k = key(&n, json!({ "rpm_limit": 3 })).await;
    for remaining in ["2", "1", "0"] {
        let (status, headers, body) = ask(&n, &k, hi("gpt")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(header(&headers, "x-ratelimit-limit-requests"), "3");
        assert_eq!(
            header(&headers, "x-ratelimit-remaining-requests"),
            remaining
        );
    }
    let (status, headers, body) = ask(&n, &k, hi("gpt")).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["type"], "rate_limit_exceeded");
    assert_eq!(body["error"]["code"], "429");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("3 of 3 requests per minute"),
        "{body}"
    );
    assert_eq!(header(&headers, "x-ratelimit-remaining-requests"), "0");
    let retry: u64 = header(&headers, "retry-after").parse().unwrap();
    assert!((1..=60).contains(&retry));
    assert!(header(&headers, "x-ratelimit-reset-requests").ends_with('s'));
    // The master key (a proxy admin) is never limited.
    for _ in 0..5 {
        assert_eq!(ask(&n, MASTER, hi("gpt")).await.0, 200);
    }
}

#[tokio::test]
async fn a_budget_stops_spending_and_reports_it() {
    let n = gateway().await;
    // Each call reserves ~4 prompt tokens + 10 output tokens ≈ $0.000024.
    let k = key(&n, json!({ "max_budget": 0.0002 })).await;
    let body = json!({ "model": "priced", "max_tokens": 10,
        "messages": [{ "role": "user", "content": "hi" }] });
    let mut served = 0u32;
    let mut costs = 0f64;
    let refusal = loop {
        let (status, headers, reply) = ask(&n, &k, body.clone()).await;
        if status != 200 {
            break (status, reply);
        }
        served += 1;
        costs += header(&headers, "x-meridian-response-cost")
            .parse::<f64>()
            .unwrap();
        assert!(served < 100, "the budget never stopped the key");
    };
    assert_eq!(refusal.0, 429);
    assert_eq!(
        refusal.1["error"]["type"], "budget_exceeded",
        "{}",
        refusal.1
    );
    assert!(served >= 5, "served {served}");
    assert!(costs <= 0.0002 + 1e-12, "spent {costs} of 0.0002");
    let info = ok(get(&n, &format!("/key/info?key={k}"), MASTER).await);
    let spend = info["info"]["spend"].as_f64().unwrap();
    assert!(
        (spend - costs).abs() < 1e-9,
        "info says {spend}, clients saw {costs}"
    );
    let here = info["info"]["spend_by_region"]["local"].as_f64().unwrap();
    assert!((here - spend).abs() < 1e-12, "{info}");

    // One spend log row per served call, with the key's hash, never the key.
    let (status, rows) = get(&n, &format!("/spend/logs?api_key={k}&limit=1000"), MASTER).await;
    assert_eq!(status, 200, "{rows}");
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), served as usize);
    let logged: f64 = rows.iter().map(|r| r["spend"].as_f64().unwrap()).sum();
    assert!((logged - costs).abs() < 1e-9);
    assert_eq!(rows[0]["model_group"], "priced");
    assert_eq!(rows[0]["region"], "local");
    assert!(
        !rows.iter().any(|r| r.to_string().contains(&k)),
        "the key leaked"
    );
    assert!(
        rows[0]["endTime"].as_u64() >= rows[1]["endTime"].as_u64(),
        "newest first"
    );
    // The key itself sees its own rows, and only those.
    let (status, own) = get(&n, "/spend/logs", &k).await;
    assert_eq!(
        (status, own.as_array().unwrap().len()),
        (200, served as usize)
    );
    let other = key(&n, json!({})).await;
    assert_eq!(
        get(&n, &format!("/spend/logs?api_key={k}"), &other).await.0,
        403
    );
    assert_eq!(
        get(&n, "/spend/logs?start_date=yesterday", MASTER).await.0,
        400
    );
}

#[tokio::test]
async fn tokens_per_minute_count_the_reservation_then_the_real_usage() {
    let n = gateway().await;
    let k = key(&n, json!({ "tpm_limit": 60 })).await;
    let asking = |max_tokens: u64| {
        json!({ "model": "gpt", "max_tokens": max_tokens,
            "messages": [{ "role": "user", "content": "hi" }] })
    };
    let (status, _, body) = ask(&n, &k, asking(100)).await;
    assert_eq!(status, 429, "max_tokens above the limit cannot fit: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("tokens per minute")
    );
    // Small requests are admitted until the real usage fills the minute.
    let mut served = 0;
    while ask(&n, &k, asking(5)).await.0 == 200 {
        served += 1;
        assert!(served < 60, "never limited");
    }
    assert!(served >= 2, "served {served}");
}

#[tokio::test]
async fn parallel_requests_are_limited_and_released_when_they_settle() {
    let n = gateway().await;
    let k = key(&n, json!({ "max_parallel_requests": 1 })).await;
    let (a, b) = tokio::join!(ask(&n, &k, hi("slow")), async {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        ask(&n, &k, hi("slow")).await
    });
    assert_eq!(a.0, 200, "{}", a.2);
    assert_eq!(b.0, 429, "{}", b.2);
    assert!(
        b.2["error"]["message"]
            .as_str()
            .unwrap()
            .contains("parallel")
    );
    // A failed call gives its slot back too.
    assert_eq!(ask(&n, &k, hi("broken")).await.0, 500);
    assert_eq!(ask(&n, &k, hi("gpt")).await.0, 200);
}

#[tokio::test]
async fn team_customer_and_per_model_limits_apply() {
    let n = gateway().await;
    ok(post(
        &n,
        "/team/new",
        MASTER,
        json!({ "team_id": "t1", "rpm_limit": 2 }),
    )
    .await);
    let a = key(&n, json!({ "team_id": "t1" })).await;
    let b = key(&n, json!({ "team_id": "t1" })).await;
    assert_eq!(ask(&n, &a, hi("gpt")).await.0, 200);
    assert_eq!(ask(&n, &b, hi("gpt")).await.0, 200);
    let (status, _, body) = ask(&n, &a, hi("gpt")).await;
    assert_eq!(status, 429);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("team t1"),
        "{body}"
    );

    ok(post(
        &n,
        "/customer/new",
        MASTER,
        json!({ "user_id": "c1", "max_budget": 0.0 }),
    )
    .await);
    let k = key(&n, json!({})).await;
    let for_c1 = json!({ "model": "priced", "user": "c1",
        "messages": [{ "role": "user", "content": "hi" }] });
    let (status, _, body) = ask(&n, &k, for_c1).await;
    assert_eq!(
        (status, body["error"]["type"].clone()),
        (429, json!("budget_exceeded"))
    );
    assert_eq!(
        ask(&n, &k, hi("priced")).await.0,
        200,
        "other customers are not limited"
    );

    let m = key(&n, json!({ "model_rpm_limit": { "gpt": 1 } })).await;
    assert_eq!(ask(&n, &m, hi("gpt")).await.0, 200);
    assert_eq!(ask(&n, &m, hi("gpt")).await.0, 429);
    assert_eq!(ask(&n, &m, hi("claude")).await.0, 200);
}

#[tokio::test]
async fn tags_have_budgets_and_limits_from_keys_bodies_and_headers() {
    let n = gateway().await;
    let created = ok(post(
        &n,
        "/tag/new",
        MASTER,
        json!({ "name": "eng", "rpm_limit": 3, "description": "Engineering" }),
    )
    .await);
    assert_eq!(created["message"], "Tag eng created successfully");
    assert_eq!(created["tag"]["rpm_limit"], 3);
    assert_eq!(created["tag"]["home_region"], "local");
    let (status, again) = post(&n, "/tag/new", MASTER, json!({ "name": "eng" })).await;
    assert_eq!(status, 400, "{again}");
    let (status, bad) = post(&n, "/tag/new", MASTER, json!({ "name": "a,b" })).await;
    assert_eq!(
        (status, bad["error"]["param"].clone()),
        (400, json!("name"))
    );

    // The tag's three requests a minute, spent three ways: a key that carries
    // the tag, a body that names it, a header that names it.
    let tagged = key(&n, json!({ "tags": ["eng"] })).await;
    let plain = key(&n, json!({})).await;
    assert_eq!(ask(&n, &tagged, hi("gpt")).await.0, 200);
    let mut in_body = hi("gpt");
    in_body["metadata"] = json!({ "tags": ["eng"] });
    assert_eq!(ask(&n, &plain, in_body).await.0, 200);
    let chat = "/v1/chat/completions";
    let tag_header = [("x-litellm-tags", "eng, other")];
    let (status, _, body) =
        send(&n, "POST", chat, Some(&plain), &tag_header, Some(hi("gpt"))).await;
    assert_eq!(status, 200, "{body}");
    let (status, _, body) =
        send(&n, "POST", chat, Some(&plain), &tag_header, Some(hi("gpt"))).await;
    assert_eq!(status, 429, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("tag eng"), "{message}");
    assert_eq!(ask(&n, &tagged, hi("gpt")).await.0, 429);
    // Untagged requests, and tags without a record, are not limited by it.
    assert_eq!(ask(&n, &plain, hi("gpt")).await.0, 200);
    let mut unknown = hi("gpt");
    unknown["tags"] = json!(["other"]);
    assert_eq!(ask(&n, &plain, unknown).await.0, 200);
    let mut wrong = hi("gpt");
    wrong["tags"] = json!("eng");
    let (status, _, body) = ask(&n, &plain, wrong).await;
    assert_eq!(
        (status, body["error"]["param"].clone()),
        (400, json!("tags"))
    );

    // A budget, with the global spend reported by /tag/info.
    ok(post(
        &n,
        "/tag/new",
        MASTER,
        json!({ "name": "cost", "max_budget": 0.00005, "budget_duration": "30d" }),
    )
    .await);
    let mut priced = json!({ "model": "priced", "max_tokens": 10, "tags": ["cost"],
        "messages": [{ "role": "user", "content": "hi" }] });
    let mut spent = 0.0;
    let refusal = loop {
        let (status, headers, body) = ask(&n, &plain, priced.clone()).await;
        if status != 200 {
            break body;
        }
        spent += header(&headers, "x-meridian-response-cost")
            .parse::<f64>()
            .unwrap();
        assert!(spent < 0.001, "the tag's budget never stopped spending");
    };
    assert_eq!(refusal["error"]["type"], "budget_exceeded", "{refusal}");
    assert!(spent > 0.0 && spent <= 0.00005 + 1e-12, "spent {spent}");
    let info = ok(post(&n, "/tag/info", MASTER, json!({ "names": ["cost", "eng"] })).await);
    let reported = info["cost"]["spend"].as_f64().unwrap();
    assert!((reported - spent).abs() < 1e-12, "{info}");
    assert_eq!(info["cost"]["litellm_budget_table"]["max_budget"], 0.00005);
    assert_eq!(info["eng"]["litellm_budget_table"]["rpm_limit"], 3);
    assert!(info["cost"]["budget_period"]["end"].is_string(), "{info}");
    let (status, missing) = post(
        &n,
        "/tag/info",
        MASTER,
        json!({ "names": ["cost", "nope"] }),
    )
    .await;
    assert_eq!(status, 404, "{missing}");
    assert!(missing.to_string().contains("nope"), "{missing}");
    let rows = ok(get(&n, "/spend/logs?limit=1", MASTER).await);
    assert_eq!(rows[0]["request_tags"], json!(["cost"]), "{rows}");

    // Raising the limit takes effect at once; deleting the tag lifts it.
    let updated = ok(post(
        &n,
        "/tag/update",
        MASTER,
        json!({ "name": "eng", "rpm_limit": 100 }),
    )
    .await);
    assert_eq!(updated["tag"]["rpm_limit"], 100);
    assert_eq!(ask(&n, &tagged, hi("gpt")).await.0, 200);
    priced["tags"] = json!(["cost"]);
    ok(post(&n, "/tag/delete", MASTER, json!({ "name": "cost" })).await);
    assert_eq!(ask(&n, &plain, priced).await.0, 200);
    assert_eq!(
        post(&n, "/tag/delete", MASTER, json!({ "name": "cost" }))
            .await
            .0,
        404
    );
    let list = ok(get(&n, "/tag/list", MASTER).await);
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["eng"]);
    // Only admins manage tags; keys without a role may not read them.
    assert_eq!(
        post(&n, "/tag/new", &plain, json!({ "name": "mine" }))
            .await
            .0,
        403
    );
    assert_eq!(get(&n, "/tag/list", &plain).await.0, 403);
}

/// Waits, if needed, until the current calendar minute has at least `need`
/// left, so a strict per-minute count is not split by a window boundary.
async fn room_in_this_minute(need: std::time::Duration) {
    // The nodes under test read the same clock.
    let now = meridian_node::clock::Clock::since_epoch(&meridian_node::clock::SystemClock);
    let into = std::time::Duration::from_millis((now.as_millis() % 60_000) as u64);
    if std::time::Duration::from_secs(60) - into < need {
        tokio::time::sleep(std::time::Duration::from_secs(60) - into).await;
    }
}

#[tokio::test]
async fn strict_requests_per_minute_admit_exactly_the_limit() {
    let n = gateway().await;
    let k = key(&n, json!({ "rpm_limit": 5, "enforcement": "strict" })).await;
    room_in_this_minute(std::time::Duration::from_secs(10)).await;
    let mut admitted = 0;
    for _ in 0..12 {
        let (status, _, body) = ask(&n, &k, hi("gpt")).await;
        match status {
            200 => admitted += 1,
            429 => {
                assert_eq!(body["error"]["type"], "rate_limit_exceeded");
                let message = body["error"]["message"].as_str().unwrap();
                assert!(message.contains("5 of 5 requests per minute"), "{message}");
            }
            other => panic!("{other}: {body}"),
        }
    }
    assert_eq!(admitted, 5, "one node holds every right: exactly the limit");
}

#[tokio::test]
async fn a_strict_budget_reserves_a_bounded_worst_case_and_never_overshoots() {
    let n = gateway().await;
    // No max_tokens: the request is capped at the strict output bound, and
    // its tokens are reserved as the prompt's bytes plus that cap.
    let tokens = key(&n, json!({ "enforcement": "strict", "tpm_limit": 100000 })).await;
    let (status, headers, body) = ask(&n, &tokens, hi("gpt")).await;
    assert_eq!(status, 200, "{body}");
    let remaining: u64 = header(&headers, "x-ratelimit-remaining-tokens")
        .parse()
        .unwrap();
    assert!(
        remaining <= 100_000 - meridian_node::admission::STRICT_OUTPUT_CAP,
        "{remaining}"
    );
    let k = key(&n, json!({ "max_budget": 0.0002, "enforcement": "strict" })).await;
    // A worst case beyond the whole budget can never be admitted.
    let (status, _, body) = ask(&n, &k, hi("priced")).await;
    assert_eq!(
        (status, &body["error"]["type"]),
        (429, &json!("budget_exceeded"))
    );
    let body = json!({ "model": "priced", "max_tokens": 10,
        "messages": [{ "role": "user", "content": "hi" }] });
    let mut costs = 0f64;
    let refusal = loop {
        let (status, headers, reply) = ask(&n, &k, body.clone()).await;
        if status != 200 {
            break (status, reply);
        }
        costs += header(&headers, "x-meridian-response-cost")
            .parse::<f64>()
            .unwrap();
        assert!(costs < 1.0, "the budget never stopped the key");
    };
    assert_eq!(refusal.0, 429);
    assert_eq!(
        refusal.1["error"]["type"], "budget_exceeded",
        "{}",
        refusal.1
    );
    assert!(costs > 0.0001, "stopped early at {costs}");
    assert!(costs <= 0.0002 + 1e-12, "spent {costs} of 0.0002");
}

#[tokio::test]
async fn a_limit_enforced_strictly_by_default_names_no_mode_per_key() {
    let n = node_yaml(&format!("{MODELS}meridian:\n  enforcement: strict\n")).await;
    let k = key(&n, json!({ "rpm_limit": 2 })).await;
    room_in_this_minute(std::time::Duration::from_secs(10)).await;
    let statuses: Vec<u16> =
        futures_util::future::join_all((0..6).map(|_| async { ask(&n, &k, hi("gpt")).await.0 }))
            .await;
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        2,
        "{statuses:?}"
    );
    // An entity may still opt out of the default.
    let loose = key(&n, json!({ "rpm_limit": 2, "enforcement": "available" })).await;
    assert_eq!(ask(&n, &loose, hi("gpt")).await.0, 200);
}

#[tokio::test]
async fn a_strict_token_limit_counts_every_completion_a_request_asks_for() {
    let n = gateway().await;
    let k = key(&n, json!({ "tpm_limit": 200, "enforcement": "strict" })).await;
    let with_n = |choices: u64| {
        let mut body = hi("gpt");
        body["max_tokens"] = json!(60);
        body["n"] = json!(choices);
        body
    };
    // Four completions of up to 60 tokens each cannot fit in 200.
    let (status, _, body) = ask(&n, &k, with_n(4)).await;
    assert_eq!(status, 429, "{body}");
    // One can.
    let (status, _, body) = ask(&n, &k, with_n(1)).await;
    assert_eq!(status, 200, "{body}");
}
