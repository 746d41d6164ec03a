//! The field rules of the role table: what a non-admin may set on a new
//! key, and how it may change an existing key or its team — only ever
//! tighter (`docs/security.md`, "Fields: who may set what").

use std::collections::BTreeMap;

use meridian_consensus::metadata::{KeyRecord, Limits, MetadataState, TeamRecord};
use serde_json::{Map, Value};

use super::{Role, admin_or_team_admin, deny, member_of, require, role};
use crate::auth::Principal;
use crate::error::{Error, Result};

/// Checks a new key's fields for `p` and, for non-admins, fills in its
/// owner: themselves, or (for a team admin) a plain member of that team,
/// whose key is then LLM-only.
pub fn create_key(
    state: &MetadataState,
    p: &Principal,
    fields: &mut Map<String, Value>,
) -> Result<()> {
    // Who may create comes first: a caller that may not learns nothing of
    // which users, teams and tags exist.
    if !p.is_admin() {
        require(role(p) == Role::InternalUser, p, || {
            "generating keys needs the proxy_admin or internal_user role".to_owned()
        })?;
    }
    let team_id = fields
        .get("team_id")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let owner = fields
        .get("user_id")
        .and_then(Value::as_str)
        .map(str::to_owned);
    if !p.is_admin() {
        // A non-admin's key is its own: a key in someone else's name would
        // spend their budget and count against their keys.
        let me = p.user_id().unwrap_or_default().to_owned();
        require(owner.as_deref().is_none_or(|o| o == me), p, || {
            format!("only admins may create keys for other users; you are `{me}`")
        })?;
        fields.insert("user_id".into(), Value::String(me));
        if let Some(t) = &team_id {
            require(member_of(state, p, t), p, || {
                format!("you are not a member of team `{t}`")
            })?;
        }
        for field in ADMIN_ONLY_ON_CREATE {
            if fields.get(*field).is_some_and(|v| !v.is_null()) {
                return Err(deny(
                    format!("setting `{field}` on a key needs the proxy_admin role"),
                    p,
                ));
            }
        }
    }
    if let Some(u) = &owner
        && state.user(u).is_none()
    {
        return Err(Error::invalid(
            format!("user `{u}` does not exist"),
            Some("user_id"),
        ));
    }
    if let Some(t) = &team_id
        && state.team(t).is_none()
    {
        return Err(Error::invalid(
            format!("team `{t}` does not exist"),
            Some("team_id"),
        ));
    }
    check_tags_exist(state, fields)?;
    if p.is_admin() {
        return Ok(());
    }
    let team = team_id.as_deref().and_then(|t| state.team(t));
    record_size(p, fields)?;
    tighter_than(p, &Limits::default(), team, &KeyLimits::default(), fields)
}

/// The largest record (as JSON) a non-admin may write: its fields are each
/// bounded, and so is their sum.
pub const MAX_RECORD_BYTES: usize = 32 * 1024;

fn record_size(p: &Principal, fields: &Map<String, Value>) -> Result<()> {
    let size = serde_json::to_vec(fields).map_or(usize::MAX, |v| v.len());
    require(size <= MAX_RECORD_BYTES, p, || {
        format!(
            "a record a non-admin writes is at most {MAX_RECORD_BYTES} bytes as JSON; this one is {size}"
        )
    })
}

/// Fields only admins set on a new key (a non-admin's new key takes the
/// default).
const ADMIN_ONLY_ON_CREATE: &[&str] = &["budget_id", "enforcement", "blocked"];

/// Fields only admins change on an existing key.
const ADMIN_ONLY_ON_UPDATE: &[&str] = &[
    "user_id",
    "team_id",
    "budget_id",
    "enforcement",
    "blocked",
    "allowed_routes",
    "key_type",
    "budget_duration",
];

