//! The request lifecycle, in order. Each stage says why it sits where it does.
//!
//! ```text
//! authenticate (api extractor) → route: model group → deployment
//!   → admit: budgets and rate limits; reserve the worst case (admission.rs)
//!   → call: provider adapter over the injected upstream client
//!   → settle: usage → exact cost → counters (on completion, stream end or
//!     disconnect); the cost is acknowledged once it is durable
//! ```
//!
//! Routing comes before admission because the chosen deployment prices the
//! reservation. Nothing here waits on another node: routing and admission read
//! memory, and the only I/O is the upstream call and one batched local write.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::time::Instant;

use crate::admission::{self, Demand, Reservation};
use crate::auth::Principal;
use crate::config::Deployment;
use crate::error::{Error, Result};
use crate::node::Node;
use crate::pricing::Cost;
use crate::providers::{CallContext, Provider};
use crate::router::{Choice, ErrorClass, InFlight, Want};
use crate::types::Usage;

/// Per-request facts the stages share.
pub struct RequestCtx {
    pub request_id: String,
    pub principal: Principal,
    /// When the gateway received the request.
    pub received: Instant,
    /// Tags from the `x-litellm-tags` header (the body's are added to the
    /// request's [`Demand`]).
    pub tags: Vec<String>,
}

/// What a request's body says about routing, taken out of it (it is
/// forwarded without them): its tags (after the header's) and its own
/// `fallbacks`.
pub fn routing_fields(
    ctx: &RequestCtx,
    extra: &mut serde_json::Map<String, serde_json::Value>,
) -> Result<(Vec<String>, Option<Vec<String>>)> {
    let mut tags = ctx.tags.clone();
    crate::tags::take_from_body(extra, &mut tags)?;
    let fallbacks = crate::config::request_fallbacks(extra)?;
    Ok((tags, fallbacks))
}

/// The longest `user` (customer id) a request may name: it is logged with
/// every spend row.
const MAX_USER_BYTES: usize = 256;

/// Refuses a request for a blocked customer (the request's `user`), and
/// narrows the caller's residency by the customer's `allowed_model_region`.
fn customer_policy(
    node: &Node,
    demand: &Demand,
    residency: Option<Vec<String>>,
) -> Result<Option<Vec<String>>> {
    let Some(id) = demand.customer.as_deref() else {
        return Ok(residency);
    };
    if id.len() > MAX_USER_BYTES || id.chars().any(char::is_control) {
        return Err(Error::invalid(
            format!("`user` must be at most {MAX_USER_BYTES} bytes, without control characters"),
            Some("user"),
        ));
    }
    let (blocked, region) = node.metadata.read(|s| {
        s.customer(id)
            .map(|c| (c.blocked, c.allowed_model_region.clone()))
            .unwrap_or_default()
    });
    if blocked {
        return Err(Error::Forbidden(format!("customer `{id}` is blocked")));
    }
    Ok(match (residency, region) {
        (Some(r), Some(c)) => Some(crate::auth::intersect_regions(&r, &[c])),
        (r, c) => r.or(c.map(|c| vec![c])),
    })
}

/// The extra attempts a request took (`x-meridian-attempted-retries`,
/// `x-meridian-attempted-fallbacks`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tries {
    pub retries: u32,
    pub fallbacks: u32,
}

/// The call that answered, held until its answer is settled: in flight on
/// its deployment (for `least-busy`) until then, and its token estimate
/// corrected (for `usage-based-routing`).
pub struct Attempt {
    _in_flight: InFlight,
    live: Arc<crate::router::Live>,
    minute: u64,
    estimated: u64,
}

impl Attempt {
    fn settled(&self, tokens: u64) {
        self.live
            .correct_tokens(self.minute, self.estimated, tokens);
    }
}

/// The result of the call stage, with what the edge needs for its headers.
pub struct Called<T> {
    pub deployment: Arc<Deployment>,
    pub output: T,
    /// Time spent waiting on the provider (for the overhead header).
    pub upstream_time: Duration,
    /// What the request holds on the counters; settled with the answer.
    pub reservation: Reservation,
    pub attempt: Attempt,
    pub tries: Tries,
}

