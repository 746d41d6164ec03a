//! Authentication: who is calling, from the in-memory applied metadata — no I/O
//! per request. Keys are compared by SHA-256, never in clear. A key that is
//! blocked, deleted or expired, or whose team or user is blocked or gone, is
//! refused on this node as soon as that change is applied here.
//!
//! A caller's role comes only from records an admin wrote: the user record its
//! key names (`user_role`, changed only by admins) and the teams that list that
//! user as an admin. Who may set a key's `user_id` is decided in
//! `api/admin/policy/`.

use std::sync::Arc;

use http::HeaderMap;
use meridian_consensus::Region;
use meridian_consensus::metadata::{
    KeyRecord, KeyType, MetadataState, TeamRecord, UserRecord, UserRole,
};

use crate::error::{Error, Result};
use crate::secret::Secret;

/// The authenticated caller.
#[derive(Debug, Clone)]
pub enum Principal {
    /// Holder of the master key: may use every model and every endpoint.
    Master,
    /// A virtual key, with what it inherits at the time of the request.
    Key(Arc<Caller>),
}

#[derive(Debug, Clone)]
pub struct Caller {
    pub key: Arc<KeyRecord>,
    pub team: Option<Arc<TeamRecord>>,
    /// The user the key belongs to (`None`: a key of no user). A key whose
    /// user record is gone does not authenticate.
    pub user: Option<Arc<UserRecord>>,
    /// The user's role (`None` for a key of no user).
    pub role: Option<UserRole>,
}

impl Principal {
    /// Proxy admins (and the master key) may do everything.
    pub fn is_admin(&self) -> bool {
        match self {
            Principal::Master => true,
            Principal::Key(c) => c.role == Some(UserRole::ProxyAdmin),
        }
    }

    /// Admins and admin viewers may read everything.
    pub fn may_read_all(&self) -> bool {
        self.is_admin()
            || matches!(self, Principal::Key(c) if c.role == Some(UserRole::ProxyAdminViewer))
    }

    pub fn caller(&self) -> Option<&Caller> {
        match self {
            Principal::Master => None,
            Principal::Key(c) => Some(c),
        }
    }

    /// The caller's own user id, if its key belongs to a user.
    pub fn user_id(&self) -> Option<&str> {
        self.caller().and_then(|c| c.key.user_id.as_deref())
    }

    /// Whether the caller may call model group `group`: the key's own list,
    /// its team's and its user's, each empty = any; all three must allow it.
    pub fn may_use_model(&self, group: &str) -> bool {
        match self {
            Principal::Master => true,
            Principal::Key(c) => {
                allows(&c.key.models, group)
                    && c.team.as_ref().is_none_or(|t| allows(&t.models, group))
                    && c.user.as_ref().is_none_or(|u| allows(&u.models, group))
            }
        }
    }

    /// Regions the caller's requests may be served in (`None`: anywhere):
    /// what the key's policy and its team's policy both allow. Set in a key's
    /// or team's `metadata` as `allowed_model_region: "eu"` (LiteLLM's name)
    /// or `allowed_regions: ["eu-west-1", "eu-central-1"]`. A key's metadata
    /// can narrow its team's policy, never widen it. No routing decision,
    /// fallbacks included, goes outside it.
    pub fn residency(&self) -> Option<Vec<String>> {
        let Principal::Key(c) = self else { return None };
        let key = residency_of(c.key.metadata.get());
        let team = c.team.as_ref().and_then(|t| residency_of(t.metadata.get()));
        match (key, team) {
            (Some(k), Some(t)) => Some(intersect_regions(&k, &t)),
            (k, t) => k.or(t),
        }
    }

    /// The models the caller may use, said for a 403 message: the first of
    /// the key's, the team's and the user's lists that names any.
    pub fn allowed_models(&self) -> Vec<String> {
        let Principal::Key(c) = self else {
            return Vec::new();
        };
        [
            Some(&c.key.models),
            c.team.as_ref().map(|t| &t.models),
            c.user.as_ref().map(|u| &u.models),
        ]
        .into_iter()
        .flatten()
        .find(|list| !list.is_empty())
        .cloned()
        .unwrap_or_default()
    }

