//! `/team/*`, `/user/*`, `/customer/*`, `/budget/*` and `/cluster/*`
//! (tags are in `tags.rs`).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use meridian_consensus::metadata::{
    BudgetRecord, Command, CustomerRecord, KeyRecord, Kind, TeamRecord, TeamRole, UserRecord,
};
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

type Reply = std::result::Result<Json<Value>, ApiError>;

const LIMITS: &[&str] = &[
    "max_budget",
    "budget_duration",
    "rpm_limit",
    "tpm_limit",
    "max_parallel_requests",
    "enforcement",
];
const TEAM_FIELDS: &[&str] = &[
    "team_id",
    "team_alias",
    "models",
    "budget_id",
    "blocked",
    "metadata",
    "tags",
    "members_with_roles",
];
const TEAM_IGNORED: &[&str] = &[
    "organization_id",
    "model_aliases",
    "guardrails",
    "team_member_budget",
    "object_permission",
    "admins",
    "members",
    "team_member_permissions",
];
const USER_FIELDS: &[&str] = &[
    "user_id",
    "user_email",
    "user_alias",
    "user_role",
    "models",
    "budget_id",
    "metadata",
    "teams",
    "auto_create_key",
    "key_alias",
];
const USER_IGNORED: &[&str] = &[
    "send_invite_email",
    "organization_id",
    "spend",
    "sso_user_id",
    "object_permission",
    "prompts",
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
fn key_summaries(all: Vec<Arc<KeyRecord>>, which: impl Fn(&KeyRecord) -> bool) -> Vec<Value> {
    let mut keys: Vec<_> = all.into_iter().filter(|k| which(k)).collect();
    keys.sort_unstable_by(|a, b| a.token.cmp(&b.token));
    keys.iter()
        .map(|k| json!({ "token": k.token, "key_name": k.key_name, "key_alias": k.key_alias, "user_id": k.user_id, "team_id": k.team_id }))
        .collect()
}

fn new_id(node: &Node) -> String {
    node.rng.hex(16)
}

/// `POST /<kind>/delete {<field>: [ids]}` for admins; answers `{<reply>: ids}`.
async fn delete_all(
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

// ----- teams -----

fn members_from(value: &Value) -> Result<Map<String, Value>> {
    let items = value.as_array().ok_or_else(|| {
        Error::invalid(
            "`members_with_roles` must be a list of {role, user_id}",
            Some("members_with_roles"),
        )
    })?;
    let mut members = Map::new();
    for (i, m) in items.iter().enumerate() {
        let (user, role) = member(m, &format!("members_with_roles[{i}]"))?;
        members.insert(user, json!(role));
    }
    Ok(members)
}

/// `{ "user_id": .., "role": "admin" | "user" }`
fn member(m: &Value, path: &str) -> Result<(String, TeamRole)> {
    let user = m
        .get("user_id")
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty())
        .ok_or_else(|| {
            Error::invalid(
                format!("`{path}.user_id` is required"),
                Some(&format!("{path}.user_id")),
            )
        })?;
    let role = match m.get("role").and_then(Value::as_str) {
        None | Some("user") => TeamRole::User,
        Some("admin") => TeamRole::Admin,
        Some(other) => {
            return Err(Error::invalid(
                format!("`{path}.role` must be `admin` or `user`, not `{other}`"),
                Some(&format!("{path}.role")),
            ));
        }
    };
    Ok((user.to_owned(), role))
}

pub async fn team_new(
    State(node): State<Arc<Node>>,
    Auth(p): Auth,
    JsonBody(body): JsonBody<Value>,
) -> Reply {
    policy::admin(&p, "creating a team")?;
    let body = object(body)?;
    let (mut fields, ignored) =
        split_fields(&body, &fields_with_limits(TEAM_FIELDS), TEAM_IGNORED)?;
    check_limits(&fields)?;
    if let Some(m) = fields.remove("members_with_roles") {
        fields.insert("members".into(), Value::Object(members_from(&m)?));
    }
    if !fields.contains_key("team_id") {
        fields.insert("team_id".into(), json!(new_id(&node)));
    }
    Ok(Json(
        create::<TeamRecord>(&node, Kind::Team, fields, ignored).await?,
    ))
}

pub async fn team_update(
    State(node): State<Arc<Node>>,
    Auth(p): Auth,
    JsonBody(body): JsonBody<Value>,
) -> Reply {
    let body = object(body)?;
    let team_id = string_field(&body, "team_id")?;
    node.metadata
        .read(|s| policy::admin_or_team_admin(s, &p, &team_id))?;
    let (mut fields, _) = split_fields(&body, &fields_with_limits(TEAM_FIELDS), TEAM_IGNORED)?;
    check_limits(&fields)?;
    fields.remove("team_id");
    if fields.remove("members_with_roles").is_some() {
        return Err(Error::invalid(
            "change members with /team/member_add and /team/member_delete",
            Some("members_with_roles"),
        )
        .into());
    }
    let team = node
        .metadata
        .read(|s| s.team(&team_id).cloned())
        .ok_or_else(|| Error::NotFound(format!("team `{team_id}` does not exist")))?;
    node.metadata.read(|s| {
        policy::update_team(s, &p, &team, &fields)?;
        policy::check_history(s, &p, Kind::Team, &team_id)
    })?;
    Ok(Json(
        patch::<TeamRecord>(&node, Kind::Team, &team_id, fields).await?,
    ))
}

pub async fn team_delete(
    State(node): State<Arc<Node>>,
    Auth(p): Auth,
    JsonBody(body): JsonBody<Value>,
) -> Reply {
    delete_all(&node, &p, body, Kind::Team, "team_ids", "deleted_teams").await
}

#[derive(Deserialize)]
pub struct TeamQuery {
    team_id: Option<String>,
    #[serde(flatten)]
    consistency: Consistency,
}

pub async fn team_info(
    State(node): State<Arc<Node>>,
    Auth(p): Auth,
    Query(q): Query<TeamQuery>,
) -> Reply {
    q.consistency.wait(&node).await?;
    let team_id = q
        .team_id
        .ok_or_else(|| Error::invalid("`team_id` is required", Some("team_id")))?;
    let (team, all) = node
        .metadata
        .read(|s| (s.team(&team_id).cloned(), s.key_snapshot()));
    let keys = key_summaries(all, |k| k.team_id.as_deref() == Some(team_id.as_str()));
    let team = team.ok_or_else(|| Error::NotFound(format!("team `{team_id}` does not exist")))?;
    let member = p.user_id().is_some_and(|u| team.members.contains_key(u));
    if !(p.may_read_all() || member) {
        return Err(Error::Forbidden(format!(
            "team `{team_id}` is visible to its members and admins; {}",
            policy::describe(&p)
        ))
        .into());
    }
    let mut info = serde_json::to_value(&*team).unwrap_or(Value::Null);
    super::with_spend(
        &node,
        &mut info,
        Scope::Team,
        &team.team_id,
        &team.limits,
        team.budget_id.as_deref(),
    );
    Ok(Json(
        json!({ "team_id": team_id, "team_info": info, "keys": keys }),
    ))
}

pub async fn team_list(
    State(node): State<Arc<Node>>,
    Auth(p): Auth,
    Query(c): Query<Consistency>,
) -> Reply {
    c.wait(&node).await?;
    let teams: Vec<Value> = node.metadata.read(|s| {
        s.teams()
            .filter(|t| p.may_read_all() || p.user_id().is_some_and(|u| t.members.contains_key(u)))
            .map(|t| serde_json::to_value(&**t).unwrap_or(Value::Null))
            .collect()
    });
    Ok(Json(Value::Array(teams)))
}

pub async fn team_member_add(
    State(node): State<Arc<Node>>,
    Auth(p): Auth,
    JsonBody(body): JsonBody<Value>,
) -> Reply {
    let body = object(body)?;
    let team_id = string_field(&body, "team_id")?;
    node.metadata
        .read(|s| policy::admin_or_team_admin(s, &p, &team_id))?;
    let members = match body.get("member") {
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, m)| member(m, &format!("member[{i}]")))
            .collect::<Result<Vec<_>>>()?,
        Some(m @ Value::Object(_)) => vec![member(m, "member")?],
        _ => {
            return Err(Error::invalid(
                "`member` must be {role, user_id} or a list of them",
                Some("member"),
            )
            .into());
        }
    };
    node.metadata.read(|s| {
        policy::check_history(s, &p, Kind::Team, &team_id)?;
        members
            .iter()
            .try_for_each(|(user, _)| policy::check_member(s, &p, &team_id, user))
    })?;
    let mut last = Value::Null;
    for (user_id, role) in members {
        let records = propose(
            &node,
            Command::AddMember {
                team_id: team_id.clone(),
                user_id,
                role,
            },
        )
        .await?;
        last = records.into_iter().next().unwrap_or(Value::Null);
    }
    Ok(Json(last))
}

