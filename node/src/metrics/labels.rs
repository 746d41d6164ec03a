//! The label sets of the metric families, under LiteLLM's label names, and
//! the interners that keep them bounded and cheap.
//!
//! Every label value an outsider or a key holder could make grow is
//! bounded: key, team and user labels come from records an admin wrote, for
//! at most `max_keys` distinct keys (the rest share one `other` set); a
//! requested model the node does not serve is `unknown`; client addresses,
//! user agents and end users are not recorded. A key is named by its
//! SHA-256 (the `token` its record holds), never by the secret, and an
//! `api_base` loses its query string and any user info before it is shown.
//!
//! An interned label set is compared and hashed by a number the interner
//! gave it, so a metric family finds its series without hashing strings,
//! and a request whose labels exist allocates nothing.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use foldhash::fast::RandomState;
use parking_lot::RwLock;
use prometheus_client::encoding::{EncodeLabel, EncodeLabelSet, LabelSetEncoder};

use crate::auth::Principal;
use crate::config::Deployment;

/// A label set shared by many series, compared by the number its
/// interner gave it.
#[derive(Debug)]
pub struct Interned<T> {
    id: u64,
    pub labels: Arc<T>,
}

impl<T> Clone for Interned<T> {
    fn clone(&self) -> Self {
        Self {
            id: self.id,
            labels: self.labels.clone(),
        }
    }
}

impl<T> PartialEq for Interned<T> {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl<T> Eq for Interned<T> {}

impl<T> Hash for Interned<T> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.id.hash(state);
    }
}

/// Hands out one [`Interned`] per distinct value, for at most `max` keys;
/// past that every new key gets `overflow`. An entry whose value changed
/// (a key renamed, moved to another team) is replaced, under a new number.
pub struct Interner<T> {
    max: usize,
    next: AtomicU64,
    map: RwLock<HashMap<Box<str>, Interned<T>, RandomState>>,
    overflow: Interned<T>,
}

impl<T: PartialEq> Interner<T> {
    /// The overflow set is number 0; numbers below 16 are kept for
    /// [`fixed`] sets.
    pub fn new(max: usize, overflow: T) -> Self {
        Self {
            max,
            next: AtomicU64::new(FIRST_INTERNED),
            map: RwLock::new(HashMap::default()),
            overflow: Interned {
                id: 0,
                labels: Arc::new(overflow),
            },
        }
    }

    /// The labels for `key`, made by `make` when new or changed; `current`
    /// says whether held labels still describe the key.
    pub fn get(
        &self,
        key: &str,
        current: impl Fn(&T) -> bool,
        make: impl FnOnce() -> T,
    ) -> Interned<T> {
        if let Some(held) = self.map.read().get(key)
            && current(&held.labels)
        {
            return held.clone();
        }
        let mut map = self.map.write();
        if let Some(held) = map.get(key)
            && current(&held.labels)
        {
            return held.clone();
        }
        if !map.contains_key(key) && map.len() >= self.max {
            return self.overflow.clone();
        }
        let labels = Interned {
            id: self.next.fetch_add(1, Ordering::Relaxed),
            labels: Arc::new(make()),
        };
        map.insert(key.into(), labels.clone());
        labels
    }

    /// The labels held, for scrape-time families.
    pub fn held(&self) -> Vec<Interned<T>> {
        self.map.read().values().cloned().collect()
    }

    pub fn overflow(&self) -> &Interned<T> {
        &self.overflow
    }
}

/// Numbers below this are fixed label sets, outside any interner.
const FIRST_INTERNED: u64 = 16;

/// A fixed label set (`id` 1 to 15, distinct per type), outside any
/// interner: the master key, an unauthenticated caller.
pub fn fixed<T>(id: u64, labels: T) -> Interned<T> {
    debug_assert!(id > 0 && id < FIRST_INTERNED);
    Interned {
        id,
        labels: Arc::new(labels),
    }
}