    /// Whether the key's `allowed_routes` / `key_type` admit `path`.
    pub fn may_call_route(&self, path: &str) -> bool {
        let Principal::Key(c) = self else { return true };
        let mut routes: Vec<&str> = c.key.allowed_routes.iter().map(String::as_str).collect();
        match c.key.key_type {
            Some(KeyType::LlmApi) => routes.push("llm_api_routes"),
            Some(KeyType::Management) => routes.push("management_routes"),
            Some(KeyType::ReadOnly) => routes.push("info_routes"),
            Some(KeyType::Default) | None => {}
        }
        routes.is_empty() || routes.iter().any(|r| route_matches(r, path))
    }
}

/// The regions that lie within some region of `a` and some region of `b`. A
/// region name lies within its prefixes (`eu-west-1` within `eu`), so a
/// region within one of each lies within the deeper of the two.
pub fn intersect_regions(a: &[String], b: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for x in a {
        for y in b {
            let deeper = if crate::router::region_within(x, y) {
                x
            } else if crate::router::region_within(y, x) {
                y
            } else {
                continue;
            };
            if !out.contains(deeper) {
                out.push(deeper.clone());
            }
        }
    }
    out
}

/// The residency policy a record's metadata sets, if any.
pub fn residency_of(
    metadata: Option<&serde_json::Map<String, serde_json::Value>>,
) -> Option<Vec<String>> {
    let m = metadata?;
    let mut regions: Vec<String> = Vec::new();
    if let Some(serde_json::Value::String(r)) = m.get("allowed_model_region") {
        regions.push(r.clone());
    }
    if let Some(serde_json::Value::Array(list)) = m.get("allowed_regions") {
        regions.extend(list.iter().filter_map(|v| v.as_str().map(str::to_owned)));
    }
    (!regions.is_empty() || m.contains_key("allowed_regions")).then_some(regions)
}

fn allows(list: &[String], group: &str) -> bool {
    list.is_empty()
        || list
            .iter()
            .any(|m| m == group || m == "*" || m == "all-proxy-models")
}

/// A route pattern: a LiteLLM route group, an exact path, or a `prefix*`.
fn route_matches(pattern: &str, path: &str) -> bool {
    let path = path
        .strip_prefix("/v1")
        .filter(|p| p.starts_with('/'))
        .unwrap_or(path);
    match pattern {
        "llm_api_routes" => [
            "/chat/completions",
            "/completions",
            "/embeddings",
            "/messages",
            "/models",
        ]
        .contains(&path),
        "info_routes" => path.ends_with("/info") || path.ends_with("/list") || path == "/models",
        "management_routes" => [
            "/key/",
            "/team/",
            "/user/",
            "/customer/",
            "/budget/",
            "/model/",
        ]
        .iter()
        .any(|p| path.starts_with(p)),
        p => match p.strip_suffix('*') {
            Some(prefix) => path.starts_with(prefix.strip_prefix("/v1").unwrap_or(prefix)),
            None => {
                path == p
                    .strip_prefix("/v1")
                    .filter(|x| x.starts_with('/'))
                    .unwrap_or(p)
            }
        },
    }
}

pub struct Authenticator {
    master_hash: [u8; 32],
}

impl Authenticator {
    pub fn new(master_key: &Secret) -> Self {
        Self {
            master_hash: master_key.sha256(),
        }
    }

    /// Resolves the caller. `now` is this node's wall clock, for expiry.
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        region: &Region,
        now: u64,
    ) -> Result<Principal> {
        let key = presented_key(headers).ok_or(Error::MissingKey)?;
        let hash = Secret::new(key).sha256();
        if hash == self.master_hash {
            return Ok(Principal::Master);
        }
        region.read(|state| resolve(state, &hash, now))
    }
}

