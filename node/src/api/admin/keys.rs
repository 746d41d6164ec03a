//! `/key/*`: virtual keys. A key is shown in clear once, when generated or
//! regenerated; after that only its SHA-256 (`token`) and `key_name`
//! (`sk-...abcd`) exist anywhere.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use meridian_consensus::metadata::{Command, KeyRecord, Kind};
use meridian_replication::crdt::Scope;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::policy::{self, KeyAction};
use super::{
    Consistency, check_limits, duration_secs, object, propose, rfc3339, split_fields, validate,
};
use crate::api::ApiError;
use crate::api::extract::{Auth, JsonBody};
use crate::auth::Principal;
use crate::error::{Error, Result};
use crate::node::Node;
use crate::secret::Secret;

/// Body fields that become the key's settings.
const FIELDS: &[&str] = &[
    "key_alias",
    "models",
    "max_budget",
    "budget_duration",
    "rpm_limit",
    "tpm_limit",
    "max_parallel_requests",
    "model_rpm_limit",
    "model_tpm_limit",
    "model_max_budget",
    "team_id",
    "user_id",
    "budget_id",
    "metadata",
    "tags",
    "blocked",
    "allowed_routes",
    "key_type",
    "enforcement",
];
/// LiteLLM fields accepted and not acted on (named back in `ignored_fields`).
const IGNORED: &[&str] = &[
    "spend",
    "soft_budget",
    "aliases",
    "config",
    "permissions",
    "guardrails",
    "send_invite_email",
    "object_permission",
    "prompts",
    "enforced_params",
    "allowed_cache_controls",
    "organization_id",
    "rpm_limit_type",
    "tpm_limit_type",
    "auto_rotate",
    "rotation_interval",
];

/// A key as the caller gives it: in clear (`sk-...`) or as its token.
fn token_of(key: &str) -> String {
    let is_token = key.len() == 64
        && key
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if is_token {
        key.to_owned()
    } else {
        hex::encode(Secret::new(key).sha256())
    }
}

fn key_name(key: &str) -> String {
    let tail: String = key
        .chars()
        .rev()
        .take(4)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("sk-...{tail}")
}

/// A record as the API shows it: `expires` as a date, like LiteLLM.
fn present(mut record: Value) -> Value {
    if let Some(secs) = record.get("expires").and_then(Value::as_u64) {
        record["expires"] = json!(rfc3339(secs));
    } else if let Some(obj) = record.as_object_mut() {
        obj.insert("expires".into(), Value::Null);
    }
    record
}

/// The key a command left behind, as the API shows it, with the LiteLLM
/// fields that were accepted but not acted on.
fn answer(records: Vec<Value>, ignored: &[String]) -> Value {
    let mut out = present(records.into_iter().next().unwrap_or(Value::Null));
    if !ignored.is_empty() {
        out["ignored_fields"] = json!(ignored);
    }
    out
}

fn existing(node: &Node, token: &str) -> Result<Arc<KeyRecord>> {
    node.metadata
        .read(|s| s.key(token).cloned())
        .ok_or_else(|| Error::NotFound("key not found".into()))
}

/// When a key made at `now` (since the epoch) for `secs` seconds expires, in
/// whole Unix seconds. Rounded up: expiry is checked in whole seconds, so a
/// key made late in a second must not lose most of its first one.
fn expiry(now: std::time::Duration, secs: u64) -> u64 {
    u64::try_from(now.as_millis().div_ceil(1000))
        .unwrap_or(u64::MAX)
        .saturating_add(secs)
}

fn expires_from(node: &Node, body: &Map<String, Value>) -> Result<Option<Value>> {
    match body.get("duration") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(d)) => match duration_secs(d) {
            Some(secs) if secs > 0 => Ok(Some(json!(expiry(node.clock.since_epoch(), secs)))),
            _ => Err(Error::invalid(
                format!("duration `{d}` is not a period like 30s, 30m, 30h or 30d"),
                Some("duration"),
            )),
        },
        Some(_) => Err(Error::invalid(
            "`duration` must be a string like \"30d\"",
            Some("duration"),
        )),
    }
}

