//! Routing: a model group → one deployment, and what the node has seen of
//! each deployment (in flight, usage this minute, latency, cooldown).
//!
//! Choosing is a memory operation over the group's few deployments; it does
//! not grow with the request rate. The order of filters:
//!
//! ```text
//! the group (config file + the region's run-time models)
//!   → data residency (a key's or team's allowed regions; never relaxed)
//!   → tags (with enable_tag_filtering)
//!   → not cooling down (failures, 429/401/404, failed health checks)
//!   → under rpm/tpm (usage-based-routing)
//!   → the lowest `order` left
//!   → this node's region, when the tier has deployments there
//!   → the strategy picks one
//! ```
//!
//! Retries and fallbacks walk this again per attempt (`pipeline`). Picks
//! draw from the node's seeded RNG, so a simulation replays them.

pub mod bench;
pub mod live;
pub mod settings;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::time::Instant;

use crate::clock::SeededRng;
use crate::config::Deployment;
pub use live::{InFlight, Live};
pub use settings::{ErrorClass, RouterSettings, Strategy};

/// A deployment with what this node has seen of it.
#[derive(Debug, Clone)]
pub struct Member {
    pub deployment: Arc<Deployment>,
    pub live: Arc<Live>,
}

type Groups = BTreeMap<String, Vec<Member>>;

/// What the request asks of the deployment it gets.
#[derive(Debug, Clone, Copy, Default)]
pub struct Want<'a> {
    /// The request's tags (used with `enable_tag_filtering`).
    pub tags: &'a [String],
    /// Regions the caller's data may be processed in; `None`: anywhere.
    pub residency: Option<&'a [String]>,
    /// Estimated tokens of the request (checked against a deployment's `tpm`
    /// by `usage-based-routing`).
    pub tokens: u64,
}

/// Why no deployment of a known group can take the request now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unavailable {
    /// When one is expected back (the earliest cooldown end, or the next
    /// minute for usage limits); `None` when waiting cannot help.
    pub retry_after: Option<Duration>,
    pub reason: String,
}

#[derive(Debug)]
pub enum Choice {
    Chosen(Member),
    /// No such group on this node.
    Unknown,
    Unavailable(Unavailable),
}

pub struct ModelRouter {
    settings: RouterSettings,
    /// This node's region: its deployments are preferred.
    region: String,
    /// Minutes for per-minute usage count from here.
    epoch: Instant,
    /// From the config file. Ordered, so listings and seeded picks are
    /// deterministic.
    configured: Groups,
    /// From the region's metadata, with the generation they were built from.
    runtime: RwLock<(u64, Groups)>,
    /// Live state by deployment id, so a rebuild of the run-time models keeps it.
    lives: Mutex<HashMap<String, Arc<Live>>>,
}

/// Whether region `inner` lies within `outer`: equal, or `outer` followed by
/// a `-` (`eu-west-1` lies within `eu`). Case-insensitive.
pub fn region_within(inner: &str, outer: &str) -> bool {
    let (inner, outer) = (inner.as_bytes(), outer.as_bytes());
    inner.len() >= outer.len()
        && inner[..outer.len()].eq_ignore_ascii_case(outer)
        && (inner.len() == outer.len() || inner[outer.len()] == b'-')
}

impl ModelRouter {
    pub fn new(
        deployments: impl IntoIterator<Item = Deployment>,
        settings: RouterSettings,
        region: &str,
    ) -> Self {
        let mut router = Self {
            settings,
            region: region.to_owned(),
            epoch: Instant::now(),
            configured: BTreeMap::new(),
            runtime: RwLock::new((0, BTreeMap::new())),
            lives: Mutex::default(),
        };
        router.configured = router.group(deployments);
        router
    }

    pub fn settings(&self) -> &RouterSettings {
        &self.settings
    }

    fn group(&self, deployments: impl IntoIterator<Item = Deployment>) -> Groups {
        let mut lives = self.lives.lock().unwrap_or_else(|p| p.into_inner());
        let mut groups: Groups = BTreeMap::new();
        for d in deployments {
            let live = lives.entry(d.id.clone()).or_default().clone();
            groups
                .entry(d.model_group.clone())
                .or_default()
                .push(Member {
                    deployment: Arc::new(d),
                    live,
                });
        }
        groups
    }

    /// The current minute of per-minute usage.
    pub fn minute(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_secs() / 60
    }