/// Who a request was made by: LiteLLM's `end_user`, `hashed_api_key`,
/// `api_key_alias`, `team`, `team_alias` and `user`.
#[derive(Debug, Default, PartialEq)]
pub struct Who {
    pub hashed_api_key: Box<str>,
    pub api_key_alias: Box<str>,
    pub team: Box<str>,
    pub team_alias: Box<str>,
    pub user: Box<str>,
}

impl Who {
    pub const OTHER: &'static str = "other";

    pub fn other() -> Self {
        let o = || Self::OTHER.into();
        Self {
            hashed_api_key: o(),
            api_key_alias: o(),
            team: o(),
            team_alias: o(),
            user: o(),
        }
    }

    /// The master key, named as such (its hash is not shown: a weak
    /// master key's hash could be searched for).
    pub fn master() -> Self {
        Self {
            hashed_api_key: "master_key".into(),
            api_key_alias: "master_key".into(),
            ..Self::default()
        }
    }

    pub fn of(principal: &Principal) -> Option<Self> {
        let caller = principal.caller()?;
        let s = |v: Option<&String>| v.map_or_else(Box::default, |v| v.as_str().into());
        Some(Self {
            hashed_api_key: caller.key.token.as_str().into(),
            api_key_alias: s(caller.key.key_alias.as_ref()),
            team: s(caller.key.team_id.as_ref()),
            team_alias: s(caller.team.as_ref().and_then(|t| t.team_alias.as_ref())),
            user: s(caller.key.user_id.as_ref()),
        })
    }

    /// Whether these labels still describe `principal`'s key.
    pub fn describes(&self, principal: &Principal) -> bool {
        let Some(caller) = principal.caller() else {
            return true;
        };
        let same = |held: &str, now: Option<&String>| held == now.map_or("", String::as_str);
        same(&self.api_key_alias, caller.key.key_alias.as_ref())
            && same(&self.team, caller.key.team_id.as_ref())
            && same(
                &self.team_alias,
                caller.team.as_ref().and_then(|t| t.team_alias.as_ref()),
            )
            && same(&self.user, caller.key.user_id.as_ref())
    }
}

/// A deployment: LiteLLM's `model_group`, `litellm_model_name`,
/// `model_id`, `api_base` and `api_provider`.
#[derive(Debug, PartialEq)]
pub struct Place {
    pub model_group: Box<str>,
    pub litellm_model_name: Box<str>,
    pub model: Box<str>,
    pub model_id: Box<str>,
    pub api_base: Box<str>,
    pub api_provider: Box<str>,
    /// The `api_base` as configured, to tell a change without rewriting it.
    configured_base: Box<str>,
}

impl Place {
    pub fn of(d: &Deployment) -> Self {
        Self {
            model_group: d.model_group.as_str().into(),
            litellm_model_name: format!("{}/{}", d.provider_name, d.upstream_model).into(),
            model: d.upstream_model.as_str().into(),
            model_id: d.id.as_str().into(),
            api_base: shown_api_base(&d.api_base).into(),
            api_provider: d.provider_name.as_str().into(),
            configured_base: d.api_base.as_str().into(),
        }
    }

    pub fn describes(&self, d: &Deployment) -> bool {
        *self.model_group == *d.model_group
            && *self.model == *d.upstream_model
            && *self.api_provider == *d.provider_name
            && *self.configured_base == *d.api_base
    }

    pub fn unknown() -> Self {
        let u = || Box::<str>::from("unknown");
        Self {
            model_group: u(),
            litellm_model_name: u(),
            model: u(),
            model_id: u(),
            api_base: u(),
            api_provider: u(),
            configured_base: u(),
        }
    }
}

/// An `api_base` as metrics show it: scheme, host, port and path, without
/// user info, query or fragment (where a credential could hide).
pub fn shown_api_base(base: &str) -> String {
    let base = base.split(['?', '#']).next().unwrap_or_default();
    match base.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let host = authority.rsplit('@').next().unwrap_or_default();
            format!("{scheme}://{host}{path}")
        }
        None => base.to_owned(),
    }
}

/// A model name a client asked for: one the node serves, else `unknown`.
#[derive(Debug, PartialEq)]
pub struct Requested(pub Box<str>);