pub async fn generate(
    State(node): State<Arc<Node>>,
    Auth(p): Auth,
    JsonBody(body): JsonBody<Value>,
) -> Result<Json<Value>, ApiError> {
    let body = object(body)?;
    let (mut fields, ignored) =
        split_fields(&body, &[FIELDS, &["key", "duration"]].concat(), IGNORED)?;
    fields.remove("key");
    fields.remove("duration");
    check_limits(&fields)?;
    node.metadata.read(|s| {
        policy::create_key(s, &p, &mut fields)?;
        let owner = fields.get("user_id").and_then(Value::as_str);
        policy::check_key_count(s, &p, owner)
    })?;
    node.keys_made.count(&p, node.now_ms())?;
    let key = match body.get("key") {
        None | Some(Value::Null) => format!("sk-{}", node.rng.hex(16)),
        Some(Value::String(k)) if k.starts_with("sk-") && k.len() >= 8 => k.clone(),
        Some(_) => {
            return Err(Error::invalid(
                "a custom `key` must be a string starting with `sk-`, at least 8 characters",
                Some("key"),
            )
            .into());
        }
    };
    if let Some(expires) = expires_from(&node, &body)? {
        fields.insert("expires".into(), expires);
    }
    let token = hex::encode(Secret::new(&key).sha256());
    fields.insert("token".into(), json!(token));
    fields.insert("key_name".into(), json!(key_name(&key)));
    fields.insert(
        "created_by".into(),
        json!(p.user_id().unwrap_or("master_key")),
    );
    fields.insert("created_at".into(), json!(0));
    fields.insert("updated_at".into(), json!(0));
    validate::<KeyRecord>(&fields)?;
    let records = propose(
        &node,
        Command::Create {
            kind: Kind::Key,
            record: Value::Object(fields),
        },
    )
    .await?;
    let mut out = answer(records, &ignored);
    out["key"] = json!(key);
    Ok(Json(out))
}

pub async fn update(
    State(node): State<Arc<Node>>,
    Auth(p): Auth,
    JsonBody(body): JsonBody<Value>,
) -> Result<Json<Value>, ApiError> {
    let body = object(body)?;
    let key = super::string_field(&body, "key")?;
    let (mut patch, ignored) =
        split_fields(&body, &[FIELDS, &["key", "duration"]].concat(), IGNORED)?;
    patch.remove("key");
    patch.remove("duration");
    check_limits(&patch)?;
    let token = token_of(&key);
    let current = existing(&node, &token)?;
    if let Some(expires) = expires_from(&node, &body)? {
        patch.insert("expires".into(), expires);
    }
    node.metadata.read(|s| {
        policy::manage_key(s, &p, &current, KeyAction::Update)?;
        policy::update_key(s, &p, &current, &patch)?;
        policy::check_history(s, &p, Kind::Key, &token)
    })?;
    // A non-admin's patch carries only what it changes: a field repeated
    // from a stale read must not undo an admin's change made meanwhile.
    if !p.is_admin() {
        let now = serde_json::to_value(&*current).unwrap_or(Value::Null);
        patch.retain(|field, value| now.get(field).unwrap_or(&Value::Null) != value);
    }
    // An admin's block is lifted only by an admin.
    if p.is_admin()
        && let Some(blocked) = patch.get("blocked").cloned()
    {
        patch.insert("admin_blocked".into(), blocked);
    }
    // The patched record must still be a valid key.
    let mut merged = match serde_json::to_value(&*current) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    };
    merged.extend(patch.clone());
    validate::<KeyRecord>(&merged)?;
    let records = propose(
        &node,
        Command::Update {
            kind: Kind::Key,
            id: token,
            patch,
        },
    )
    .await?;
    Ok(Json(answer(records, &ignored)))
}