/// Checks a patch of an existing key's fields (and its new expiry) for `p`.
pub fn update_key(
    state: &MetadataState,
    p: &Principal,
    current: &KeyRecord,
    patch: &Map<String, Value>,
) -> Result<()> {
    if let Some(Value::String(u)) = patch.get("user_id")
        && state.user(u).is_none()
    {
        return Err(Error::invalid(
            format!("user `{u}` does not exist"),
            Some("user_id"),
        ));
    }
    if let Some(Value::String(t)) = patch.get("team_id")
        && state.team(t).is_none()
    {
        return Err(Error::invalid(
            format!("team `{t}` does not exist"),
            Some("team_id"),
        ));
    }
    check_tags_exist(state, patch)?;
    if p.is_admin() {
        return Ok(());
    }
    for field in ADMIN_ONLY_ON_UPDATE {
        if let Some(v) = patch.get(*field)
            && !same_as_current(current, field, v)
        {
            return Err(deny(
                format!("changing a key's `{field}` needs the proxy_admin role"),
                p,
            ));
        }
    }
    if let Some(Value::Number(expires)) = patch.get("expires") {
        // Adding an expiry to a key without one tightens it.
        let later = current
            .expires
            .is_some_and(|e| expires.as_u64().is_none_or(|x| x > e));
        require(!later, p, || {
            "a key's expiry may be brought forward, not pushed back or removed, except by an admin"
                .to_owned()
        })?;
    }
    if let Some(models) = patch.get("models") {
        let new: Vec<&str> = string_list(models);
        let narrower = current.models.is_empty()
            || (!new.is_empty() && new.iter().all(|m| current.models.iter().any(|c| c == m)));
        require(narrower, p, || {
            "a key's `models` may be narrowed, not widened, except by an admin".to_owned()
        })?;
    }
    if let Some(tags) = patch.get("tags") {
        let new = string_list(tags);
        require(
            current.tags.iter().all(|t| new.contains(&t.as_str())),
            p,
            || {
                "tags may be added to a key, not removed, except by an admin (its spend counts against them)".to_owned()
            },
        )?;
    }
    if let Some(metadata) = patch.get("metadata") {
        residency_not_widened(p, current.metadata.get(), metadata)?;
    }
    if let Some(Value::Object(per_model)) = patch.get("model_max_budget") {
        // A budget's period is part of it: $10 a month is not $10 a second.
        for (model, was) in &current.model_max_budget {
            let period = per_model.get(model).and_then(|b| b.get("time_period"));
            let same = match (&was.time_period, period) {
                (None, None | Some(Value::Null)) => true,
                (Some(w), Some(Value::String(n))) => w == n,
                _ => false,
            };
            require(same, p, || {
                format!("`model_max_budget.{model}.time_period` is changed by admins only")
            })?;
        }
    }
    let mut merged = serde_json::to_value(current)
        .ok()
        .and_then(|v| v.as_object().cloned())
        .unwrap_or_default();
    merged.extend(patch.clone());
    record_size(p, &merged)?;
    let team = current.team_id.as_deref().and_then(|t| state.team(t));
    let key = KeyLimits {
        rpm: current.model_rpm_limit.clone(),
        tpm: current.model_tpm_limit.clone(),
        budget: current
            .model_max_budget
            .iter()
            .map(|(m, b)| (m.clone(), b.budget_limit))
            .collect(),
    };
    tighter_than(p, &current.limits, team, &key, patch)
}

/// Whether `value` is what `current` already holds for `field` (a body may
/// repeat what a key already says; `null` repeats an unset field).
fn same_as_current(current: &KeyRecord, field: &str, value: &Value) -> bool {
    let now = serde_json::to_value(current)
        .ok()
        .and_then(|v| v.get(field).cloned())
        .unwrap_or(Value::Null);
    now == *value
}

