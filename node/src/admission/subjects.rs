//! The entities a request is charged to (key, team, user, customer, key on
//! model, tags), each with its limits resolved, and the counters they name.

use std::sync::Arc;

use meridian_consensus::metadata::{Enforcement, Limits, MetadataState, ModelBudget};
use meridian_replication::Counters;
use meridian_replication::crdt::{CounterId, Metric, PeriodSpec, Scope, Window};

use super::demand::Demand;
use crate::auth::Principal;

/// One entity's limits, resolved (its own, else its budget template's).
pub(super) struct Subject {
    pub(super) scope: Scope,
    pub(super) entity: Arc<str>,
    pub(super) label: String,
    pub(super) rpm: Option<u64>,
    pub(super) tpm: Option<u64>,
    pub(super) parallel: Option<u64>,
    /// `(limit in picodollars, window)`; spend is counted in `window` even
    /// without a limit, so info endpoints can report it.
    pub(super) budget: Option<u64>,
    pub(super) window: Window,
    pub(super) enforcement: Option<Enforcement>,
    /// Where the rights of `strict` limits come from.
    pub(super) home: Option<Arc<str>>,
    /// Which version of these limits (the newer `updated_at` of the entity
    /// and its template): the rights ledger keeps the newest.
    pub(super) version: u64,
}

/// An entity's limits as stored, and their version.
struct Source<'a> {
    limits: &'a Limits,
    updated_at: u64,
}

impl Subject {
    fn new(
        scope: Scope,
        entity: &str,
        label: String,
        own: Source<'_>,
        template: Option<Source<'_>>,
    ) -> Self {
        let limits = own.limits;
        let template_limits = template.as_ref().map(|t| t.limits);
        let pick =
            |f: fn(&Limits) -> Option<u64>| f(limits).or_else(|| template_limits.and_then(f));
        let max_budget = limits
            .max_budget
            .or_else(|| template_limits.and_then(|t| t.max_budget));
        let duration = limits
            .budget_duration
            .clone()
            .or_else(|| template_limits.and_then(|t| t.budget_duration.clone()));
        Self {
            scope,
            entity: entity.into(),
            label,
            rpm: pick(|l| l.rpm_limit),
            tpm: pick(|l| l.tpm_limit),
            parallel: pick(|l| l.max_parallel_requests),
            budget: max_budget.map(crate::pricing::dollars_to_pico),
            window: budget_window(duration.as_deref()),
            enforcement: limits
                .enforcement
                .or_else(|| template_limits.and_then(|t| t.enforcement)),
            home: limits.home_region.as_deref().map(Arc::from),
            version: own.updated_at.max(template.map_or(0, |t| t.updated_at)),
        }
    }

    pub(super) fn id(&self, metric: Metric, window: Window, now_ms: u64) -> CounterId {
        CounterId {
            scope: self.scope,
            entity: self.entity.clone(),
            metric,
            window,
            period: window.index(now_ms),
        }
    }

    /// The region issuing this subject's rights when its limits are
    /// `strict`; `None` when they are `available`. An entity stored without
    /// a home (made before homes existed, and not updated since) is enforced
    /// as `available` until its next update gives it one.
    pub(super) fn strict_home(&self, default: Enforcement) -> Option<Arc<str>> {
        if meridian_bugs::on(meridian_bugs::Bug::StrictWithoutRights) {
            return None;
        }
        match self.enforcement.unwrap_or(default) {
            Enforcement::Strict => self.home.clone(),
            Enforcement::Available => None,
        }
    }
}

/// The window spend is counted in for a `budget_duration` (a duration that
/// does not parse was refused when it was stored; it counts for life here).
pub fn budget_window(duration: Option<&str>) -> Window {
    duration
        .and_then(|d| d.parse::<PeriodSpec>().ok())
        .map_or(Window::Lifetime, Window::Budget)
}

/// The global spend of an entity's current budget period, as the info
/// endpoints report it: the total, each region's share, and the period.
/// `limits` and `budget_id` are the entity's (a template's
/// `budget_duration` applies when the entity sets none, as in admission).
pub fn spend_report(
    counters: &Counters,
    state: &MetadataState,
    entity: &Entity<'_>,
    now_ms: u64,
) -> serde_json::Value {
    let subject = entity.resolved(state);
    let window = subject.window;
    let id = subject.id(Metric::Spend, window, now_ms);
    let reading = counters.reading(&id);
    let usd = |pico: u64| crate::pricing::pico_to_dollars(pico);
    let by_region: serde_json::Map<String, serde_json::Value> = reading
        .by_region
        .iter()
        .map(|(region, pico)| (region.to_string(), usd(*pico).into()))
        .collect();
    let period = window.end(id.period).map(|end| {
        serde_json::json!({
            "start": crate::clock::rfc3339(window.start(id.period) / 1000),
            "end": crate::clock::rfc3339(end / 1000),
        })
    });
    serde_json::json!({
        "spend": usd(reading.value),
        "spend_by_region": by_region,
        "budget_period": period,
    })
}

/// An entity's budget now: its limit (its own, else its template's) and
/// the global spend of its current period, both in picodollars.
pub fn budget_now(
    counters: &Counters,
    state: &MetadataState,
    entity: &Entity<'_>,
    now_ms: u64,
) -> (Option<u64>, u64) {
    let subject = entity.resolved(state);
    let id = subject.id(Metric::Spend, subject.window, now_ms);
    (subject.budget, counters.reading(&id).value)
}