/// Route, admit, call — and on failure retry, then fall back, as
/// `router_settings` says. Routing comes first because the deployment decides
/// the adapter, the URL, the timeouts and the price.
///
/// A failed attempt gives its reservation back before the next is admitted
/// (on the next deployment's price); the client request counts once against
/// requests-per-minute limits. Only the response head is awaited here: once
/// a stream is handed to the client, nothing is retried.
pub async fn route_and_call<T, F>(
    node: &Node,
    ctx: &RequestCtx,
    model: &str,
    demand: &Demand,
    request_fallbacks: Option<&[String]>,
    call: F,
) -> Result<Called<T>>
where
    F: for<'a> Fn(&'a dyn Provider, CallContext<'a>) -> BoxFuture<'a, Result<T>>,
{
    if !ctx.principal.may_use_model(model) {
        return Err(Error::ModelNotAllowed {
            model: model.to_owned(),
            allowed: ctx.principal.allowed_models().join(", "),
        });
    }
    let residency = customer_policy(node, demand, ctx.principal.residency())?;
    node.refresh_models();
    let router = &node.router;
    let settings = router.settings();
    let want = Want {
        tags: &demand.tags,
        residency: residency.as_deref(),
        tokens: demand.prompt_tokens,
    };
    let limiter = admission::Limiter {
        counters: &node.counters,
        rights: &node.rights,
        metadata: &node.metadata,
        default: node.default_enforcement,
        wait: node.strict_wait,
    };
    let mut tries = Tries::default();
    let mut again: Option<Demand> = None;
    // The requested group, then (once it has failed) its fallbacks.
    let mut chain: Vec<&str> = vec![model];
    let mut last: Option<Error> = None;
    let mut at = 0;
    while let Some(&target) = chain.get(at) {
        at += 1;
        if at > 1 {
            tries.fallbacks += 1;
        }
        let mut retries = 0;
        let failure = loop {
            let now = Instant::now();
            let member = match router.choose_target(target, &want, now, &node.rng) {
                Choice::Chosen(m) => m,
                Choice::Unknown => {
                    break Error::ModelNotFound {
                        model: target.to_owned(),
                    };
                }
                Choice::Unavailable(u) => {
                    break Error::NoDeployments {
                        model_group: target.to_owned(),
                        reason: u.reason,
                        retry_after: u.retry_after,
                    };
                }
            };
            let deployment = member.deployment.clone();
            let reservation = admission::admit(
                &limiter,
                &ctx.principal,
                again.as_ref().unwrap_or(demand),
                &deployment,
                node.now_ms(),
            )
            .await?;
            let minute = router.minute(now);
            let in_flight = member.live.start(minute, want.tokens);
            let cx = CallContext {
                deployment: &deployment,
                upstream: node.upstream.as_ref(),
                clock: node.clock.as_ref(),
                output_cap: reservation.output_cap,
            };
            let started = Instant::now();
            let result = call(node.providers.get(deployment.provider), cx).await;
            let upstream_time = started.elapsed();
            let e = match result {
                Ok(output) => {
                    member.live.succeeded(Instant::now(), upstream_time);
                    return Ok(Called {
                        deployment,
                        output,
                        upstream_time,
                        reservation,
                        attempt: Attempt {
                            _in_flight: in_flight,
                            live: member.live.clone(),
                            minute,
                            estimated: want.tokens,
                        },
                        tries,
                    });
                }
                Err(e) => e,
            };
            reservation.release().await;
            drop(in_flight);
            // Any next attempt is admitted again, but the client request has
            // been counted once already.
            if again.is_none() {
                again = Some(Demand {
                    counted: true,
                    ..demand.clone()
                });
            }
            let Some(class) = ErrorClass::of(&e) else {
                return Err(e);
            };
            let cooled = router.failed(&member, class, Instant::now(), &e.to_string());
            tracing::warn!(
                request_id = %ctx.request_id,
                deployment = %deployment.id,
                model_group = %deployment.model_group,
                class = class.name(),
                cooled_down = cooled,
                error = %e,
                "upstream call failed"
            );
            let elsewhere = router.others_ready(target, &deployment.id, Instant::now());
            let cooling = member.live.cooling_until(Instant::now()).is_some();
            // Out of retries, or the whole group is cooling down: fail fast
            // (to the fallbacks) rather than wait out a cooldown.
            if retries >= settings.retries_for(class) || (cooling && !elsewhere) {
                break e;
            }
            retries += 1;
            tries.retries += 1;
            let upstream_wait = match &e {
                Error::UpstreamStatus {
                    retry_after: Some(s),
                    ..
                } => Some(Duration::from_secs(*s)),
                _ => None,
            };
            let wait = settings.backoff(
                class,
                retries,
                elsewhere,
                upstream_wait,
                crate::router::unit(&node.rng),
            );
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        };
        if at == 1 {
            // The requested group failed: its fallbacks, by what went wrong.
            if matches!(failure, Error::ModelNotFound { .. }) {
                return Err(failure);
            }
            let class = match &failure {
                Error::NoDeployments { .. } => Some(ErrorClass::RateLimit),
                e => ErrorClass::of(e),
            };
            if let Some(class) = class.filter(|c| c.falls_back()) {
                let listed = match request_fallbacks {
                    Some(list) => list,
                    None => settings.fallbacks.after(model, class),
                };
                chain.extend(
                    listed
                        .iter()
                        .map(String::as_str)
                        .filter(|g| *g != model && ctx.principal.may_use_model(g))
                        .take(settings.max_fallbacks as usize),
                );
            }
            last = Some(failure);
        } else {
            match failure {
                Error::ModelNotFound { .. } => {
                    tracing::warn!(request_id = %ctx.request_id, fallback = %target, "fallback names no model group or deployment here; skipped");
                }
                // None it may use (residency, tags): the earlier failure
                // says more.
                Error::NoDeployments {
                    retry_after: None, ..
                } if last.is_some() => {}
                failure => last = Some(failure),
            }
        }
    }
    Err(last.unwrap_or_else(|| Error::ModelNotFound {
        model: model.to_owned(),
    }))
}

