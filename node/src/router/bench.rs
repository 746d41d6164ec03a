//! What one routing decision costs (the `router_cost` example), per strategy
//! and group size, in this binary — measured in memory on one thread, with
//! each choice followed by what a call does to the live state (in flight,
//! usage, latency), so the strategies read state that moves.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use super::{Choice, ModelRouter, RouterSettings, Strategy, Want};
use crate::clock::SeededRng;
use crate::config::Config;

/// One measurement.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Cost {
    pub strategy: &'static str,
    pub deployments: usize,
    pub ns_per_choice: f64,
}

/// Measures every strategy on groups of each of `sizes`, `choices` picks each.
pub fn run(sizes: &[usize], choices: u32) -> Vec<Cost> {
    let base = Config::embedded(&BTreeMap::<String, String>::new()).deployments[0].clone();
    let mut out = Vec::new();
    for strategy in Strategy::ALL {
        let name = strategy.name();
        for &n in sizes {
            let deployments = (0..n).map(|i| {
                let mut d = base.clone();
                d.id = format!("d{i}");
                d.model_group = "g".into();
                d.rpm = Some(1_000_000_000);
                d.weight = Some(1.0 + i as f64);
                d
            });
            let settings = RouterSettings {
                strategy,
                ..RouterSettings::default()
            };
            let router = ModelRouter::new(deployments, settings, "local");
            let rng = SeededRng::from_seed(1);
            let want = Want {
                tokens: 100,
                ..Want::default()
            };
            let pick = |now: Instant| {
                if let Choice::Chosen(m) = router.choose("g", &want, now, &rng) {
                    let _in_flight = m.live.start(router.minute(now), want.tokens);
                    m.live.succeeded(now, Duration::from_micros(500));
                }
            };
            let now = Instant::now();
            for _ in 0..choices / 10 {
                pick(now);
            }
            let started = Instant::now();
            for _ in 0..choices {
                pick(now);
            }
            let elapsed = started.elapsed();
            out.push(Cost {
                strategy: name,
                deployments: n,
                ns_per_choice: elapsed.as_nanos() as f64 / f64::from(choices.max(1)),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_strategy_and_size_is_measured() {
        let costs = super::run(&[1, 3], 100);
        assert_eq!(costs.len(), 10);
        assert!(costs.iter().all(|c| c.ns_per_choice > 0.0), "{costs:?}");
    }
}
