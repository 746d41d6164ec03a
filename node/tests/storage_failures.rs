//! A node whose disk fills up or fails: it takes no new calls (503, before
//! any provider is paid), withholds answers whose cost it could not make
//! durable, says so in readiness, takes calls again once writes work, and
//! loses no spend it acknowledged — shown by restarting on what it wrote.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;

use meridian_storage::{Faulty, MemStore};
use serde_json::json;
use support::{Gateway, MASTER_KEY, Reply};

const CONFIG: &str = "\
model_list:
  - model_name: priced
    litellm_params: {model: mock/chat, input_cost_per_token: 0.000001, output_cost_per_token: 0.000002}
";

fn config() -> meridian_node::config::Config {
    let env = std::collections::BTreeMap::<String, String>::new();
    meridian_node::config::parse_str(CONFIG, "test.yaml", &env, false).unwrap()
}

async fn chat(gw: &Gateway, key: &str, stream: bool) -> Reply {
    let body = json!({
        "model": "priced",
        "stream": stream,
        "messages": [{ "role": "user", "content": "hi" }],
    });
    gw.post_raw("/v1/chat/completions", body.to_string(), Some(key))
        .await
}

fn cost(r: &Reply) -> f64 {
    r.header("x-meridian-response-cost")
        .expect("an answered call carries its cost")
        .parse()
        .unwrap()
}

async fn spend(gw: &Gateway, key: &str) -> f64 {
    let info = gw
        .get(&format!("/key/info?key={key}"), Some(MASTER_KEY))
        .await;
    assert_eq!(info.status, 200, "{}", info.json());
    info.json()["info"]["spend"].as_f64().unwrap()
}

async fn ready(gw: &Gateway) -> (u16, bool) {
    let r = gw.get("/health/readiness", Some(MASTER_KEY)).await;
    let failing = r.json()["storage"]["writes_failing"].as_bool().unwrap();
    (r.status, failing)
}

fn refused_for_storage(r: &Reply) {
    assert_eq!(r.status, 503, "{}", r.json());
    let body = r.json();
    assert_eq!(body["error"]["type"], "service_unavailable", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("cannot write to its storage")
            && message.contains("Retry on another node"),
        "{message}"
    );
    assert!(
        !message.contains("No space left"),
        "the disk's error is logged, not sent: {message}"
    );
    assert!(r.header("x-meridian-response-cost").is_none());
}

/// Waits (bounded) for readiness to say `failing`.
async fn until_ready(gw: &Gateway, want: (u16, bool)) {
    for _ in 0..100 {
        if ready(gw).await == want {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("readiness never became {want:?}: {:?}", ready(gw).await);
}

#[tokio::test]
async fn a_node_whose_disk_fails_takes_no_calls_and_loses_no_acknowledged_spend() {
    let disk = Arc::new(Faulty::new(MemStore::new()));
    let gw = support::start_on(config(), disk.clone()).await;
    let made = gw
        .post("/key/generate", json!({ "max_budget": 10.0 }))
        .await;
    assert_eq!(made.status, 200, "{}", made.json());
    let key = made.json()["key"].as_str().unwrap().to_owned();

    let mut acknowledged = 0.0;
    for _ in 0..3 {
        let r = chat(&gw, &key, false).await;
        assert_eq!(r.status, 200, "{}", r.json());
        acknowledged += cost(&r);
    }
    assert!(acknowledged > 0.0);
    assert_eq!(ready(&gw).await, (200, false));

    // The disk fills while nothing is failing yet: the next call is served
    // by the provider, but its cost cannot be made durable, so its answer
    // is withheld. It stays counted in memory (the provider was paid).
    disk.fill_after(Some(0));
    let before = spend(&gw, &key).await;
    let withheld = chat(&gw, &key, false).await;
    refused_for_storage(&withheld);
    let charged = spend(&gw, &key).await - before;
    assert!(charged > 0.0, "the served call is charged");

    // From now on calls are refused before routing: nothing is charged.
    for stream in [false, true] {
        let r = chat(&gw, &key, stream).await;
        refused_for_storage(&r);
    }
    assert_eq!(spend(&gw, &key).await - before, charged);
    assert_eq!(ready(&gw).await, (503, true));

    // Admin changes are refused too, before Raft would try to store them (a
    // Raft member whose storage fails stops for good).
    refused_for_storage(&gw.post("/key/generate", json!({})).await);

    // The disk gets space again: the node notices by itself and serves,
    // changes included.
    disk.fill_after(None);
    until_ready(&gw, (200, false)).await;
    assert_eq!(gw.post("/key/generate", json!({})).await.status, 200);
    let r = chat(&gw, &key, false).await;
    assert_eq!(r.status, 200, "{}", r.json());
    acknowledged += cost(&r);
    let streamed = chat(&gw, &key, true).await;
    assert_eq!(streamed.status, 200);
    assert!(streamed.text.contains("[DONE]"), "{}", streamed.text);
    acknowledged += streamed
        .text
        .lines()
        .find_map(|l| l.strip_prefix(": x-meridian-response-cost="))
        .expect("a finished stream states its cost")
        .parse::<f64>()
        .unwrap();

    // It fails again while a stream is being served: the stream ends in an
    // error instead of its end and cost. Then the node goes away without
    // writing anything more (as a crash would): a node restarted on what it
    // wrote has every acknowledged cost, and at most what it withheld.
    disk.fail_writes(true);
    let cut = chat(&gw, &key, true).await;
    assert_eq!(cut.status, 200, "the stream had started");
    assert!(!cut.text.contains("[DONE]"), "{}", cut.text);
    assert!(
        !cut.text.contains("x-meridian-response-cost"),
        "{}",
        cut.text
    );
    let last = cut.data_lines().pop().unwrap();
    assert!(last.contains("cannot write to its storage"), "{last}");
    refused_for_storage(&chat(&gw, &key, false).await);
    drop(gw);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    disk.fail_writes(false);
    let restarted = support::start_on(config(), disk.clone()).await;
    let kept = spend(&restarted, &key).await;
    let tolerance = 1e-9;
    assert!(
        kept + tolerance >= acknowledged,
        "acknowledged {acknowledged}, kept {kept}"
    );
    assert!(
        kept <= acknowledged + 3.0 * charged + tolerance,
        "kept {kept}: more than the acknowledged {acknowledged} and the withheld calls"
    );
}
