//! The multi-region example configs in `ops/examples/` do what their comments
//! say: each is loaded as shipped (only its environment points the regions at
//! fake providers) and exercised — which region serves, what happens when a
//! region's provider fails, and when it comes back.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use meridian_loadtest::fake_upstream::FakeUpstream;
use meridian_node::config;
use serde_json::json;
use support::{Gateway, MASTER_KEY, Reply};

struct Regions {
    us: FakeUpstream,
    eu: FakeUpstream,
}

impl Regions {
    async fn start() -> Self {
        Self {
            us: FakeUpstream::start(true).await.unwrap(),
            eu: FakeUpstream::start(true).await.unwrap(),
        }
    }

    /// `(calls the US provider got, calls the EU provider got)` since the last look.
    fn calls(&self) -> (usize, usize) {
        (self.us.take_requests().len(), self.eu.take_requests().len())
    }
}

/// A node of `region` running `ops/examples/<file>`. The cooldown is cut to
/// one second so a test can watch traffic come back.
async fn node(file: &str, region: &str, providers: &Regions) -> Gateway {
    let env: BTreeMap<String, String> = [
        ("US_API_BASE", format!("{}/v1", providers.us.base_url())),
        ("EU_API_BASE", format!("{}/v1", providers.eu.base_url())),
        ("US_API_KEY", "sk-us".to_owned()),
        ("EU_API_KEY", "sk-eu".to_owned()),
        ("MERIDIAN_MASTER_KEY", MASTER_KEY.to_owned()),
        ("MERIDIAN_REGION", region.to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../ops/examples")
        .join(file);
    let mut config = config::load_file(&path, &env, false).unwrap();
    assert!(
        config.ignored.is_empty(),
        "{file}: keys not acted on: {:?}",
        config.ignored
    );
    assert_eq!(config.router.cooldown_time, Duration::from_secs(30));
    config.router.cooldown_time = Duration::from_secs(1);
    support::start(config).await
}

async fn chat(gw: &Gateway, model: &str, key: &str) -> Reply {
    let body = json!({ "model": model, "messages": [{ "role": "user", "content": "hi" }] });
    gw.post_raw("/v1/chat/completions", body.to_string(), Some(key))
        .await
}

/// A key held to the EU, made on `gw`.
async fn eu_only_key(gw: &Gateway) -> String {
    gw.post(
        "/key/generate",
        json!({ "metadata": { "allowed_model_region": "eu" } }),
    )
    .await
    .json()["key"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn after_cooldown() {
    tokio::time::sleep(Duration::from_millis(1100)).await;
}

#[tokio::test]
async fn active_passive_sends_everything_to_the_primary_and_fails_over_by_priority() {
    let p = Regions::start().await;
    // Both regions' nodes send to the primary (US) deployment.
    for region in ["us-east", "eu-west"] {
        let gw = node("active-passive.yaml", region, &p).await;
        for _ in 0..5 {
            assert_eq!(chat(&gw, "gpt-4o", MASTER_KEY).await.status, 200);
        }
        assert_eq!(p.calls(), (5, 0), "{region}");
    }
    let gw = node("active-passive.yaml", "eu-west", &p).await;
    p.us.set_outage(Some(503));
    let r = chat(&gw, "gpt-4o", MASTER_KEY).await;
    assert_eq!(
        (r.status, r.header("x-meridian-attempted-retries")),
        (200, Some("2"))
    );
    assert_eq!(
        p.calls(),
        (2, 1),
        "two failures on the primary cool it down; the secondary answers"
    );
    for _ in 0..5 {
        assert_eq!(chat(&gw, "gpt-4o", MASTER_KEY).await.status, 200);
    }
    assert_eq!(p.calls(), (0, 5), "while the primary cools down");
    p.us.set_outage(None);
    after_cooldown().await;
    assert_eq!(chat(&gw, "gpt-4o", MASTER_KEY).await.status, 200);
    assert_eq!(p.calls(), (1, 0), "back to the primary");
}

#[tokio::test]
async fn active_active_serves_each_region_locally_and_moves_traffic_when_one_fails() {
    let p = Regions::start().await;
    let us = node("active-active.yaml", "us-east", &p).await;
    let eu = node("active-active.yaml", "eu-west", &p).await;
    for _ in 0..5 {
        assert_eq!(chat(&us, "gpt-4o", MASTER_KEY).await.status, 200);
    }
    assert_eq!(p.calls(), (5, 0));
    for _ in 0..5 {
        assert_eq!(chat(&eu, "gpt-4o", MASTER_KEY).await.status, 200);
    }
    assert_eq!(p.calls(), (0, 5));

    p.eu.set_outage(Some(500));
    for _ in 0..5 {
        assert_eq!(chat(&eu, "gpt-4o", MASTER_KEY).await.status, 200);
    }
    assert_eq!(p.calls(), (5, 2), "the EU node's traffic moved to the US");
    p.eu.set_outage(None);
    after_cooldown().await;
    assert_eq!(chat(&eu, "gpt-4o", MASTER_KEY).await.status, 200);
    assert_eq!(p.calls(), (0, 1), "and came back");
}

#[tokio::test]
async fn residency_keeps_a_keys_traffic_in_its_jurisdiction_through_failures() {
    let p = Regions::start().await;
    let eu = node("residency.yaml", "eu-west-1", &p).await;
    let us = node("residency.yaml", "us-east-1", &p).await;
    let eu_key = eu_only_key(&eu).await;
    let us_side_key = eu_only_key(&us).await;

    // Served in the EU, even by the US node.
    assert_eq!(chat(&eu, "gpt-4o", &eu_key).await.status, 200);
    assert_eq!(chat(&us, "gpt-4o", &us_side_key).await.status, 200);
    assert_eq!(p.calls(), (0, 2));
    // Keys without a policy: nearest region.
    assert_eq!(chat(&us, "gpt-4o", MASTER_KEY).await.status, 200);
    assert_eq!(p.calls(), (1, 0));

    // The EU provider fails: the EU key gets an error, never a US answer —
    // neither from the same group nor from the fallback group.
    p.eu.set_outage(Some(503));
    for _ in 0..3 {
        let r = chat(&eu, "gpt-4o", &eu_key).await;
        assert!(r.status >= 400, "{}", r.text);
    }
    let (us_calls, eu_calls) = p.calls();
    assert_eq!(us_calls, 0);
    assert!(eu_calls >= 2);
    // Meanwhile a key without a policy falls back to the US.
    let r = chat(&eu, "gpt-4o", MASTER_KEY).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(p.calls().0, 1);
    p.eu.set_outage(None);
    after_cooldown().await;
    assert_eq!(chat(&eu, "gpt-4o", &eu_key).await.status, 200);
    assert_eq!(p.calls(), (0, 1));
}
