//! `/model/*` and `/v1/model/info`: deployments added at run time. Each has an
//! explicit region scope (LiteLLM's `store_model_in_db` makes every such model
//! global; here a model added for `eu-west` serves only there unless scoped
//! wider with `regions: ["*"]`). The provider key is sealed before it enters
//! the replicated metadata and is never returned.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use meridian_consensus::metadata::{Command, Kind, ModelRecord, RegionScope};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{Consistency, object, propose, require_admin, string_field};
use crate::api::ApiError;
use crate::api::extract::{Auth, JsonBody};
use crate::config::{Deployment, deployment_from_json};
use crate::error::{Error, Result};
use crate::node::Node;
use crate::secret::Secret;

type Reply = std::result::Result<Json<Value>, ApiError>;

/// Checks a deployment the way the config file is checked; errors name the
/// body's field.
fn check_deployment(entry: &Value) -> Result<Deployment> {
    match deployment_from_json(entry, "request body", &crate::config::ProcessEnv) {
        Ok((Some(d), _)) => Ok(d),
        Ok((None, why)) => Err(Error::invalid(
            why.first().map_or_else(
                || "this model cannot be served".to_owned(),
                |i| i.reason.clone(),
            ),
            Some("litellm_params.model"),
        )),
        Err(Error::Config { path, expected, .. }) => {
            let field = path.strip_prefix("model.").unwrap_or(&path).to_owned();
            Err(Error::InvalidRequest {
                message: format!("`{field}`: {expected}"),
                param: Some(field),
            })
        }
        Err(e) => Err(e),
    }
}

fn scope_of(body: &Map<String, Value>, node: &Node) -> Result<RegionScope> {
    match body.get("regions") {
        None | Some(Value::Null) => Ok(RegionScope::Regions(BTreeSet::from([node.region.clone()]))),
        Some(Value::String(s)) if s == "*" => Ok(RegionScope::Global),
        Some(Value::Array(items)) => {
            let mut regions = BTreeSet::new();
            for (i, r) in items.iter().enumerate() {
                match r.as_str() {
                    Some("*") => return Ok(RegionScope::Global),
                    Some(name) if !name.is_empty() => {
                        regions.insert(name.to_owned());
                    }
                    _ => {
                        return Err(Error::invalid(
                            "a region name",
                            Some(&format!("regions[{i}]")),
                        ));
                    }
                }
            }
            if regions.is_empty() {
                return Err(Error::invalid(
                    "`regions` must name at least one region, or be \"*\"",
                    Some("regions"),
                ));
            }
            Ok(RegionScope::Regions(regions))
        }
        Some(_) => Err(Error::invalid(
            "`regions` must be a list of region names, or \"*\"",
            Some("regions"),
        )),
    }
}

/// Splits the provider key off `params`, sealed. An `os.environ/` reference
/// stays a reference: each node resolves it from its own environment.
fn seal_key(node: &Node, params: &mut Map<String, Value>) -> Result<Option<String>> {
    match params.get("api_key") {
        Some(Value::String(k)) if !k.starts_with("os.environ/") => {
            let sealed = node.sealer.seal(&Secret::new(k.clone()), &node.rng)?;
            params.remove("api_key");
            Ok(Some(sealed))
        }
        _ => Ok(None),
    }
}

fn map_field(body: &Map<String, Value>, field: &str) -> Result<Map<String, Value>> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(m)) => Ok(m.clone()),
        Some(_) => Err(Error::invalid(
            format!("`{field}` must be an object"),
            Some(field),
        )),
    }
}

pub async fn model_new(
    State(node): State<Arc<Node>>,
    Auth(p): Auth,
    JsonBody(body): JsonBody<Value>,
) -> Reply {
    require_admin(&p, "adding a model")?;
    let body = object(body)?;
    for key in body.keys() {
        if !matches!(
            key.as_str(),
            "model_name" | "litellm_params" | "model_info" | "regions"
        ) {
            return Err(Error::invalid(format!("unknown field `{key}`"), Some(key)).into());
        }
    }
    let model_name = string_field(&body, "model_name")?;
    let mut params = map_field(&body, "litellm_params")?;
    let mut info = map_field(&body, "model_info")?;
    let entry = json!({ "model_name": model_name, "litellm_params": params, "model_info": info });
    let deployment = check_deployment(&entry)?;
    let scope = scope_of(&body, &node)?;
    let encrypted_api_key = seal_key(&node, &mut params)?;
    info.remove("id");
    let record = json!({
        "model_id": deployment.id, "model_name": model_name, "litellm_params": params, "model_info": info,
        "encrypted_api_key": encrypted_api_key, "scope": scope, "created_at": 0, "updated_at": 0,
    });
    let stored = propose(
        &node,
        Command::Create {
            kind: Kind::Model,
            record,
        },
    )
    .await?;
    Ok(Json(shown(
        stored.into_iter().next().unwrap_or(Value::Null),
    )))
}

