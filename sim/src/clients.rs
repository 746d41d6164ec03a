//! A world's clients: the LLM traffic of each region and the admin client,
//! and the oracle of what they were told, which the invariants hold the
//! cluster to.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde_json::json;

use crate::net::{Answer, call};
use crate::oracle::picodollars;
use crate::world::{
    AVAILABLE, MASTER_KEY, MAX_TOKENS, Oracle, PLAIN, PROMPT, REVOKED, STRICT, Shared, Spec,
    TRAFFIC_FROM, host, lock,
};

fn chat_body() -> serde_json::Value {
    json!({"model": "gpt", "max_tokens": MAX_TOKENS, "messages": [{"role": "user", "content": PROMPT}]})
}

/// One region's LLM traffic until the heal, open loop (a call starts every
/// `call_every`, whether or not earlier ones have finished): calls rotate over
/// the keys and over the region's nodes; a node that cannot be reached is
/// skipped, as a load balancer would.
pub(crate) async fn llm_client(
    spec: Spec,
    region: String,
    oracle: Shared<Oracle>,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut rng = StdRng::seed_from_u64(spec.seed ^ region.len() as u64 ^ 0xc11e);
    let keys = [PLAIN, AVAILABLE, STRICT];
    tokio::time::sleep(TRAFFIC_FROM.saturating_sub(turmoil::elapsed())).await;
    let mut calls = Vec::new();
    let mut n = 0u64;
    while turmoil::elapsed() < spec.heal_at() {
        let key = keys[(n % 3) as usize];
        let nodes: Vec<String> = (0..spec.nodes_per_region)
            .map(|i| host(&region, 1 + (n + i) % spec.nodes_per_region))
            .collect();
        let oracle = oracle.clone();
        calls.push(tokio::spawn(async move {
            let mut answer = Answer::Unsent("no node".into());
            for node in nodes {
                let url = format!("http://{node}:4000/v1/chat/completions");
                answer = call(&url, key, Some(&chat_body()), Duration::from_secs(5)).await;
                if !matches!(answer, Answer::Unsent(_)) {
                    break;
                }
            }
            record_call(&oracle, key, &answer);
        }));
        n += 1;
        let jitter = Duration::from_millis(rng.random_range(0..20));
        tokio::time::sleep(spec.call_every + jitter).await;
    }
    for c in calls {
        c.await?;
    }
    Ok(())
}

