//! Prometheus metrics (`GET /metrics`): LiteLLM's families under LiteLLM's
//! names, labels and buckets, so dashboards built on LiteLLM keep working,
//! plus Meridian's own. `docs/metrics.md` lists them with the mapping.
//!
//! Recording is on the request path, so it is cheap: counters and
//! histograms are atomics (a histogram's buckets behind one short lock per
//! series), and a series is found by label sets the interners of
//! [`labels`] made once — a request whose series exist allocates nothing
//! here. Families that describe state rather than events (budgets) are
//! read from the node when scraped ([`scrape`]).

mod cluster;
pub mod labels;
mod scrape;
mod series;

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use self::labels::{
    Class, DeploymentCall, DeploymentOnly, Fallback, Interned, Interner, Overhead, Place,
    ProxyFailure, ProxyRequest, Requested, Served, Who, fixed,
};
use self::series::{Answering, Bundles};
pub use self::series::{Serving, Timing};
use crate::auth::Principal;
use crate::config::Deployment;

/// LiteLLM's `LATENCY_BUCKETS`, in seconds (`+Inf` is implicit).
pub const LATENCY_BUCKETS: [f64; 35] = [
    0.005, 0.00625, 0.0125, 0.025, 0.05, 0.1, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0,
    5.5, 6.0, 6.5, 7.0, 7.5, 8.0, 8.5, 9.0, 9.5, 10.0, 15.0, 20.0, 25.0, 30.0, 60.0, 120.0, 180.0,
    240.0, 300.0,
];

/// The most distinct keys with labels of their own (the rest are `other`).
pub const DEFAULT_MAX_KEYS: usize = 1_000;
/// The most distinct deployments and requested model names.
const MAX_MODELS: usize = 1_000;
/// The most (key, requested model, deployment) combinations with series
/// of their own; past it, new combinations are counted under key `other`.
/// Each has three latency histograms of 36 buckets, so this bounds a
/// scrape too.
pub const MAX_COMBINATIONS: usize = 2_000;

fn latency() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