pub async fn team_member_delete(
    State(node): State<Arc<Node>>,
    Auth(p): Auth,
    JsonBody(body): JsonBody<Value>,
) -> Reply {
    let body = object(body)?;
    let team_id = string_field(&body, "team_id")?;
    node.metadata
        .read(|s| policy::admin_or_team_admin(s, &p, &team_id))?;
    let user_id = string_field(&body, "user_id")?;
    let records = propose(&node, Command::RemoveMember { team_id, user_id }).await?;
    Ok(Json(records.into_iter().next().unwrap_or(Value::Null)))
}

pub async fn team_block(
    State(node): State<Arc<Node>>,
    Auth(p): Auth,
    JsonBody(body): JsonBody<Value>,
) -> Reply {
    set_flag(&node, &p, body, Kind::Team, "team_id", "blocked", true).await
}

pub async fn team_unblock(
    State(node): State<Arc<Node>>,
    Auth(p): Auth,
    JsonBody(body): JsonBody<Value>,
) -> Reply {
    set_flag(&node, &p, body, Kind::Team, "team_id", "blocked", false).await
}

async fn set_flag(
    node: &Node,
    p: &Principal,
    body: Value,
    kind: Kind,
    id_field: &str,
    flag: &str,
    value: bool,
) -> Reply {
    policy::admin(p, &format!("changing `{flag}` of a {}", kind.noun()))?;
    let id = string_field(&object(body)?, id_field)?;
    let mut fields = Map::new();
    fields.insert(flag.into(), json!(value));
    let records = propose(
        node,
        Command::Update {
            kind,
            id,
            patch: fields,
        },
    )
    .await?;
    Ok(Json(records.into_iter().next().unwrap_or(Value::Null)))
}