type Out<'a, 'b> = &'a mut LabelSetEncoder<'b>;
type Encoded = Result<(), std::fmt::Error>;

fn put(e: Out<'_, '_>, name: &str, value: &str) -> Encoded {
    if value.is_empty() {
        // Prometheus reads an empty label as an absent one.
        return Ok(());
    }
    EncodeLabel::encode(&(name, value), e.encode_label())
}

fn status(e: Out<'_, '_>, name: &str, code: u16) -> Encoded {
    EncodeLabel::encode(&(name, code), e.encode_label())
}

/// `hashed_api_key`, `api_key_alias`, and with `team` also `team` and
/// `team_alias`.
fn key(e: Out<'_, '_>, w: &Who, team: bool) -> Encoded {
    put(e, "hashed_api_key", &w.hashed_api_key)?;
    put(e, "api_key_alias", &w.api_key_alias)?;
    if team {
        put(e, "team", &w.team)?;
        put(e, "team_alias", &w.team_alias)?;
    }
    Ok(())
}

/// LiteLLM's user labels: the key's and team's, and `user`.
fn user(e: Out<'_, '_>, w: &Who) -> Encoded {
    key(e, w, true)?;
    put(e, "user", &w.user)
}

/// LiteLLM's deployment labels.
fn deployment(e: Out<'_, '_>, p: &Place) -> Encoded {
    put(e, "litellm_model_name", &p.litellm_model_name)?;
    put(e, "model_id", &p.model_id)?;
    put(e, "api_base", &p.api_base)?;
    put(e, "api_provider", &p.api_provider)
}

/// An exception's class as LiteLLM names it (`RateLimitError`,
/// `BudgetExceededError`, ...), as the request and fallback families
/// carry it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Class(pub &'static str);

/// A provider's error, as LiteLLM's deployment families name it:
/// `Provider.ErrorName` (`Openai.RateLimitError`).
fn provider_class(e: Out<'_, '_>, place: &Place, name: &str) -> Encoded {
    let mut chars = place.api_provider.chars();
    let provider: String = chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default();
    put(e, "exception_class", &format!("{provider}.{name}"))
}

/// `litellm_proxy_total_requests_metric`: who, what was asked, on which
/// route, and the answer's status.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ProxyRequest {
    pub who: Interned<Who>,
    pub asked: Interned<Requested>,
    pub route: &'static str,
    pub status: u16,
}

impl EncodeLabelSet for ProxyRequest {
    fn encode(&self, e: Out<'_, '_>) -> Encoded {
        user(e, &self.who.labels)?;
        put(e, "requested_model", &self.asked.labels.0)?;
        put(e, "route", self.route)?;
        status(e, "status_code", self.status)
    }
}

/// `litellm_proxy_failed_requests_metric`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ProxyFailure {
    pub who: Interned<Who>,
    pub asked: Interned<Requested>,
    pub route: &'static str,
    pub status: u16,
    pub class: Class,
}

impl EncodeLabelSet for ProxyFailure {
    fn encode(&self, e: Out<'_, '_>) -> Encoded {
        user(e, &self.who.labels)?;
        put(e, "requested_model", &self.asked.labels.0)?;
        put(e, "route", self.route)?;
        status(e, "exception_status", self.status)?;
        put(e, "exception_class", self.class.0)
    }
}

/// The spend, token and latency families: who, what was asked, and the
/// deployment that answered (`model`, `model_id`, `api_provider`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Served {
    pub who: Interned<Who>,
    pub asked: Interned<Requested>,
    pub place: Interned<Place>,
}

impl EncodeLabelSet for Served {
    fn encode(&self, e: Out<'_, '_>) -> Encoded {
        user(e, &self.who.labels)?;
        put(e, "requested_model", &self.asked.labels.0)?;
        let p = &self.place.labels;
        put(e, "model", &p.model)?;
        put(e, "model_id", &p.model_id)?;
        put(e, "api_provider", &p.api_provider)
    }
}

