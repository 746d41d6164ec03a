//! The routing world: two regions, one gateway node and one provider each,
//! both regions' deployments in one model group. Clients send through their
//! region's node with a key that may go anywhere and with one held to the EU
//! (`allowed_model_region: eu`). Midway, the EU provider fails every call for
//! a while, then recovers. What must hold, checked on every call:
//!
//! - **residency**: the EU-only key is never served by the US provider — not
//!   by locality, not by a retry, not while the EU provider is down;
//! - **locality**: while both providers answer, each node serves from its own
//!   region (the US deployment is declared `US-East`: region names match in
//!   any case);
//! - **failover**: while the EU provider is down, the EU node's unrestricted
//!   calls are all served, by the US deployment;
//! - **recovery**: once the EU provider is back and the cooldown has run out,
//!   the EU node (and the EU-only key, wherever it enters) is served by the
//!   EU deployment again.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, UNIX_EPOCH};

use meridian_bugs::Bug;
use meridian_node::clock::SeededRng;
use meridian_node::node::Seams;
use meridian_node::runtime::{NodeBuilder, Peers};
use meridian_node::secret::Secret;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde_json::json;

use crate::net::{Answer, SimUpstream, call};
use crate::upstream::{Provider, Trouble};
use crate::world::{Outcome, SimClock, Violation};

const MASTER_KEY: &str = "sk-sim-master";
/// A key whose data must stay in the EU.
const EU_ONLY: &str = "sk-eu-only";
const REGIONS: [&str; 2] = ["us-east", "eu-west"];
const COOLDOWN: Duration = Duration::from_secs(2);
const TRAFFIC_FROM: Duration = Duration::from_secs(2);
const OUTAGE_FROM: Duration = Duration::from_secs(6);
const OUTAGE_UNTIL: Duration = Duration::from_secs(14);
const TRAFFIC_UNTIL: Duration = Duration::from_secs(20);
/// Time the router may take to notice the outage (the first failing calls
/// are retried into a cooldown within one request).
const NOTICE: Duration = Duration::from_secs(1);
/// Longest a call takes here: one started this close before the outage may
/// meet it.
const IN_FLIGHT: Duration = Duration::from_millis(500);

/// One client call, as the checks read it.
#[derive(Clone, Debug)]
struct Call {
    at: Duration,
    node_region: &'static str,
    eu_only: bool,
    status: u16,
    /// `x-meridian-model-id` of a served call.
    served_by: Option<String>,
}

fn deployment_id(region: &str) -> String {
    format!("gpt-{region}")
}

/// How the config names a deployment's region: the US one in other case, as
/// operators write it; region names match whatever their case.
fn declared_region(region: &str) -> String {
    if region == "us-east" {
        "US-East".to_owned()
    } else {
        region.to_owned()
    }
}

fn config_yaml(region: &str) -> String {
    let deployments: String = REGIONS
        .iter()
        .map(|r| {
            format!(
                "  - model_name: gpt
    litellm_params:
      model: openai/gpt-sim
      api_base: http://provider-{r}:9000/v1
      api_key: sk-provider
      region_name: {declared}
    model_info:
      id: {id}
",
                id = deployment_id(r),
                declared = declared_region(r)
            )
        })
        .collect();
    format!(
        "model_list:
{deployments}router_settings:
  num_retries: 2
  allowed_fails: 1
  cooldown_time: {cooldown}
general_settings:
  master_key: {MASTER_KEY}
meridian:
  node_id: gw-{region}
  region: {region}
",
        cooldown = COOLDOWN.as_secs()
    )
}

async fn run_node(seed: u64, region: &'static str) -> Result<(), Box<dyn std::error::Error>> {
    let env = BTreeMap::<String, String>::new();
    let config =
        meridian_node::config::parse_str(&config_yaml(region), "routing.yaml", &env, false)?;
    let seams = Seams {
        upstream: Arc::new(SimUpstream),
        clock: Arc::new(SimClock),
        rng: SeededRng::from_seed(seed ^ region.len() as u64),
    };
    let store: Arc<dyn meridian_storage::Store> = Arc::new(meridian_storage::MemStore::new());
    let running = NodeBuilder::new(config, Secret::new(MASTER_KEY), seams, store)
        .peers(Peers::Alone)
        .start()
        .await?;
    let listener = crate::SimListener(turmoil::net::TcpListener::bind("0.0.0.0:4000").await?);
    running
        .serve(listener, None, std::future::pending())
        .await?;
    Ok(())
}