// ----- users -----

pub async fn user_new(
    State(node): State<Arc<Node>>,
    Auth(p): Auth,
    JsonBody(body): JsonBody<Value>,
) -> Reply {
    policy::admin(&p, "creating a user")?;
    let body = object(body)?;
    let (mut fields, ignored) =
        split_fields(&body, &fields_with_limits(USER_FIELDS), USER_IGNORED)?;
    check_limits(&fields)?;
    let teams = match fields.remove("teams") {
        None | Some(Value::Null) => Vec::new(),
        Some(_) => id_list(&body, "teams")?,
    };
    let auto_key = match fields.remove("auto_create_key") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => b,
        Some(_) => {
            return Err(Error::invalid(
                "`auto_create_key` must be true or false",
                Some("auto_create_key"),
            )
            .into());
        }
    };
    let key_alias = fields.remove("key_alias");
    for t in &teams {
        if node.metadata.read(|s| s.team(t).is_none()) {
            return Err(Error::invalid(format!("team `{t}` does not exist"), Some("teams")).into());
        }
    }
    if !fields.contains_key("user_id") {
        fields.insert("user_id".into(), json!(new_id(&node)));
    }
    let user_id = fields
        .get("user_id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let mut out = create::<UserRecord>(&node, Kind::User, fields, ignored).await?;
    for team_id in teams {
        propose(
            &node,
            Command::AddMember {
                team_id,
                user_id: user_id.clone(),
                role: TeamRole::User,
            },
        )
        .await?;
    }
    if auto_key {
        let key = format!("sk-{}", node.rng.hex(16));
        let mut record = Map::new();
        record.insert(
            "token".into(),
            json!(hex::encode(crate::secret::Secret::new(&key).sha256())),
        );
        record.insert(
            "key_name".into(),
            json!(format!("sk-...{}", &key[key.len().saturating_sub(4)..])),
        );
        record.insert("user_id".into(), json!(user_id));
        record.insert(
            "models".into(),
            out.get("models").cloned().unwrap_or(json!([])),
        );
        record.insert(
            "created_by".into(),
            json!(p.user_id().unwrap_or("master_key")),
        );
        if let Some(alias) = key_alias {
            record.insert("key_alias".into(), alias);
        }
        create::<KeyRecord>(&node, Kind::Key, record, Vec::new()).await?;
        out["key"] = json!(key);
    }
    Ok(Json(out))
}