pub async fn model_update(
    State(node): State<Arc<Node>>,
    Auth(p): Auth,
    JsonBody(body): JsonBody<Value>,
) -> Reply {
    require_admin(&p, "updating a model")?;
    let body = object(body)?;
    let info_patch = map_field(&body, "model_info")?;
    let id = match body.get("model_id").and_then(Value::as_str) {
        Some(id) => id.to_owned(),
        None => info_patch
            .get("id")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| {
                Error::invalid(
                    "`model_id` (or `model_info.id`) is required",
                    Some("model_id"),
                )
            })?,
    };
    let current: Arc<ModelRecord> = node.metadata.read(|s| s.model(&id).cloned()).ok_or_else(
        || {
            Error::NotFound(format!(
                "model `{id}` does not exist (models from the config file cannot be changed here)"
            ))
        },
    )?;
    let mut params = current.litellm_params.clone();
    params.extend(map_field(&body, "litellm_params")?);
    let mut info = current.model_info.clone();
    info.extend(info_patch);
    info.remove("id");
    let model_name = match body.get("model_name") {
        None | Some(Value::Null) => current.model_name.clone(),
        Some(_) => string_field(&body, "model_name")?,
    };
    // The result must still be a servable deployment.
    let mut check_params = params.clone();
    if !check_params.contains_key("api_key")
        && let Some(sealed) = &current.encrypted_api_key
    {
        check_params.insert("api_key".into(), node.sealer.open(sealed)?.expose().into());
    }
    let mut check_info = info.clone();
    check_info.insert("id".into(), json!(id));
    check_deployment(
        &json!({ "model_name": model_name, "litellm_params": check_params, "model_info": check_info }),
    )?;
    let mut patch = Map::new();
    if let Some(sealed) = seal_key(&node, &mut params)? {
        patch.insert("encrypted_api_key".into(), json!(sealed));
    }
    patch.insert("model_name".into(), json!(model_name));
    patch.insert("litellm_params".into(), Value::Object(params));
    patch.insert("model_info".into(), Value::Object(info));
    if body.contains_key("regions") {
        patch.insert("scope".into(), json!(scope_of(&body, &node)?));
    }
    let stored = propose(
        &node,
        Command::Update {
            kind: Kind::Model,
            id,
            patch,
        },
    )
    .await?;
    Ok(Json(shown(
        stored.into_iter().next().unwrap_or(Value::Null),
    )))
}

pub async fn model_delete(
    State(node): State<Arc<Node>>,
    Auth(p): Auth,
    JsonBody(body): JsonBody<Value>,
) -> Reply {
    require_admin(&p, "deleting a model")?;
    let id = string_field(&object(body)?, "id")?;
    if node.metadata.read(|s| s.model(&id).is_none()) {
        return Err(Error::NotFound(format!(
            "model `{id}` does not exist (models from the config file cannot be deleted here)"
        ))
        .into());
    }
    propose(
        &node,
        Command::Delete {
            kind: Kind::Model,
            ids: vec![id.clone()],
        },
    )
    .await?;
    Ok(Json(json!({ "deleted_models": [id] })))
}

/// A stored model as the API shows it: never the sealed key.
fn shown(mut record: Value) -> Value {
    if let Some(m) = record.as_object_mut() {
        let had_key = m.remove("encrypted_api_key").is_some_and(|v| !v.is_null());
        m.insert("has_api_key".into(), json!(had_key));
    }
    record
}

#[derive(Deserialize)]
pub struct InfoQuery {
    litellm_model_id: Option<String>,
    #[serde(flatten)]
    consistency: Consistency,
}

/// `GET /model/info` and `/v1/model/info`: the deployments this node serves
/// that the caller may use, in LiteLLM's shape (credentials never included).
pub async fn model_info(
    State(node): State<Arc<Node>>,
    Auth(p): Auth,
    Query(q): Query<InfoQuery>,
) -> Reply {
    q.consistency.wait(&node).await?;
    node.refresh_models();
    let stored: BTreeSet<String> = node
        .metadata
        .read(|s| s.models().map(|m| m.model_id.clone()).collect());
    let data: Vec<Value> = node
        .router
        .deployments()
        .into_iter()
        .filter(|d| p.may_use_model(&d.model_group))
        .filter(|d| q.litellm_model_id.as_ref().is_none_or(|id| *id == d.id))
        .map(|d| {
            json!({
                "model_name": d.model_group,
                "litellm_params": {
                    "model": format!("{}/{}", d.provider_name, d.upstream_model),
                    "api_base": d.api_base,
                    "api_version": d.api_version,
                    "rpm": d.rpm, "tpm": d.tpm,
                    "timeout": d.timeout.as_secs_f64(), "stream_timeout": d.stream_timeout.as_secs_f64(),
                },
                "model_info": {
                    "id": d.id,
                    "mode": format!("{:?}", d.mode).to_lowercase(),
                    "db_model": stored.contains(&d.id),
                    "input_cost_per_token": d.price.map(|p| p.input as f64 / 1e12),
                    "output_cost_per_token": d.price.map(|p| p.output as f64 / 1e12),
                },
            })
        })
        .collect();
    Ok(Json(json!({ "data": data })))
}
