//! `GET /metrics` in process (router tier): who may read it, LiteLLM's
//! families with LiteLLM's labels after real traffic, the numbers they
//! carry (against what the answers and `/key/info` said), and the bounds
//! on what a caller can make grow.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod router_support;

use std::sync::Arc;

use meridian_node::node::Node;
use router_support::*;
use serde_json::{Value, json};

/// The sum of every sample of `name` whose labels include `labels`.
fn sum(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').unwrap();
        let (metric, set) = series.split_once('{').unwrap_or((series, "}"));
        if metric != name {
            continue;
        }
        let set = &set[..set.len() - 1];
        if labels
            .iter()
            .all(|(k, v)| set.split(',').any(|l| l == format!("{k}=\"{v}\"")))
        {
            *found.get_or_insert(0.0) += value.parse::<f64>().unwrap();
        }
    }
    found
}

async fn metrics(node: &Arc<Node>) -> String {
    let (status, content_type, body) = text(node, "/metrics", Some(MASTER)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    body
}

async fn key(node: &Arc<Node>, body: Value) -> String {
    ok(post(node, "/key/generate", MASTER, body).await)["key"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn only_admins_read_metrics_unless_configured_open() {
    let n = node("").await;
    let user_key = key(&n, json!({})).await;
    assert_eq!(text(&n, "/metrics", None).await.0, 401);
    assert_eq!(text(&n, "/metrics", Some("sk-wrong")).await.0, 401);
    assert_eq!(text(&n, "/metrics", Some(&user_key)).await.0, 403);
    assert_eq!(text(&n, "/metrics", Some(MASTER)).await.0, 200);
    assert_eq!(text(&n, "/metrics/", Some(MASTER)).await.0, 200);

    let open = node("litellm_settings:\n  require_auth_for_metrics_endpoint: false\n").await;
    assert_eq!(text(&open, "/metrics", None).await.0, 200);

    let off = node("meridian:\n  disable_metrics: true\n").await;
    ok(chat(&off, MASTER, "gpt").await);
    let (status, _, body) = text(&off, "/metrics", Some(MASTER)).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("metrics"), "{body}");
}

#[tokio::test]
async fn requests_spend_and_tokens_carry_litellm_labels_and_the_answers_numbers() {
    let n = node("").await;
    ok(post(
        &n,
        "/team/new",
        MASTER,
        json!({ "team_id": "t-1", "team_alias": "research", "max_budget": 50.0 }),
    )
    .await);
    let k = key(
        &n,
        json!({ "key_alias": "svc-a", "team_id": "t-1", "max_budget": 10.0 }),
    )
    .await;
    let mut tokens = (0.0, 0.0);
    for _ in 0..3 {
        let body = ok(chat(&n, &k, "gpt").await);
        tokens.0 += body["usage"]["prompt_tokens"].as_f64().unwrap();
        tokens.1 += body["usage"]["completion_tokens"].as_f64().unwrap();
    }
    // A model the node does not serve, by the same key, and a call with no key.
    assert_eq!(chat(&n, &k, "no-such-model").await.0, 400);
    assert_eq!(
        call(&n, "POST", "/v1/chat/completions", None, Some(json!({})))
            .await
            .0,
        401
    );

    let text = metrics(&n).await;
    let info = ok(get(&n, &format!("/key/info?key={k}"), MASTER).await);
    let hash = info["key"].as_str().unwrap().to_owned();
    let who = [
        ("hashed_api_key", hash.as_str()),
        ("api_key_alias", "svc-a"),
        ("team", "t-1"),
        ("team_alias", "research"),
        ("region", "local"),
        ("node", "node-1"),
    ];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut labels: Vec<(&str, &str)> = who.to_vec();
        labels.extend_from_slice(extra);
        labels
    };
    let requests = "litellm_proxy_total_requests_metric_total";
    assert_eq!(
        sum(
            &text,
            requests,
            &with(&[
                ("requested_model", "gpt"),
                ("status_code", "200"),
                ("route", "/chat/completions")
            ])
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sum(
            &text,
            requests,
            &with(&[("requested_model", "unknown"), ("status_code", "400")])
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sum(
            &text,
            "litellm_proxy_failed_requests_metric_total",
            &with(&[
                ("exception_status", "400"),
                ("exception_class", "BadRequestError")
            ])
        ),
        Some(1.0),
        "{text}"
    );
    // The unauthenticated call is counted, with no key's labels.
    assert_eq!(sum(&text, requests, &[("status_code", "401")]), Some(1.0));
    assert_eq!(sum(&text, requests, &[]), Some(5.0), "{text}");

    let served = with(&[
        ("requested_model", "gpt"),
        ("model", "chat"),
        ("api_provider", "mock"),
    ]);
    assert_eq!(
        sum(&text, "litellm_input_tokens_metric_total", &served),
        Some(tokens.0)
    );
    assert_eq!(
        sum(&text, "litellm_output_tokens_metric_total", &served),
        Some(tokens.1)
    );
    assert_eq!(
        sum(&text, "litellm_total_tokens_metric_total", &served),
        Some(tokens.0 + tokens.1)
    );
    let spend = sum(&text, "litellm_spend_metric_total", &served).unwrap();
    let reported = info["info"]["spend"].as_f64().unwrap();
    assert!(reported > 0.0, "{info}");
    assert!(
        (spend - reported).abs() < 1e-9,
        "metric {spend} vs /key/info {reported}"
    );

    // Histograms in LiteLLM's buckets, one observation per answer.
    let latency = "litellm_request_total_latency_metric";
    assert_eq!(sum(&text, &format!("{latency}_count"), &served), Some(3.0));
    assert_eq!(
        sum(&text, &format!("{latency}_bucket"), &with(&[("le", "300")])),
        Some(3.0)
    );
    assert_eq!(
        sum(
            &text,
            &format!("{latency}_bucket"),
            &with(&[("le", "+Inf")])
        ),
        Some(3.0)
    );
    assert!(
        sum(
            &text,
            &format!("{latency}_bucket"),
            &with(&[("le", "0.00625")])
        )
        .is_some()
    );
    assert_eq!(
        sum(&text, "litellm_llm_api_latency_metric_count", &served),
        Some(3.0)
    );
    assert_eq!(
        sum(
            &text,
            "litellm_overhead_latency_metric_count",
            &[("model_group", "gpt"), ("api_key_alias", "svc-a")]
        ),
        Some(3.0)
    );
    assert_eq!(
        sum(
            &text,
            "litellm_deployment_success_responses_total",
            &[
                ("litellm_model_name", "mock/chat"),
                ("api_key_alias", "svc-a")
            ]
        ),
        Some(3.0)
    );
    assert_eq!(
        sum(
            &text,
            "litellm_deployment_state",
            &[("litellm_model_name", "mock/chat")]
        ),
        Some(0.0)
    );

    // Budgets: the global view, for the key and its team.
    let key_labels = [
        ("hashed_api_key", hash.as_str()),
        ("api_key_alias", "svc-a"),
    ];
    assert_eq!(
        sum(&text, "litellm_api_key_max_budget_metric", &key_labels),
        Some(10.0)
    );
    let left = sum(
        &text,
        "litellm_remaining_api_key_budget_metric",
        &key_labels,
    )
    .unwrap();
    assert!((left - (10.0 - reported)).abs() < 1e-9, "{left}");
    let team = [("team", "t-1"), ("team_alias", "research")];
    assert_eq!(
        sum(&text, "litellm_team_max_budget_metric", &team),
        Some(50.0)
    );
    let team_left = sum(&text, "litellm_remaining_team_budget_metric", &team).unwrap();
    assert!((team_left - (50.0 - reported)).abs() < 1e-9, "{team_left}");

    // No secret: neither key, nor the master key.
    assert!(!text.contains(&k) && !text.contains(MASTER));
}

#[tokio::test]
async fn failures_cooldowns_fallbacks_and_streams_are_counted() {
    let n = node_yaml(
        "model_list:\n  - model_name: gpt\n    litellm_params: {model: mock/chat}\n  - model_name: broken\n    litellm_params: {model: mock/error-503}\nrouter_settings:\n  num_retries: 0\n  allowed_fails: 0\n  fallbacks: [{broken: [gpt]}]\n",
    )
    .await;
    let k = key(&n, json!({ "key_alias": "svc-b" })).await;
    // Answered by the fallback group.
    assert_eq!(chat(&n, &k, "broken").await.0, 200);
    let limited = key(&n, json!({ "key_alias": "svc-c", "rpm_limit": 1 })).await;
    assert_eq!(chat(&n, &limited, "gpt").await.0, 200);
    assert_eq!(chat(&n, &limited, "gpt").await.0, 429);
    let (status, _, _) = send(
        &n,
        "POST",
        "/v1/chat/completions",
        Some(&k),
        &[],
        Some(json!({ "model": "gpt", "stream": true, "messages": [{ "role": "user", "content": "hi" }] })),
    )
    .await;
    assert_eq!(status, 200);

    let text = metrics(&n).await;
    let broken = [
        ("litellm_model_name", "mock/error-503"),
        ("api_key_alias", "svc-b"),
    ];
    assert_eq!(
        sum(
            &text,
            "litellm_deployment_failure_responses_total",
            &[
                ("litellm_model_name", "mock/error-503"),
                ("exception_status", "503"),
                ("exception_class", "Mock.ServiceUnavailableError")
            ]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sum(&text, "litellm_deployment_total_requests_total", &broken),
        Some(1.0)
    );
    assert_eq!(
        sum(
            &text,
            "litellm_deployment_cooled_down_total",
            &[
                ("litellm_model_name", "mock/error-503"),
                ("exception_status", "503")
            ]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sum(
            &text,
            "litellm_deployment_state",
            &[("litellm_model_name", "mock/error-503")]
        ),
        Some(2.0)
    );
    assert_eq!(
        sum(
            &text,
            "litellm_deployment_successful_fallbacks_total",
            &[
                ("requested_model", "broken"),
                ("fallback_model", "gpt"),
                ("api_key_alias", "svc-b"),
                ("exception_status", "503")
            ]
        ),
        Some(1.0),
        "{text}"
    );
    // The request itself succeeded: counted once, as asked for `broken`.
    assert_eq!(
        sum(
            &text,
            "litellm_proxy_total_requests_metric_total",
            &[("requested_model", "broken"), ("status_code", "200")]
        ),
        Some(1.0)
    );
    let decisions = "meridian_admission_decisions_total";
    assert_eq!(
        sum(
            &text,
            decisions,
            &[
                ("decision", "refused"),
                ("reason", "requests"),
                ("mode", "available")
            ]
        ),
        Some(1.0),
        "{text}"
    );
    // broken, its fallback, the limited key's first call, the stream.
    assert_eq!(
        sum(&text, decisions, &[("decision", "admitted")]),
        Some(4.0),
        "{text}"
    );
    assert_eq!(
        sum(
            &text,
            "litellm_proxy_failed_requests_metric_total",
            &[
                ("api_key_alias", "svc-c"),
                ("exception_class", "RateLimitError")
            ]
        ),
        Some(1.0)
    );
    // Only the stream has a first token.
    assert_eq!(
        sum(
            &text,
            "litellm_llm_api_time_to_first_token_metric_count",
            &[]
        ),
        Some(1.0),
        "{text}"
    );
}

/// The node's own families: its region's Raft (a region of one: it leads)
/// and its build.
#[tokio::test]
async fn a_lone_node_reports_it_leads_its_region() {
    let n = node("").await;
    // A write, so the log has entries past the region's start.
    key(&n, json!({})).await;
    let text = metrics(&n).await;
    let place = [("region", "local"), ("node", "node-1")];
    assert_eq!(
        sum(&text, "meridian_raft_is_leader", &place),
        Some(1.0),
        "{text}"
    );
    assert_eq!(sum(&text, "meridian_raft_leader_id", &place), Some(1.0));
    assert_eq!(
        sum(&text, "meridian_raft_state", &[("state", "leader")]),
        Some(1.0)
    );
    assert!(sum(&text, "meridian_raft_term", &place).unwrap() >= 1.0);
    let last = sum(&text, "meridian_raft_last_log_index", &place).unwrap();
    let applied = sum(&text, "meridian_raft_applied_index", &place).unwrap();
    assert!(last >= 1.0 && applied <= last, "{last} {applied}");
    assert_eq!(
        sum(&text, "meridian_raft_apply_lag_entries", &place),
        Some(last - applied)
    );
    assert_eq!(
        sum(&text, "meridian_spend_log_queue_rows", &place).map(|q| q >= 0.0),
        Some(true)
    );
    assert_eq!(
        sum(
            &text,
            "meridian_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    // No gossip in a region of one, so no gossip families.
    assert_eq!(sum(&text, "meridian_gossip_peers", &[]), None);
}

#[tokio::test]
async fn keys_past_the_cap_share_one_label_set() {
    let n = node("meridian:\n  metrics_max_keys: 2\n").await;
    let mut keys = Vec::new();
    for alias in ["a", "b", "c", "d"] {
        keys.push(key(&n, json!({ "key_alias": alias })).await);
    }
    for k in &keys {
        ok(chat(&n, k, "gpt").await);
    }
    let text = metrics(&n).await;
    let requests = "litellm_proxy_total_requests_metric_total";
    let own = ["a", "b", "c", "d"]
        .iter()
        .filter(|a| sum(&text, requests, &[("api_key_alias", a)]).is_some())
        .count();
    assert_eq!(own, 2, "{text}");
    assert_eq!(
        sum(&text, requests, &[("hashed_api_key", "other")]),
        Some(2.0),
        "{text}"
    );
    assert_eq!(sum(&text, requests, &[]), Some(4.0));
}