/// `litellm_overhead_latency_metric`: the deployment and its group, and
/// the key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Overhead {
    pub who: Interned<Who>,
    pub place: Interned<Place>,
}

impl EncodeLabelSet for Overhead {
    fn encode(&self, e: Out<'_, '_>) -> Encoded {
        put(e, "model_group", &self.place.labels.model_group)?;
        deployment(e, &self.place.labels)?;
        key(e, &self.who.labels, false)
    }
}

/// The per-call deployment families (`litellm_deployment_*_responses`,
/// `_total_requests`), with the failure's status and class when it failed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DeploymentCall {
    pub who: Interned<Who>,
    pub asked: Interned<Requested>,
    pub place: Interned<Place>,
    pub failure: Option<(u16, &'static str)>,
}

impl EncodeLabelSet for DeploymentCall {
    fn encode(&self, e: Out<'_, '_>) -> Encoded {
        put(e, "requested_model", &self.asked.labels.0)?;
        deployment(e, &self.place.labels)?;
        key(e, &self.who.labels, true)?;
        if let Some((code, name)) = self.failure {
            status(e, "exception_status", code)?;
            provider_class(e, &self.place.labels, name)?;
        }
        Ok(())
    }
}

/// A deployment alone (`litellm_deployment_state`), or with the status
/// that cooled it down (`litellm_deployment_cooled_down`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DeploymentOnly {
    pub place: Interned<Place>,
    pub status: Option<u16>,
}

impl EncodeLabelSet for DeploymentOnly {
    fn encode(&self, e: Out<'_, '_>) -> Encoded {
        deployment(e, &self.place.labels)?;
        self.status
            .map_or(Ok(()), |code| status(e, "exception_status", code))
    }
}

/// `litellm_deployment_successful_fallbacks` / `_failed_fallbacks`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Fallback {
    pub who: Interned<Who>,
    pub asked: Interned<Requested>,
    pub fallback: Interned<Requested>,
    /// What failed first: its status and class.
    pub first: (u16, Class),
}

impl EncodeLabelSet for Fallback {
    fn encode(&self, e: Out<'_, '_>) -> Encoded {
        put(e, "requested_model", &self.asked.labels.0)?;
        put(e, "fallback_model", &self.fallback.labels.0)?;
        key(e, &self.who.labels, true)?;
        status(e, "exception_status", self.first.0)?;
        put(e, "exception_class", self.first.1.0)
    }
}

/// `meridian_admission_decisions`: the decision, the limit that refused,
/// and the limit's mode.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Admission {
    pub decision: &'static str,
    pub reason: &'static str,
    pub mode: &'static str,
}

impl EncodeLabelSet for Admission {
    fn encode(&self, e: Out<'_, '_>) -> Encoded {
        put(e, "decision", self.decision)?;
        put(e, "reason", self.reason)?;
        put(e, "mode", self.mode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_bases_lose_credentials() {
        assert_eq!(
            shown_api_base("https://user:pw@example.com:8443/v1?key=secret#x"),
            "https://example.com:8443/v1"
        );
        assert_eq!(
            shown_api_base("http://127.0.0.1:9000"),
            "http://127.0.0.1:9000"
        );
        assert_eq!(shown_api_base("no-scheme?k=v"), "no-scheme");
    }

    #[test]
    fn the_interner_stops_at_its_cap() {
        let interner = Interner::new(2, Requested("other".into()));
        let a = interner.get("a", |_| true, || Requested("a".into()));
        let b = interner.get("b", |_| true, || Requested("b".into()));
        let c = interner.get("c", |_| true, || Requested("c".into()));
        assert_ne!(a, b);
        assert_eq!(c, *interner.overflow());
        // Held keys keep their labels past the cap; a changed one is
        // replaced in place.
        assert_eq!(interner.get("a", |_| true, || unreachable!()), a);
        let a2 = interner.get("a", |_| false, || Requested("a2".into()));
        assert_ne!(a2, a);
        assert_eq!(&*a2.labels.0, "a2");
        assert_eq!(interner.held().len(), 2);
    }
}