fn record_call(oracle: &Shared<Oracle>, key: &str, answer: &Answer) {
    let now = turmoil::elapsed();
    let mut o = lock(oracle);
    let summary = {
        let calls = o.calls.entry(key.to_owned()).or_default();
        match answer {
            Answer::Got {
                status: 200,
                headers,
                ..
            } => {
                let cost = headers
                    .get(meridian_node::api::COST_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(picodollars);
                calls.served += 1;
                match cost {
                    Some(cost) => {
                        calls.acknowledged_pico += cost;
                        format!("{key} 200 {cost}")
                    }
                    None => {
                        calls.uncosted += 1;
                        format!("{key} 200 without a cost")
                    }
                }
            }
            Answer::Got { status, body, .. } => {
                calls.refused += 1;
                if body["error"]["type"] == "budget_exceeded" {
                    calls.over_budget += 1;
                }
                format!("{key} {status}")
            }
            Answer::InDoubt(_) => {
                calls.in_doubt += 1;
                format!("{key} in-doubt")
            }
            Answer::Unsent(_) => {
                calls.unsent += 1;
                format!("{key} unsent")
            }
        }
    };
    o.note(now, summary);
}

/// Admin traffic: the keys, then a key created every second through some
/// node, a block of the revoked key made in the last region, and after the
/// heal the revoked key tried on every node until each refuses it.
pub(crate) async fn admin_client(
    spec: Spec,
    oracle: Shared<Oracle>,
) -> Result<(), Box<dyn std::error::Error>> {
    let hosts = spec.node_hosts();
    let mut rng = StdRng::seed_from_u64(spec.seed ^ 0xad31);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let budget = spec.budget;
    let period = spec.budget_period;
    let first_region: Vec<String> = hosts
        .iter()
        .filter(|h| spec.region_of(h) == spec.regions[0])
        .cloned()
        .collect();
    let setup = [
        // A request limit no client comes near: its counters exist (and
        // must converge) without refusing anything.
        json!({"key": PLAIN, "rpm_limit": 1_000_000}),
        json!({"key": AVAILABLE, "max_budget": spec.available_budget, "budget_duration": spec.available_period}),
        json!({"key": STRICT, "max_budget": budget, "budget_duration": period, "enforcement": "strict"}),
        json!({"key": REVOKED}),
    ];
    for body in setup {
        admin_until_done(&first_region, "/key/generate", &body, &oracle).await;
    }
    let block_at = spec.faults_from + spec.faulty_for * 2 / 5;
    let last_region: Vec<String> = hosts
        .iter()
        .filter(|h| spec.region_of(h) == *spec.regions.last().unwrap_or(&String::new()))
        .cloned()
        .collect();
    let mut made = 0u64;
    while turmoil::elapsed() < spec.heal_at() {
        if oracle_blocked(&oracle).is_none() && turmoil::elapsed() >= block_at {
            admin_until_done(
                &last_region,
                "/key/block",
                &json!({"key": REVOKED}),
                &oracle,
            )
            .await;
            let now = turmoil::elapsed();
            let mut o = lock(&oracle);
            o.blocked_at = Some(now);
            o.note(now, "blocked sk-revoked");
            continue;
        }
        made += 1;
        let key = format!("sk-made-{made}");
        let node = &hosts[rng.random_range(0..hosts.len())];
        let answer = call(
            &format!("http://{node}:4000/key/generate"),
            MASTER_KEY,
            Some(&json!({ "key": key })),
            Duration::from_secs(3),
        )
        .await;
        if let Answer::Got { status: 200, .. } = answer {
            let now = turmoil::elapsed();
            let mut o = lock(&oracle);
            o.created.insert(key.clone(), now);
            o.note(now, format!("created {key} via {node}"));
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    // After the heal: every node must come to refuse the revoked key.
    let deadline = spec.heal_at() + spec.revoke_within;
    let mut pending: Vec<String> = hosts.clone();
    while !pending.is_empty() && turmoil::elapsed() < deadline {
        let mut still = Vec::new();
        for node in pending {
            let answer = call(
                &format!("http://{node}:4000/v1/models"),
                REVOKED,
                None,
                Duration::from_secs(1),
            )
            .await;
            // Refused as blocked: a 401 for any other reason (an unknown
            // key, a node still starting) is not the revocation.
            let refused = matches!(&answer, Answer::Got { status: 401, body, .. }
                if body["error"]["message"].as_str().is_some_and(|m| m.contains("blocked")));
            if refused {
                let now = turmoil::elapsed();
                let mut o = lock(&oracle);
                o.refused_revoked.insert(node.clone(), Some(now));
            } else {
                still.push(node);
            }
        }
        pending = still;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut o = lock(&oracle);
    for node in pending {
        o.refused_revoked.insert(node, None);
    }
    Ok(())
}

fn oracle_blocked(oracle: &Shared<Oracle>) -> Option<Duration> {
    lock(oracle).blocked_at
}

/// Retries an admin write over `nodes` until one acknowledges it (a write
/// that already happened answers 400/409 from then on, which also ends it).
async fn admin_until_done(
    nodes: &[String],
    path: &str,
    body: &serde_json::Value,
    oracle: &Shared<Oracle>,
) {
    for attempt in 0usize.. {
        let node = &nodes[attempt % nodes.len()];
        let answer = call(
            &format!("http://{node}:4000{path}"),
            MASTER_KEY,
            Some(body),
            Duration::from_secs(3),
        )
        .await;
        match answer {
            Answer::Got { status: 200, .. } => {
                let now = turmoil::elapsed();
                let mut o = lock(oracle);
                if let Some(key) = body.get("key").and_then(|k| k.as_str())
                    && path == "/key/generate"
                {
                    o.created.insert(key.to_owned(), now);
                }
                o.note(now, format!("{path} {body} via {node}"));
                return;
            }
            Answer::Got { status, .. } if (400..500).contains(&status) && attempt > 0 => return,
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}
