//! A scrape: the event families as recorded, then the families that
//! describe state, read from the node now. Budgets are the **global** view
//! (every region's spend, as this node's counters have merged it), for the
//! keys that have labels of their own and their teams.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;

use meridian_replication::crdt::Scope;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::admission::{Entity, budget_now};
use crate::node::Node;
use crate::pricing::pico_to_dollars;

/// Prometheus's text format, version 0.0.4 (what LiteLLM serves).
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

type Labels = Vec<(&'static str, String)>;
type Gauges = Family<Labels, Gauge<f64, AtomicU64>>;

/// Every family, in Prometheus's text format.
pub fn render(node: &Node) -> Result<String, std::fmt::Error> {
    let mut out = String::with_capacity(16 * 1024);
    prometheus_text::encode(&mut out, &node.metrics.registry)?;
    let mut now = Registry::with_labels(
        [
            (Cow::Borrowed("region"), Cow::Owned(node.region.clone())),
            (Cow::Borrowed("node"), Cow::Owned(node.node_id.clone())),
        ]
        .into_iter(),
    );
    budgets(&mut now, node);
    super::cluster::register(&mut now, node);
    prometheus_text::encode(&mut out, &now)?;
    Ok(out)
}

/// Budget gauges: each key with labels of its own, and each team of one.
fn budgets(registry: &mut Registry, node: &Node) {
    let [key_left, key_max, team_left, team_max] = std::array::from_fn(|_| Gauges::default());
    let now = node.now_ms();
    node.metadata.read(|state| {
        let mut teams = BTreeMap::new();
        for who in node.metrics.keys() {
            let Some(key) = state.key(&who.labels.hashed_api_key) else {
                continue;
            };
            let entity = Entity {
                scope: Scope::Key,
                id: &key.token,
                limits: &key.limits,
                budget_id: key.budget_id.as_deref(),
            };
            let labels = vec![
                ("hashed_api_key", key.token.clone()),
                ("api_key_alias", key.key_alias.clone().unwrap_or_default()),
            ];
            let (max, spent) = budget_now(&node.counters, state, &entity, now);
            gauge_pair([&key_left, &key_max], labels, max, spent);
            if let Some(team) = key.team_id.as_deref().and_then(|t| state.team(t)) {
                teams.insert(team.team_id.clone(), team.clone());
            }
        }
        for team in teams.values() {
            let entity = Entity {
                scope: Scope::Team,
                id: &team.team_id,
                limits: &team.limits,
                budget_id: team.budget_id.as_deref(),
            };
            let labels = vec![
                ("team", team.team_id.clone()),
                ("team_alias", team.team_alias.clone().unwrap_or_default()),
            ];
            let (max, spent) = budget_now(&node.counters, state, &entity, now);
            gauge_pair([&team_left, &team_max], labels, max, spent);
        }
    });
    registry.register(
        "litellm_remaining_api_key_budget_metric",
        "USD left in the key's budget period, all regions' spend counted (+Inf without a budget)",
        key_left,
    );
    registry.register(
        "litellm_api_key_max_budget_metric",
        "The key's max_budget in USD",
        key_max,
    );
    registry.register(
        "litellm_remaining_team_budget_metric",
        "USD left in the team's budget period, all regions' spend counted (+Inf without a budget)",
        team_left,
    );
    registry.register(
        "litellm_team_max_budget_metric",
        "The team's max_budget in USD",
        team_max,
    );
}

/// Sets "remaining" (`+Inf` without a budget, as LiteLLM) and, with a
/// budget, "max".
fn gauge_pair([left, max_gauge]: [&Gauges; 2], labels: Labels, max: Option<u64>, spent: u64) {
    match max {
        Some(max) => {
            left.get_or_create(&labels)
                .set(pico_to_dollars(max) - pico_to_dollars(spent));
            max_gauge.get_or_create(&labels).set(pico_to_dollars(max));
        }
        None => {
            left.get_or_create(&labels).set(f64::INFINITY);
        }
    }
}
