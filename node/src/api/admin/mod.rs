//! The admin API on every node, with LiteLLM's paths and bodies. Writes are
//! Raft proposals (forwarded to the leader by the region); reads come from this
//! node's applied state, or after a read-index barrier with
//! `?consistency=linearizable`.
//!
//! Who may do what is decided in `policy/` alone (the role table of
//! `docs/security.md`); everything it refuses is a 403 saying what was
//! missing.

mod cluster;
mod entities;
mod keys;
mod models;
pub mod policy;
mod spend;
mod tags;
mod teams;
mod users;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::node::Node;
use meridian_consensus::metadata::{Command, Outcome, Refusal};

pub fn routes() -> Router<Arc<Node>> {
    Router::new()
        .route("/key/generate", post(keys::generate))
        .route("/key/update", post(keys::update))
        .route("/key/delete", post(keys::delete))
        .route("/key/info", get(keys::info))
        .route("/key/list", get(keys::list))
        .route("/key/regenerate", post(keys::regenerate))
        .route("/key/{key}/regenerate", post(keys::regenerate_path))
        .route("/key/block", post(keys::block))
        .route("/key/unblock", post(keys::unblock))
        .route("/team/new", post(teams::team_new))
        .route("/team/update", post(teams::team_update))
        .route("/team/delete", post(teams::team_delete))
        .route("/team/info", get(teams::team_info))
        .route("/team/list", get(teams::team_list))
        .route("/team/member_add", post(teams::team_member_add))
        .route("/team/member_delete", post(teams::team_member_delete))
        .route("/team/block", post(teams::team_block))
        .route("/team/unblock", post(teams::team_unblock))
        .route("/user/new", post(users::user_new))
        .route("/user/update", post(users::user_update))
        .route("/user/delete", post(users::user_delete))
        .route("/user/info", get(users::user_info))
        .route("/user/list", get(users::user_list))
        .route("/customer/new", post(entities::customer_new))
        .route("/customer/update", post(entities::customer_update))
        .route("/customer/delete", post(entities::customer_delete))
        .route("/customer/info", get(entities::customer_info))
        .route("/customer/block", post(entities::customer_block))
        .route("/customer/unblock", post(entities::customer_unblock))
        .route("/tag/new", post(tags::new))
        .route("/tag/update", post(tags::update))
        .route("/tag/delete", post(tags::delete))
        .route("/tag/info", post(tags::info))
        .route("/tag/list", get(tags::list))
        .route("/budget/new", post(entities::budget_new))
        .route("/budget/update", post(entities::budget_update))
        .route("/budget/delete", post(entities::budget_delete))
        .route("/budget/info", post(entities::budget_info))
        .route("/model/new", post(models::model_new))
        .route("/model/update", post(models::model_update))
        .route("/model/delete", post(models::model_delete))
        .route("/model/info", get(models::model_info))
        .route("/v1/model/info", get(models::model_info))
        .route("/spend/logs", get(spend::logs))
        .route("/cluster/status", get(cluster::cluster_status))
        .route("/cluster/add_node", post(cluster::cluster_add_node))
        .route("/cluster/remove_node", post(cluster::cluster_remove_node))
}

/// `?consistency=linearizable` on reads.
#[derive(Debug, Default, Deserialize)]
pub struct Consistency {
    #[serde(default)]
    consistency: Option<String>,
}

impl Consistency {
    /// Waits for a read-index barrier when the caller asked for one.
    pub async fn wait(&self, node: &Node) -> Result<()> {
        match self.consistency.as_deref() {
            None | Some("local") => Ok(()),
            Some("linearizable") => Ok(node.metadata.linearizable().await?),
            Some(other) => Err(Error::invalid(
                format!("consistency must be `local` or `linearizable`, not `{other}`"),
                Some("consistency"),
            )),
        }
    }
}

/// Proposes `command` and turns the state machine's refusal into an error.
pub async fn propose(node: &Node, command: Command) -> Result<Vec<Value>> {
    match node.metadata.propose(command, node.now_ms()).await? {
        Outcome::Done { records, .. } => Ok(records),
        Outcome::Refused {
            reason: Refusal::NotFound,
            message,
        } => Err(Error::NotFound(message)),
        Outcome::Refused {
            reason: Refusal::AlreadyExists,
            message,
        } => Err(Error::Conflict(message)),
        Outcome::Refused {
            reason: Refusal::Invalid,
            message,
        } => Err(Error::invalid(message, None)),
    }
}

