//! The metadata records a region replicates: virtual keys, teams, users,
//! customers (end users), tags, budgets and model deployments. Field names follow
//! LiteLLM's API so admin bodies map onto them directly.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// How a limit is enforced across nodes and regions (see ARCHITECTURE.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Enforcement {
    /// Admit on the local view of the global counters; bounded overshoot.
    #[default]
    Available,
    /// Escrow: never exceed the limit, even under partition.
    Strict,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UserRole {
    ProxyAdmin,
    ProxyAdminViewer,
    #[default]
    InternalUser,
    InternalUserViewer,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TeamRole {
    Admin,
    #[default]
    User,
}

/// LiteLLM's `key_type`: a preset for `allowed_routes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyType {
    LlmApi,
    Management,
    ReadOnly,
    Default,
}

/// A budget on one model, inside a key (`model_max_budget`).
/// A record's free-form `metadata` object. Usually empty, so it is held as
/// one word: an empty `serde_json::Map` (an index map) is 72 bytes inline,
/// 72 MB across a million keys. Reads and writes as a JSON object, `{}` when
/// empty.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Extra(Option<Box<Map<String, Value>>>);

impl Extra {
    pub fn get(&self) -> Option<&Map<String, Value>> {
        self.0.as_deref()
    }
}

impl From<Map<String, Value>> for Extra {
    fn from(map: Map<String, Value>) -> Self {
        Extra((!map.is_empty()).then(|| Box::new(map)))
    }
}

impl Serialize for Extra {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            Some(map) => map.serialize(serializer),
            None => Map::new().serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for Extra {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Map::<String, Value>::deserialize(deserializer).map(Extra::from)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelBudget {
    pub budget_limit: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_period: Option<String>,
}

/// Limits shared by keys, teams, users, customers and budget templates.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_budget: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_duration: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm_limit: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm_limit: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallel_requests: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforcement: Option<Enforcement>,
    /// The region whose Raft log issues the rights of this entity's `strict`
    /// limits: the region that created it, stamped when the creation is
    /// applied and never changed (so every region agrees on one issuer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home_region: Option<String>,
}

/// A virtual key. Only its SHA-256 (`token`) is stored, never the key.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// Hex SHA-256 of the key: the record's identity.
    pub token: String,
    /// `sk-...abcd`: enough to recognise a key, not to use it.
    pub key_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_alias: Option<String>,
    /// Model groups (or access groups) the key may use; empty = all.
    #[serde(default)]
    pub models: Vec<String>,
    #[serde(flatten)]
    pub limits: Limits,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub model_rpm_limit: BTreeMap<String, u64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub model_tpm_limit: BTreeMap<String, u64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub model_max_budget: BTreeMap<String, ModelBudget>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_id: Option<String>,
    #[serde(default)]
    pub metadata: Extra,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Unix seconds after which the key is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<u64>,
    #[serde(default)]
    pub blocked: bool,
    /// The block was placed by an admin, so only an admin lifts it (a team
    /// admin may lift a block a team admin placed). Written by the server,
    /// never taken from a request body.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub admin_blocked: bool,
    /// Routes the key may call; empty = the default for its type.
    #[serde(default)]
    pub allowed_routes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_type: Option<KeyType>,
    pub created_at: u64,
    pub updated_at: u64,
    #[serde(default)]
    pub created_by: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TeamRecord {
    pub team_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team_alias: Option<String>,
    /// user_id → role in the team.
    #[serde(default)]
    pub members: BTreeMap<String, TeamRole>,
    #[serde(default)]
    pub models: Vec<String>,
    #[serde(flatten)]
    pub limits: Limits,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_id: Option<String>,
    #[serde(default)]
    pub blocked: bool,
    #[serde(default)]
    pub metadata: Extra,
    #[serde(default)]
    pub tags: Vec<String>,
    pub created_at: u64,
    pub updated_at: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct UserRecord {
    pub user_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_alias: Option<String>,
    #[serde(default)]
    pub user_role: UserRole,
    #[serde(default)]
    pub models: Vec<String>,
    #[serde(flatten)]
    pub limits: Limits,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_id: Option<String>,
    #[serde(default)]
    pub metadata: Extra,
    pub created_at: u64,
    pub updated_at: u64,
}

/// An end user, identified by the `user` field of LLM requests.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CustomerRecord {
    pub user_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    #[serde(flatten)]
    pub limits: Limits,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_model_region: Option<String>,
    #[serde(default)]
    pub blocked: bool,
    #[serde(default)]
    pub metadata: Extra,
    pub created_at: u64,
    pub updated_at: u64,
}

/// A tag (`/tag/*`): a label that keys, teams and requests carry. Spend is
/// counted per tag whether or not a record exists; a record gives the tag
/// limits, and makes request-supplied tags count (a request can name any
/// string, so only tags an admin created are charged from the request).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TagRecord {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Model groups or deployment ids the tag is meant for.
    #[serde(default)]
    pub models: Vec<String>,
    #[serde(flatten)]
    pub limits: Limits,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soft_budget: Option<f64>,
    #[serde(default)]
    pub metadata: Extra,
    pub created_at: u64,
    pub updated_at: u64,
    #[serde(default)]
    pub created_by: String,
}

