//! Retries, fallbacks, cooldowns and residency over real sockets: fake
//! upstreams that fail on cue (status codes, timeouts, broken streams), and
//! for each request the exact sequence of upstream calls, in order.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use meridian_loadtest::fake_upstream::FakeUpstream;
use serde_json::{Value, json};
use support::{Gateway, Reply, start_yaml};

/// One deployment per `(group, upstream model, extra params)`, all on `fake`.
fn config(fake: &FakeUpstream, deployments: &[(&str, &str, &str)], rest: &str) -> String {
    let mut yaml = String::from("model_list:\n");
    for (group, model, extra) in deployments {
        yaml.push_str(&format!(
            "  - model_name: {group}\n    litellm_params: {{model: openai/{model}, api_base: {}/v1, api_key: sk-up{extra}}}\n",
            fake.base_url()
        ));
    }
    yaml.push_str(rest);
    yaml
}

/// The upstream models called since the last look, in order.
fn calls(fake: &FakeUpstream) -> Vec<String> {
    fake.take_requests()
        .iter()
        .map(|r| r.body["model"].as_str().unwrap_or("?").to_owned())
        .collect()
}

async fn chat(gw: &Gateway, model: &str) -> Reply {
    gw.post(
        "/v1/chat/completions",
        json!({ "model": model, "messages": [{ "role": "user", "content": "hi" }] }),
    )
    .await
}

fn tries(r: &Reply) -> (String, String) {
    let h = |n| r.header(n).unwrap_or("-").to_owned();
    (
        h("x-meridian-attempted-retries"),
        h("x-meridian-attempted-fallbacks"),
    )
}

#[tokio::test]
async fn retries_then_fallbacks_in_order_and_the_headers_say_so() {
    let fake = FakeUpstream::start(true).await.unwrap();
    let gw = start_yaml(&config(
        &fake,
        &[("main", "main-error-500", ""), ("second", "second-error-503", ""), ("last", "last-ok", "")],
        "router_settings:\n  num_retries: 2\n  allowed_fails: 100\n  fallbacks: [{main: [second, last]}]\n",
    ))
    .await;
    let r = chat(&gw, "main").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        calls(&fake),
        [
            "main-error-500",
            "main-error-500",
            "main-error-500",
            "second-error-503",
            "second-error-503",
            "second-error-503",
            "last-ok"
        ]
    );
    assert_eq!(tries(&r), ("4".into(), "2".into()));
    assert_eq!(r.header("x-litellm-attempted-fallbacks"), Some("2"));
    assert_eq!(r.header("x-meridian-model-group"), Some("last"));

    // A success at once says it took no extra attempt.
    let r = chat(&gw, "last").await;
    assert_eq!((r.status, tries(&r)), (200, ("0".into(), "0".into())));
    assert_eq!(calls(&fake), ["last-ok"]);
}

#[tokio::test]
async fn a_transient_failure_is_retried_and_the_next_attempt_answers() {
    let fake = FakeUpstream::start(true).await.unwrap();
    let gw = start_yaml(&config(&fake, &[("g", "flaky-fail-2-503", "")], "")).await;
    let r = chat(&gw, "g").await;
    assert_eq!(
        (r.status, tries(&r)),
        (200, ("2".into(), "0".into())),
        "{}",
        r.text
    );
    assert_eq!(calls(&fake).len(), 3);
}

