//! `router_settings`, validated: the strategy, retries, cooldowns and
//! fallbacks, with LiteLLM's defaults.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::error::{Error, Rejection};

/// How a deployment is chosen among the available ones of the best `order`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// Random, weighted by `weight`, else by `rpm`, else by `tpm`.
    #[default]
    SimpleShuffle,
    /// Fewest calls in flight on this node.
    LeastBusy,
    /// Lowest moving average of recent latencies (time to the response head),
    /// with a buffer so near-equal deployments share the load.
    LatencyBased,
    /// Fewest tokens this minute; deployments over their `rpm`/`tpm` are skipped.
    UsageBased,
    /// Cheapest price per token (an unpriced model counts as $1 per token).
    CostBased,
}

impl Strategy {
    pub const ALL: [Strategy; 5] = [
        Strategy::SimpleShuffle,
        Strategy::LeastBusy,
        Strategy::LatencyBased,
        Strategy::UsageBased,
        Strategy::CostBased,
    ];

    /// Other `routing_strategy` names LiteLLM accepts. `priority-routing` is
    /// `simple-shuffle`: ordering by `order`/`priority` always applies.
    const ALIASES: [(&'static str, Strategy); 2] = [
        ("priority-routing", Strategy::SimpleShuffle),
        ("usage-based-routing-v2", Strategy::UsageBased),
    ];

    /// The strategy's `routing_strategy` name.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::SimpleShuffle => "simple-shuffle",
            Strategy::LeastBusy => "least-busy",
            Strategy::LatencyBased => "latency-based-routing",
            Strategy::UsageBased => "usage-based-routing",
            Strategy::CostBased => "cost-based-routing",
        }
    }

    /// A `routing_strategy` name, canonical or an alias.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|s| s.name() == name)
            .or_else(|| {
                Self::ALIASES
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, s)| *s)
            })
    }

    /// Every name [`Self::parse`] accepts, for messages: "a, b, ... or z".
    pub fn accepted() -> String {
        let names: Vec<&str> = Self::ALL
            .iter()
            .map(|s| s.name())
            .chain(Self::ALIASES.iter().map(|(n, _)| *n))
            .collect();
        match names.split_last() {
            Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
            None => String::new(),
        }
    }
}

/// The failure classes of `retry_policy` and `allowed_fails_policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ErrorClass {
    BadRequest,
    Authentication,
    NotFound,
    Timeout,
    RateLimit,
    ContentPolicyViolation,
    ContextWindowExceeded,
    InternalServer,
}

impl ErrorClass {
    pub const ALL: [ErrorClass; 8] = [
        ErrorClass::BadRequest,
        ErrorClass::Authentication,
        ErrorClass::NotFound,
        ErrorClass::Timeout,
        ErrorClass::RateLimit,
        ErrorClass::ContentPolicyViolation,
        ErrorClass::ContextWindowExceeded,
        ErrorClass::InternalServer,
    ];