/// A budget template (`/budget/*`), referenced by `budget_id`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BudgetRecord {
    pub budget_id: String,
    #[serde(flatten)]
    pub limits: Limits,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soft_budget: Option<f64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub model_max_budget: BTreeMap<String, ModelBudget>,
    pub created_at: u64,
    pub updated_at: u64,
}

/// Where a run-time model deployment is visible. LiteLLM's
/// `store_model_in_db` makes every such model global; Meridian makes the scope
/// explicit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "regions")]
pub enum RegionScope {
    /// Only in these regions.
    Regions(BTreeSet<String>),
    Global,
}

impl RegionScope {
    pub fn includes(&self, region: &str) -> bool {
        match self {
            RegionScope::Global => true,
            RegionScope::Regions(r) => r.contains(region),
        }
    }
}

/// A model deployment added at run time (`/model/new`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelRecord {
    /// `model_info.id`.
    pub model_id: String,
    pub model_name: String,
    /// `litellm_params` without its credentials (see `sealed_params`).
    pub litellm_params: Map<String, Value>,
    #[serde(default)]
    pub model_info: Map<String, Value>,
    /// The provider key of records written before `sealed_params` existed,
    /// sealed with the region's salt key (read, never written).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encrypted_api_key: Option<String>,
    /// Credential params (`api_key`, `aws_secret_access_key`, ...), each
    /// sealed with the region's salt key; they are never in `litellm_params`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sealed_params: BTreeMap<String, String>,
    pub scope: RegionScope,
    pub created_at: u64,
    pub updated_at: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_reads_and_writes_as_an_object() {
        let empty: KeyRecord = serde_json::from_value(
            serde_json::json!({"token": "t", "key_name": "k", "created_at": 1, "updated_at": 1}),
        )
        .unwrap();
        assert_eq!(empty.metadata, Extra::default());
        assert_eq!(
            serde_json::to_value(&empty).unwrap()["metadata"],
            serde_json::json!({})
        );
        let with: KeyRecord = serde_json::from_value(serde_json::json!({
            "token": "t", "key_name": "k", "created_at": 1, "updated_at": 1,
            "metadata": {"team": "search", "n": 2}
        }))
        .unwrap();
        assert_eq!(with.metadata.get().map(|m| m.len()), Some(2));
        assert_eq!(
            serde_json::to_value(&with).unwrap()["metadata"],
            serde_json::json!({"team": "search", "n": 2})
        );
        let explicit_empty: KeyRecord = serde_json::from_value(serde_json::json!({
            "token": "t", "key_name": "k", "created_at": 1, "updated_at": 1, "metadata": {}
        }))
        .unwrap();
        assert_eq!(explicit_empty, empty);
    }
}