/// Creates the EU-only key on the region's node, then sends calls every
/// ~100 ms until the end, alternating the unrestricted and the EU-only key.
async fn client(
    seed: u64,
    region: &'static str,
    calls: Arc<Mutex<Vec<Call>>>,
) -> Result<(), Box<dyn std::error::Error>> {
    let base = format!("http://gw-{region}:4000");
    let mut rng = StdRng::seed_from_u64(seed ^ region.len() as u64 ^ 0x5e1d);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let key = json!({"key": EU_ONLY, "metadata": {"allowed_model_region": "eu"}});
    loop {
        let answer = call(
            &format!("{base}/key/generate"),
            MASTER_KEY,
            Some(&key),
            Duration::from_secs(2),
        )
        .await;
        if matches!(answer, Answer::Got { status: 200, .. }) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(TRAFFIC_FROM.saturating_sub(turmoil::elapsed())).await;
    let mut tasks = Vec::new();
    let mut n = 0u64;
    while turmoil::elapsed() < TRAFFIC_UNTIL {
        let eu_only = n % 2 == 1;
        let (key, user) = if eu_only {
            (EU_ONLY, "eu-only")
        } else {
            (MASTER_KEY, "anyone")
        };
        let url = format!("{base}/v1/chat/completions");
        let calls = calls.clone();
        tasks.push(tokio::spawn(async move {
            let at = turmoil::elapsed();
            let body = json!({"model": "gpt", "user": user, "messages": [{"role": "user", "content": "hi"}]});
            let answer = call(&url, key, Some(&body), Duration::from_secs(5)).await;
            let (status, served_by) = match &answer {
                Answer::Got { status, headers, .. } => (
                    *status,
                    headers
                        .get("x-meridian-model-id")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned),
                ),
                _ => (0, None),
            };
            calls.lock().unwrap_or_else(PoisonError::into_inner).push(Call {
                at,
                node_region: region,
                eu_only,
                status,
                served_by,
            });
        }));
        n += 1;
        tokio::time::sleep(Duration::from_millis(90 + rng.random_range(0..20))).await;
    }
    for t in tasks {
        t.await?;
    }
    Ok(())
}

/// Runs the routing world of `seed` with `bugs` switched on.
pub fn run(seed: u64, bugs: &[Bug]) -> Result<Outcome, String> {
    meridian_bugs::switch_on(bugs);
    let outcome = run_world(seed);
    meridian_bugs::switch_on(&[]);
    outcome
}