/// Settles one request: real usage → exact cost. Runs exactly once, when the
/// answer is complete, the stream ends, or — through `Drop` — when the client
/// goes away mid-stream, so a disconnect is billed for what was served.
pub struct Settlement {
    request_id: String,
    deployment: Arc<Deployment>,
    reservation: Reservation,
    attempt: Attempt,
    usage: Usage,
    /// Whether the provider reported usage at all.
    observed: bool,
    settled: Option<(Cost, meridian_replication::Ticket)>,
    log: LogTarget,
}

/// Where and how a settled request is logged (`/spend/logs`).
pub struct LogTarget {
    pub log: Arc<crate::spendlog::SpendLog>,
    pub clock: Arc<dyn crate::clock::Clock>,
    pub region: String,
    pub node: String,
    pub received: Instant,
}

impl Settlement {
    pub fn new(
        request_id: String,
        deployment: Arc<Deployment>,
        reservation: Reservation,
        attempt: Attempt,
        log: LogTarget,
    ) -> Self {
        Self {
            request_id,
            deployment,
            reservation,
            attempt,
            usage: Usage::default(),
            observed: false,
            settled: None,
            log,
        }
    }

    /// Records the latest usage report (providers send cumulative usage).
    pub fn observe(&mut self, usage: Usage) {
        self.usage = usage;
        self.observed = true;
    }

    pub fn usage(&self) -> Usage {
        self.usage
    }

    /// Settles (once): the real cost replaces the reservation on the counters.
    pub fn finish(&mut self) -> Cost {
        if let Some((cost, _)) = self.settled {
            return cost;
        }
        if !self.observed {
            // Cut before the provider reported usage (it does so at the
            // end): the provider may still bill it, so the reservation is
            // charged.
            self.usage = self.reservation.worst;
        }
        self.attempt.settled(self.usage.total_tokens());
        let cost = cost_of(&self.deployment, &self.usage);
        let ticket = self.reservation.settle(&self.usage, cost);
        self.settled = Some((cost, ticket));
        let end_time = self.log.clock.since_epoch().as_millis() as u64;
        let who = &self.reservation.who;
        self.log.log.record(&crate::spendlog::SpendRow {
            request_id: self.request_id.clone(),
            api_key: who.api_key.clone(),
            team_id: who.team_id.clone(),
            user: who.user_id.clone(),
            end_user: who.end_user.clone(),
            request_tags: who.tags.clone(),
            model_group: self.deployment.model_group.clone(),
            model_id: self.deployment.id.clone(),
            region: self.log.region.clone(),
            node: self.log.node.clone(),
            prompt_tokens: self.usage.prompt_tokens,
            completion_tokens: self.usage.completion_tokens,
            total_tokens: self.usage.total_tokens(),
            spend: crate::pricing::pico_to_dollars(cost.0),
            start_time: end_time.saturating_sub(self.log.received.elapsed().as_millis() as u64),
            end_time,
        });
        tracing::info!(
            request_id = %self.request_id,
            model_group = %self.deployment.model_group,
            deployment = %self.deployment.id,
            prompt_tokens = self.usage.prompt_tokens,
            completion_tokens = self.usage.completion_tokens,
            cost_usd = %cost,
            "settled"
        );
        cost
    }
}

impl Settlement {
    /// Waits until the settled cost is durable on this node: only then may it
    /// be acknowledged to the client (a crash after that loses nothing).
    pub async fn durable(&self) {
        if let Some((_, ticket)) = self.settled {
            self.reservation.durable(ticket).await;
        }
    }
}

impl Drop for Settlement {
    fn drop(&mut self) {
        if self.settled.is_none() {
            tracing::info!(request_id = %self.request_id, "stream ended early; settling what was served");
            self.finish();
        }
    }
}

pub fn cost_of(deployment: &Deployment, usage: &Usage) -> Cost {
    deployment.price.map(|p| p.cost(usage)).unwrap_or_default()
}
