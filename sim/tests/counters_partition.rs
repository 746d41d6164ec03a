//! Two regions of two nodes, each running the real counter table and gossip
//! (tonic over turmoil's network, the in-memory store), with the regions cut
//! apart for a while. Checked: during the partition each node sees every
//! acknowledged spend of its own region and none of the other's new spend;
//! after the heal every node converges to exactly the sum of acknowledged
//! spends (nothing lost, nothing counted twice) within a bound; a seed replays
//! the same trace.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meridian_link::ClusterSecret;
use meridian_replication::crdt::{CounterId, Metric, Scope, Window};
use meridian_replication::gossip::{PeerList, WallClock};
use meridian_replication::{Counters, Gossip, GossipConfig, Peer, gossip_service};
use meridian_sim::{serve_peers, sim_dialer};
use meridian_storage::{Durability, MemStore};
use tonic::service::Routes;

const SECRET: &str = "sim-secret";
const HOSTS: [(&str, &str, u64); 4] = [
    ("us1", "us-east", 1),
    ("us2", "us-east", 2),
    ("eu1", "eu-west", 1),
    ("eu2", "eu-west", 2),
];
/// After the heal, every node must agree within this (simulated) time.
const CONVERGE_WITHIN: Duration = Duration::from_secs(3);

macro_rules! check {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+).into());
        }
    };
}

type Checked<T> = Result<T, Box<dyn std::error::Error>>;

fn team() -> CounterId {
    CounterId {
        scope: Scope::Team,
        entity: "t1".into(),
        metric: Metric::Spend,
        window: Window::Lifetime,
        period: 0,
    }
}

type Registry = Arc<Mutex<BTreeMap<&'static str, Arc<Counters>>>>;

fn counters_of(reg: &Registry, host: &str) -> Arc<Counters> {
    reg.lock().unwrap()[host].clone()
}

/// Spends `amount` on `host` and waits until it is durable (acknowledged).
async fn spend(reg: &Registry, host: &str, amount: u64) {
    let c = counters_of(reg, host);
    let (_, ticket) = c.update(|t| t.add(&team(), amount, 0));
    c.durable(ticket).await.unwrap();
}

fn values(reg: &Registry) -> Vec<u64> {
    HOSTS
        .iter()
        .map(|(h, _, _)| counters_of(reg, h).reading(&team()).value)
        .collect()
}

/// Runs one seed; returns the trace (values sampled at fixed points and the
/// convergence time in ms).
fn run(seed: u64) -> Checked<Vec<u64>> {
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .simulation_duration(Duration::from_secs(60))
        .build();
    let reg: Registry = Arc::default();
    for (host, region, node) in HOSTS {
        let reg = reg.clone();
        sim.host(host, move || {
            let reg = reg.clone();
            async move {
                let store = Arc::new(MemStore::new());
                let counters = Arc::new(Counters::open(
                    region,
                    node,
                    store,
                    Durability::Process,
                    move || seed ^ node,
                )?);
                reg.lock().unwrap().insert(host, counters.clone());
                tokio::spawn(counters.clone().run_flusher(std::future::pending()));
                let secret = ClusterSecret::new(Some(SECRET))?;
                let clock: WallClock = Arc::new(|| 1_800_000_000_000);
                let config = GossipConfig {
                    interval: Duration::from_millis(100),
                    sync_every: Duration::from_millis(500),
                    ..GossipConfig::default()
                };
                let peers: PeerList = Arc::new(move || {
                    HOSTS
                        .iter()
                        .filter(|(h, _, _)| *h != host)
                        .map(|(h, _, _)| Peer::new(format!("{h}:7000")))
                        .collect()
                });
                let gossip = Gossip::new(
                    counters.clone(),
                    sim_dialer(),
                    secret.clone(),
                    clock.clone(),
                    peers,
                    config.clone(),
                );
                tokio::spawn(gossip.run(std::future::pending()));
                let listener = turmoil::net::TcpListener::bind("0.0.0.0:7000").await?;
                let routes = Routes::new(gossip_service(counters, secret, clock, &config));
                serve_peers(listener, routes, std::future::pending()).await?;
                Ok(())
            }
        });
    }
    let trace = Arc::new(Mutex::new(Vec::new()));
    let out = trace.clone();
    sim.client("driver", async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut acknowledged = 0u64;
        for round in 0..5u64 {
            for (h, _, _) in HOSTS {
                spend(&reg, h, round + 1).await;
                acknowledged += round + 1;
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before = values(&reg);
        check!(
            before.iter().all(|v| *v == acknowledged),
            "before the partition: {before:?}, acknowledged {acknowledged}"
        );
        for (a, ra, _) in HOSTS {
            for (b, rb, _) in HOSTS {
                if ra != rb {
                    turmoil::partition(a, b);
                }
            }
        }
        let mut by_region: BTreeMap<&str, u64> = BTreeMap::new();
        for round in 0..5u64 {
            for (h, region, _) in HOSTS {
                spend(&reg, h, 10 + round).await;
                *by_region.entry(region).or_default() += 10 + round;
                acknowledged += 10 + round;
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let during = values(&reg);
        for ((_, region, _), v) in HOSTS.iter().zip(&during) {
            check!(
                *v == before[0] + by_region[region],
                "during the partition a node of {region} sees {v}: {during:?}"
            );
        }
        for (a, ra, _) in HOSTS {
            for (b, rb, _) in HOSTS {
                if ra != rb {
                    turmoil::repair(a, b);
                }
            }
        }
        let healed = tokio::time::Instant::now();
        while values(&reg).iter().any(|v| *v != acknowledged) {
            check!(
                healed.elapsed() < CONVERGE_WITHIN,
                "no convergence to {acknowledged} within {CONVERGE_WITHIN:?}: {:?}",
                values(&reg)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut t = out.lock().unwrap();
        t.extend(before);
        t.extend(during);
        t.push(healed.elapsed().as_millis() as u64);
        Ok(())
    });
    sim.run()?;
    let trace = trace.lock().unwrap().clone();
    Ok(trace)
}

#[test]
fn counters_converge_after_a_partition_between_regions() {
    for seed in 1..=4 {
        let trace = run(seed).unwrap_or_else(|e| {
            panic!("seed {seed}: {e} (reproduce: cargo test -p meridian-sim --test counters_partition, seed {seed})")
        });
        println!(
            "seed {seed}: converged {} ms after the heal",
            trace.last().unwrap()
        );
    }
}

#[test]
fn a_seed_replays_the_same_trace() {
    assert_eq!(run(7).unwrap(), run(7).unwrap());
}