    /// LiteLLM's exception name, the stem of the policy keys
    /// (`RateLimitErrorRetries`, `RateLimitErrorAllowedFails`).
    pub fn name(self) -> &'static str {
        match self {
            ErrorClass::BadRequest => "BadRequestError",
            ErrorClass::Authentication => "AuthenticationError",
            ErrorClass::NotFound => "NotFoundError",
            ErrorClass::Timeout => "TimeoutError",
            ErrorClass::RateLimit => "RateLimitError",
            ErrorClass::ContentPolicyViolation => "ContentPolicyViolationError",
            ErrorClass::ContextWindowExceeded => "ContextWindowExceededError",
            ErrorClass::InternalServer => "InternalServerError",
        }
    }

    /// The class of a failed call, or `None` when the failure is not the
    /// deployment's (the gateway refused, or the request itself is at fault
    /// in a way no deployment changes).
    pub fn of(e: &Error) -> Option<Self> {
        Some(match e {
            Error::UpstreamStatus {
                status, rejection, ..
            } => match status {
                401 | 403 => ErrorClass::Authentication,
                404 => ErrorClass::NotFound,
                408 => ErrorClass::Timeout,
                429 => ErrorClass::RateLimit,
                400..=499 => match rejection {
                    Some(Rejection::ContextWindowExceeded) => ErrorClass::ContextWindowExceeded,
                    Some(Rejection::ContentPolicy) => ErrorClass::ContentPolicyViolation,
                    None => ErrorClass::BadRequest,
                },
                _ => ErrorClass::InternalServer,
            },
            Error::UpstreamTimeout { .. } => ErrorClass::Timeout,
            Error::UpstreamUnreachable { .. } | Error::UpstreamProtocol { .. } => {
                ErrorClass::InternalServer
            }
            _ => return None,
        })
    }

    /// Retried by default (when `retry_policy` says nothing): failures another
    /// attempt may not repeat.
    fn retried_by_default(self) -> bool {
        matches!(
            self,
            ErrorClass::Timeout | ErrorClass::RateLimit | ErrorClass::InternalServer
        )
    }

    /// Put the deployment in cooldown at once: it is throttling us (429), or
    /// it is misconfigured (401, 404) and will not recover by itself soon.
    pub fn cools_down_at_once(self) -> bool {
        matches!(
            self,
            ErrorClass::RateLimit | ErrorClass::Authentication | ErrorClass::NotFound
        )
    }

    /// Whether another model group may serve what this deployment did not:
    /// not when the request itself is at fault.
    pub fn falls_back(self) -> bool {
        self != ErrorClass::BadRequest
    }
}

/// A count per failure class (`retry_policy`, `allowed_fails_policy`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PerClass(BTreeMap<ErrorClass, u32>);

impl PerClass {
    pub fn get(&self, class: ErrorClass) -> Option<u32> {
        self.0.get(&class).copied()
    }

    pub fn set(&mut self, class: ErrorClass, n: u32) {
        self.0.insert(class, n);
    }
}

/// Where a failed group's traffic goes next, by failure class.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fallbacks {
    /// `fallbacks`: group → groups, in order.
    pub general: BTreeMap<String, Vec<String>>,
    /// `context_window_fallbacks`
    pub context_window: BTreeMap<String, Vec<String>>,
    /// `content_policy_fallbacks`
    pub content_policy: BTreeMap<String, Vec<String>>,
    /// `default_fallbacks` (and a `"*"` entry of `fallbacks`): for any group
    /// with no entry of its own.
    pub default: Vec<String>,
}

impl Fallbacks {
    /// The groups to try after `group` failed with `class`, in order.
    pub fn after(&self, group: &str, class: ErrorClass) -> &[String] {
        let specific = match class {
            ErrorClass::ContextWindowExceeded => self.context_window.get(group),
            ErrorClass::ContentPolicyViolation => self.content_policy.get(group),
            _ => None,
        };
        specific
            .or_else(|| self.general.get(group))
            .map_or(&self.default[..], Vec::as_slice)
    }
}

/// `routing_strategy_args` of `latency-based-routing`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatencyArgs {
    /// Latencies older than this are forgotten (`ttl`, seconds).
    pub ttl: Duration,
    /// Deployments within this fraction of the fastest share the load
    /// (`lowest_latency_buffer`; 0 = only the fastest).
    pub buffer: f64,
}

