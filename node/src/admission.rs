//! Admission: budgets and rate limits, against this node's view of the global
//! counters — memory only, no network or disk wait.
//!
//! Sits after routing (the chosen deployment prices the reservation) and
//! before the provider call. A request reserves its worst case on every
//! counter that limits it — one request, its prompt estimate plus `max_tokens`
//! tokens, their price — and settles with the real usage when the answer or
//! stream ends, or when the client goes away. Checks and reservation happen
//! under one lock, so two requests on one node never both take the last unit.
//!
//! A limit admits while `view + reservation ≤ limit`, `view` being this
//! node's merged value. Other nodes' admissions reach this node one gossip
//! interval plus one network delay later: that is the overshoot bound of
//! `available` mode (see the README's guarantees).

use std::sync::Arc;

use meridian_consensus::metadata::{Limits, MetadataState, ModelBudget};
use meridian_replication::crdt::{CounterId, Metric, PeriodSpec, Scope, Window, sliding_estimate};
use meridian_replication::{Counters, Ticket, Txn};

use crate::auth::Principal;
use crate::config::Deployment;
use crate::error::{Error, Result};
use crate::pricing::Cost;
use crate::types::Usage;

/// Output tokens reserved against budgets when a request sets no `max_tokens`.
pub const DEFAULT_OUTPUT_RESERVE: u64 = 256;

/// What a request asks for, as far as limits are concerned.
#[derive(Clone, Debug, Default)]
pub struct Demand {
    /// The request's `user` field: the customer (end user) it is for.
    pub customer: Option<String>,
    /// Estimated prompt tokens.
    pub prompt_tokens: u64,
    /// The request's `max_tokens` (or `max_completion_tokens`).
    pub max_tokens: Option<u64>,
}

impl Demand {
    pub fn for_chat(req: &crate::types::ChatRequest) -> Self {
        let text: usize = req
            .messages
            .iter()
            .map(|m| m.content.as_ref().map_or(0, |c| c.text_len()))
            .sum();
        Self {
            customer: req.user.clone(),
            prompt_tokens: Self::estimate(text, req.messages.len()),
            max_tokens: req.output_limit().map(u64::from),
        }
    }

    pub fn for_completion(req: &crate::types::CompletionRequest) -> Self {
        let (text, n) = match &req.prompt {
            crate::types::Prompt::One(p) => (p.len(), 1),
            crate::types::Prompt::Many(ps) => (ps.iter().map(String::len).sum(), ps.len()),
        };
        Self {
            customer: req.user.clone(),
            prompt_tokens: Self::estimate(text, n),
            max_tokens: req.max_tokens.map(u64::from),
        }
    }

    pub fn for_embeddings(req: &crate::types::EmbeddingsRequest) -> Self {
        let text = match &req.input {
            serde_json::Value::String(s) => s.len(),
            serde_json::Value::Array(items) => items
                .iter()
                .map(|i| match i {
                    serde_json::Value::String(s) => s.len(),
                    // Token arrays: about four bytes per token.
                    serde_json::Value::Array(tokens) => tokens.len() * 4,
                    _ => 4,
                })
                .sum(),
            _ => 0,
        };
        Self {
            customer: req.user.clone(),
            prompt_tokens: Self::estimate(text, 0),
            max_tokens: Some(0),
        }
    }

    /// A rough prompt estimate from the text the request carries: about four
    /// bytes per token, plus a little per message. Settlement corrects it.
    pub fn estimate(text_bytes: usize, messages: usize) -> u64 {
        (text_bytes as u64).div_ceil(4) + 4 * messages as u64
    }
}

/// Which limit refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitKind {
    Requests,
    Tokens,
    Parallel,
    Budget,
}

/// A refusal, with what the 429 says and its headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exceeded {
    pub kind: LimitKind,
    /// `key sk-...abcd`, `team t-1`, `user u-1`, `customer c-1`.
    pub subject: String,
    pub limit: u64,
    pub used: u64,
    pub retry_after_s: Option<u64>,
    pub headroom: Headroom,
}

impl Exceeded {
    pub fn message(&self) -> String {
        let retry = self
            .retry_after_s
            .map(|s| format!(" Retry after {s}s."))
            .unwrap_or_default();
        match self.kind {
            LimitKind::Requests => format!(
                "Rate limit exceeded for {}: {} of {} requests per minute used.{retry}",
                self.subject, self.used, self.limit
            ),
            LimitKind::Tokens => format!(
                "Rate limit exceeded for {}: {} of {} tokens per minute used (this request reserves its prompt and max_tokens).{retry}",
                self.subject, self.used, self.limit
            ),
            LimitKind::Parallel => format!(
                "Rate limit exceeded for {}: {} of {} parallel requests in flight.",
                self.subject, self.used, self.limit
            ),
            LimitKind::Budget => format!(
                "Budget exceeded for {}: spend ${} of max_budget ${} (this request reserves its worst-case cost).{retry}",
                self.subject,
                Cost(u128::from(self.used)),
                Cost(u128::from(self.limit))
            ),
        }
    }
}

