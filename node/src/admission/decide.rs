//! The decision, under the counters' lock: every limit of every subject is
//! checked, and the request reserves on all of them or on none.

use std::sync::Arc;

use meridian_consensus::metadata::{Enforcement, MetadataState};
use meridian_replication::crdt::{CounterId, Metric, Window, sliding_estimate};
use meridian_replication::{Counters, Ticket};

use super::demand::{DEFAULT_OUTPUT_RESERVE, Demand, STRICT_OUTPUT_CAP};
use super::refusal::{Exceeded, Headroom, LimitKind};
use super::reservation::{Held, Reservation, Who};
use super::strict::Short;
use super::subjects::{Subject, logged_tags, subjects};
use crate::auth::Principal;
use crate::config::Deployment;
use crate::error::{Error, Result};
use crate::pricing::Cost;
use crate::rights::{self, Ask};
use crate::wire::openai::Usage;

pub(super) enum Step {
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
pub(super) fn try_admit(
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
                None if c.used.saturating_add(c.need) > c.limit
                    && !(c.kind == LimitKind::Budget
                        && meridian_bugs::on(meridian_bugs::Bug::AvailableAdmitsBlindly)) =>
                {
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