pub async fn user_update(
    State(node): State<Arc<Node>>,
    Auth(p): Auth,
    JsonBody(body): JsonBody<Value>,
) -> Reply {
    let fields = ("user_id", USER_FIELDS, USER_IGNORED);
    admin_update::<UserRecord>(
        &node,
        &p,
        body,
        Kind::User,
        fields,
        &["teams", "auto_create_key", "key_alias"],
    )
    .await
}

pub async fn user_delete(
    State(node): State<Arc<Node>>,
    Auth(p): Auth,
    JsonBody(body): JsonBody<Value>,
) -> Reply {
    delete_all(&node, &p, body, Kind::User, "user_ids", "deleted_users").await
}

#[derive(Deserialize)]
pub struct UserQuery {
    user_id: Option<String>,
    #[serde(flatten)]
    consistency: Consistency,
}

pub async fn user_info(
    State(node): State<Arc<Node>>,
    Auth(p): Auth,
    Query(q): Query<UserQuery>,
) -> Reply {
    q.consistency.wait(&node).await?;
    let user_id = match (q.user_id, p.user_id()) {
        (Some(u), _) => u,
        (None, Some(me)) => me.to_owned(),
        (None, None) => return Err(Error::invalid("`user_id` is required", Some("user_id")).into()),
    };
    if !(p.may_read_all() || p.user_id() == Some(user_id.as_str())) {
        return Err(Error::Forbidden(format!(
            "user `{user_id}` is visible to itself and admins; {}",
            policy::describe(&p)
        ))
        .into());
    }
    let found = node.metadata.read(|s| {
        s.user(&user_id).cloned().map(|user| {
            let keys = s.key_snapshot();
            let teams: Vec<Value> = s
                .teams()
                .filter(|t| t.members.contains_key(&user_id))
                .map(|t| json!({ "team_id": t.team_id, "team_alias": t.team_alias, "role": t.members.get(&user_id) }))
                .collect();
            (user, keys, teams)
        })
    });
    let (user, all, teams) =
        found.ok_or_else(|| Error::NotFound(format!("user `{user_id}` does not exist")))?;
    let keys = key_summaries(all, |k| k.user_id.as_deref() == Some(user_id.as_str()));
    let mut info = serde_json::to_value(&*user).unwrap_or(Value::Null);
    super::with_spend(
        &node,
        &mut info,
        Scope::User,
        &user.user_id,
        &user.limits,
        user.budget_id.as_deref(),
    );
    Ok(Json(
        json!({ "user_id": user_id, "user_info": info, "keys": keys, "teams": teams }),
    ))
}

#[derive(Deserialize)]
pub struct PageQuery {
    page: Option<usize>,
    page_size: Option<usize>,
    #[serde(flatten)]
    consistency: Consistency,
}