impl Default for LatencyArgs {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(3600),
            buffer: 0.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RouterSettings {
    pub strategy: Strategy,
    pub latency: LatencyArgs,
    /// Retries per model group after the first attempt (`num_retries`).
    pub num_retries: u32,
    /// `retry_policy`: retries per failure class, replacing `num_retries`.
    pub retry_policy: PerClass,
    /// The least wait before a retry (`retry_after`); a 429 with no other
    /// deployment to go to backs off exponentially from it.
    pub retry_after: Duration,
    /// Failures per minute a deployment may have before it cools down.
    pub allowed_fails: u32,
    pub allowed_fails_policy: PerClass,
    pub cooldown_time: Duration,
    pub disable_cooldowns: bool,
    pub fallbacks: Fallbacks,
    /// Most fallback groups one request tries (`max_fallbacks`).
    pub max_fallbacks: u32,
    pub enable_tag_filtering: bool,
    /// With tag filtering: a deployment needs one of the request's tags
    /// (true, the default) or all of them.
    pub tag_filtering_match_any: bool,
}

impl Default for RouterSettings {
    fn default() -> Self {
        Self {
            strategy: Strategy::default(),
            latency: LatencyArgs::default(),
            num_retries: 3,
            retry_policy: PerClass::default(),
            retry_after: Duration::ZERO,
            allowed_fails: 3,
            allowed_fails_policy: PerClass::default(),
            cooldown_time: Duration::from_secs(5),
            disable_cooldowns: false,
            fallbacks: Fallbacks::default(),
            max_fallbacks: 5,
            enable_tag_filtering: false,
            tag_filtering_match_any: true,
        }
    }
}

/// The longest a 429 backs off before a retry.
pub const MAX_BACKOFF: Duration = Duration::from_secs(8);
/// The first exponential back-off step.
const BACKOFF_BASE: Duration = Duration::from_millis(500);

impl RouterSettings {
    /// Retries one model group gets for failures of `class`.
    pub fn retries_for(&self, class: ErrorClass) -> u32 {
        match self.retry_policy.get(class) {
            Some(n) => n,
            None if class.retried_by_default() => self.num_retries,
            None => 0,
        }
    }

    /// Failures of `class` per minute a deployment may have before cooling
    /// down; `deployment` is its own `allowed_fails`, if set.
    pub fn allowed_fails_for(&self, class: ErrorClass, deployment: Option<u32>) -> u32 {
        self.allowed_fails_policy
            .get(class)
            .or(deployment)
            .unwrap_or(self.allowed_fails)
    }