#[tokio::test]
async fn the_retry_policy_decides_per_error_class() {
    let fake = FakeUpstream::start(true).await.unwrap();
    let deployments = [
        ("bad", "bad-error-400", ""),
        ("auth", "auth-error-401", ""),
        ("down", "down-error-500", ""),
    ];
    // Defaults: a bad request is the caller's fault — not retried, no
    // fallback; 5xx are retried num_retries (3) times.
    let gw = start_yaml(&config(
        &fake,
        &deployments,
        "router_settings:\n  allowed_fails: 100\n  fallbacks: [{bad: [down]}]\n",
    ))
    .await;
    assert_eq!(chat(&gw, "bad").await.status, 400);
    assert_eq!(calls(&fake), ["bad-error-400"]);
    assert_eq!(chat(&gw, "down").await.status, 500);
    assert_eq!(calls(&fake).len(), 4);

    let gw = start_yaml(&config(
        &fake,
        &deployments,
        "router_settings:\n  allowed_fails: 100\n  retry_policy: {BadRequestErrorRetries: 1, InternalServerErrorRetries: 0, AuthenticationErrorRetries: 2}\n  disable_cooldowns: true\n",
    ))
    .await;
    assert_eq!(chat(&gw, "bad").await.status, 400);
    assert_eq!(calls(&fake).len(), 2);
    assert_eq!(chat(&gw, "down").await.status, 500);
    assert_eq!(calls(&fake).len(), 1);
    assert_eq!(chat(&gw, "auth").await.status, 401);
    assert_eq!(calls(&fake).len(), 3);
}

#[tokio::test]
async fn context_window_and_content_policy_failures_use_their_own_fallbacks() {
    let fake = FakeUpstream::start(true).await.unwrap();
    let gw = start_yaml(&config(
        &fake,
        &[
            ("short", "short-context-window", ""),
            ("strict", "strict-content-policy", ""),
            ("long", "long-ok", ""),
            ("lenient", "lenient-ok", ""),
            ("general", "general-ok", ""),
        ],
        "router_settings:\n  context_window_fallbacks: [{short: [long]}]\n  content_policy_fallbacks: [{strict: [lenient]}]\n  fallbacks: [{short: [general]}, {strict: [general]}]\n",
    ))
    .await;
    let r = chat(&gw, "short").await;
    assert_eq!(
        (r.status, r.header("x-meridian-model-group")),
        (200, Some("long"))
    );
    assert_eq!(calls(&fake), ["short-context-window", "long-ok"]);
    let r = chat(&gw, "strict").await;
    assert_eq!(
        (r.status, r.header("x-meridian-model-group")),
        (200, Some("lenient"))
    );
    assert_eq!(calls(&fake), ["strict-content-policy", "lenient-ok"]);
}