pub async fn delete(
    State(node): State<Arc<Node>>,
    Auth(p): Auth,
    JsonBody(body): JsonBody<Value>,
) -> Result<Json<Value>, ApiError> {
    let body = object(body)?;
    // Callers that may delete nothing are turned away before any work.
    if !p.is_admin() && policy::role(&p) != policy::Role::InternalUser {
        return Err(Error::Forbidden(format!(
            "deleting keys needs the proxy_admin or internal_user role; {}",
            policy::describe(&p)
        ))
        .into());
    }
    let (given, tokens): (Vec<String>, Vec<String>) = if body.contains_key("keys") {
        let keys = super::id_list(&body, "keys")?;
        let tokens = keys.iter().map(|k| token_of(k)).collect();
        (keys, tokens)
    } else if body.contains_key("key_aliases") {
        let aliases = super::id_list(&body, "key_aliases")?;
        let wanted: std::collections::HashSet<&str> = aliases.iter().map(String::as_str).collect();
        let tokens = node
            .metadata
            .read(|s| s.key_snapshot())
            .into_iter()
            .filter(|k| k.key_alias.as_deref().is_some_and(|a| wanted.contains(a)))
            .map(|k| k.token.clone())
            .collect::<Vec<_>>();
        (aliases, tokens)
    } else {
        return Err(Error::invalid(
            "give `keys` (keys or tokens) or `key_aliases`",
            Some("keys"),
        )
        .into());
    };
    for token in &tokens {
        let record = existing(&node, token)?;
        node.metadata
            .read(|s| policy::manage_key(s, &p, &record, KeyAction::Delete))?;
    }
    if tokens.is_empty() {
        return Err(Error::NotFound("no key matches".into()).into());
    }
    propose(
        &node,
        Command::Delete {
            kind: Kind::Key,
            ids: tokens,
        },
    )
    .await?;
    Ok(Json(json!({ "deleted_keys": given })))
}

#[derive(Deserialize)]
pub struct InfoQuery {
    key: Option<String>,
    #[serde(flatten)]
    consistency: Consistency,
}

pub async fn info(
    State(node): State<Arc<Node>>,
    Auth(p): Auth,
    Query(q): Query<InfoQuery>,
) -> Result<Json<Value>, ApiError> {
    q.consistency.wait(&node).await?;
    let token = match (&q.key, p.caller()) {
        (Some(k), _) => token_of(k),
        (None, Some(c)) => c.key.token.clone(),
        (None, None) => {
            return Err(
                Error::invalid("`key` is required with the master key", Some("key")).into(),
            );
        }
    };
    let record = existing(&node, &token)?;
    if !node.metadata.read(|s| policy::see_key(s, &p, &record)) {
        return Err(Error::Forbidden(format!(
            "this key is visible to admins, admin viewers, its owner and its team's admins; {}",
            policy::describe(&p)
        ))
        .into());
    }
    let mut info = present(serde_json::to_value(&*record).unwrap_or(Value::Null));
    super::with_spend(
        &node,
        &mut info,
        crate::admission::Entity {
            scope: Scope::Key,
            id: &record.token,
            limits: &record.limits,
            budget_id: record.budget_id.as_deref(),
        },
    );
    Ok(Json(json!({ "key": token, "info": info })))
}

#[derive(Deserialize)]
pub struct ListQuery {
    page: Option<usize>,
    size: Option<usize>,
    user_id: Option<String>,
    team_id: Option<String>,
    key_alias: Option<String>,
    return_full_object: Option<bool>,
    #[serde(flatten)]
    consistency: Consistency,
}

pub async fn list(
    State(node): State<Arc<Node>>,
    Auth(p): Auth,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    q.consistency.wait(&node).await?;
    let size = q.size.unwrap_or(10).clamp(1, 100);
    let page = q.page.unwrap_or(1).max(1);
    // Under the state's lock only pointer copies are made; the filtering,
    // ordering and serializing happen after it is released.
    let (all, reader) = node
        .metadata
        .read(|s| (s.key_snapshot(), policy::KeyReader::new(s, &p)));
    let mut visible: Vec<Arc<KeyRecord>> = all
        .into_iter()
        .filter(|k| reader.sees(k))
        .filter(|k| {
            q.user_id
                .as_ref()
                .is_none_or(|u| k.user_id.as_ref() == Some(u))
        })
        .filter(|k| {
            q.team_id
                .as_ref()
                .is_none_or(|t| k.team_id.as_ref() == Some(t))
        })
        .filter(|k| {
            q.key_alias
                .as_ref()
                .is_none_or(|a| k.key_alias.as_ref() == Some(a))
        })
        .collect();
    visible.sort_unstable_by(|a, b| a.token.cmp(&b.token));
    let total = visible.len();
    let items: Vec<Value> = visible
        .into_iter()
        .skip((page - 1).saturating_mul(size))
        .take(size)
        .map(|k| {
            if q.return_full_object.unwrap_or(false) {
                present(serde_json::to_value(&*k).unwrap_or(Value::Null))
            } else {
                json!(k.token)
            }
        })
        .collect();
    Ok(Json(json!({
        "keys": items,
        "total_count": total,
        "current_page": page,
        "total_pages": total.div_ceil(size),
    })))
}