/// The tightest request and token limits that applied, for the
/// `x-ratelimit-*` headers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Headroom {
    pub requests: Option<(u64, u64)>,
    pub tokens: Option<(u64, u64)>,
    /// Seconds until the current rate window ends.
    pub reset_s: u64,
}

impl Headroom {
    fn note(slot: &mut Option<(u64, u64)>, limit: u64, remaining: u64) {
        if slot.is_none_or(|(_, r)| remaining < r) {
            *slot = Some((limit, remaining));
        }
    }
}

/// One entity's limits, resolved (its own, else its budget template's).
struct Subject {
    scope: Scope,
    entity: Arc<str>,
    label: String,
    rpm: Option<u64>,
    tpm: Option<u64>,
    parallel: Option<u64>,
    /// `(limit in picodollars, window)`; spend is counted in `window` even
    /// without a limit, so info endpoints can report it.
    budget: Option<u64>,
    window: Window,
}

impl Subject {
    fn new(
        scope: Scope,
        entity: &str,
        label: String,
        limits: &Limits,
        template: Option<&Limits>,
    ) -> Self {
        let pick = |f: fn(&Limits) -> Option<u64>| f(limits).or_else(|| template.and_then(f));
        let max_budget = limits
            .max_budget
            .or_else(|| template.and_then(|t| t.max_budget));
        let duration = limits
            .budget_duration
            .clone()
            .or_else(|| template.and_then(|t| t.budget_duration.clone()));
        Self {
            scope,
            entity: entity.into(),
            label,
            rpm: pick(|l| l.rpm_limit),
            tpm: pick(|l| l.tpm_limit),
            parallel: pick(|l| l.max_parallel_requests),
            budget: max_budget.map(usd_to_pico),
            window: budget_window(duration.as_deref()),
        }
    }