fn resolve(state: &MetadataState, hash: &[u8; 32], now: u64) -> Result<Principal> {
    let key = state.key_by_hash(hash).ok_or(Error::InvalidKey)?.clone();
    // An admin's block holds even if a stale write cleared `blocked` after
    // it (a check made before the block, applied after).
    let ignore_block = meridian_bugs::on(meridian_bugs::Bug::IgnoreRemoteBlocks)
        && key
            .limits
            .home_region
            .as_deref()
            .is_some_and(|h| h != state.region());
    if (key.blocked || key.admin_blocked) && !ignore_block {
        return Err(Error::KeyRefused("this key is blocked".into()));
    }
    if key.expires.is_some_and(|t| t <= now) {
        return Err(Error::KeyRefused("this key has expired".into()));
    }
    let team = match &key.team_id {
        None => None,
        Some(id) => {
            let team = state.team(id).ok_or_else(|| {
                Error::KeyRefused(format!("this key's team `{id}` no longer exists"))
            })?;
            if team.blocked {
                return Err(Error::KeyRefused(format!(
                    "this key's team `{id}` is blocked"
                )));
            }
            Some(team.clone())
        }
    };
    let user = match &key.user_id {
        None => None,
        // A deleted user's keys stop working with it, everywhere the
        // deletion is applied.
        Some(id) => Some(state.user(id).cloned().ok_or_else(|| {
            Error::KeyRefused(format!("this key's user `{id}` no longer exists"))
        })?),
    };
    let role = user.as_ref().map(|u| u.user_role);
    Ok(Principal::Key(Arc::new(Caller {
        key,
        team,
        user,
        role,
    })))
}

/// The key as OpenAI clients (`Authorization: Bearer`), Anthropic clients
/// (`x-api-key`) and Azure clients (`api-key`) send it.
fn presented_key(headers: &HeaderMap) -> Option<&str> {
    let value = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(auth) = value("authorization") {
        let key = match auth.split_once(char::is_whitespace) {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
            _ if auth.eq_ignore_ascii_case("bearer") => "",
            _ => auth,
        };
        if !key.is_empty() {
            return Some(key);
        }
    }
    value("x-api-key")
        .or_else(|| value("api-key"))
        .filter(|k| !k.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(name: &'static str, value: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, http::HeaderValue::from_static(value));
        h
    }

    #[test]
    fn presented_key_forms() {
        assert_eq!(
            presented_key(&headers("authorization", "Bearer sk-1")),
            Some("sk-1")
        );
        assert_eq!(
            presented_key(&headers("authorization", "bearer  sk-1 ")),
            Some("sk-1")
        );
        assert_eq!(presented_key(&headers("x-api-key", "sk-2")), Some("sk-2"));
        assert_eq!(presented_key(&headers("api-key", "sk-3")), Some("sk-3"));
        assert_eq!(presented_key(&headers("authorization", "Bearer ")), None);
        assert_eq!(presented_key(&HeaderMap::new()), None);
    }

    #[test]
    fn residency_of_key_and_team_intersect() {
        let v = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            intersect_regions(&v(&["eu"]), &v(&["eu-west-1"])),
            v(&["eu-west-1"])
        );
        assert_eq!(
            intersect_regions(&v(&["eu-west-1"]), &v(&["eu"])),
            v(&["eu-west-1"])
        );
        assert_eq!(
            intersect_regions(&v(&["us", "eu-west"]), &v(&["eu"])),
            v(&["eu-west"]),
            "a key naming a region outside its team's policy gains nothing"
        );
        assert!(intersect_regions(&v(&["us"]), &v(&["eu"])).is_empty());
    }

    #[test]
    fn routes() {
        assert!(route_matches("llm_api_routes", "/v1/chat/completions"));
        assert!(!route_matches("llm_api_routes", "/key/generate"));
        assert!(route_matches("management_routes", "/key/generate"));
        assert!(route_matches("info_routes", "/key/info"));
        assert!(route_matches("/key/*", "/key/list"));
        assert!(route_matches("/chat/completions", "/v1/chat/completions"));
        assert!(!route_matches("/chat/completions", "/v1/embeddings"));
    }
}