    /// The generation the run-time deployments were built from.
    pub fn runtime_generation(&self) -> u64 {
        self.runtime.read().unwrap_or_else(|p| p.into_inner()).0
    }

    /// Replaces the run-time deployments.
    pub fn set_runtime(&self, generation: u64, deployments: Vec<Deployment>) {
        let groups = self.group(deployments);
        *self.runtime.write().unwrap_or_else(|p| p.into_inner()) = (generation, groups);
    }

    /// Every member of `group`, configured first.
    fn members(&self, group: &str) -> Vec<Member> {
        let runtime = self.runtime.read().unwrap_or_else(|p| p.into_inner());
        let configured = self.configured.get(group).map_or(&[][..], Vec::as_slice);
        let added = runtime.1.get(group).map_or(&[][..], Vec::as_slice);
        configured.iter().chain(added).cloned().collect()
    }

    /// Whether `group` exists on this node.
    pub fn has_group(&self, group: &str) -> bool {
        self.configured.contains_key(group)
            || self
                .runtime
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .1
                .contains_key(group)
    }

    /// The member with this deployment id (a fallback may name one).
    pub fn by_id(&self, id: &str) -> Option<Member> {
        let runtime = self.runtime.read().unwrap_or_else(|p| p.into_inner());
        self.configured
            .values()
            .chain(runtime.1.values())
            .flatten()
            .find(|m| m.deployment.id == id)
            .cloned()
    }

    /// Chooses for a fallback target or the requested model: a group, or a
    /// deployment named by its id (which skips cooldown, as in LiteLLM — but
    /// never residency).
    pub fn choose_target(
        &self,
        target: &str,
        want: &Want<'_>,
        now: Instant,
        rng: &SeededRng,
    ) -> Choice {
        if self.has_group(target) {
            return self.choose(target, want, now, rng);
        }
        let Some(member) = self.by_id(target) else {
            return Choice::Unknown;
        };
        match want.residency {
            Some(allowed) if !within_any(&member.deployment, allowed) => {
                Choice::Unavailable(Unavailable {
                    retry_after: None,
                    reason: format!(
                        "deployment `{target}` is not in a region this key may use ({})",
                        allowed.join(", ")
                    ),
                })
            }
            _ => Choice::Chosen(member),
        }
    }

    /// Whether a deployment of `group` other than `except` is ready now.
    pub fn others_ready(&self, group: &str, except: &str, now: Instant) -> bool {
        self.members(group)
            .iter()
            .any(|m| m.deployment.id != except && m.live.cooling_until(now).is_none())
    }

    /// Counts a failed call of `class` on `member`; returns whether it put the
    /// deployment in cooldown. Failures that are the request's fault (bad
    /// request, context window, content policy) count only when
    /// `allowed_fails_policy` names their class: one client's bad requests
    /// must not cool a deployment down for everyone.
    pub fn failed(&self, member: &Member, class: ErrorClass, now: Instant, reason: &str) -> bool {
        let s = &self.settings;
        let requests_fault = matches!(
            class,
            ErrorClass::BadRequest
                | ErrorClass::ContextWindowExceeded
                | ErrorClass::ContentPolicyViolation
        );
        let counted = !requests_fault || s.allowed_fails_policy.get(class).is_some();
        let never = meridian_bugs::on(meridian_bugs::Bug::NeverCoolDown);
        let cooldown = (counted && !s.disable_cooldowns && !never)
            .then(|| member.deployment.cooldown_time.unwrap_or(s.cooldown_time))
            .filter(|d| !d.is_zero());
        let allowed = s.allowed_fails_for(class, member.deployment.allowed_fails);
        member.live.failed(
            self.minute(now),
            now,
            allowed,
            class.cools_down_at_once(),
            cooldown,
            reason,
        )
    }