#[tokio::test]
async fn default_fallbacks_max_fallbacks_and_per_request_fallbacks() {
    let fake = FakeUpstream::start(true).await.unwrap();
    let gw = start_yaml(&config(
        &fake,
        &[("a", "a-error-500", ""), ("b", "b-error-500", ""), ("c", "c-ok", ""), ("d", "d-ok", "")],
        "router_settings:\n  num_retries: 0\n  allowed_fails: 100\n  default_fallbacks: [b, c]\n  max_fallbacks: 1\n",
    ))
    .await;
    // max_fallbacks 1: only b is tried after a.
    let r = chat(&gw, "a").await;
    assert_eq!(r.status, 500);
    assert_eq!(calls(&fake), ["a-error-500", "b-error-500"]);
    // The request's own list replaces the configured one, and is not forwarded.
    let r = gw
        .post(
            "/v1/chat/completions",
            json!({ "model": "a", "messages": [{ "role": "user", "content": "hi" }], "fallbacks": ["d"] }),
        )
        .await;
    assert_eq!(
        (r.status, r.header("x-meridian-model-group")),
        (200, Some("d"))
    );
    let sent = fake.take_requests();
    assert_eq!(sent.len(), 2);
    assert!(sent.iter().all(|r| r.body.get("fallbacks").is_none()));
    // A malformed list is the caller's error, before any call.
    let r = gw
        .post(
            "/v1/chat/completions",
            json!({ "model": "a", "messages": [{ "role": "user", "content": "hi" }], "fallbacks": "d" }),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(calls(&fake).is_empty());
}

#[tokio::test]
async fn a_429_cools_the_deployment_down_at_once_and_then_the_group_fails_fast() {
    let fake = FakeUpstream::start(true).await.unwrap();
    let gw = start_yaml(&config(
        &fake,
        &[("g", "g-error-429", "")],
        "router_settings:\n  cooldown_time: 30\n",
    ))
    .await;
    let r = chat(&gw, "g").await;
    assert_eq!(r.status, 429);
    assert_eq!(calls(&fake), ["g-error-429"], "no retry into a cooldown");
    let r = chat(&gw, "g").await;
    assert_eq!(r.status, 429, "{}", r.text);
    let message = r.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(
        message.starts_with(
            "No deployments available for selected model, Try again in 30 seconds. Passed model=g."
        ),
        "{message}"
    );
    assert_eq!(r.header("retry-after"), Some("30"));
    assert!(
        calls(&fake).is_empty(),
        "a cooling deployment is not called"
    );
}

#[tokio::test]
async fn allowed_fails_then_cooldown_moves_traffic_to_the_healthy_deployment() {
    let fake = FakeUpstream::start(true).await.unwrap();
    let gw = start_yaml(&config(
        &fake,
        &[
            ("g", "bad-error-503", ", order: 1"),
            ("g", "good-ok", ", priority: 2"),
        ],
        "router_settings:\n  num_retries: 0\n  allowed_fails: 1\n",
    ))
    .await;
    // Order 1 first: it fails twice (allowed_fails 1), then cools down.
    assert_eq!(chat(&gw, "g").await.status, 503);
    assert_eq!(chat(&gw, "g").await.status, 503);
    assert_eq!(calls(&fake), ["bad-error-503", "bad-error-503"]);
    for _ in 0..3 {
        assert_eq!(chat(&gw, "g").await.status, 200);
    }
    assert_eq!(calls(&fake), ["good-ok", "good-ok", "good-ok"]);
}

#[tokio::test]
async fn timeouts_are_their_own_class_and_fall_back() {
    let fake = FakeUpstream::start(true).await.unwrap();
    let gw = start_yaml(&config(
        &fake,
        &[("slow", "slow-timeout", ", timeout: 0.2"), ("fast", "fast-ok", "")],
        "router_settings:\n  retry_policy: {TimeoutErrorRetries: 1}\n  fallbacks: [{slow: [fast]}]\n",
    ))
    .await;
    let r = chat(&gw, "slow").await;
    assert_eq!(
        (r.status, tries(&r)),
        (200, ("1".into(), "1".into())),
        "{}",
        r.text
    );
    assert_eq!(calls(&fake), ["slow-timeout", "slow-timeout", "fast-ok"]);
}

#[tokio::test]
async fn streams_retry_before_the_first_byte_and_never_after() {
    let fake = FakeUpstream::start(true).await.unwrap();
    let gw = start_yaml(&config(
        &fake,
        &[("head", "head-error-500", ""), ("cut", "cut-broken", ""), ("ok", "ok-ok", "")],
        "router_settings:\n  num_retries: 1\n  allowed_fails: 100\n  fallbacks: [{head: [ok]}, {cut: [ok]}]\n",
    ))
    .await;
    let stream = |model: &str| json!({ "model": model, "stream": true, "messages": [{ "role": "user", "content": "hi" }] });
    let r = gw.post("/v1/chat/completions", stream("head")).await;
    assert_eq!(r.status, 200);
    assert!(!support::streamed_text(&support::openai_chunks(&r)).is_empty());
    assert_eq!(calls(&fake), ["head-error-500", "head-error-500", "ok-ok"]);

    // The stream had started: it ends with an error event, and nothing is
    // called again.
    let r = gw.post("/v1/chat/completions", stream("cut")).await;
    assert_eq!(r.status, 200);
    let lines = r.data_lines();
    assert!(lines.iter().any(|l| l.contains("\"error\"")), "{lines:?}");
    assert_eq!(calls(&fake), ["cut-broken"]);
}

#[tokio::test]
async fn a_residency_policy_holds_through_retries_and_fallbacks() {
    let fake = FakeUpstream::start(true).await.unwrap();
    let gw = start_yaml(&config(
        &fake,
        &[
            ("g", "us-ok", ", region_name: us-east-1"),
            ("g", "eu-error-500", ", aws_region_name: eu-west-1"),
            ("backup", "backup-us-ok", ", region_name: us-east-1"),
        ],
        "router_settings:\n  num_retries: 1\n  allowed_fails: 100\n  fallbacks: [{g: [backup]}]\n",
    ))
    .await;
    let key = gw
        .post(
            "/key/generate",
            json!({ "metadata": { "allowed_model_region": "eu" } }),
        )
        .await
        .json()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let body = json!({ "model": "g", "messages": [{ "role": "user", "content": "hi" }] });
    let r = gw
        .post_raw("/v1/chat/completions", body.to_string(), Some(&key))
        .await;
    assert_eq!(r.status, 500, "{}", r.text);
    assert_eq!(
        calls(&fake),
        ["eu-error-500", "eu-error-500"],
        "never a US deployment"
    );
    // Without the policy the US deployments serve.
    let r = chat(&gw, "backup").await;
    assert_eq!(r.status, 200);
    let _ = calls(&fake);
    let value: Value = r.json();
    assert!(value["choices"].is_array());
}

/// How many calls each upstream model got since the last look.
fn counts(fake: &FakeUpstream) -> std::collections::BTreeMap<String, usize> {
    let mut out = std::collections::BTreeMap::new();
    for model in calls(fake) {
        *out.entry(model).or_default() += 1;
    }
    out
}

#[tokio::test]
async fn simple_shuffle_splits_by_weight() {
    let fake = FakeUpstream::start(true).await.unwrap();
    let gw = start_yaml(&config(
        &fake,
        &[
            ("g", "heavy-ok", ", weight: 9"),
            ("g", "light-ok", ", weight: 1"),
        ],
        "",
    ))
    .await;
    for _ in 0..400 {
        assert_eq!(chat(&gw, "g").await.status, 200);
    }
    let c = counts(&fake);
    assert!((330..=390).contains(&c["heavy-ok"]), "{c:?}");
}

#[tokio::test]
async fn least_busy_avoids_the_deployment_holding_calls() {
    let fake = FakeUpstream::start(true).await.unwrap();
    let gw = std::sync::Arc::new(
        start_yaml(&config(
            &fake,
            &[("g", "stuck-slow-800", ""), ("g", "quick-ok", "")],
            "router_settings:\n  routing_strategy: least-busy\n",
        ))
        .await,
    );
    // Calls 20 ms apart, all in flight together: once the slow deployment
    // holds one (for 800 ms), every later call goes to the quick one — at
    // most one call ever reaches the slow one (a shuffle would send half).
    let mut calls_in_flight = Vec::new();
    for _ in 0..12 {
        let gw = gw.clone();
        calls_in_flight.push(tokio::spawn(async move { chat(&gw, "g").await.status }));
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    for t in calls_in_flight {
        assert_eq!(t.await.unwrap(), 200);
    }
    let c = counts(&fake);
    let stuck = c.get("stuck-slow-800").copied().unwrap_or(0);
    assert!(stuck <= 1, "{c:?}");
    assert_eq!(stuck + c["quick-ok"], 12, "{c:?}");
}

#[tokio::test]
async fn latency_based_routing_samples_each_then_keeps_to_the_fastest() {
    let fake = FakeUpstream::start(true).await.unwrap();
    let gw = start_yaml(&config(
        &fake,
        &[("g", "far-slow-60", ""), ("g", "near-ok", "")],
        "router_settings:\n  routing_strategy: latency-based-routing\n",
    ))
    .await;
    for _ in 0..20 {
        assert_eq!(chat(&gw, "g").await.status, 200);
    }
    let c = counts(&fake);
    assert_eq!((c["far-slow-60"], c["near-ok"]), (1, 19), "{c:?}");
}

#[tokio::test]
async fn usage_based_routing_skips_a_deployment_at_its_rpm() {
    let fake = FakeUpstream::start(true).await.unwrap();
    let gw = start_yaml(&config(
        &fake,
        &[
            ("g", "small-ok", ", rpm: 3"),
            ("g", "big-ok", ", rpm: 1000"),
        ],
        "router_settings:\n  routing_strategy: usage-based-routing\n",
    ))
    .await;
    for _ in 0..20 {
        assert_eq!(chat(&gw, "g").await.status, 200);
    }
    let c = counts(&fake);
    assert!(c["small-ok"] <= 3 && c["small-ok"] >= 1, "{c:?}");
    assert_eq!(c["small-ok"] + c["big-ok"], 20);
}

#[tokio::test]
async fn cost_based_routing_takes_the_cheapest() {
    let fake = FakeUpstream::start(true).await.unwrap();
    let gw = start_yaml(&config(
        &fake,
        &[
            (
                "g",
                "dear-ok",
                ", input_cost_per_token: 0.00001, output_cost_per_token: 0.00003",
            ),
            (
                "g",
                "cheap-ok",
                ", input_cost_per_token: 0.0000001, output_cost_per_token: 0.0000004",
            ),
        ],
        "router_settings:\n  routing_strategy: cost-based-routing\n",
    ))
    .await;
    for _ in 0..10 {
        assert_eq!(chat(&gw, "g").await.status, 200);
    }
    assert_eq!(calls(&fake), vec!["cheap-ok"; 10]);
}

#[tokio::test]
async fn tag_filtering_sends_tagged_requests_to_their_deployments() {
    let fake = FakeUpstream::start(true).await.unwrap();
    let gw = start_yaml(&config(
        &fake,
        &[
            ("g", "paid-ok", ", tags: [paid]"),
            ("g", "free-ok", ", tags: [free, default]"),
        ],
        "router_settings:\n  enable_tag_filtering: true\n",
    ))
    .await;
    let tagged = |tags: Value| json!({ "model": "g", "tags": tags, "messages": [{ "role": "user", "content": "hi" }] });
    for _ in 0..5 {
        assert_eq!(
            gw.post("/v1/chat/completions", tagged(json!(["paid"])))
                .await
                .status,
            200
        );
        assert_eq!(chat(&gw, "g").await.status, 200);
    }
    let sent = calls(&fake);
    assert_eq!(
        sent.iter().filter(|m| *m == "paid-ok").count(),
        5,
        "{sent:?}"
    );
    assert_eq!(
        sent.iter().filter(|m| *m == "free-ok").count(),
        5,
        "{sent:?}"
    );
}

#[tokio::test]
async fn background_health_checks_take_a_failing_deployment_out_of_routing() {
    let fake = FakeUpstream::start(true).await.unwrap();
    let gw = start_yaml(&config(
        &fake,
        &[("g", "down-error-503", ""), ("g", "up-ok", "")],
        "router_settings:\n  num_retries: 0\ngeneral_settings:\n  background_health_checks: true\n  health_check_interval: 30\n",
    ))
    .await;
    // The first round runs at start: one probe each.
    let mut probes = Vec::new();
    for _ in 0..50 {
        probes.extend(calls(&fake));
        if probes.len() >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    probes.sort();
    assert_eq!(probes, ["down-error-503", "up-ok"]);
    // Until the next round, only the healthy deployment is called.
    for _ in 0..20 {
        assert_eq!(chat(&gw, "g").await.status, 200);
    }
    assert_eq!(calls(&fake), vec!["up-ok"; 20]);
    // /health shows the latest round without probing again.
    let health = gw.get("/health", Some(support::MASTER_KEY)).await.json();
    assert_eq!(
        (
            health["healthy_count"].as_u64(),
            health["unhealthy_count"].as_u64()
        ),
        (Some(1), Some(1))
    );
    assert_eq!(
        health["unhealthy_endpoints"][0]["model"],
        "openai/down-error-503"
    );
    assert!(calls(&fake).is_empty());
}
