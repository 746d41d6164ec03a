//! `/team/*`: teams, their members and their admins.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use meridian_consensus::metadata::{Command, Kind, TeamRecord, TeamRole};
use meridian_replication::crdt::Scope;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::entities::{
    Reply, create, delete_all, fields_with_limits, key_summaries, new_id, patch,
};
use super::policy;
use super::{Consistency, check_limits, object, propose, split_fields, string_field};
use crate::api::extract::{Auth, JsonBody};
use crate::auth::Principal;
use crate::error::{Error, Result};
use crate::node::Node;

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
        crate::admission::Entity {
            scope: Scope::Team,
            id: &team.team_id,
            limits: &team.limits,
            budget_id: team.budget_id.as_deref(),
        },
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
