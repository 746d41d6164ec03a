//! Admission: budgets and rate limits, against this node's view of the global
//! counters — memory only, no network or disk wait (but see `strict` below).
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
//!
//! A `strict` limit admits while this node holds enough rights to it
//! (`crate::rights`), granted by the entity's home region:
//! never more than the limit in all. Spending held rights is as local as the
//! `available` check; only a node that runs out waits, bounded, for a grant.
//!
//! Size: past the ~600-line rule, knowingly for now. The admission decision,
//! the reservation and its settlement, and the spend report share one set of
//! counter subjects; splitting them (with unit tests for the decision over the
//! in-memory store) is issue 16, item 5.

use std::sync::Arc;
use std::time::Duration;

use crate::rights::{self, Ask, Rights};
use meridian_consensus::Region;
use meridian_consensus::metadata::{Enforcement, Limits, MetadataState, ModelBudget};
use meridian_replication::crdt::{CounterId, Metric, PeriodSpec, Scope, Window, sliding_estimate};
use meridian_replication::{Counters, Ticket, Txn};

use crate::auth::Principal;
use crate::config::Deployment;
use crate::error::{Error, Result};
use crate::pricing::Cost;
use crate::types::Usage;

/// Output tokens reserved against budgets when a request sets no `max_tokens`.
pub const DEFAULT_OUTPUT_RESERVE: u64 = 256;

/// Under a `strict` token or budget limit, a request that sets no
/// `max_tokens` reserves this many output tokens and is sent to the provider
/// with `max_tokens` set to it, so its cost cannot exceed its reservation.
pub const STRICT_OUTPUT_CAP: u64 = 4096;

/// What a request asks for, as far as limits are concerned.
#[derive(Clone, Debug, Default)]
pub struct Demand {
    /// The request's `user` field: the customer (end user) it is for.
    pub customer: Option<String>,
    /// Estimated prompt tokens.
    pub prompt_tokens: u64,
    /// An upper bound of the prompt's tokens (its text bytes: a token is at
    /// least one byte), reserved under `strict` limits.
    pub prompt_tokens_max: u64,
    /// The request's `max_tokens` (or `max_completion_tokens`).
    pub max_tokens: Option<u64>,
    /// The request's tags (`tags`, `metadata.tags`, `x-litellm-tags`).
    pub tags: Vec<String>,
    /// How many completions the provider generates for it (`n`, or
    /// completions' `best_of`): each may use the whole output limit.
    pub choices: u64,
    /// Already counted against requests-per-minute limits: a retry or
    /// fallback of the same client request is admitted again (the next
    /// deployment's price), but counts once.
    pub counted: bool,
}

/// The most completions a request asks for among `fields` (at least one).
/// Read leniently, as a lenient provider would (`8`, `8.0`, `"8"`): a
/// reservation must never count fewer completions than are made.
fn choices(extra: &serde_json::Map<String, serde_json::Value>, fields: &[&str]) -> u64 {
    fields
        .iter()
        .filter_map(|f| {
            let v = extra.get(*f)?;
            let n = match v {
                serde_json::Value::String(s) => s.trim().parse::<f64>().ok()?,
                other => other.as_f64()?,
            };
            // Saturating: a huge count makes a huge reservation, refused.
            (n.is_finite() && n > 0.0).then(|| n.ceil() as u64)
        })
        .max()
        .unwrap_or(1)
        .max(1)
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
            prompt_tokens_max: Self::upper_bound(text, req.messages.len()),
            max_tokens: req.output_limit().map(u64::from),
            tags: Vec::new(),
            choices: choices(&req.extra, &["n"]),
            counted: false,
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
            prompt_tokens_max: Self::upper_bound(text, n),
            max_tokens: req.max_tokens.map(u64::from),
            tags: Vec::new(),
            choices: choices(&req.extra, &["n", "best_of"]),
            counted: false,
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
            // Token arrays are counted at four "bytes" a token: an upper bound
            // of their length too.
            prompt_tokens_max: Self::upper_bound(text, 0),
            max_tokens: Some(0),
            tags: Vec::new(),
            choices: 1,
            counted: false,
        }
    }

    /// A rough prompt estimate from the text the request carries: about four
    /// bytes per token, plus a little per message. Settlement corrects it.
    pub fn estimate(text_bytes: usize, messages: usize) -> u64 {
        crate::providers::estimate_tokens(text_bytes) + 4 * messages as u64
    }

    /// At least as many tokens as the prompt can have: one per byte of text,
    /// plus the providers' per-message framing. (Images and audio are not
    /// text; their tokens are not bounded here.)
    pub fn upper_bound(text_bytes: usize, messages: usize) -> u64 {
        text_bytes as u64 + 8 * messages as u64 + 8
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
    /// Under a `strict` limit refused while headroom may remain elsewhere:
    /// where it is, or why it could not be had.
    pub strict: Option<String>,
}

