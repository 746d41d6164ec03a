//! `/customer/*` and `/budget/*`, and what every entity's routes share:
//! creating and patching a record, deleting a list, the common fields
//! (teams, users, tags and the cluster have files of their own).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use meridian_consensus::metadata::{BudgetRecord, Command, CustomerRecord, KeyRecord, Kind};
use meridian_replication::crdt::Scope;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use super::policy;
use super::{
    Consistency, check_limits, id_list, object, propose, split_fields, string_field, validate,
};
use crate::api::ApiError;
use crate::api::extract::{Auth, JsonBody};
use crate::auth::Principal;
use crate::error::{Error, Result};
use crate::node::Node;

pub(super) type Reply = std::result::Result<Json<Value>, ApiError>;

const LIMITS: &[&str] = &[
    "max_budget",
    "budget_duration",
    "rpm_limit",
    "tpm_limit",
    "max_parallel_requests",
    "enforcement",
];

const CUSTOMER_FIELDS: &[&str] = &[
    "user_id",
    "alias",
    "budget_id",
    "allowed_model_region",
    "blocked",
    "metadata",
];
const CUSTOMER_IGNORED: &[&str] = &["default_model", "spend"];
const BUDGET_FIELDS: &[&str] = &["budget_id", "soft_budget", "model_max_budget"];
const BUDGET_IGNORED: &[&str] = &["budget_reset_at", "spend"];