    /// Chooses a deployment of `group` for a request wanting `want`.
    pub fn choose(&self, group: &str, want: &Want<'_>, now: Instant, rng: &SeededRng) -> Choice {
        let members = self.members(group);
        if members.is_empty() {
            return Choice::Unknown;
        }
        let unavailable = |retry_after, reason: String| {
            Choice::Unavailable(Unavailable {
                retry_after,
                reason,
            })
        };

        let mut left = members;
        let residency = want.residency.filter(|allowed| {
            // The bug fails open: with every allowed deployment cooling
            // down, the key's regions stop counting.
            !(meridian_bugs::on(meridian_bugs::Bug::IgnoreResidency)
                && left
                    .iter()
                    .filter(|m| within_any(&m.deployment, allowed))
                    .all(|m| m.live.cooling_until(now).is_some()))
        });
        if let Some(allowed) = residency {
            left.retain(|m| within_any(&m.deployment, allowed));
            if left.is_empty() {
                return unavailable(
                    None,
                    format!(
                        "no deployment of `{group}` is in a region this key may use ({})",
                        allowed.join(", ")
                    ),
                );
            }
        }
        if self.settings.enable_tag_filtering {
            left = self.by_tags(left, want.tags);
            if left.is_empty() {
                return unavailable(
                    None,
                    format!(
                        "no deployment of `{group}` serves the request's tags ({})",
                        if want.tags.is_empty() {
                            "none".to_owned()
                        } else {
                            want.tags.join(", ")
                        }
                    ),
                );
            }
        }
        let cooling: Vec<Option<Instant>> =
            left.iter().map(|m| m.live.cooling_until(now)).collect();
        if cooling.iter().all(Option::is_some) {
            let back = cooling.iter().flatten().min().copied().unwrap_or(now);
            return unavailable(
                Some(back.saturating_duration_since(now)),
                format!("every deployment of `{group}` is cooling down after failures"),
            );
        }
        let minute = self.minute(now);
        let ttl = self.settings.latency.ttl;
        let mut ready: Vec<(Member, live::Seen)> = left
            .into_iter()
            .zip(cooling)
            .filter(|(_, c)| c.is_none())
            .map(|(m, _)| {
                let seen = m.live.seen(minute, now, ttl);
                (m, seen)
            })
            .collect();
        if self.settings.strategy == Strategy::UsageBased {
            ready.retain(|(m, s)| {
                m.deployment.rpm.is_none_or(|rpm| s.requests < rpm)
                    && m.deployment
                        .tpm
                        .is_none_or(|tpm| s.tokens.saturating_add(want.tokens) <= tpm)
            });
            if ready.is_empty() {
                let next_minute = self.epoch + Duration::from_secs((minute + 1) * 60);
                return unavailable(
                    Some(next_minute.saturating_duration_since(now)),
                    format!("every deployment of `{group}` is at its rpm/tpm for this minute"),
                );
            }
        }

        // The best tier, then this node's region within it.
        let tier = ready
            .iter()
            .map(|(m, _)| m.deployment.order.unwrap_or(u32::MAX))
            .min();
        let exact_regions = meridian_bugs::on(meridian_bugs::Bug::IgnoreLocality);
        let local = |m: &Member| {
            m.deployment.region_name.as_deref().is_some_and(|r| {
                if exact_regions {
                    return r == self.region;
                }
                region_within(r, &self.region) || region_within(&self.region, r)
            })
        };
        let in_tier: Vec<usize> = (0..ready.len())
            .filter(|&i| Some(ready[i].0.deployment.order.unwrap_or(u32::MAX)) == tier)
            .collect();
        let local_in_tier: Vec<usize> = in_tier
            .iter()
            .copied()
            .filter(|&i| local(&ready[i].0))
            .collect();
        let pool = if local_in_tier.is_empty() {
            in_tier
        } else {
            local_in_tier
        };
        let pick = self.strategy_pick(&pool, &ready, rng);
        Choice::Chosen(ready.swap_remove(pick).0)
    }

    /// Tag routing: deployments sharing the request's tags (any, or all with
    /// `tag_filtering_match_any: false`); an untagged request, or one no
    /// deployment matches, goes to the `default`-tagged deployments — or,
    /// when the group has none, an untagged request to any.
    fn by_tags(&self, members: Vec<Member>, tags: &[String]) -> Vec<Member> {
        let has = |m: &Member, t: &str| m.deployment.tags.iter().any(|d| d == t);
        let matches = |m: &Member| {
            if self.settings.tag_filtering_match_any {
                tags.iter().any(|t| has(m, t))
            } else {
                tags.iter().all(|t| has(m, t))
            }
        };
        if !tags.is_empty() {
            let matched: Vec<Member> = members.iter().filter(|m| matches(m)).cloned().collect();
            if !matched.is_empty() {
                return matched;
            }
        }
        let defaults: Vec<Member> = members
            .iter()
            .filter(|m| has(m, "default"))
            .cloned()
            .collect();
        if !defaults.is_empty() || !tags.is_empty() {
            return defaults;
        }
        members
    }