fn run_world(seed: u64) -> Result<Outcome, String> {
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .epoch(UNIX_EPOCH + Duration::from_secs(1_800_000_000))
        .simulation_duration(TRAFFIC_UNTIL + Duration::from_secs(30))
        .build();
    let providers: BTreeMap<&str, Arc<Provider>> = REGIONS
        .iter()
        .map(|r| (*r, Arc::new(Provider::default())))
        .collect();
    for (region, provider) in &providers {
        let provider = provider.clone();
        sim.host(format!("provider-{region}"), move || {
            let provider = provider.clone();
            async move {
                crate::upstream::serve(provider).await?;
                Ok(())
            }
        });
    }
    for region in REGIONS {
        sim.host(format!("gw-{region}"), move || async move {
            run_node(seed, region)
                .await
                .map_err(|e| e.to_string().into())
        });
    }
    let calls: Arc<Mutex<Vec<Call>>> = Arc::default();
    for region in REGIONS {
        let calls = calls.clone();
        sim.client(format!("client-{region}"), async move {
            client(seed, region, calls)
                .await
                .map_err(|e| e.to_string().into())
        });
    }
    let eu = providers["eu-west"].clone();
    let (mut down, mut up) = (false, false);
    loop {
        let done = sim.step().map_err(|e| e.to_string())?;
        let now = sim.elapsed();
        if !down && now >= OUTAGE_FROM {
            down = true;
            eu.set(Trouble {
                fail_every: 1,
                slow: Duration::ZERO,
            });
        }
        if !up && now >= OUTAGE_UNTIL {
            up = true;
            eu.set(Trouble::default());
        }
        if done {
            break;
        }
    }
    let mut calls = std::mem::take(&mut *calls.lock().unwrap_or_else(PoisonError::into_inner));
    calls.sort_by(|a, b| (a.at, a.node_region, a.eu_only).cmp(&(b.at, b.node_region, b.eu_only)));
    let eu_only_in_us = providers["us-east"].received_for("eu-only");
    let violations = check(&calls, eu_only_in_us);
    let trace = calls
        .iter()
        .map(|c| {
            format!(
                "{:>7} {} {} {} {}",
                c.at.as_millis(),
                c.node_region,
                if c.eu_only { "eu-only" } else { "anyone" },
                c.status,
                c.served_by.as_deref().unwrap_or("-")
            )
        })
        .collect();
    Ok(Outcome {
        seed,
        faults: vec![format!(
            "eu-west provider down {}-{} s",
            OUTAGE_FROM.as_secs(),
            OUTAGE_UNTIL.as_secs()
        )],
        split_ms: 0,
        violations,
        converged_after_ms: None,
        settled_after_ms: None,
        available_bound: 0.0,
        available_unenforced: 0.0,
        available_overshoot: 0.0,
        strict_overshoot: 0.0,
        served: calls.iter().filter(|c| c.status == 200).count() as u64,
        trace,
    })
}

/// The names of the routing world's checks, as violations report them.
pub const CHECKS: [&str; 4] = ["residency", "locality", "failover", "recovery"];

/// The four guarantees over every call; the first breach of each is reported.
fn check(calls: &[Call], eu_only_in_us: u64) -> Vec<Violation> {
    let mut found: BTreeMap<&'static str, Violation> = BTreeMap::new();
    let mut breach = |invariant: &'static str, at: Duration, message: String| {
        found.entry(invariant).or_insert(Violation {
            invariant: invariant.to_owned(),
            at_ms: at.as_millis() as u64,
            message,
        });
    };
    if eu_only_in_us > 0 {
        breach(
            "residency",
            TRAFFIC_UNTIL,
            format!("the US provider received {eu_only_in_us} requests of the EU-only key"),
        );
    }
    let us = deployment_id("us-east");
    let recovered = OUTAGE_UNTIL + COOLDOWN + NOTICE;
    for c in calls {
        let local = deployment_id(c.node_region);
        let served = |by: &str| c.status == 200 && c.served_by.as_deref() == Some(by);
        let what = format!(
            "a call through the {} node ({}) got {} from {}",
            c.node_region,
            if c.eu_only {
                "EU-only key"
            } else {
                "unrestricted key"
            },
            c.status,
            c.served_by.as_deref().unwrap_or("no deployment")
        );
        if c.eu_only && c.served_by.as_deref() == Some(us.as_str()) {
            breach("residency", c.at, what.clone());
        }
        let eu_down = c.at >= OUTAGE_FROM && c.at < OUTAGE_UNTIL;
        let healthy = c.at + IN_FLIGHT < OUTAGE_FROM || c.at >= recovered;
        // A call that is not served where it should be breaks locality,
        // unless it is one the EU deployment should serve again after its
        // outage (and the cooldown): that is recovery. The US node's own
        // calls never depended on the EU deployment.
        let eu_served = c.eu_only || c.node_region == "eu-west";
        let local_breach = if healthy && c.at >= OUTAGE_UNTIL && eu_served {
            "recovery"
        } else {
            "locality"
        };
        if c.eu_only {
            // Wherever it enters, EU-only traffic is served in the EU when it can be.
            if healthy && !served(&deployment_id("eu-west")) {
                breach(local_breach, c.at, what);
            }
            continue;
        }
        if c.node_region == "us-east" || healthy {
            if !served(&local) {
                breach(local_breach, c.at, what);
            }
        } else if eu_down && c.at >= OUTAGE_FROM + NOTICE && !served(&us) {
            breach("failover", c.at, what);
        }
    }
    found.into_values().collect()
}
