//! Stage 4, **call**: the attempts. Each attempt is route → admit → the
//! provider adapter over the injected upstream client; a failed attempt
//! gives its reservation back, marks the deployment (cooldowns), and is
//! retried on the group or — once the group is out of retries — the
//! request falls back to other groups, as `router_settings` says.
//!
//! Only the response head is awaited here: once a stream is handed to the
//! client, nothing is retried.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::admission::{Demand, Reservation};
use crate::config::Deployment;
use crate::error::{Error, Result};
use crate::metrics::labels::Class;
use crate::node::Node;
use crate::providers::{CallContext, Outcome};
use crate::router::{ErrorClass, InFlight, Want};

use super::{Operation, RequestCtx, Tries, admit, route};

/// The call that answered, held until its answer is settled: in flight on
/// its deployment (for `least-busy`) until then, and its token estimate
/// corrected (for `usage-based-routing`).
pub struct Attempt {
    _in_flight: InFlight,
    live: Arc<crate::router::Live>,
    minute: u64,
    estimated: u64,
    /// When the provider call started.
    pub(super) started: Instant,
}

impl Attempt {
    pub(super) fn settled(&self, tokens: u64) {
        self.live
            .correct_tokens(self.minute, self.estimated, tokens);
    }
}

/// The attempt that answered, with what the edge needs for its headers.
pub struct Called {
    pub deployment: Arc<Deployment>,
    /// The deployment's metric labels.
    pub place: crate::metrics::labels::Interned<crate::metrics::labels::Place>,
    pub output: Outcome,
    /// Time spent waiting on the provider (for the overhead header).
    pub upstream_time: Duration,
    /// What the request holds on the counters; settled with the answer.
    pub reservation: Reservation,
    pub attempt: Attempt,
    pub tries: Tries,
}

/// Runs attempts until one answers: the requested group with its retries,
/// then its fallbacks. A failed attempt gives its reservation back before
/// the next is admitted (on the next deployment's price); the client
/// request counts once against requests-per-minute limits.
pub async fn attempts(
    node: &Node,
    ctx: &RequestCtx,
    op: &Operation,
    demand: &Demand,
    residency: Option<&[String]>,
    request_fallbacks: Option<&[String]>,
) -> Result<Called> {
    let model = op.model();
    node.refresh_models();
    let want = Want {
        tags: &demand.tags,
        residency,
        tokens: demand.prompt_tokens,
    };
    let mut tries = Tries::default();
    let mut again: Option<Demand> = None;
    // The requested group, then (once it has failed) its fallbacks.
    let mut chain: Vec<&str> = vec![model];
    let mut last: Option<Error> = None;
    let mut at = 0;
    // How the requested group failed, for the fallback metrics.
    let mut first: Option<(u16, Class)> = None;
    while let Some(&target) = chain.get(at) {
        at += 1;
        if at > 1 {
            tries.fallbacks += 1;
        }
        let result = on_group(node, ctx, op, target, &want, demand, &mut again, &mut tries).await;
        if let Some(first) = &first {
            let answered = result.is_ok();
            let named_none = matches!(&result, Err(Failed::Group(Error::ModelNotFound { .. })));
            if !named_none {
                node.metrics.fallback(&ctx.asker, target, *first, answered);
            }
        }
        let failure = match result {
            Ok(called) => return Ok(called),
            Err(Failed::Final(e)) => return Err(e),
            Err(Failed::Group(e)) => e,
        };
        if at == 1 {
            let (status, name) = crate::api::reported_error(&failure);
            first = Some((status, Class(name)));
            chain.extend(route::fallbacks(
                node,
                model,
                &failure,
                request_fallbacks,
                |g| ctx.principal.may_use_model(g),
            ));
            last = Some(failure);
            continue;
        }
        match failure {
            Error::ModelNotFound { .. } => {
                tracing::warn!(request_id = %ctx.request_id, fallback = %target, "fallback names no model group or deployment here; skipped");
            }
            // None it may use (residency, tags): the earlier failure says
            // more.
            Error::NoDeployments {
                retry_after: None, ..
            } if last.is_some() => {}
            failure => last = Some(failure),
        }
    }
    Err(last.unwrap_or_else(|| Error::ModelNotFound {
        model: model.to_owned(),
    }))
}

/// Why the attempts on a group ended without an answer.
enum Failed {
    /// The group failed (its last error): the request may fall back.
    Group(Error),
    /// The request is refused whatever the group (a limit, a request the
    /// provider rejects on its merits): no fallback.
    Final(Error),
}

/// The attempts on one group (or deployment id): the first and its
/// retries.
#[allow(clippy::too_many_arguments)]
async fn on_group(
    node: &Node,
    ctx: &RequestCtx,
    op: &Operation,
    target: &str,
    want: &Want<'_>,
    demand: &Demand,
    again: &mut Option<Demand>,
    tries: &mut Tries,
) -> std::result::Result<Called, Failed> {
    let router = &node.router;
    let settings = router.settings();
    let mut retries = 0;
    loop {
        let now = Instant::now();
        let member = route::choose(node, target, want, now).map_err(Failed::Group)?;
        let deployment = member.deployment.clone();
        let reservation = admit::admit(node, ctx, again.as_ref().unwrap_or(demand), &deployment)
            .await
            .map_err(Failed::Final)?;
        let minute = router.minute(now);
        let in_flight = member.live.start(minute, want.tokens);
        let cx = CallContext {
            deployment: &deployment,
            upstream: node.upstream.as_ref(),
            clock: node.clock.as_ref(),
            output_cap: reservation.output_cap,
        };
        let started = Instant::now();
        let result = op.call(node.providers.get(deployment.provider), cx).await;
        let upstream_time = started.elapsed();
        let place = node.metrics.place(&deployment);
        let e = match result {
            Ok(output) => {
                member.live.succeeded(Instant::now(), upstream_time);
                node.metrics.call(&ctx.asker, &place, None, false);
                return Ok(Called {
                    deployment,
                    place,
                    output,
                    upstream_time,
                    reservation,
                    attempt: Attempt {
                        _in_flight: in_flight,
                        live: member.live.clone(),
                        minute,
                        estimated: want.tokens,
                        started,
                    },
                    tries: *tries,
                });
            }
            Err(e) => e,
        };
        reservation.release().await;
        drop(in_flight);
        // Any next attempt is admitted again, but the client request has
        // been counted once already.
        if again.is_none() {
            *again = Some(Demand {
                counted: true,
                ..demand.clone()
            });
        }
        let class = ErrorClass::of(&e);
        let cooled = class
            .is_some_and(|class| router.failed(&member, class, Instant::now(), &e.to_string()));
        let failure = crate::api::reported_error(&e);
        node.metrics.call(&ctx.asker, &place, Some(failure), cooled);
        let Some(class) = class else {
            return Err(Failed::Final(e));
        };
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
        // Out of retries, or the whole group is cooling down: fail fast (to
        // the fallbacks) rather than wait out a cooldown.
        if retries >= settings.retries_for(class) || (cooling && !elsewhere) {
            return Err(Failed::Group(e));
        }
        retries += 1;
        tries.retries += 1;
        let wait = settings.backoff(
            class,
            retries,
            elsewhere,
            e.upstream_retry_after().map(Duration::from_secs),
            crate::router::unit(&node.rng),
        );
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}