    /// The strategy's choice among `pool` (indexes into `ready`).
    fn strategy_pick(
        &self,
        pool: &[usize],
        ready: &[(Member, live::Seen)],
        rng: &SeededRng,
    ) -> usize {
        let d = |i: usize| &ready[i].0.deployment;
        let seen = |i: usize| ready[i].1;
        let uniform = |among: &[usize]| among[rng.below(among.len() as u64) as usize];
        if pool.len() == 1 {
            return pool[0];
        }
        match self.settings.strategy {
            Strategy::SimpleShuffle => {
                let weight_of: Option<fn(&Deployment) -> Option<f64>> =
                    if pool.iter().any(|&i| d(i).weight.is_some()) {
                        Some(|d| d.weight)
                    } else if pool.iter().any(|&i| d(i).rpm.is_some()) {
                        Some(|d| d.rpm.map(|v| v as f64))
                    } else if pool.iter().any(|&i| d(i).tpm.is_some()) {
                        Some(|d| d.tpm.map(|v| v as f64))
                    } else {
                        None
                    };
                let Some(weight_of) = weight_of else {
                    return uniform(pool);
                };
                // A deployment without the field gets none of the share.
                let weights: Vec<f64> = pool
                    .iter()
                    .map(|&i| {
                        weight_of(d(i))
                            .filter(|w| w.is_finite() && *w > 0.0)
                            .unwrap_or(0.0)
                    })
                    .collect();
                let total: f64 = weights.iter().sum();
                if total <= 0.0 {
                    return uniform(pool);
                }
                let mut x = unit(rng) * total;
                for (&i, w) in pool.iter().zip(&weights) {
                    if x < *w {
                        return i;
                    }
                    x -= w;
                }
                pool[pool.len() - 1]
            }
            Strategy::LeastBusy => lowest(pool, |i| seen(i).in_flight, uniform),
            Strategy::UsageBased => lowest(pool, |i| seen(i).tokens, uniform),
            Strategy::CostBased => lowest(
                pool,
                |i| {
                    d(i).price.map_or(2 * crate::pricing::PICO_PER_USD, |p| {
                        u128::from(p.input) + u128::from(p.output)
                    })
                },
                uniform,
            ),
            Strategy::LatencyBased => {
                // Untried deployments first (they need a sample), then every
                // deployment within the buffer of the fastest.
                let untried: Vec<usize> = pool
                    .iter()
                    .copied()
                    .filter(|&i| seen(i).latency.is_none())
                    .collect();
                if !untried.is_empty() {
                    return uniform(&untried);
                }
                let latency = |i: usize| seen(i).latency.unwrap_or_default().as_secs_f64();
                let best = pool
                    .iter()
                    .map(|&i| latency(i))
                    .fold(f64::INFINITY, f64::min);
                let limit = best * (1.0 + self.settings.latency.buffer.max(0.0));
                let near: Vec<usize> = pool
                    .iter()
                    .copied()
                    .filter(|&i| latency(i) <= limit)
                    .collect();
                uniform(&near)
            }
        }
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
        self.all().into_iter().map(|m| m.deployment).collect()
    }

    /// Every deployment with its live state.
    pub fn all(&self) -> Vec<Member> {
        let runtime = self.runtime.read().unwrap_or_else(|p| p.into_inner());
        self.configured
            .values()
            .chain(runtime.1.values())
            .flatten()
            .cloned()
            .collect()
    }
}

/// Whether a deployment's region lies within one of `allowed`. A deployment
/// with no region is outside every policy.
fn within_any(d: &Deployment, allowed: &[String]) -> bool {
    d.region_name
        .as_deref()
        .is_some_and(|r| allowed.iter().any(|a| region_within(r, a)))
}

/// A uniform draw in [0, 1).
pub fn unit(rng: &SeededRng) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// The pool's entries with the lowest `key`, one drawn uniformly.
fn lowest<K: Ord + Copy>(
    pool: &[usize],
    key: impl Fn(usize) -> K,
    uniform: impl Fn(&[usize]) -> usize,
) -> usize {
    let Some(min) = pool.iter().map(|&i| key(i)).min() else {
        return 0;
    };
    let ties: Vec<usize> = pool.iter().copied().filter(|&i| key(i) == min).collect();
    uniform(&ties)
}

#[cfg(test)]
mod tests;