/// A JSON body that must be an object.
pub fn object(body: Value) -> Result<Map<String, Value>> {
    match body {
        Value::Object(m) => Ok(m),
        _ => Err(Error::invalid(
            "the request body must be a JSON object",
            None,
        )),
    }
}

/// A required string field.
pub fn string_field(body: &Map<String, Value>, field: &str) -> Result<String> {
    match body.get(field) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(Value::String(_)) | None | Some(Value::Null) => Err(Error::invalid(
            format!("`{field}` is required"),
            Some(field),
        )),
        Some(_) => Err(Error::invalid(
            format!("`{field}` must be a string"),
            Some(field),
        )),
    }
}

/// A list of ids: `field` as a list of strings.
pub fn id_list(body: &Map<String, Value>, field: &str) -> Result<Vec<String>> {
    match body.get(field) {
        Some(Value::Array(items)) if items.len() > MAX_LIST_ITEMS => Err(Error::invalid(
            format!("`{field}` names at most {MAX_LIST_ITEMS} ids"),
            Some(field),
        )),
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_str().map(str::to_owned).ok_or_else(|| {
                    Error::invalid(
                        format!("`{field}[{i}]` must be a string"),
                        Some(&format!("{field}[{i}]")),
                    )
                })
            })
            .collect(),
        Some(_) => Err(Error::invalid(
            format!("`{field}` must be a non-empty list of strings"),
            Some(field),
        )),
        None => Err(Error::invalid(
            format!("`{field}` is required"),
            Some(field),
        )),
    }
}

/// Checks the body's fields: `known` become part of the record; `ignored` are
/// LiteLLM fields Meridian accepts and does not act on (returned to the caller
/// by name); anything else is a 400 naming the field.
pub fn split_fields(
    body: &Map<String, Value>,
    known: &[&str],
    ignored: &[&str],
) -> Result<(Map<String, Value>, Vec<String>)> {
    let mut fields = Map::new();
    let mut skipped = Vec::new();
    for (k, v) in body {
        if known.contains(&k.as_str()) {
            fields.insert(k.clone(), v.clone());
        } else if ignored.contains(&k.as_str()) {
            skipped.push(k.clone());
        } else {
            return Err(Error::invalid(format!("unknown field `{k}`"), Some(k)));
        }
    }
    Ok((fields, skipped))
}