pub(super) fn fields_with_limits(known: &[&'static str]) -> Vec<&'static str> {
    [known, LIMITS].concat()
}

/// Creates a `kind` record from checked fields (timestamps come from the
/// proposal).
pub(super) async fn create<T: DeserializeOwned>(
    node: &Node,
    kind: Kind,
    mut fields: Map<String, Value>,
    ignored: Vec<String>,
) -> Result<Value> {
    fields.insert("created_at".into(), json!(0));
    fields.insert("updated_at".into(), json!(0));
    validate::<T>(&fields)?;
    let mut out = propose(
        node,
        Command::Create {
            kind,
            record: Value::Object(fields),
        },
    )
    .await?
    .into_iter()
    .next()
    .unwrap_or(Value::Null);
    if !ignored.is_empty() {
        out["ignored_fields"] = json!(ignored);
    }
    Ok(out)
}

/// Updates fields of an existing record, checked against what it would become.
pub(super) async fn patch<T: DeserializeOwned>(
    node: &Node,
    kind: Kind,
    id: &str,
    patch: Map<String, Value>,
) -> Result<Value> {
    let current = node
        .metadata
        .read(|s| s.get_json(kind, id))
        .ok_or_else(|| Error::NotFound(format!("{} `{id}` does not exist", kind.noun())))?;
    let mut merged = match current {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    merged.extend(patch.clone());
    validate::<T>(&merged)?;
    let records = propose(
        node,
        Command::Update {
            kind,
            id: id.to_owned(),
            patch,
        },
    )
    .await?;
    Ok(records.into_iter().next().unwrap_or(Value::Null))
}

/// The keys of `all` that `which` picks, by token, as `/team/info` and
/// `/user/info` list them (filtered and sorted outside the metadata lock).
pub(super) fn key_summaries(
    all: Vec<Arc<KeyRecord>>,
    which: impl Fn(&KeyRecord) -> bool,
) -> Vec<Value> {
    let mut keys: Vec<_> = all.into_iter().filter(|k| which(k)).collect();
    keys.sort_unstable_by(|a, b| a.token.cmp(&b.token));
    keys.iter()
        .map(|k| json!({ "token": k.token, "key_name": k.key_name, "key_alias": k.key_alias, "user_id": k.user_id, "team_id": k.team_id }))
        .collect()
}

pub(super) fn new_id(node: &Node) -> String {
    node.rng.hex(16)
}

/// `POST /<kind>/delete {<field>: [ids]}` for admins; answers `{<reply>: ids}`.
pub(super) async fn delete_all(
    node: &Node,
    p: &Principal,
    body: Value,
    kind: Kind,
    field: &str,
    reply: &str,
) -> Reply {
    policy::admin(p, &format!("deleting a {}", kind.noun()))?;
    let ids = id_list(&object(body)?, field)?;
    propose(
        node,
        Command::Delete {
            kind,
            ids: ids.clone(),
        },
    )
    .await?;
    Ok(Json(json!({ reply: ids })))
}

/// `POST /<kind>/update {<id_field>, ...}` for admins: the known fields,
/// checked, as a patch of the record.
pub(super) async fn admin_update<T: DeserializeOwned>(
    node: &Node,
    p: &Principal,
    body: Value,
    kind: Kind,
    (id_field, known, ignored): (&str, &[&'static str], &[&str]),
    not_patchable: &[&str],
) -> Reply {
    policy::admin(p, &format!("updating a {}", kind.noun()))?;
    let body = object(body)?;
    let id = string_field(&body, id_field)?;
    let (mut fields, _) = split_fields(&body, &fields_with_limits(known), ignored)?;
    check_limits(&fields)?;
    fields.remove(id_field);
    for f in not_patchable {
        fields.remove(*f);
    }
    Ok(Json(patch::<T>(node, kind, &id, fields).await?))
}

// ----- customers -----

pub async fn customer_new(
    State(node): State<Arc<Node>>,
    Auth(p): Auth,
    JsonBody(body): JsonBody<Value>,
) -> Reply {
    policy::admin(&p, "creating a customer")?;
    let body = object(body)?;
    string_field(&body, "user_id")?;
    let (fields, ignored) = split_fields(
        &body,
        &fields_with_limits(CUSTOMER_FIELDS),
        CUSTOMER_IGNORED,
    )?;
    check_limits(&fields)?;
    Ok(Json(
        create::<CustomerRecord>(&node, Kind::Customer, fields, ignored).await?,
    ))
}

pub async fn customer_update(
    State(node): State<Arc<Node>>,
    Auth(p): Auth,
    JsonBody(body): JsonBody<Value>,
) -> Reply {
    let fields = ("user_id", CUSTOMER_FIELDS, CUSTOMER_IGNORED);
    admin_update::<CustomerRecord>(&node, &p, body, Kind::Customer, fields, &[]).await
}

pub async fn customer_delete(
    State(node): State<Arc<Node>>,
    Auth(p): Auth,
    JsonBody(body): JsonBody<Value>,
) -> Reply {
    delete_all(
        &node,
        &p,
        body,
        Kind::Customer,
        "user_ids",
        "deleted_customers",
    )
    .await
}

#[derive(Deserialize)]
pub struct CustomerQuery {
    end_user_id: Option<String>,
    #[serde(flatten)]
    consistency: Consistency,
}

pub async fn customer_info(
    State(node): State<Arc<Node>>,
    Auth(p): Auth,
    Query(q): Query<CustomerQuery>,
) -> Reply {
    policy::reader(&p, "reading customers")?;
    q.consistency.wait(&node).await?;
    let id = q
        .end_user_id
        .ok_or_else(|| Error::invalid("`end_user_id` is required", Some("end_user_id")))?;
    let customer = node
        .metadata
        .read(|s| s.customer(&id).cloned())
        .ok_or_else(|| Error::NotFound(format!("customer `{id}` does not exist")))?;
    let mut info = serde_json::to_value(&*customer).unwrap_or(Value::Null);
    super::with_spend(
        &node,
        &mut info,
        crate::admission::Entity {
            scope: Scope::Customer,
            id: &customer.user_id,
            limits: &customer.limits,
            budget_id: customer.budget_id.as_deref(),
        },
    );
    Ok(Json(info))
}

pub async fn customer_block(
    State(node): State<Arc<Node>>,
    Auth(p): Auth,
    JsonBody(body): JsonBody<Value>,
) -> Reply {
    customers_blocked(&node, &p, body, true).await
}

pub async fn customer_unblock(
    State(node): State<Arc<Node>>,
    Auth(p): Auth,
    JsonBody(body): JsonBody<Value>,
) -> Reply {
    customers_blocked(&node, &p, body, false).await
}

async fn customers_blocked(node: &Node, p: &Principal, body: Value, blocked: bool) -> Reply {
    policy::admin(p, "blocking customers")?;
    let ids = id_list(&object(body)?, "user_ids")?;
    let mut out = Vec::new();
    for id in ids {
        let mut fields = Map::new();
        fields.insert("blocked".into(), json!(blocked));
        out.extend(
            propose(
                node,
                Command::Update {
                    kind: Kind::Customer,
                    id,
                    patch: fields,
                },
            )
            .await?,
        );
    }
    Ok(Json(json!({ "blocked": blocked, "customers": out })))
}

// ----- budgets -----

pub async fn budget_new(
    State(node): State<Arc<Node>>,
    Auth(p): Auth,
    JsonBody(body): JsonBody<Value>,
) -> Reply {
    policy::admin(&p, "creating a budget")?;
    let body = object(body)?;
    let (mut fields, ignored) =
        split_fields(&body, &fields_with_limits(BUDGET_FIELDS), BUDGET_IGNORED)?;
    check_limits(&fields)?;
    if !fields.contains_key("budget_id") {
        fields.insert("budget_id".into(), json!(new_id(&node)));
    }
    Ok(Json(
        create::<BudgetRecord>(&node, Kind::Budget, fields, ignored).await?,
    ))
}

pub async fn budget_update(
    State(node): State<Arc<Node>>,
    Auth(p): Auth,
    JsonBody(body): JsonBody<Value>,
) -> Reply {
    let fields = ("budget_id", BUDGET_FIELDS, BUDGET_IGNORED);
    admin_update::<BudgetRecord>(&node, &p, body, Kind::Budget, fields, &[]).await
}

pub async fn budget_delete(
    State(node): State<Arc<Node>>,
    Auth(p): Auth,
    JsonBody(body): JsonBody<Value>,
) -> Reply {
    policy::admin(&p, "deleting a budget")?;
    let body = object(body)?;
    let id = string_field(&body, "id").or_else(|_| string_field(&body, "budget_id"))?;
    propose(
        &node,
        Command::Delete {
            kind: Kind::Budget,
            ids: vec![id.clone()],
        },
    )
    .await?;
    Ok(Json(json!({ "deleted_budgets": [id] })))
}

pub async fn budget_info(
    State(node): State<Arc<Node>>,
    Auth(p): Auth,
    JsonBody(body): JsonBody<Value>,
) -> Reply {
    policy::reader(&p, "reading budgets")?;
    let ids = id_list(&object(body)?, "budgets")?;
    let found: Vec<Value> = node.metadata.read(|s| {
        ids.iter()
            .filter_map(|id| {
                s.budget(id)
                    .map(|b| serde_json::to_value(&**b).unwrap_or(Value::Null))
            })
            .collect()
    });
    Ok(Json(Value::Array(found)))
}