    /// How long to wait before retry number `retry` (from 1) after `class`.
    /// `elsewhere`: another deployment of the group can take it at once.
    /// `upstream`: the provider's own `retry-after`. `jitter` in [0, 1).
    pub fn backoff(
        &self,
        class: ErrorClass,
        retry: u32,
        elsewhere: bool,
        upstream: Option<Duration>,
        jitter: f64,
    ) -> Duration {
        if class != ErrorClass::RateLimit || elsewhere {
            return self.retry_after;
        }
        if let Some(wait) = upstream {
            return wait.max(self.retry_after).min(MAX_BACKOFF);
        }
        let step = BACKOFF_BASE.saturating_mul(1 << retry.saturating_sub(1).min(8));
        // Full jitter over the upper half: retries of many requests spread out.
        let step = step.mul_f64(0.5 + jitter.clamp(0.0, 1.0) / 2.0);
        step.max(self.retry_after).min(MAX_BACKOFF)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_strategy_name_parses_back_and_is_listed() {
        let accepted = Strategy::accepted();
        for strategy in Strategy::ALL {
            assert_eq!(Strategy::parse(strategy.name()), Some(strategy));
            assert!(accepted.contains(strategy.name()), "{accepted}");
        }
        assert_eq!(
            Strategy::parse("priority-routing"),
            Some(Strategy::SimpleShuffle)
        );
        assert_eq!(
            Strategy::parse("usage-based-routing-v2"),
            Some(Strategy::UsageBased)
        );
        assert!(
            accepted.ends_with("or usage-based-routing-v2"),
            "{accepted}"
        );
        assert_eq!(Strategy::parse("round-robin"), None);
    }

    /// A provider's error as its adapter decodes it.
    fn status(status: u16, message: &str, code: Option<&str>) -> Error {
        Error::UpstreamStatus {
            status,
            message: message.into(),
            kind: None,
            code: code.map(str::to_owned),
            retry_after: None,
            rejection: crate::error::Rejection::read(status, code, None, message),
        }
    }

    #[test]
    fn failures_are_classed_like_litellm_exceptions() {
        let class = |e: &Error| ErrorClass::of(e);
        assert_eq!(
            class(&status(429, "slow down", None)),
            Some(ErrorClass::RateLimit)
        );
        assert_eq!(
            class(&status(401, "bad key", None)),
            Some(ErrorClass::Authentication)
        );
        assert_eq!(
            class(&status(404, "no model", None)),
            Some(ErrorClass::NotFound)
        );
        assert_eq!(
            class(&status(503, "down", None)),
            Some(ErrorClass::InternalServer)
        );
        assert_eq!(
            class(&status(400, "bad", None)),
            Some(ErrorClass::BadRequest)
        );
        assert_eq!(
            class(&status(400, "x", Some("context_length_exceeded"))),
            Some(ErrorClass::ContextWindowExceeded)
        );
        assert_eq!(
            class(&status(
                400,
                "This model's maximum context length is 8192 tokens",
                None
            )),
            Some(ErrorClass::ContextWindowExceeded)
        );
        assert_eq!(
            class(&status(400, "x", Some("content_policy_violation"))),
            Some(ErrorClass::ContentPolicyViolation)
        );
        let timeout = Error::UpstreamTimeout {
            deployment: "d".into(),
            after: Duration::from_secs(1),
        };
        assert_eq!(class(&timeout), Some(ErrorClass::Timeout));
        assert_eq!(class(&Error::InvalidKey), None);
    }

    #[test]
    fn retries_follow_the_policy_then_the_default() {
        let mut s = RouterSettings::default();
        assert_eq!(s.retries_for(ErrorClass::InternalServer), 3);
        assert_eq!(s.retries_for(ErrorClass::BadRequest), 0);
        s.retry_policy.set(ErrorClass::BadRequest, 2);
        s.retry_policy.set(ErrorClass::RateLimit, 0);
        assert_eq!(s.retries_for(ErrorClass::BadRequest), 2);
        assert_eq!(s.retries_for(ErrorClass::RateLimit), 0);
        assert_eq!(s.allowed_fails_for(ErrorClass::Timeout, None), 3);
        assert_eq!(s.allowed_fails_for(ErrorClass::Timeout, Some(7)), 7);
        s.allowed_fails_policy.set(ErrorClass::Timeout, 1);
        assert_eq!(s.allowed_fails_for(ErrorClass::Timeout, Some(7)), 1);
    }

    #[test]
    fn rate_limits_back_off_exponentially_only_with_nowhere_else_to_go() {
        let s = RouterSettings::default();
        let rl = ErrorClass::RateLimit;
        assert_eq!(s.backoff(rl, 1, true, None, 0.5), Duration::ZERO);
        assert_eq!(
            s.backoff(ErrorClass::InternalServer, 3, false, None, 0.5),
            Duration::ZERO
        );
        let waits: Vec<_> = (1..=6)
            .map(|n| s.backoff(rl, n, false, None, 1.0))
            .collect();
        assert_eq!(waits[0], Duration::from_millis(500));
        assert_eq!(waits[1], Duration::from_secs(1));
        assert_eq!(waits[3], Duration::from_secs(4));
        assert_eq!(waits[5], MAX_BACKOFF);
        assert_eq!(
            s.backoff(rl, 1, false, None, 0.0),
            Duration::from_millis(250)
        );
        assert_eq!(
            s.backoff(rl, 1, false, Some(Duration::from_secs(2)), 0.0),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn fallbacks_pick_the_list_for_the_failure() {
        let mut f = Fallbacks::default();
        f.general.insert("a".into(), vec!["b".into()]);
        f.context_window.insert("a".into(), vec!["a-long".into()]);
        f.default = vec!["z".into()];
        assert_eq!(f.after("a", ErrorClass::InternalServer), ["b"]);
        assert_eq!(f.after("a", ErrorClass::ContextWindowExceeded), ["a-long"]);
        assert_eq!(f.after("a", ErrorClass::ContentPolicyViolation), ["b"]);
        assert_eq!(f.after("other", ErrorClass::RateLimit), ["z"]);
    }
}