pub async fn regenerate(
    State(node): State<Arc<Node>>,
    Auth(p): Auth,
    JsonBody(body): JsonBody<Value>,
) -> Result<Json<Value>, ApiError> {
    let body = object(body)?;
    let key = super::string_field(&body, "key")?;
    let new_key = match body.get("new_key") {
        None | Some(Value::Null) => None,
        Some(Value::String(k)) if k.starts_with("sk-") && k.len() >= 8 => Some(k.clone()),
        Some(_) => {
            return Err(Error::invalid(
                "`new_key` must start with `sk-`, at least 8 characters",
                Some("new_key"),
            )
            .into());
        }
    };
    regenerate_key(&node, &p, &key, new_key)
        .await
        .map(Json)
        .map_err(ApiError::from)
}

pub async fn regenerate_path(
    State(node): State<Arc<Node>>,
    Auth(p): Auth,
    Path(key): Path<String>,
) -> Result<Json<Value>, ApiError> {
    regenerate_key(&node, &p, &key, None)
        .await
        .map(Json)
        .map_err(ApiError::from)
}

async fn regenerate_key(
    node: &Node,
    p: &Principal,
    key: &str,
    new_key: Option<String>,
) -> Result<Value> {
    let old_token = token_of(key);
    let record = existing(node, &old_token)?;
    node.metadata
        .read(|s| policy::manage_key(s, p, &record, KeyAction::Regenerate))?;
    node.keys_made.count(p, node.now_ms())?;
    let new_key = new_key.unwrap_or_else(|| format!("sk-{}", node.rng.hex(16)));
    let command = Command::Regenerate {
        old_token,
        new_token: hex::encode(Secret::new(&new_key).sha256()),
        key_name: key_name(&new_key),
    };
    let records = propose(node, command).await?;
    let mut out = answer(records, &[]);
    out["key"] = json!(new_key);
    Ok(out)
}

pub async fn block(
    State(node): State<Arc<Node>>,
    Auth(p): Auth,
    JsonBody(body): JsonBody<Value>,
) -> Result<Json<Value>, ApiError> {
    set_blocked(&node, &p, body, true)
        .await
        .map(Json)
        .map_err(ApiError::from)
}

pub async fn unblock(
    State(node): State<Arc<Node>>,
    Auth(p): Auth,
    JsonBody(body): JsonBody<Value>,
) -> Result<Json<Value>, ApiError> {
    set_blocked(&node, &p, body, false)
        .await
        .map(Json)
        .map_err(ApiError::from)
}

async fn set_blocked(node: &Node, p: &Principal, body: Value, blocked: bool) -> Result<Value> {
    let body = object(body)?;
    let token = token_of(&super::string_field(&body, "key")?);
    let record = existing(node, &token)?;
    let action = if blocked {
        KeyAction::Block
    } else {
        KeyAction::Unblock
    };
    node.metadata.read(|s| {
        policy::manage_key(s, p, &record, action)?;
        policy::check_history(s, p, Kind::Key, &token)
    })?;
    let mut patch = Map::new();
    patch.insert("blocked".into(), json!(blocked));
    // An admin's block is lifted only by an admin; an admin's unblock clears
    // it, and a team admin's block is the team admin's.
    if p.is_admin() {
        patch.insert("admin_blocked".into(), json!(blocked));
    }
    let records = propose(
        node,
        Command::Update {
            kind: Kind::Key,
            id: token,
            patch,
        },
    )
    .await?;
    Ok(answer(records, &[]))
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_key_lives_at_least_as_long_as_asked() {
        use std::time::Duration;
        // Made at 100.95 s for 1 s: checked in whole seconds, it must still
        // be valid at 101.9 s (expired when the clock's second reaches it).
        let expires = expiry(Duration::from_millis(100_950), 1);
        assert!(expires > 101, "expires at {expires}: 50 ms of life");
        assert_eq!(expiry(Duration::from_secs(100), 1), 101);
    }
    use super::*;

    #[test]
    fn tokens_and_names() {
        let t = token_of("sk-abc");
        assert_eq!(t.len(), 64);
        assert_eq!(token_of(&t), t, "a token is taken as is");
        assert_eq!(key_name("sk-0123456789"), "sk-...6789");
        assert_eq!(
            present(json!({ "expires": 0 }))["expires"],
            "1970-01-01T00:00:00Z"
        );
        assert_eq!(present(json!({}))["expires"], Value::Null);
    }
}