pub async fn user_list(
    State(node): State<Arc<Node>>,
    Auth(p): Auth,
    Query(q): Query<PageQuery>,
) -> Reply {
    policy::reader(&p, "listing users")?;
    q.consistency.wait(&node).await?;
    let size = q.page_size.unwrap_or(25).clamp(1, 100);
    let page = q.page.unwrap_or(1).max(1);
    let (total, users) = node.metadata.read(|s| {
        let all: Vec<Value> = s
            .users()
            .map(|u| serde_json::to_value(&**u).unwrap_or(Value::Null))
            .collect();
        (
            all.len(),
            all.into_iter()
                .skip((page - 1).saturating_mul(size))
                .take(size)
                .collect::<Vec<_>>(),
        )
    });
    Ok(Json(
        json!({ "users": users, "total": total, "page": page, "page_size": size, "total_pages": total.div_ceil(size) }),
    ))
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
        Scope::Customer,
        &customer.user_id,
        &customer.limits,
        customer.budget_id.as_deref(),
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

// ----- cluster -----

pub async fn cluster_status(State(node): State<Arc<Node>>, Auth(p): Auth) -> Reply {
    policy::reader(&p, "reading cluster status")?;
    let status = node.metadata.status();
    let mut out = serde_json::to_value(&status).unwrap_or(Value::Null);
    out["region"] = json!(node.region);
    out["node"] = json!(node.node_id);
    Ok(Json(out))
}

/// `POST /cluster/add_node {raft_id, cluster_addr, api_url}`: the node joins
/// as a learner, catches up, then becomes a voter. On a follower the change
/// goes to the leader over the region's own authenticated link; the caller's
/// credentials are never sent anywhere.
pub async fn cluster_add_node(
    State(node): State<Arc<Node>>,
    Auth(p): Auth,
    JsonBody(body): JsonBody<Value>,
) -> Reply {
    policy::admin(&p, "adding a node")?;
    let fields = object(body)?;
    let raft_id = positive_id(&fields)?;
    let member = meridian_consensus::raft::Member {
        raft_addr: peer_address(&string_field(&fields, "cluster_addr")?)?,
        api_url: api_url(&string_field(&fields, "api_url")?)?,
    };
    node.metadata
        .add_node(raft_id, member)
        .await
        .map_err(Error::from)?;
    Ok(Json(json!({ "status": node.metadata.status() })))
}

/// `POST /cluster/remove_node {raft_id}`.
pub async fn cluster_remove_node(
    State(node): State<Arc<Node>>,
    Auth(p): Auth,
    JsonBody(body): JsonBody<Value>,
) -> Reply {
    policy::admin(&p, "removing a node")?;
    let raft_id = positive_id(&object(body)?)?;
    node.metadata
        .remove_node(raft_id)
        .await
        .map_err(Error::from)?;
    Ok(Json(json!({ "status": node.metadata.status() })))
}

fn positive_id(fields: &Map<String, Value>) -> Result<u64> {
    fields
        .get("raft_id")
        .and_then(Value::as_u64)
        .filter(|n| *n > 0)
        .ok_or_else(|| Error::invalid("`raft_id` must be a positive whole number", Some("raft_id")))
}

/// `host:port`: a host name (letters, digits, '-', '.') or an IP address,
/// and a port — nothing else ends up in the region's membership.
fn peer_address(text: &str) -> Result<String> {
    let bad = || {
        Error::invalid(
            format!(
                "`cluster_addr` must be host:port, such as 10.0.0.5:7000; got `{}`",
                text.chars().take(100).collect::<String>()
            ),
            Some("cluster_addr"),
        )
    };
    if text.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(text.to_owned());
    }
    let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if !host_ok || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(bad());
    }
    Ok(text.to_owned())
}

/// `http(s)://host[:port]`, without a path, a query or credentials.
fn api_url(text: &str) -> Result<String> {
    let url = text.trim_end_matches('/');
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    let ok = rest.is_some_and(|r| {
        !r.is_empty() && !r.contains(['/', '?', '#', '@']) && peer_address_like(r)
    });
    if ok {
        Ok(url.to_owned())
    } else {
        Err(Error::invalid(
            "`api_url` must be http:// or https:// with a host and optional port, no path",
            Some("api_url"),
        ))
    }
}

fn peer_address_like(authority: &str) -> bool {
    peer_address(authority).is_ok()
        || (!authority.is_empty()
            && authority
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn membership_addresses_are_checked() {
        assert!(peer_address("10.0.0.5:7000").is_ok());
        assert!(peer_address("node-1.us-east.internal:7000").is_ok());
        for bad in [
            "x", "10.0.0.5", "a b:1", "h:0", "h:99999", "user@h:1", "h:1/x",
        ] {
            assert!(peer_address(bad).is_err(), "{bad}");
        }
        assert_eq!(
            api_url("http://10.0.0.5:4000/").unwrap(),
            "http://10.0.0.5:4000"
        );
        assert!(api_url("https://gw.example.com").is_ok());
        for bad in [
            "ftp://x",
            "http://",
            "http://x/path",
            "http://u:p@x",
            "http://x?q",
            "x:1",
        ] {
            assert!(api_url(bad).is_err(), "{bad}");
        }
    }
}