/// An entity whose spend is reported: its scope and id, its own limits
/// and its budget template.
pub struct Entity<'a> {
    pub scope: Scope,
    pub id: &'a str,
    pub limits: &'a Limits,
    pub budget_id: Option<&'a str>,
}

impl Entity<'_> {
    /// Its limits resolved as admission resolves them, so reports read the
    /// counter admission charges.
    fn resolved(&self, state: &MetadataState) -> Subject {
        let template = self
            .budget_id
            .and_then(|b| state.budget(b))
            .map(|t| Source {
                limits: &t.limits,
                updated_at: t.updated_at,
            });
        let own = Source {
            limits: self.limits,
            updated_at: 0,
        };
        Subject::new(self.scope, self.id, String::new(), own, template)
    }
}

/// Every entity a request is charged to, with its limits.
pub(super) fn subjects(
    state: &MetadataState,
    principal: &Principal,
    demand: &Demand,
    model_group: &str,
) -> Vec<Subject> {
    let template = |id: Option<&str>| {
        id.and_then(|b| state.budget(b)).map(|b| Source {
            limits: &b.limits,
            updated_at: b.updated_at,
        })
    };
    let mut out = Vec::new();
    if let Principal::Key(caller) = principal {
        let key = &caller.key;
        let alias = key.key_alias.as_deref().unwrap_or(&key.key_name);
        out.push(Subject::new(
            Scope::Key,
            &key.token,
            format!("key {alias}"),
            Source {
                limits: &key.limits,
                updated_at: key.updated_at,
            },
            template(key.budget_id.as_deref()),
        ));
        let rpm = key.model_rpm_limit.get(model_group).copied();
        let tpm = key.model_tpm_limit.get(model_group).copied();
        let budget = key.model_max_budget.get(model_group);
        if rpm.is_some() || tpm.is_some() || budget.is_some() {
            let limits = Limits {
                rpm_limit: rpm,
                tpm_limit: tpm,
                max_budget: budget.map(|b: &ModelBudget| b.budget_limit),
                budget_duration: budget.and_then(|b| b.time_period.clone()),
                enforcement: key.limits.enforcement,
                home_region: key.limits.home_region.clone(),
                ..Limits::default()
            };
            out.push(Subject::new(
                Scope::KeyModel,
                &format!("{}/{model_group}", key.token),
                format!("key {alias} on model {model_group}"),
                Source {
                    limits: &limits,
                    updated_at: key.updated_at,
                },
                None,
            ));
        }
        if let Some(team) = &caller.team {
            out.push(Subject::new(
                Scope::Team,
                &team.team_id,
                format!("team {}", team.team_id),
                Source {
                    limits: &team.limits,
                    updated_at: team.updated_at,
                },
                template(team.budget_id.as_deref()),
            ));
        }
        if let Some(user) = key.user_id.as_ref().and_then(|u| state.user(u)) {
            out.push(Subject::new(
                Scope::User,
                &user.user_id,
                format!("user {}", user.user_id),
                Source {
                    limits: &user.limits,
                    updated_at: user.updated_at,
                },
                template(user.budget_id.as_deref()),
            ));
        }
    }
    let no_limits = Limits::default();
    for tag in request_tags(state, principal, demand) {
        // A tag without a record has no limits; its spend is counted.
        let record = state.tag(tag);
        let own = record.map_or(
            Source {
                limits: &no_limits,
                updated_at: 0,
            },
            |r| Source {
                limits: &r.limits,
                updated_at: r.updated_at,
            },
        );
        out.push(Subject::new(
            Scope::Tag,
            tag,
            format!("tag {tag}"),
            own,
            template(record.and_then(|r| r.budget_id.as_deref())),
        ));
    }
    if let Some(customer) = demand.customer.as_ref().and_then(|c| state.customer(c)) {
        out.push(Subject::new(
            Scope::Customer,
            &customer.user_id,
            format!("customer {}", customer.user_id),
            Source {
                limits: &customer.limits,
                updated_at: customer.updated_at,
            },
            template(customer.budget_id.as_deref()),
        ));
    }
    out
}

/// The tags a request is charged to, each once: its key's and its team's
/// (set by admins, always counted), and those the request names itself that
/// exist as tag records (a request can name any string; counting only known
/// tags keeps callers from minting counters).
fn request_tags<'a>(
    state: &'a MetadataState,
    principal: &'a Principal,
    demand: &'a Demand,
) -> std::collections::BTreeSet<&'a str> {
    let mut tags = std::collections::BTreeSet::new();
    if let Principal::Key(caller) = principal {
        let team_tags = caller.team.iter().flat_map(|t| t.tags.iter());
        tags.extend(caller.key.tags.iter().chain(team_tags).map(String::as_str));
    }
    tags.extend(
        demand
            .tags
            .iter()
            .map(String::as_str)
            .filter(|t| state.tag(t).is_some()),
    );
    tags
}

/// The tags a request's spend log row lists: all it carries, known or not.
pub(super) fn logged_tags(principal: &Principal, demand: &Demand) -> Vec<String> {
    let mut tags: Vec<String> = demand.tags.clone();
    if let Principal::Key(caller) = principal {
        let team_tags = caller.team.iter().flat_map(|t| t.tags.iter());
        for tag in caller.key.tags.iter().chain(team_tags) {
            if !tags.contains(tag) {
                tags.push(tag.clone());
            }
        }
    }
    tags
}
