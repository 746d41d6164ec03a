//! `/user/*`: users and their roles (set by admins only).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use meridian_consensus::metadata::{Command, KeyRecord, Kind, TeamRole, UserRecord};
use meridian_replication::crdt::Scope;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::entities::{
    Reply, admin_update, create, delete_all, fields_with_limits, key_summaries, new_id,
};
use super::policy;
use super::{Consistency, check_limits, id_list, object, propose, split_fields};
use crate::api::extract::{Auth, JsonBody};
use crate::error::Error;
use crate::node::Node;

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
        crate::admission::Entity {
            scope: Scope::User,
            id: &user.user_id,
            limits: &user.limits,
            budget_id: user.budget_id.as_deref(),
        },
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