impl Exceeded {
    pub fn message(&self) -> String {
        let retry = self
            .retry_after_s
            .map(|s| format!(" Retry after {s}s."))
            .unwrap_or_default();
        let strict = self
            .strict
            .as_ref()
            .map(|note| format!(" {note}"))
            .unwrap_or_default();
        match self.kind {
            LimitKind::Requests => format!(
                "Rate limit exceeded for {}: {} of {} requests per minute used.{strict}{retry}",
                self.subject, self.used, self.limit
            ),
            LimitKind::Tokens => format!(
                "Rate limit exceeded for {}: {} of {} tokens per minute used (this request reserves its prompt and max_tokens).{strict}{retry}",
                self.subject, self.used, self.limit
            ),
            LimitKind::Parallel => format!(
                "Rate limit exceeded for {}: {} of {} parallel requests in flight.{strict}",
                self.subject, self.used, self.limit
            ),
            LimitKind::Budget => format!(
                "Budget exceeded for {}: spend ${} of max_budget ${} (this request reserves its worst-case cost).{strict}{retry}",
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
    enforcement: Option<Enforcement>,
    /// Where the rights of `strict` limits come from.
    home: Option<Arc<str>>,
    /// Which version of these limits (the newer `updated_at` of the entity
    /// and its template): the rights ledger keeps the newest.
    version: u64,
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

    fn id(&self, metric: Metric, window: Window, now_ms: u64) -> CounterId {
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
    fn strict_home(&self, default: Enforcement) -> Option<Arc<str>> {
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
    scope: Scope,
    entity: &str,
    limits: &Limits,
    budget_id: Option<&str>,
    now_ms: u64,
) -> serde_json::Value {
    // The same resolution admission uses, so both read the same counter.
    let template = budget_id.and_then(|b| state.budget(b)).map(|t| Source {
        limits: &t.limits,
        updated_at: t.updated_at,
    });
    let own = Source {
        limits,
        updated_at: 0,
    };
    let subject = Subject::new(scope, entity, String::new(), own, template);
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

/// Every entity a request is charged to, with its limits.
fn subjects(
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
fn logged_tags(principal: &Principal, demand: &Demand) -> Vec<String> {
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
    /// Set on the provider request as its `max_tokens` when the request set
    /// none and a `strict` token or budget limit needs its worst case bounded.
    pub output_cap: Option<u64>,
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
    /// Every tag of the request, its key and its team (LiteLLM's
    /// `request_tags`).
    pub tags: Vec<String>,
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
    /// The call failed: nothing was served, everything is given back —
    /// durably before this returns, since the caller is about to answer (or
    /// to reserve again) on the strength of it. A crash after a failure is
    /// answered must not leave the failed call's reservation counted.
    pub async fn release(mut self) {
        let ticket = self.settle(&Usage::default(), Cost(0));
        self.durable(ticket).await;
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

/// What admission works with: this node's counters, rights and metadata.
pub struct Limiter<'a> {
    pub counters: &'a Arc<Counters>,
    pub rights: &'a Rights,
    pub metadata: &'a Region,
    /// Enforcement where an entity names none (`meridian.enforcement`).
    pub default: Enforcement,
    /// How long a request may wait for `strict` rights.
    pub wait: Duration,
}

/// Rounds of "ask for rights, try again" before a request is refused: other
/// requests on this node may take what one round brought.
const STRICT_ROUNDS: usize = 3;

/// Admits or refuses a request for `deployment`, reserving on admission.
/// Proxy admins and the master key are not limited (their spend is not
/// attributed to any entity either).
///
/// `available` limits are checked against this node's view with no wait.
/// `strict` limits spend rights this node holds; when it holds too few, the
/// request waits (at most `wait`) for the home region's ledger to grant
/// more, and is refused — saying where the headroom is — when it cannot.
pub async fn admit(
    limiter: &Limiter<'_>,
    principal: &Principal,
    demand: &Demand,
    deployment: &Deployment,
    now_ms: u64,
) -> Result<Reservation> {
    for round in 1..=STRICT_ROUNDS {
        let step = limiter.metadata.read(|state| {
            try_admit(
                limiter.counters,
                state,
                principal,
                demand,
                deployment,
                now_ms,
                limiter.default,
            )
        })?;
        let shorts = match step {
            Step::Admitted {
                reservation,
                strict,
            } => {
                if let Some((ticket, asks)) = strict {
                    for ask in &asks {
                        limiter.rights.touch(ask);
                    }
                    // Spent rights must survive a crash before the provider
                    // is called, or a restarted node could spend them again.
                    limiter.counters.durable(ticket).await;
                }
                return Ok(*reservation);
            }
            Step::Short(shorts) => shorts,
        };
        let asking =
            futures_util::future::join_all(shorts.iter().map(|s| limiter.rights.obtain(&s.ask)));
        let Ok(answers) = tokio::time::timeout(limiter.wait, asking).await else {
            let s = &shorts[0];
            return Err(s.refuse(
                limiter.rights,
                format!(
                    "It is enforced strictly, and region {} (which issues its rights) did not grant more within {} ms.",
                    s.ask.home,
                    limiter.wait.as_millis()
                ),
            ));
        };
        for (s, answer) in shorts.iter().zip(answers) {
            match answer {
                Ok(None) => {}
                Ok(Some(reply)) if reply.granted > 0 => {}
                Ok(Some(reply)) => return Err(s.exhausted(limiter.rights, &reply)),
                Err(e) => {
                    // The reason names inter-node addresses: logged, not
                    // told to the client.
                    tracing::debug!(home = %s.ask.home, error = %e, "no rights from the home region");
                    let note = match e {
                        Error::RightsUnreachable { .. } => format!(
                            "It is enforced strictly, and region {} (which issues its rights) could not be reached.",
                            s.ask.home
                        ),
                        _ => format!(
                            "It is enforced strictly, and the rights ledger of region {} is not available.",
                            s.ask.home
                        ),
                    };
                    return Err(s.refuse(limiter.rights, note));
                }
            }
        }
        if round == STRICT_ROUNDS {
            return Err(shorts[0].refuse(
                limiter.rights,
                "It is enforced strictly, and other requests on this node took the rights it obtained.".into(),
            ));
        }
    }
    Err(Error::Internal("admission ended without an answer".into()))
}

/// A `strict` limit this node holds too few rights for.
struct Short {
    ask: Ask,
    refusal: Exceeded,
}

impl Short {
    /// Rights as the limit counts them: dollars for budgets.
    fn amount(&self, rights: u64) -> String {
        match self.refusal.kind {
            LimitKind::Budget => format!("${}", Cost(u128::from(rights))),
            _ => rights.to_string(),
        }
    }

    /// The refusal, with `note` saying why the rights could not be had.
    fn refuse(&self, rights: &Rights, note: String) -> Error {
        let held = rights.held(&self.ask.id);
        let mut refusal = self.refusal.clone();
        refusal.strict = Some(format!(
            "{note} This node holds {} of the {} this request needs.",
            self.amount(held),
            self.amount(self.ask.need)
        ));
        Error::LimitExceeded(Box::new(refusal))
    }

    /// The ledger had too little left to grant: the limit is used up, or its
    /// rights are held by other regions' nodes.
    fn exhausted(
        &self,
        rights: &Rights,
        reply: &meridian_consensus::metadata::GrantReply,
    ) -> Error {
        let elsewhere: Vec<String> = rights
            .unspent_elsewhere(&self.ask.id, reply)
            .into_iter()
            .map(|(region, held)| format!("{region} ({})", self.amount(held)))
            .collect();
        if elsewhere.is_empty() {
            let mut refusal = self.refusal.clone();
            refusal.used = refusal.used.max(reply.limit.saturating_sub(reply.pool));
            return Error::LimitExceeded(Box::new(refusal));
        }
        self.refuse(
            rights,
            format!(
                "It is enforced strictly: {} of {} is unissued, and unspent rights are held by other nodes, in {} (they are given back after a few seconds unused).",
                self.amount(reply.pool),
                self.amount(reply.limit),
                elsewhere.join(", ")
            ),
        )
    }
}

enum Step {
    /// Reserved. Under `strict` limits: the change to make durable before
    /// the call, and the rights spent.
    Admitted {
        reservation: Box<Reservation>,
        strict: Option<(Ticket, Vec<Ask>)>,
    },
    /// Nothing reserved: these `strict` limits need rights first.
    Short(Vec<Short>),
}

/// What the check under the counters' lock found.
enum Checked {
    /// Reserved: what is held, the headroom left, the `strict` rights spent.
    Reserved(Vec<Held>, Headroom, Vec<Ask>),
    Short(Vec<Short>),
}

/// One limit a request is checked against.
struct Check<'a> {
    subject: &'a Subject,
    kind: LimitKind,
    id: CounterId,
    need: u64,
    limit: u64,
    /// The global use as this node sees it.
    used: u64,
    retry_after_s: Option<u64>,
    home: Option<Arc<str>>,
}

/// Checks every limit and reserves if all admit, atomically.
fn try_admit(
    counters: &Arc<Counters>,
    state: &MetadataState,
    principal: &Principal,
    demand: &Demand,
    deployment: &Deployment,
    now_ms: u64,
    default: Enforcement,
) -> Result<Step> {
    let who = match principal {
        Principal::Master => Who::default(),
        Principal::Key(c) => Who {
            api_key: c.key.token.clone(),
            team_id: c.key.team_id.clone(),
            user_id: c.key.user_id.clone(),
            ..Who::default()
        },
    };
    let subjects = if principal.is_admin() {
        Vec::new()
    } else {
        subjects(state, principal, demand, &deployment.model_group)
    };
    // A strict token or budget limit needs the worst case bounded: the
    // prompt's upper bound, and an output cap when the request sets none.
    let bounded = subjects
        .iter()
        .any(|s| s.strict_home(default).is_some() && (s.tpm.is_some() || s.budget.is_some()));
    let (prompt, output, output_cap) = match (bounded, demand.max_tokens) {
        (false, max) => (
            demand.prompt_tokens,
            max.unwrap_or(DEFAULT_OUTPUT_RESERVE),
            None,
        ),
        (true, Some(max)) => (demand.prompt_tokens_max, max, None),
        (true, None) => (
            demand.prompt_tokens_max,
            STRICT_OUTPUT_CAP,
            Some(STRICT_OUTPUT_CAP),
        ),
    };
    // Each of the request's completions may use the whole output limit.
    let output = output.saturating_mul(demand.choices);
    let worst = Usage {
        prompt_tokens: prompt,
        completion_tokens: output,
        ..Usage::default()
    };
    let mut reservation = Reservation {
        counters: counters.clone(),
        held: Vec::new(),
        headroom: Headroom::default(),
        who: Who {
            end_user: demand.customer.clone(),
            tags: logged_tags(principal, demand),
            ..who
        },
        worst,
        worst_cost: deployment.price.map_or(Cost(0), |p| p.cost(&worst)),
        output_cap,
        settled: false,
    };
    if subjects.is_empty() {
        return Ok(Step::Admitted {
            reservation: Box::new(reservation),
            strict: None,
        });
    }
    let tokens = match (bounded, demand.max_tokens) {
        (false, max) => demand
            .prompt_tokens
            .saturating_add(max.unwrap_or(0).saturating_mul(demand.choices)),
        (true, _) => prompt.saturating_add(output),
    };
    let cost = u64::try_from(reservation.worst_cost.0).unwrap_or(u64::MAX);
    let window = Window::Rate.index(now_ms);
    let reset_s = (Window::Rate.start(window + 1) - now_ms).div_ceil(1000);
    let (outcome, ticket) = counters.update(|t| -> std::result::Result<_, Box<Exceeded>> {
        let mut headroom = Headroom {
            reset_s,
            ..Headroom::default()
        };
        let mut checks = Vec::new();
        for s in &subjects {
            let home = s.strict_home(default);
            // Available rate limits read the sliding estimate; strict ones
            // hold exactly within each calendar minute.
            let rate_used = |metric| {
                let current = s.id(metric, Window::Rate, now_ms);
                let used = match home {
                    Some(_) => t.value(&current),
                    None => {
                        let mut previous = current.clone();
                        previous.period = current.period.saturating_sub(1);
                        sliding_estimate(t.value(&current), t.value(&previous), now_ms)
                    }
                };
                (current, used)
            };
            let check = |kind, id: CounterId, need, limit, used, retry_after_s| Check {
                subject: s,
                kind,
                id,
                need,
                limit,
                used,
                retry_after_s,
                home: home.clone(),
            };
            if let Some(rpm) = s.rpm {
                let (id, used) = rate_used(Metric::Requests);
                Headroom::note(
                    &mut headroom.requests,
                    rpm,
                    rpm.saturating_sub(used.saturating_add(1)),
                );
                let need = u64::from(!demand.counted);
                checks.push(check(
                    LimitKind::Requests,
                    id,
                    need,
                    rpm,
                    used,
                    Some(reset_s),
                ));
            }
            if let Some(tpm) = s.tpm {
                let (id, used) = rate_used(Metric::Tokens);
                Headroom::note(
                    &mut headroom.tokens,
                    tpm,
                    tpm.saturating_sub(used.saturating_add(tokens)),
                );
                checks.push(check(
                    LimitKind::Tokens,
                    id,
                    tokens,
                    tpm,
                    used,
                    Some(reset_s),
                ));
            }
            if let Some(max) = s.parallel {
                let id = s.id(Metric::Parallel, Window::Lifetime, now_ms);
                let used = t.value(&id);
                checks.push(check(LimitKind::Parallel, id, 1, max, used, Some(1)));
            }
            if let Some(budget) = s.budget {
                let id = s.id(Metric::Spend, s.window, now_ms);
                let used = t.value(&id);
                let retry = s
                    .window
                    .end(id.period)
                    .map(|end| (end - now_ms).div_ceil(1000));
                checks.push(check(LimitKind::Budget, id, cost, budget, used, retry));
            }
        }
        // Check everything first: a refused request reserves nothing.
        let mut shorts = Vec::new();
        let mut spent = Vec::new();
        for c in &checks {
            let refusal = |headroom: Headroom| Exceeded {
                kind: c.kind,
                subject: c.subject.label.clone(),
                limit: c.limit,
                used: c.used,
                retry_after_s: c.retry_after_s,
                headroom,
                strict: None,
            };
            let mut refused = headroom;
            match c.kind {
                LimitKind::Requests => refused.requests = Some((c.limit, 0)),
                LimitKind::Tokens => {
                    refused.tokens = Some((c.limit, c.limit.saturating_sub(c.used)))
                }
                _ => {}
            }
            match &c.home {
                None if c.used.saturating_add(c.need) > c.limit => {
                    return Err(Box::new(refusal(refused)));
                }
                None => {}
                // More than the whole limit can never be admitted.
                Some(_) if c.need > c.limit => return Err(Box::new(refusal(refused))),
                Some(home) => {
                    let ask = Ask {
                        id: c.id.clone(),
                        home: home.clone(),
                        need: c.need,
                        limit: c.limit,
                        limit_version: c.subject.version,
                    };
                    if rights::available(t, &c.id) >= c.need {
                        spent.push(ask);
                    } else {
                        shorts.push(Short {
                            ask,
                            refusal: refusal(refused),
                        });
                    }
                }
            }
        }
        if !shorts.is_empty() {
            return Ok(Checked::Short(shorts));
        }
        let mut held = Vec::new();
        for c in &checks {
            t.add(&c.id, c.need, 0);
            match c.kind {
                LimitKind::Requests => {}
                LimitKind::Tokens => held.push(Held::Tokens(c.id.clone(), c.need)),
                LimitKind::Parallel => held.push(Held::Parallel(c.id.clone())),
                LimitKind::Budget => held.push(Held::Spend(c.id.clone(), c.need)),
            }
        }
        // Spend is counted for every subject, limited or not.
        for s in subjects.iter().filter(|s| s.budget.is_none()) {
            held.push(Held::Spend(s.id(Metric::Spend, s.window, now_ms), 0));
        }
        Ok(Checked::Reserved(held, headroom, spent))
    });
    match outcome {
        Ok(Checked::Short(shorts)) => {
            reservation.settled = true;
            Ok(Step::Short(shorts))
        }
        Ok(Checked::Reserved(held, headroom, spent)) => {
            reservation.held = held;
            reservation.headroom = headroom;
            let strict = (!spent.is_empty()).then_some((ticket, spent));
            Ok(Step::Admitted {
                reservation: Box::new(reservation),
                strict,
            })
        }
        Err(exceeded) => {
            reservation.settled = true;
            Err(Error::LimitExceeded(exceeded))
        }
    }
}