    fn id(&self, metric: Metric, window: Window, now_ms: u64) -> CounterId {
        CounterId {
            scope: self.scope,
            entity: self.entity.clone(),
            metric,
            window,
            period: window.index(now_ms),
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

fn usd_to_pico(usd: f64) -> u64 {
    let pico = (usd.max(0.0) * 1e12).round();
    if pico >= u64::MAX as f64 {
        u64::MAX
    } else {
        pico as u64
    }
}

/// The global spend of an entity's current budget period, as the info
/// endpoints report it: the total, each region's share, and the period.
/// `limits` and `budget_id` are the entity's (a template's
/// `budget_duration` applies when the entity sets none, as in admission).
pub fn spend_report(
    counters: &Counters,
    state: &MetadataState,
    scope: Scope,
    entity: &str,
    limits: &Limits,
    budget_id: Option<&str>,
    now_ms: u64,
) -> serde_json::Value {
    // The same resolution admission uses, so both read the same counter.
    let template = budget_id.and_then(|b| state.budget(b)).map(|t| &t.limits);
    let subject = Subject::new(scope, entity, String::new(), limits, template);
    let window = subject.window;
    let id = subject.id(Metric::Spend, window, now_ms);
    let reading = counters.reading(&id);
    let usd = |pico: u64| pico as f64 / 1e12;
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

/// Every entity a request is charged to, with its limits.
fn subjects(
    state: &MetadataState,
    principal: &Principal,
    demand: &Demand,
    model_group: &str,
) -> Vec<Subject> {
    let template = |id: &Option<String>| {
        id.as_ref()
            .and_then(|b| state.budget(b))
            .map(|b| b.limits.clone())
    };
    let mut out = Vec::new();
    if let Principal::Key(caller) = principal {
        let key = &caller.key;
        out.push(Subject::new(
            Scope::Key,
            &key.token,
            format!("key {}", key.key_alias.as_deref().unwrap_or(&key.key_name)),
            &key.limits,
            template(&key.budget_id).as_ref(),
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
                ..Limits::default()
            };
            out.push(Subject::new(
                Scope::KeyModel,
                &format!("{}/{model_group}", key.token),
                format!(
                    "key {} on model {model_group}",
                    key.key_alias.as_deref().unwrap_or(&key.key_name)
                ),
                &limits,
                None,
            ));
        }
        // Tags have no limits of their own; their spend is counted.
        let team_tags = caller.team.iter().flat_map(|t| t.tags.iter());
        let tags: std::collections::BTreeSet<&String> = key.tags.iter().chain(team_tags).collect();
        for tag in tags {
            out.push(Subject::new(
                Scope::Tag,
                tag,
                format!("tag {tag}"),
                &Limits::default(),
                None,
            ));
        }
        if let Some(team) = &caller.team {
            out.push(Subject::new(
                Scope::Team,
                &team.team_id,
                format!("team {}", team.team_id),
                &team.limits,
                template(&team.budget_id).as_ref(),
            ));
        }
        if let Some(user) = key.user_id.as_ref().and_then(|u| state.user(u)) {
            out.push(Subject::new(
                Scope::User,
                &user.user_id,
                format!("user {}", user.user_id),
                &user.limits,
                template(&user.budget_id).as_ref(),
            ));
        }
    }
    if let Some(customer) = demand.customer.as_ref().and_then(|c| state.customer(c)) {
        out.push(Subject::new(
            Scope::Customer,
            &customer.user_id,
            format!("customer {}", customer.user_id),
            &customer.limits,
            template(&customer.budget_id).as_ref(),
        ));
    }
    out
}

/// What a request holds on the counters until it settles.
pub struct Reservation {
    counters: Arc<Counters>,
    held: Vec<Held>,
    pub headroom: Headroom,
    /// Who the request is charged to, for its spend log row.
    pub who: Who,
    /// The worst case reserved, and its price: what a request is charged when
    /// it ends before the provider reported usage.
    pub worst: Usage,
    worst_cost: Cost,
    settled: bool,
}

/// The entities a request is charged to.
#[derive(Clone, Debug, Default)]
pub struct Who {
    /// SHA-256 of the virtual key; empty for the master key.
    pub api_key: String,
    pub team_id: Option<String>,
    pub user_id: Option<String>,
    pub end_user: Option<String>,
}

enum Held {
    Tokens(CounterId, u64),
    Spend(CounterId, u64),
    Parallel(CounterId),
}

impl Reservation {
    /// Waits until the change behind `ticket` is durable.
    pub async fn durable(&self, ticket: Ticket) {
        self.counters.durable(ticket).await;
    }

    /// Replaces the estimates with the real usage and cost; returns the ticket
    /// to wait on before acknowledging the cost to the client.
    pub fn settle(&mut self, usage: &Usage, cost: Cost) -> Ticket {
        self.settled = true;
        let tokens = usage.total_tokens();
        let cost = u64::try_from(cost.0).unwrap_or(u64::MAX);
        let held = std::mem::take(&mut self.held);
        let (_, ticket) = self.counters.update(|t| {
            for h in &held {
                match h {
                    Held::Tokens(id, reserved) => correct(t, id, *reserved, tokens),
                    Held::Spend(id, reserved) => correct(t, id, *reserved, cost),
                    Held::Parallel(id) => t.add(id, 0, 1),
                }
            }
        });
        ticket
    }
}

/// Counts `actual` where `reserved` was counted.
fn correct(t: &mut Txn<'_>, id: &CounterId, reserved: u64, actual: u64) {
    if actual > reserved {
        t.add(id, actual - reserved, 0);
    } else {
        t.add(id, 0, reserved - actual);
    }
}

impl Reservation {
    /// The call failed: nothing was served, everything is given back.
    pub fn release(mut self) {
        let _ = self.settle(&Usage::default(), Cost(0));
    }
}

impl Drop for Reservation {
    /// Dropped unsettled, the request was abandoned while the provider was
    /// working on it (the client went away): the provider may bill it, so it
    /// is charged its reservation.
    fn drop(&mut self) {
        if !self.settled {
            let worst = self.worst;
            let _ = self.settle(&worst, self.worst_cost);
        }
    }
}

/// Admits or refuses a request for `deployment`, reserving on admission.
/// Proxy admins and the master key are not limited (their spend is not
/// attributed to any entity either).
pub fn admit(
    counters: &Arc<Counters>,
    state: &MetadataState,
    principal: &Principal,
    demand: &Demand,
    deployment: &Deployment,
    now_ms: u64,
) -> Result<Reservation> {
    let who = match principal {
        Principal::Master => Who::default(),
        Principal::Key(c) => Who {
            api_key: c.key.token.clone(),
            team_id: c.key.team_id.clone(),
            user_id: c.key.user_id.clone(),
            end_user: None,
        },
    };
    let worst = Usage {
        prompt_tokens: demand.prompt_tokens,
        completion_tokens: demand.max_tokens.unwrap_or(DEFAULT_OUTPUT_RESERVE),
        ..Usage::default()
    };
    let mut reservation = Reservation {
        counters: counters.clone(),
        held: Vec::new(),
        headroom: Headroom::default(),
        who: Who {
            end_user: demand.customer.clone(),
            ..who
        },
        worst,
        worst_cost: deployment.price.map_or(Cost(0), |p| p.cost(&worst)),
        settled: false,
    };
    if principal.is_admin() {
        return Ok(reservation);
    }
    let subjects = subjects(state, principal, demand, &deployment.model_group);
    if subjects.is_empty() {
        return Ok(reservation);
    }
    let tokens = demand
        .prompt_tokens
        .saturating_add(demand.max_tokens.unwrap_or(0));
    let cost = u64::try_from(reservation.worst_cost.0).unwrap_or(u64::MAX);
    let window = Window::Rate.index(now_ms);
    let reset_s = (Window::Rate.start(window + 1) - now_ms).div_ceil(1000);
    let rate = |s: &Subject, metric: Metric| {
        let current = s.id(metric, Window::Rate, now_ms);
        let mut previous = current.clone();
        previous.period = current.period.saturating_sub(1);
        (current, previous)
    };
    let (outcome, _) = counters.update(
        |t| -> std::result::Result<(Vec<Held>, Headroom), Exceeded> {
            let mut headroom = Headroom {
                reset_s,
                ..Headroom::default()
            };
            let refuse = |kind, s: &Subject, limit, used, retry_after_s, headroom| Exceeded {
                kind,
                subject: s.label.clone(),
                limit,
                used,
                retry_after_s,
                headroom,
            };
            // Check everything first: a refused request reserves nothing.
            for s in &subjects {
                if let Some(rpm) = s.rpm {
                    let (cur, prev) = rate(s, Metric::Requests);
                    let used = sliding_estimate(t.value(&cur), t.value(&prev), now_ms);
                    Headroom::note(
                        &mut headroom.requests,
                        rpm,
                        rpm.saturating_sub(used.saturating_add(1)),
                    );
                    if used.saturating_add(1) > rpm {
                        headroom.requests = Some((rpm, 0));
                        return Err(refuse(
                            LimitKind::Requests,
                            s,
                            rpm,
                            used,
                            Some(reset_s),
                            headroom,
                        ));
                    }
                }
                if let Some(tpm) = s.tpm {
                    let (cur, prev) = rate(s, Metric::Tokens);
                    let used = sliding_estimate(t.value(&cur), t.value(&prev), now_ms);
                    Headroom::note(
                        &mut headroom.tokens,
                        tpm,
                        tpm.saturating_sub(used.saturating_add(tokens)),
                    );
                    if used.saturating_add(tokens) > tpm {
                        headroom.tokens = Some((tpm, tpm.saturating_sub(used)));
                        return Err(refuse(
                            LimitKind::Tokens,
                            s,
                            tpm,
                            used,
                            Some(reset_s),
                            headroom,
                        ));
                    }
                }
                if let Some(max) = s.parallel {
                    let used = t.value(&s.id(Metric::Parallel, Window::Lifetime, now_ms));
                    if used.saturating_add(1) > max {
                        return Err(refuse(LimitKind::Parallel, s, max, used, Some(1), headroom));
                    }
                }
                if let Some(budget) = s.budget {
                    let used = t.value(&s.id(Metric::Spend, s.window, now_ms));
                    if used.saturating_add(cost) > budget {
                        let retry = s
                            .window
                            .end(s.window.index(now_ms))
                            .map(|end| (end - now_ms).div_ceil(1000));
                        return Err(refuse(LimitKind::Budget, s, budget, used, retry, headroom));
                    }
                }
            }
            let mut held = Vec::new();
            for s in &subjects {
                if s.rpm.is_some() {
                    t.add(&rate(s, Metric::Requests).0, 1, 0);
                }
                if s.tpm.is_some() {
                    let id = rate(s, Metric::Tokens).0;
                    t.add(&id, tokens, 0);
                    held.push(Held::Tokens(id, tokens));
                }
                if s.parallel.is_some() {
                    let id = s.id(Metric::Parallel, Window::Lifetime, now_ms);
                    t.add(&id, 1, 0);
                    held.push(Held::Parallel(id));
                }
                // Spend is counted for every subject; reserved only where limited.
                let id = s.id(Metric::Spend, s.window, now_ms);
                let reserve = if s.budget.is_some() { cost } else { 0 };
                t.add(&id, reserve, 0);
                held.push(Held::Spend(id, reserve));
            }
            Ok((held, headroom))
        },
    );
    match outcome {
        Ok((held, headroom)) => {
            reservation.held = held;
            reservation.headroom = headroom;
            Ok(reservation)
        }
        Err(exceeded) => {
            reservation.settled = true;
            Err(Error::LimitExceeded(Box::new(exceeded)))
        }
    }
}
