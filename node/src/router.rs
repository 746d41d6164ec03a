//! Routing: model group → one deployment. Deliberately simple for now — a
//! uniform random pick from the group, drawn from the node's seeded RNG so a
//! simulation replays the same choices. Strategies, cooldowns, retries and
//! fallbacks belong here later.
//!
//! A group's deployments come from the config file and from the region's
//! run-time models (`/model/new`) visible in this region. The latter are
//! rebuilt only when the applied models change (a generation number), never
//! per request.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use crate::clock::SeededRng;
use crate::config::Deployment;

type Groups = BTreeMap<String, Vec<Arc<Deployment>>>;

pub struct ModelRouter {
    /// From the config file. Ordered, so listings and seeded picks are
    /// deterministic.
    configured: Groups,
    /// From the region's metadata, with the generation they were built from.
    runtime: RwLock<(u64, Groups)>,
}

fn group(deployments: impl IntoIterator<Item = Deployment>) -> Groups {
    let mut groups: Groups = BTreeMap::new();
    for d in deployments {
        groups
            .entry(d.model_group.clone())
            .or_default()
            .push(Arc::new(d));
    }
    groups
}

impl ModelRouter {
    pub fn new(deployments: impl IntoIterator<Item = Deployment>) -> Self {
        Self {
            configured: group(deployments),
            runtime: RwLock::new((0, BTreeMap::new())),
        }
    }

    /// The generation the run-time deployments were built from.
    pub fn runtime_generation(&self) -> u64 {
        self.runtime.read().unwrap_or_else(|p| p.into_inner()).0
    }

    /// Replaces the run-time deployments.
    pub fn set_runtime(&self, generation: u64, deployments: Vec<Deployment>) {
        *self.runtime.write().unwrap_or_else(|p| p.into_inner()) = (generation, group(deployments));
    }

    pub fn pick(&self, group: &str, rng: &SeededRng) -> Option<Arc<Deployment>> {
        let runtime = self.runtime.read().unwrap_or_else(|p| p.into_inner());
        let configured = self.configured.get(group).map_or(&[][..], Vec::as_slice);
        let added = runtime.1.get(group).map_or(&[][..], Vec::as_slice);
        let total = configured.len() + added.len();
        if total == 0 {
            return None;
        }
        let i = rng.below(total as u64) as usize;
        configured
            .get(i)
            .or_else(|| added.get(i - configured.len()))
            .cloned()
    }

    pub fn group_names(&self) -> Vec<String> {
        let runtime = self.runtime.read().unwrap_or_else(|p| p.into_inner());
        let mut names: Vec<String> = self
            .configured
            .keys()
            .chain(runtime.1.keys())
            .cloned()
            .collect();
        names.sort();
        names.dedup();
        names
    }

    pub fn deployments(&self) -> Vec<Arc<Deployment>> {
        let runtime = self.runtime.read().unwrap_or_else(|p| p.into_inner());
        self.configured
            .values()
            .chain(runtime.1.values())
            .flatten()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn picks_only_from_the_group_and_replays_by_seed() {
        let mut deployments =
            Config::embedded(&std::collections::BTreeMap::<String, String>::new()).deployments;
        let mut second = deployments[0].clone();
        second.id = "second".into();
        deployments.push(second.clone());
        let router = ModelRouter::new(deployments);
        let draw = |seed| {
            let rng = SeededRng::from_seed(seed);
            (0..32)
                .map(|_| router.pick("mock-chat", &rng).unwrap().id.clone())
                .collect::<Vec<_>>()
        };
        let a = draw(1);
        assert_eq!(a, draw(1));
        assert!(a.iter().any(|id| id == "second") && a.iter().any(|id| id == "builtin-mock-chat"));
        assert!(router.pick("nope", &SeededRng::from_seed(1)).is_none());
        assert_eq!(router.group_names(), vec!["mock-chat", "mock-embedding"]);

        // Run-time deployments join their group, or make a new one.
        let mut third = second;
        third.id = "third".into();
        third.model_group = "added".into();
        router.set_runtime(7, vec![third]);
        assert_eq!(router.runtime_generation(), 7);
        assert_eq!(
            router.pick("added", &SeededRng::from_seed(1)).unwrap().id,
            "third"
        );
        assert_eq!(
            router.group_names(),
            vec!["added", "mock-chat", "mock-embedding"]
        );
    }
}
