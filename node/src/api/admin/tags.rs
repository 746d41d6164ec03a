//! `/tag/*`: tags with budgets and limits, in LiteLLM's shapes. A tag's
//! spend is counted globally like any entity's (see `admission`); a tag
//! record gives it limits, enforced `available` or `strict` like a key's.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use meridian_consensus::metadata::{Command, Kind, TagRecord};
use meridian_replication::crdt::Scope;
use serde_json::{Map, Value, json};

use super::entities::{admin_update, create, fields_with_limits};
use super::policy;
use super::{Consistency, check_limits, id_list, object, propose, split_fields, string_field};
use crate::api::ApiError;
use crate::api::extract::{Auth, JsonBody};
use crate::error::Error;
use crate::node::Node;

type Reply = std::result::Result<Json<Value>, ApiError>;

const TAG_FIELDS: &[&str] = &[
    "name",
    "description",
    "models",
    "budget_id",
    "soft_budget",
    "metadata",
];
/// Accepted and not acted on: `model_info` is derived in LiteLLM, and
/// per-model budgets exist on keys only.
const TAG_IGNORED: &[&str] = &["model_info", "model_max_budget"];

/// `POST /tag/new {name, description?, models?, budget_id?, max_budget?,
/// budget_duration?, rpm_limit?, tpm_limit?, max_parallel_requests?,
/// soft_budget?, enforcement?}`.
pub async fn new(
    State(node): State<Arc<Node>>,
    Auth(p): Auth,
    JsonBody(body): JsonBody<Value>,
) -> Reply {
    policy::admin(&p, "creating a tag")?;
    let body = object(body)?;
    let name = string_field(&body, "name")?;
    crate::tags::check_name(&name, "name")?;
    let (mut fields, ignored) = split_fields(&body, &fields_with_limits(TAG_FIELDS), TAG_IGNORED)?;
    check_limits(&fields)?;
    fields.insert(
        "created_by".into(),
        json!(p.user_id().unwrap_or("master_key")),
    );
    let tag = create::<TagRecord>(&node, Kind::Tag, fields, ignored).await?;
    Ok(Json(json!({
        "message": format!("Tag {name} created successfully"),
        "tag": tag,
    })))
}

/// `POST /tag/update {name, ...}`: the fields given replace the tag's.
pub async fn update(
    State(node): State<Arc<Node>>,
    Auth(p): Auth,
    JsonBody(body): JsonBody<Value>,
) -> Reply {
    let name = body
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let fields = ("name", TAG_FIELDS, TAG_IGNORED);
    let Json(tag) =
        admin_update::<TagRecord>(&node, &p, body, Kind::Tag, fields, &["created_by"]).await?;
    Ok(Json(json!({
        "message": format!("Tag {name} updated successfully"),
        "tag": tag,
    })))
}

/// `POST /tag/delete {name}`.
pub async fn delete(
    State(node): State<Arc<Node>>,
    Auth(p): Auth,
    JsonBody(body): JsonBody<Value>,
) -> Reply {
    policy::admin(&p, "deleting a tag")?;
    let name = string_field(&object(body)?, "name")?;
    let records = propose(
        &node,
        Command::Delete {
            kind: Kind::Tag,
            ids: vec![name.clone()],
        },
    )
    .await?;
    if records.is_empty() {
        return Err(Error::NotFound(format!("Tag {name} not found")).into());
    }
    Ok(Json(
        json!({ "message": format!("Tag {name} deleted successfully") }),
    ))
}

/// `POST /tag/info {names: [..]}`: `{name: tag}` with each tag's global
/// spend in its current budget period; 404 naming any that do not exist.
pub async fn info(
    State(node): State<Arc<Node>>,
    Auth(p): Auth,
    JsonBody(body): JsonBody<Value>,
) -> Reply {
    policy::reader(&p, "reading tags")?;
    let names = id_list(&object(body)?, "names")?;
    let found: Vec<Arc<TagRecord>> = node
        .metadata
        .read(|s| names.iter().filter_map(|n| s.tag(n).cloned()).collect());
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| !found.iter().any(|t| &t.name == *n))
        .collect();
    if !missing.is_empty() {
        return Err(Error::NotFound(format!("Tags not found: {missing:?}")).into());
    }
    let out: Map<String, Value> = found
        .iter()
        .map(|t| (t.name.clone(), describe(&node, t)))
        .collect();
    Ok(Json(Value::Object(out)))
}

/// `GET /tag/list`: every tag, as `/tag/info` describes it.
pub async fn list(
    State(node): State<Arc<Node>>,
    Auth(p): Auth,
    Query(c): Query<Consistency>,
) -> Reply {
    policy::reader(&p, "listing tags")?;
    c.wait(&node).await?;
    let tags: Vec<Arc<TagRecord>> = node.metadata.read(|s| s.tags().cloned().collect());
    Ok(Json(Value::Array(
        tags.iter().map(|t| describe(&node, t)).collect(),
    )))
}

/// A tag as the info endpoints show it: the record, its spend, and its
/// limits again as LiteLLM's `litellm_budget_table`.
fn describe(node: &Node, tag: &TagRecord) -> Value {
    let mut info = serde_json::to_value(tag).unwrap_or(Value::Null);
    super::with_spend(
        node,
        &mut info,
        crate::admission::Entity {
            scope: Scope::Tag,
            id: &tag.name,
            limits: &tag.limits,
            budget_id: tag.budget_id.as_deref(),
        },
    );
    let l = &tag.limits;
    let has_budget = l.max_budget.is_some()
        || l.rpm_limit.is_some()
        || l.tpm_limit.is_some()
        || l.max_parallel_requests.is_some()
        || tag.soft_budget.is_some();
    if has_budget {
        info["litellm_budget_table"] = json!({
            "budget_id": tag.budget_id,
            "max_budget": l.max_budget,
            "soft_budget": tag.soft_budget,
            "budget_duration": l.budget_duration,
            "rpm_limit": l.rpm_limit,
            "tpm_limit": l.tpm_limit,
            "max_parallel_requests": l.max_parallel_requests,
        });
    }
    info
}
