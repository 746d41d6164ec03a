//! `/model/*` and `/v1/model/info`: deployments added at run time. Each has an
//! explicit region scope (LiteLLM's `store_model_in_db` makes every such model
//! global; here a model added for `eu-west` serves only there unless scoped
//! wider with `regions: ["*"]`). Every credential (`api_key`, AWS and Vertex
//! secrets, ...) is sealed before it enters the replicated metadata and is
//! never returned. An `os.environ/` reference resolves only in a credential
//! field and only to a variable the operator allow-listed
//! (`meridian.model_env_allowlist`); pointing a model somewhere else
//! (`api_base`, or the provider in `model`) takes its credentials afresh, so a
//! stored key is never sent to an address it was not given for.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use meridian_consensus::metadata::{Command, Kind, ModelRecord, RegionScope};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::policy;
use super::{Consistency, object, propose, string_field};
use crate::api::ApiError;
use crate::api::extract::{Auth, JsonBody};
use crate::config::{CREDENTIAL_PARAMS, Deployment, deployment_from_json};
use crate::error::{Error, Result};
use crate::node::Node;
use crate::pricing::pico_to_dollars;
use crate::secret::Secret;

type Reply = std::result::Result<Json<Value>, ApiError>;

/// Checks a deployment the way the config file is checked; errors name the
/// body's field.
fn check_deployment(node: &Node, entry: &Value) -> Result<Deployment> {
    let env = &crate::config::ProcessEnv;
    match deployment_from_json(entry, "request body", env, &node.model_env_allowlist) {
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

/// Takes the credentials out of `params`, each sealed. An `os.environ/`
/// reference stays a reference: each node resolves it from its own
/// environment (within its allow-list).
fn seal_credentials(
    node: &Node,
    params: &mut Map<String, Value>,
) -> Result<BTreeMap<String, String>> {
    let mut sealed = BTreeMap::new();
    for name in CREDENTIAL_PARAMS {
        let text = match params.get(*name) {
            Some(Value::String(k)) if k.starts_with("os.environ/") => continue,
            Some(Value::String(k)) => k.clone(),
            // Vertex credentials may be the service account's JSON itself.
            Some(Value::Object(_)) => params.get(*name).map(Value::to_string).unwrap_or_default(),
            None | Some(Value::Null) => continue,
            // Anything else would be stored, and shown, in clear.
            Some(_) => {
                return Err(Error::invalid(
                    format!("`{name}` must be a string"),
                    Some(&format!("litellm_params.{name}")),
                ));
            }
        };
        sealed.insert(
            (*name).to_owned(),
            node.sealer.seal(&Secret::new(text), &node.rng)?,
        );
        params.remove(*name);
    }
    Ok(sealed)
}

/// The credentials a stored model holds, by param name (sealed or referenced).
fn credential_names(m: &ModelRecord) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = m.sealed_params.keys().cloned().collect();
    if m.encrypted_api_key.is_some() {
        names.insert("api_key".into());
    }
    names.extend(
        CREDENTIAL_PARAMS
            .iter()
            .filter(|n| m.litellm_params.contains_key(**n))
            .map(|n| (*n).to_owned()),
    );
    names
}

/// A stored model's sealed credentials, the legacy `encrypted_api_key`
/// included, by param name.
fn sealed_of(m: &ModelRecord) -> BTreeMap<String, String> {
    let mut sealed = m.sealed_params.clone();
    if let Some(k) = &m.encrypted_api_key {
        sealed.entry("api_key".into()).or_insert_with(|| k.clone());
    }
    sealed
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
    policy::admin(&p, "adding a model")?;
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
    // Without an id of its own, a model gets a random one: the default (a
    // hash of its params) would hash its credential, and ids are shown to
    // every key that may use the model.
    if !info.contains_key("id") {
        info.insert("id".into(), json!(node.rng.hex(16)));
    }
    let entry = json!({ "model_name": model_name, "litellm_params": params, "model_info": info });
    let deployment = check_deployment(&node, &entry)?;
    let scope = scope_of(&body, &node)?;
    let sealed_params = seal_credentials(&node, &mut params)?;
    info.remove("id");
    let record = json!({
        "model_id": deployment.id, "model_name": model_name, "litellm_params": params, "model_info": info,
        "sealed_params": sealed_params, "scope": scope, "created_at": 0, "updated_at": 0,
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
    policy::admin(&p, "updating a model")?;
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
    let params_patch = map_field(&body, "litellm_params")?;
    let mut params = current.litellm_params.clone();
    params.extend(params_patch.clone());
    let mut info = current.model_info.clone();
    info.extend(info_patch);
    info.remove("id");
    let model_name = match body.get("model_name") {
        None | Some(Value::Null) => current.model_name.clone(),
        Some(_) => string_field(&body, "model_name")?,
    };
    // A model sent somewhere else takes its credentials afresh: a stored key
    // is never sent to an address it was not given for.
    let moved = ["api_base", "model"].iter().any(|f| {
        params_patch
            .get(*f)
            .is_some_and(|v| current.litellm_params.get(*f) != Some(v))
    });
    let mut sealed = sealed_of(&current);
    if moved {
        let missing: Vec<String> = credential_names(&current)
            .into_iter()
            .filter(|n| !params_patch.contains_key(n))
            .collect();
        if !missing.is_empty() {
            return Err(Error::invalid(
                format!(
                    "changing a model's `api_base` or `model` needs its credentials again in the same update: {}",
                    missing.join(", ")
                ),
                Some("litellm_params.api_key"),
            )
            .into());
        }
        sealed.clear();
    }
    // The result must still be a servable deployment.
    let mut check_params = params.clone();
    for (name, value) in &sealed {
        if !params_patch.contains_key(name) {
            check_params.insert(name.clone(), node.sealer.open(value)?.expose().into());
        }
    }
    let mut check_info = info.clone();
    check_info.insert("id".into(), json!(id));
    check_deployment(
        &node,
        &json!({ "model_name": model_name, "litellm_params": check_params, "model_info": check_info }),
    )?;
    for name in CREDENTIAL_PARAMS {
        // A credential given again (sealed or as a reference) replaces the old.
        if params_patch.contains_key(*name) {
            sealed.remove(*name);
        }
    }
    sealed.extend(seal_credentials(&node, &mut params)?);
    let mut patch = Map::new();
    patch.insert("sealed_params".into(), json!(sealed));
    patch.insert("encrypted_api_key".into(), Value::Null);
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
    policy::admin(&p, "deleting a model")?;
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

/// A stored model as the API shows it: which credentials it holds, never
/// their values (sealed or not).
fn shown(mut record: Value) -> Value {
    if let Some(m) = record.as_object_mut() {
        let mut names: Vec<String> = m
            .remove("sealed_params")
            .and_then(|v| v.as_object().map(|o| o.keys().cloned().collect()))
            .unwrap_or_default();
        if m.remove("encrypted_api_key").is_some_and(|v| !v.is_null())
            && !names.iter().any(|n| n == "api_key")
        {
            names.push("api_key".into());
        }
        m.insert(
            "has_api_key".into(),
            json!(names.iter().any(|n| n == "api_key")),
        );
        m.insert("credentials".into(), json!(names));
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
                    // Where a provider lives is the operator's business.
                    "api_base": p.may_read_all().then_some(&d.api_base),
                    "api_version": d.api_version,
                    "rpm": d.rpm, "tpm": d.tpm,
                    "timeout": d.timeout.as_secs_f64(), "stream_timeout": d.stream_timeout.as_secs_f64(),
                },
                "model_info": {
                    "id": d.id,
                    "mode": format!("{:?}", d.mode).to_lowercase(),
                    "db_model": stored.contains(&d.id),
                    "input_cost_per_token": d.price.map(|p| pico_to_dollars(p.input)),
                    "output_cost_per_token": d.price.map(|p| pico_to_dollars(p.output)),
                },
            })
        })
        .collect();
    Ok(Json(json!({ "data": data })))
}