fn string_list(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// A key's own limits, as the tighten-only rule compares them.
#[derive(Default)]
struct KeyLimits {
    rpm: BTreeMap<String, u64>,
    tpm: BTreeMap<String, u64>,
    budget: BTreeMap<String, f64>,
}

/// A non-admin's limits must be no looser than the key's current ones (none
/// may be removed) and than its team's.
fn tighter_than(
    p: &Principal,
    current: &Limits,
    team: Option<&std::sync::Arc<TeamRecord>>,
    key: &KeyLimits,
    fields: &Map<String, Value>,
) -> Result<()> {
    let team_limits = team.map(|t| &t.limits);
    let scalar = |name: &str, now: Option<f64>, cap: Option<f64>| -> Result<()> {
        let Some(v) = fields.get(name) else {
            return Ok(());
        };
        let bound = [now, cap].into_iter().flatten().reduce(f64::min);
        let ok = match (v.as_f64(), bound) {
            (_, None) => true,
            (Some(x), Some(b)) => x <= b,
            (None, Some(_)) => false,
        };
        require(ok, p, || match bound {
            Some(b) => format!(
                "`{name}` may be at most {b} (the key's or its team's); only admins raise or remove limits"
            ),
            None => String::new(),
        })
    };
    let as_f = |x: Option<u64>| x.map(|v| v as f64);
    scalar(
        "max_budget",
        current.max_budget,
        team_limits.and_then(|l| l.max_budget),
    )?;
    scalar(
        "rpm_limit",
        as_f(current.rpm_limit),
        team_limits.and_then(|l| as_f(l.rpm_limit)),
    )?;
    scalar(
        "tpm_limit",
        as_f(current.tpm_limit),
        team_limits.and_then(|l| as_f(l.tpm_limit)),
    )?;
    scalar(
        "max_parallel_requests",
        as_f(current.max_parallel_requests),
        team_limits.and_then(|l| as_f(l.max_parallel_requests)),
    )?;
    per_model(
        p,
        fields,
        "model_rpm_limit",
        &key.rpm
            .iter()
            .map(|(k, v)| (k.clone(), *v as f64))
            .collect(),
        |v| v.as_f64(),
    )?;
    per_model(
        p,
        fields,
        "model_tpm_limit",
        &key.tpm
            .iter()
            .map(|(k, v)| (k.clone(), *v as f64))
            .collect(),
        |v| v.as_f64(),
    )?;
    per_model(p, fields, "model_max_budget", &key.budget, |v| {
        v.get("budget_limit").and_then(Value::as_f64)
    })
}

/// Per-model limits: each existing entry stays, no higher than it was.
fn per_model(
    p: &Principal,
    fields: &Map<String, Value>,
    name: &str,
    current: &BTreeMap<String, f64>,
    amount: impl Fn(&Value) -> Option<f64>,
) -> Result<()> {
    let Some(v) = fields.get(name) else {
        return Ok(());
    };
    let new = v.as_object();
    for (model, was) in current {
        let now = new.and_then(|m| m.get(model)).and_then(&amount);
        require(now.is_some_and(|x| x <= *was), p, || {
            format!("`{name}.{model}` may be lowered, not raised or removed, except by an admin")
        })?;
    }
    Ok(())
}

const RESIDENCY_KEYS: &[&str] = &["allowed_model_region", "allowed_regions"];

/// A non-admin may add a residency policy to a key or narrow it, never
/// widen or remove it.
fn residency_not_widened(
    p: &Principal,
    current: Option<&Map<String, Value>>,
    new: &Value,
) -> Result<()> {
    let Some(before) = crate::auth::residency_of(current) else {
        return Ok(());
    };
    let after = crate::auth::residency_of(new.as_object());
    let narrower = after.is_some_and(|a| {
        a.iter()
            .all(|r| before.iter().any(|b| crate::router::region_within(r, b)))
    });
    require(narrower, p, || {
        format!(
            "a key's residency ({}) may be narrowed, not widened or removed, except by an admin",
            RESIDENCY_KEYS.join(", ")
        )
    })
}

/// Fields a team admin may change on its team; the rest (models, limits,
/// budgets, tags, block) are admins'.
const TEAM_ADMIN_FIELDS: &[&str] = &["team_alias", "metadata"];

/// Checks a patch of team `team` for `p`.
pub fn update_team(
    state: &MetadataState,
    p: &Principal,
    team: &TeamRecord,
    patch: &Map<String, Value>,
) -> Result<()> {
    check_tags_exist(state, patch)?;
    if p.is_admin() {
        return Ok(());
    }
    admin_or_team_admin(state, p, &team.team_id)?;
    if let Some(field) = patch
        .keys()
        .find(|f| !TEAM_ADMIN_FIELDS.contains(&f.as_str()))
    {
        return Err(deny(
            format!(
                "changing a team's `{field}` needs the proxy_admin role (a team admin may change team_alias and metadata)"
            ),
            p,
        ));
    }
    if let Some(metadata) = patch.get("metadata") {
        let before = crate::auth::residency_of(team.metadata.get());
        let after = crate::auth::residency_of(metadata.as_object());
        require(before == after, p, || {
            format!(
                "a team's residency ({}) is set by admins",
                RESIDENCY_KEYS.join(", ")
            )
        })?;
    }
    Ok(())
}

/// Tags named on a key or team: at most [`crate::tags::MAX_REQUEST_TAGS`],
/// each a valid name, each an existing tag record — spend is charged to them,
/// and a caller must not mint counters for names an admin never made.
fn check_tags_exist(state: &MetadataState, fields: &Map<String, Value>) -> Result<()> {
    let Some(Value::Array(tags)) = fields.get("tags") else {
        return Ok(());
    };
    if tags.len() > crate::tags::MAX_REQUEST_TAGS {
        return Err(Error::invalid(
            format!("at most {} tags", crate::tags::MAX_REQUEST_TAGS),
            Some("tags"),
        ));
    }
    for (i, t) in tags.iter().enumerate() {
        let param = format!("tags[{i}]");
        let name = t
            .as_str()
            .ok_or_else(|| Error::invalid("a tag must be a string", Some(&param)))?;
        crate::tags::check_name(name, &param)?;
        if state.tag(name).is_none() {
            return Err(Error::invalid(
                format!("tag `{name}` does not exist (create it with /tag/new)"),
                Some(&param),
            ));
        }
    }
    Ok(())
}