fn histograms<L: Clone + std::hash::Hash + Eq>() -> Histograms<L> {
    Histograms::new_with_constructor(latency as fn() -> Histogram)
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// The node's metrics.
pub struct Metrics {
    /// Off (`meridian.disable_metrics`): nothing is recorded or served.
    on: bool,
    registry: Registry,
    who: Interner<Who>,
    places: Interner<Place>,
    asked: Interner<Requested>,
    master: Interned<Who>,
    anonymous: Interned<Who>,
    unknown: Interned<Requested>,
    requests: Family<ProxyRequest, Counter>,
    failures: Family<ProxyFailure, Counter>,
    spend: Family<Served, Counter<f64, AtomicU64>>,
    total_tokens: Family<Served, Counter>,
    input_tokens: Family<Served, Counter>,
    output_tokens: Family<Served, Counter>,
    total_latency: Histograms<Served>,
    api_latency: Histograms<Served>,
    first_token: Histograms<Served>,
    overhead: Histograms<Overhead>,
    deployment_success: Family<DeploymentCall, Counter>,
    deployment_failure: Family<DeploymentCall, Counter>,
    deployment_total: Family<DeploymentCall, Counter>,
    deployment_state: Family<DeploymentOnly, Gauge>,
    cooled_down: Family<DeploymentOnly, Counter>,
    fallback_ok: Family<Fallback, Counter>,
    fallback_failed: Family<Fallback, Counter>,
    admission: Family<labels::Admission, Counter>,
    /// The request path's series, one lookup each (see [`series`]).
    serving: Bundles<Served, Serving>,
    answering: Bundles<Served, Answering>,
    idle: Arc<Serving>,
}

/// Who made a request and what it asked for: the labels every family of
/// the request shares, found once per request.
#[derive(Clone, Debug)]
pub struct Asker {
    pub who: Interned<Who>,
    pub asked: Interned<Requested>,
}

/// How a request ended, as the edge saw it.
pub struct Ended {
    pub status: u16,
    /// The failure's class (`None` for a success).
    pub class: Option<Class>,
}

/// `litellm_deployment_state`'s values.
#[derive(Clone, Copy)]
enum State {
    Healthy = 0,
    Partial = 1,
    Outage = 2,
}

impl Metrics {
    pub fn new(region: &str, node: &str, max_keys: usize, on: bool) -> Self {
        let mut registry = Registry::with_labels(
            [
                (Cow::Borrowed("region"), Cow::Owned(region.to_owned())),
                (Cow::Borrowed("node"), Cow::Owned(node.to_owned())),
            ]
            .into_iter(),
        );
        let m = Self {
            on,
            registry: Registry::default(),
            who: Interner::new(max_keys, Who::other()),
            places: Interner::new(MAX_MODELS, Place::unknown()),
            asked: Interner::new(MAX_MODELS, Requested(Who::OTHER.into())),
            master: fixed(1, Who::master()),
            anonymous: fixed(2, Who::default()),
            unknown: fixed(1, Requested("unknown".into())),
            requests: Family::default(),
            failures: Family::default(),
            spend: Family::default(),
            total_tokens: Family::default(),
            input_tokens: Family::default(),
            output_tokens: Family::default(),
            total_latency: histograms(),
            api_latency: histograms(),
            first_token: histograms(),
            overhead: histograms(),
            deployment_success: Family::default(),
            deployment_failure: Family::default(),
            deployment_total: Family::default(),
            deployment_state: Family::default(),
            cooled_down: Family::default(),
            fallback_ok: Family::default(),
            fallback_failed: Family::default(),
            admission: Family::default(),
            serving: Bundles::default(),
            answering: Bundles::default(),
            idle: Arc::new(Serving::unregistered()),
        };
        let r = &mut registry;
        r.register(
            "litellm_proxy_total_requests_metric",
            "Requests made to the proxy, by status code",
            m.requests.clone(),
        );
        r.register(
            "litellm_proxy_failed_requests_metric",
            "Requests the proxy answered with an error",
            m.failures.clone(),
        );
        r.register(
            "litellm_spend_metric",
            "Spend in USD, as settled",
            m.spend.clone(),
        );
        r.register(
            "litellm_total_tokens_metric",
            "Input and output tokens",
            m.total_tokens.clone(),
        );
        r.register(
            "litellm_input_tokens_metric",
            "Input (prompt) tokens",
            m.input_tokens.clone(),
        );
        r.register(
            "litellm_output_tokens_metric",
            "Output (completion) tokens",
            m.output_tokens.clone(),
        );
        r.register(
            "litellm_request_total_latency_metric",
            "Seconds from a request's arrival to its last byte",
            m.total_latency.clone(),
        );
        r.register(
            "litellm_llm_api_latency_metric",
            "Seconds the answering provider call took, to its last byte",
            m.api_latency.clone(),
        );
        r.register(
            "litellm_llm_api_time_to_first_token_metric",
            "Seconds from a streamed provider call's start to its first chunk",
            m.first_token.clone(),
        );
        r.register(
            "litellm_overhead_latency_metric",
            "Seconds the gateway added before an answer's head (all but the answering call)",
            m.overhead.clone(),
        );
        r.register(
            "litellm_deployment_success_responses",
            "Provider calls that answered",
            m.deployment_success.clone(),
        );
        r.register(
            "litellm_deployment_failure_responses",
            "Provider calls that failed",
            m.deployment_failure.clone(),
        );
        r.register(
            "litellm_deployment_total_requests",
            "Provider calls made",
            m.deployment_total.clone(),
        );
        r.register(
            "litellm_deployment_state",
            "0 healthy, 1 partial outage (last call failed), 2 outage (cooling down)",
            m.deployment_state.clone(),
        );
        r.register(
            "litellm_deployment_cooled_down",
            "Times a deployment was put in cooldown",
            m.cooled_down.clone(),
        );
        r.register(
            "litellm_deployment_successful_fallbacks",
            "Requests a fallback group answered",
            m.fallback_ok.clone(),
        );
        r.register(
            "litellm_deployment_failed_fallbacks",
            "Fallback groups that failed too",
            m.fallback_failed.clone(),
        );
        r.register(
            "meridian_admission_decisions",
            "Admission decisions on provider calls: admitted, or refused and by which limit \
             (mode: strict when a strict limit refused)",
            m.admission.clone(),
        );
        Self { registry, ..m }
    }

    /// The labels of `principal`, interned.
    pub fn who(&self, principal: &Principal) -> Interned<Who> {
        let Some(caller) = principal.caller().filter(|_| self.on) else {
            return self.master.clone();
        };
        self.who.get(
            &caller.key.token,
            |held| held.describes(principal),
            || Who::of(principal).unwrap_or_default(),
        )
    }

    /// The labels of a caller that did not authenticate.
    pub fn anonymous(&self) -> Interned<Who> {
        self.anonymous.clone()
    }

    /// The labels of a request by `who` for `model`; `served` says whether
    /// the node knows that name (a name it does not is `unknown`, so a
    /// caller cannot grow the label set).
    pub fn asker(&self, who: Interned<Who>, model: &str, served: bool) -> Asker {
        let asked = if served && self.on {
            self.asked.get(model, |_| true, || Requested(model.into()))
        } else {
            self.unknown.clone()
        };
        Asker { who, asked }
    }

    /// The labels of an unauthenticated request, or one that never named
    /// a model.
    pub fn nobody(&self) -> Asker {
        Asker {
            who: self.anonymous.clone(),
            asked: self.unknown.clone(),
        }
    }

    pub fn place(&self, deployment: &Deployment) -> Interned<Place> {
        if !self.on {
            return self.places.overflow().clone();
        }
        self.places.get(
            &deployment.id,
            |held| held.describes(deployment),
            || Place::of(deployment),
        )
    }

    /// A request ended with `ended` on `route` (the edge's view).
    pub fn request(&self, asker: &Asker, route: &'static str, ended: &Ended) {
        if !self.on {
            return;
        }
        self.requests
            .get_or_create(&ProxyRequest {
                who: asker.who.clone(),
                asked: asker.asked.clone(),
                route,
                status: ended.status,
            })
            .inc();
        if let Some(class) = &ended.class {
            self.failures
                .get_or_create(&ProxyFailure {
                    who: asker.who.clone(),
                    asked: asker.asked.clone(),
                    route,
                    status: ended.status,
                    class: *class,
                })
                .inc();
        }
    }

    /// The series of requests by `asker` that `place` serves: its
    /// answers' overhead, then what each settles.
    pub fn serving(&self, asker: &Asker, place: &Interned<Place>) -> Arc<Serving> {
        if !self.on {
            return self.idle.clone();
        }
        let key = Served {
            who: asker.who.clone(),
            asked: asker.asked.clone(),
            place: place.clone(),
        };
        self.serving.get(
            key,
            MAX_COMBINATIONS,
            |k| self.as_other(k),
            |key| Serving {
                overhead: self.overhead.get_or_create_owned(&Overhead {
                    who: key.who.clone(),
                    place: key.place.clone(),
                }),
                spend: self.spend.get_or_create_owned(key),
                input_tokens: self.input_tokens.get_or_create_owned(key),
                output_tokens: self.output_tokens.get_or_create_owned(key),
                total_tokens: self.total_tokens.get_or_create_owned(key),
                total_latency: self.total_latency.get_or_create_owned(key),
                api_latency: self.api_latency.get_or_create_owned(key),
                first_token: self.first_token.get_or_create_owned(key),
            },
        )
    }

    /// One provider call ended: answered (`failure` `None`) or failed with
    /// `(status, class name)`; `cooled` says whether it put the deployment
    /// in cooldown.
    pub fn call(
        &self,
        asker: &Asker,
        place: &Interned<Place>,
        failure: Option<(u16, &'static str)>,
        cooled: bool,
    ) {
        if !self.on {
            return;
        }
        let Some((status, name)) = failure else {
            let key = Served {
                who: asker.who.clone(),
                asked: asker.asked.clone(),
                place: place.clone(),
            };
            let series = self.answering.get(
                key,
                MAX_COMBINATIONS,
                |k| self.as_other(k),
                |key| {
                    let call = DeploymentCall {
                        who: key.who.clone(),
                        asked: key.asked.clone(),
                        place: key.place.clone(),
                        failure: None,
                    };
                    Answering {
                        total: self.deployment_total.get_or_create_owned(&call),
                        success: self.deployment_success.get_or_create_owned(&call),
                        state: self.deployment_state.get_or_create_owned(&DeploymentOnly {
                            place: key.place.clone(),
                            status: None,
                        }),
                    }
                },
            );
            series.total.inc();
            series.success.inc();
            series.state.set(State::Healthy as i64);
            return;
        };
        let mut call = DeploymentCall {
            who: asker.who.clone(),
            asked: asker.asked.clone(),
            place: place.clone(),
            failure: None,
        };
        self.deployment_total.get_or_create(&call).inc();
        call.failure = Some((status, name));
        self.deployment_failure.get_or_create(&call).inc();
        let state = if cooled {
            self.cooled_down
                .get_or_create(&DeploymentOnly {
                    place: place.clone(),
                    status: Some(status),
                })
                .inc();
            State::Outage
        } else {
            State::Partial
        };
        self.deployment_state
            .get_or_create(&DeploymentOnly {
                place: place.clone(),
                status: None,
            })
            .set(state as i64);
    }

    /// A fallback group answered (`ok`) or failed after the requested group
    /// failed with `first`.
    pub fn fallback(&self, asker: &Asker, fallback: &str, first: (u16, Class), ok: bool) {
        if !self.on {
            return;
        }
        let labels = Fallback {
            who: asker.who.clone(),
            asked: asker.asked.clone(),
            fallback: self
                .asked
                .get(fallback, |_| true, || Requested(fallback.into())),
            first,
        };
        let family = if ok {
            &self.fallback_ok
        } else {
            &self.fallback_failed
        };
        family.get_or_create(&labels).inc();
    }

    /// An attempt was admitted, or refused by a limit (or an error).
    pub fn admission<T>(&self, result: &crate::error::Result<T>) {
        if !self.on {
            return;
        }
        use crate::admission::LimitKind;
        let labels = match result {
            Ok(_) => labels::Admission {
                decision: "admitted",
                reason: "",
                mode: "",
            },
            Err(crate::error::Error::LimitExceeded(e)) => labels::Admission {
                decision: "refused",
                reason: match e.kind {
                    LimitKind::Requests => "requests",
                    LimitKind::Tokens => "tokens",
                    LimitKind::Parallel => "parallel",
                    LimitKind::Budget => "budget",
                },
                mode: if e.strict.is_some() {
                    "strict"
                } else {
                    "available"
                },
            },
            Err(_) => labels::Admission {
                decision: "failed",
                reason: "error",
                mode: "",
            },
        };
        self.admission.get_or_create(&labels).inc();
    }

    /// A combination counted under key `other` (past [`MAX_COMBINATIONS`]).
    fn as_other(&self, served: Served) -> Served {
        Served {
            who: self.who.overflow().clone(),
            ..served
        }
    }

    /// Whether metrics are recorded and served.
    pub fn on(&self) -> bool {
        self.on
    }

    /// The keys with labels of their own, for the scrape-time families.
    pub fn keys(&self) -> Vec<Interned<Who>> {
        self.who.held()
    }
}

pub use scrape::{CONTENT_TYPE, render};
