//! Routing: model group → one deployment. Deliberately simple for now — a
//! uniform random pick from the group, drawn from the node's seeded RNG so a
//! simulation replays the same choices. Strategies, cooldowns, retries and
//! fallbacks belong here later.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::clock::SeededRng;
use crate::config::Deployment;

pub struct ModelRouter {
    /// Ordered, so listings and seeded picks are deterministic.
    groups: BTreeMap<String, Vec<Arc<Deployment>>>,
}

impl ModelRouter {
    pub fn new(deployments: impl IntoIterator<Item = Deployment>) -> Self {
        let mut groups: BTreeMap<String, Vec<Arc<Deployment>>> = BTreeMap::new();
        for d in deployments {
            groups
                .entry(d.model_group.clone())
                .or_default()
                .push(Arc::new(d));
        }
        Self { groups }
    }

    pub fn pick(&self, group: &str, rng: &SeededRng) -> Option<Arc<Deployment>> {
        let deployments = self.groups.get(group)?;
        let i = rng.below(deployments.len() as u64) as usize;
        deployments.get(i).cloned()
    }

    pub fn group_names(&self) -> impl Iterator<Item = &str> {
        self.groups.keys().map(String::as_str)
    }

    pub fn deployments(&self) -> impl Iterator<Item = &Arc<Deployment>> {
        self.groups.values().flatten()
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
        deployments.push(second);
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
        assert_eq!(
            router.group_names().collect::<Vec<_>>(),
            vec!["mock-chat", "mock-embedding"]
        );
    }
}