/// Checks that `fields` make a valid record of type `T` (so a typo'd type is a
/// 400 naming the field, before anything is proposed).
pub fn validate<T: serde::de::DeserializeOwned>(record: &Map<String, Value>) -> Result<()> {
    // Limits are flattened into every record, which hides their path from
    // serde; check them on their own first so errors still name the field.
    const LIMIT_FIELDS: &[&str] = &[
        "max_budget",
        "budget_duration",
        "rpm_limit",
        "tpm_limit",
        "max_parallel_requests",
        "enforcement",
    ];
    let limits: Map<String, Value> = record
        .iter()
        .filter(|(k, _)| LIMIT_FIELDS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    check::<meridian_consensus::metadata::Limits>(Value::Object(limits))?;
    check::<T>(Value::Object(record.clone()))
}

fn check<T: serde::de::DeserializeOwned>(value: Value) -> Result<()> {
    serde_path_to_error::deserialize::<_, T>(value)
        .map(drop)
        .map_err(|e| {
            let path = e.path().to_string();
            let param = (path != ".").then_some(path);
            let message = match &param {
                Some(p) => format!("`{p}`: {}", e.inner()),
                None => e.inner().to_string(),
            };
            Error::InvalidRequest { message, param }
        })
}

/// The largest `metadata` object a record may carry, as JSON.
pub const MAX_METADATA_BYTES: usize = 16 * 1024;
/// The longest string, and the longest list, a record field may hold.
pub const MAX_FIELD_BYTES: usize = 1024;
pub const MAX_LIST_ITEMS: usize = 1000;

/// Checks the sizes of a record's fields: everything a caller writes into
/// the replicated metadata is bounded (it is held on every node of every
/// region, and in every snapshot).
fn check_sizes(fields: &Map<String, Value>) -> Result<()> {
    for (name, value) in fields {
        let too_big = match value {
            Value::String(s) => s.len() > MAX_FIELD_BYTES,
            Value::Array(items) => {
                items.len() > MAX_LIST_ITEMS
                    || items
                        .iter()
                        .any(|i| i.as_str().is_some_and(|s| s.len() > MAX_FIELD_BYTES))
            }
            Value::Object(_) => {
                serde_json::to_vec(value).map_or(true, |v| v.len() > MAX_METADATA_BYTES)
            }
            _ => false,
        };
        if too_big {
            return Err(Error::invalid(
                format!(
                    "`{name}` is too large (strings at most {MAX_FIELD_BYTES} bytes, lists at most {MAX_LIST_ITEMS} items, objects at most {MAX_METADATA_BYTES} bytes as JSON)"
                ),
                Some(name),
            ));
        }
    }
    Ok(())
}

/// Checks the meaning of limit fields (their types are checked by
/// `validate`): amounts are finite and not negative, and every field is
/// within its size bound.
pub fn check_limits(fields: &Map<String, Value>) -> Result<()> {
    check_sizes(fields)?;
    for name in ["max_budget", "soft_budget"] {
        if let Some(v) = fields.get(name).filter(|v| !v.is_null()) {
            let ok = v.as_f64().is_some_and(|x| x.is_finite() && x >= 0.0);
            if !ok {
                return Err(Error::invalid(
                    format!("`{name}` must be a number of dollars, not negative"),
                    Some(name),
                ));
            }
        }
    }
    if let Some(Value::Object(per_model)) = fields.get("model_max_budget") {
        for (model, b) in per_model {
            let ok = b
                .get("budget_limit")
                .and_then(Value::as_f64)
                .is_some_and(|x| x.is_finite() && x >= 0.0);
            if !ok {
                let param = format!("model_max_budget.{model}.budget_limit");
                return Err(Error::invalid(
                    format!("`{param}` must be a number of dollars, not negative"),
                    Some(&param),
                ));
            }
        }
    }
    if let Some(d) = fields.get("budget_duration").and_then(Value::as_str)
        && !valid_budget_duration(d)
    {
        return Err(Error::invalid(
            format!("budget_duration `{d}` is not a period like 30s, 30m, 30h, 30d or 1mo"),
            Some("budget_duration"),
        ));
    }
    Ok(())
}

/// `30s`, `30m`, `30h`, `30d`, `2w` → seconds.
pub fn duration_secs(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = text.split_at(split);
    let n: u64 = n.parse().ok()?;
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return None,
    };
    n.checked_mul(unit)
}

/// A `budget_duration`: a fixed period or `Nmo` (calendar months).
pub fn valid_budget_duration(text: &str) -> bool {
    text.parse::<meridian_replication::crdt::PeriodSpec>()
        .is_ok()
}

/// Adds the entity's global spend (see `admission::spend_report`) to `info`.
pub fn with_spend(node: &Node, info: &mut Value, entity: crate::admission::Entity<'_>) {
    let report = node
        .metadata
        .read(|s| crate::admission::spend_report(&node.counters, s, &entity, node.now_ms()));
    if let (Some(info), Value::Object(report)) = (info.as_object_mut(), report) {
        info.extend(report);
    }
}

pub use crate::clock::rfc3339;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_dates() {
        assert_eq!(duration_secs("30s"), Some(30));
        assert_eq!(duration_secs("2h"), Some(7200));
        assert_eq!(duration_secs("30d"), Some(2_592_000));
        assert_eq!(duration_secs("1mo"), None);
        assert_eq!(duration_secs("d"), None);
        assert!(
            valid_budget_duration("1mo")
                && valid_budget_duration("30d")
                && !valid_budget_duration("0d")
        );
        assert!(!valid_budget_duration("monthly"));
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_320_997), "2026-11-22T04:16:37Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
