//! Graceful shutdown of a real `meridian` process: SIGTERM under load stops
//! accepting, lets in-flight calls finish, and writes everything it
//! acknowledged — every answered call is in the spend log and on the key's
//! counters after a restart.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod process_support;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use process_support::Server;
use serde_json::json;

/// A model that takes 150 ms and has a price, so every call is in flight
/// for a while and costs something.
const CONFIG: &str = "model_list:
  - model_name: slow
    litellm_params:
      model: mock/slow-150
      input_cost_per_token: 0.000001
      output_cost_per_token: 0.000002
";

const CLIENTS: usize = 16;

/// What the clients saw answered: request id and the cost header.
type Acknowledged = Arc<Mutex<Vec<(String, f64)>>>;

/// Calls `slow` in a loop until the node stops answering.
async fn client(base: String, key: String, acked: Acknowledged) {
    let http = reqwest::Client::new();
    let body = json!({"model": "slow", "messages": [{"role": "user", "content": "hello there"}]});
    loop {
        let reply = http
            .post(format!("{base}/v1/chat/completions"))
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body(body.to_string())
            .timeout(Duration::from_secs(30))
            .send()
            .await;
        let Ok(reply) = reply else { return };
        if reply.status() != 200 {
            return;
        }
        let header = |name: &str| {
            reply
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let id = header("x-request-id").expect("a request id");
        let cost: f64 = header("x-meridian-response-cost")
            .expect("a cost header")
            .parse()
            .unwrap();
        // Answered only once the whole body is in.
        if reply.bytes().await.is_err() {
            return;
        }
        acked.lock().unwrap().push((id, cost));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_keeps_every_acknowledged_call() {
    let mut node = Server::start_yaml(CONFIG, &[]).await;
    let key = node
        .admin(
            "/key/generate",
            json!({"max_budget": 1000.0, "rpm_limit": 100000}),
        )
        .await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let acked: Acknowledged = Arc::default();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| tokio::spawn(client(node.base.clone(), key.clone(), acked.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = acked.lock().unwrap().len();
    let status = node
        .terminate(Duration::from_secs(30))
        .await
        .unwrap_or_else(|| panic!("the node did not stop within 30 s: {}", node.log()));
    assert!(status.success(), "exit status {status}: {}", node.log());
    for c in clients {
        c.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        before >= CLIENTS * 3,
        "too little load before SIGTERM to mean anything: {before} calls"
    );
    assert!(
        acked.len() > before,
        "calls in flight at SIGTERM were let finish ({} answered before, {} in all)",
        before,
        acked.len()
    );

    node.restart().await;
    let (status, rows) = node
        .call(
            "GET",
            &format!("/spend/logs?api_key={key}&limit=1000"),
            &node.master.clone(),
            None,
        )
        .await;
    assert_eq!(status, 200, "{rows}");
    let logged: BTreeSet<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["request_id"].as_str())
        .collect();
    let missing: Vec<&str> = acked
        .iter()
        .map(|(id, _)| id.as_str())
        .filter(|id| !logged.contains(id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged calls are not in the spend log after the restart: {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );

    let acked_spend: f64 = acked.iter().map(|(_, c)| c).sum();
    let (status, info) = node
        .call(
            "GET",
            &format!("/key/info?key={key}"),
            &node.master.clone(),
            None,
        )
        .await;
    assert_eq!(status, 200, "{info}");
    let spend = info["info"]["spend"].as_f64().unwrap();
    assert!(
        spend >= acked_spend - 1e-9,
        "the key's spend after the restart ({spend}) is below what was acknowledged ({acked_spend})"
    );
}
