//! The applied metadata: typed records in memory, and the changes that make
//! them durable. Pure: applying a command touches no I/O; the caller writes the
//! returned [`Change`]s in the same batch as the applied-log marker.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::command::{Command, Kind, Outcome, Proposal, Refusal};
use super::records::{
    BudgetRecord, CustomerRecord, KeyRecord, ModelRecord, TeamRecord, UserRecord,
};

/// A durable effect of applying a command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Put {
        kind: Kind,
        id: String,
        json: Vec<u8>,
    },
    Delete {
        kind: Kind,
        id: String,
    },
}

/// Hands out model generations: every state and every change to its models
/// gets a new one, so a cache of derived deployments knows when to rebuild.
static MODEL_GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn next_generation() -> u64 {
    MODEL_GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Every record of the region, as of some applied log index.
#[derive(Clone, Debug)]
pub struct MetadataState {
    /// Changes whenever `models` may have (node-local; not replicated).
    models_generation: u64,
    /// By token hash bytes: the authentication path's O(1) lookup.
    keys: HashMap<[u8; 32], Arc<KeyRecord>>,
    teams: BTreeMap<String, Arc<TeamRecord>>,
    users: BTreeMap<String, Arc<UserRecord>>,
    customers: BTreeMap<String, Arc<CustomerRecord>>,
    budgets: BTreeMap<String, Arc<BudgetRecord>>,
    models: BTreeMap<String, Arc<ModelRecord>>,
}

/// Parses a hex SHA-256 token.
pub fn token_bytes(token: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if token.len() != 64 {
        return None;
    }
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(token.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl Default for MetadataState {
    fn default() -> Self {
        Self {
            models_generation: next_generation(),
            keys: HashMap::new(),
            teams: BTreeMap::new(),
            users: BTreeMap::new(),
            customers: BTreeMap::new(),
            budgets: BTreeMap::new(),
            models: BTreeMap::new(),
        }
    }
}

fn to_json<T: Serialize>(record: &T) -> Value {
    serde_json::to_value(record).unwrap_or(Value::Null)
}

impl MetadataState {
    pub fn key_by_hash(&self, hash: &[u8; 32]) -> Option<&Arc<KeyRecord>> {
        self.keys.get(hash)
    }

    pub fn key(&self, token: &str) -> Option<&Arc<KeyRecord>> {
        token_bytes(token).and_then(|h| self.keys.get(&h))
    }

    /// Keys in token order (deterministic listings).
    pub fn keys(&self) -> Vec<&Arc<KeyRecord>> {
        let mut v: Vec<_> = self.keys.values().collect();
        v.sort_by(|a, b| a.token.cmp(&b.token));
        v
    }

    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    pub fn team(&self, id: &str) -> Option<&Arc<TeamRecord>> {
        self.teams.get(id)
    }

    pub fn teams(&self) -> impl Iterator<Item = &Arc<TeamRecord>> {
        self.teams.values()
    }

    pub fn user(&self, id: &str) -> Option<&Arc<UserRecord>> {
        self.users.get(id)
    }

    pub fn users(&self) -> impl Iterator<Item = &Arc<UserRecord>> {
        self.users.values()
    }

    pub fn customer(&self, id: &str) -> Option<&Arc<CustomerRecord>> {
        self.customers.get(id)
    }

    pub fn budget(&self, id: &str) -> Option<&Arc<BudgetRecord>> {
        self.budgets.get(id)
    }

    pub fn model(&self, id: &str) -> Option<&Arc<ModelRecord>> {
        self.models.get(id)
    }

    pub fn models(&self) -> impl Iterator<Item = &Arc<ModelRecord>> {
        self.models.values()
    }

    /// Differs from any earlier value whenever the models may have changed.
    pub fn models_generation(&self) -> u64 {
        self.models_generation
    }

    /// A record of any kind as JSON.
    pub fn get_json(&self, kind: Kind, id: &str) -> Option<Value> {
        match kind {
            Kind::Key => self.key(id).map(|r| to_json(&**r)),
            Kind::Team => self.teams.get(id).map(|r| to_json(&**r)),
            Kind::User => self.users.get(id).map(|r| to_json(&**r)),
            Kind::Customer => self.customers.get(id).map(|r| to_json(&**r)),
            Kind::Budget => self.budgets.get(id).map(|r| to_json(&**r)),
            Kind::Model => self.models.get(id).map(|r| to_json(&**r)),
        }
    }

    /// Applies one proposal. Deterministic: the result depends only on the
    /// state and the proposal.
    pub fn apply(&mut self, proposal: &Proposal) -> (Outcome, Vec<Change>) {
        let now = proposal.at_ms / 1000;
        let mut changes = Vec::new();
        let outcome = match &proposal.command {
            Command::Create { kind, record } => self.create(*kind, record, now, &mut changes),
            Command::Update { kind, id, patch } => self.update(*kind, id, patch, now, &mut changes),
            Command::Delete { kind, ids } => {
                let (mut removed, mut missing) = (Vec::new(), Vec::new());
                for id in ids {
                    match self.remove(*kind, id) {
                        Some(record) => {
                            changes.push(Change::Delete {
                                kind: *kind,
                                id: id.clone(),
                            });
                            removed.push(record);
                        }
                        None => missing.push(id.clone()),
                    }
                }
                Outcome::Done {
                    records: removed,
                    missing,
                }
            }
            Command::AddMember {
                team_id,
                user_id,
                role,
            } => {
                let mut patch = Map::new();
                let Some(team) = self.teams.get(team_id) else {
                    return (
                        Outcome::refused(
                            Refusal::NotFound,
                            format!("team `{team_id}` does not exist"),
                        ),
                        changes,
                    );
                };
                let mut members = team.members.clone();
                members.insert(user_id.clone(), *role);
                patch.insert("members".into(), to_json(&members));
                self.update(Kind::Team, team_id, &patch, now, &mut changes)
            }
            Command::RemoveMember { team_id, user_id } => {
                let Some(team) = self.teams.get(team_id) else {
                    return (
                        Outcome::refused(
                            Refusal::NotFound,
                            format!("team `{team_id}` does not exist"),
                        ),
                        changes,
                    );
                };
                if !team.members.contains_key(user_id) {
                    return (
                        Outcome::refused(
                            Refusal::NotFound,
                            format!("`{user_id}` is not a member of team `{team_id}`"),
                        ),
                        changes,
                    );
                }
                let mut members = team.members.clone();
                members.remove(user_id);
                let mut patch = Map::new();
                patch.insert("members".into(), to_json(&members));
                self.update(Kind::Team, team_id, &patch, now, &mut changes)
            }
            Command::Regenerate {
                old_token,
                new_token,
                key_name,
            } => {
                let (Some(old), Some(new_hash)) = (token_bytes(old_token), token_bytes(new_token))
                else {
                    return (
                        Outcome::refused(Refusal::Invalid, "tokens must be hex SHA-256"),
                        changes,
                    );
                };
                if self.keys.contains_key(&new_hash) {
                    return (
                        Outcome::refused(Refusal::AlreadyExists, "the new key already exists"),
                        changes,
                    );
                }
                let Some(record) = self.keys.remove(&old) else {
                    return (
                        Outcome::refused(Refusal::NotFound, "key not found"),
                        changes,
                    );
                };
                let mut record = (*record).clone();
                record.token = new_token.clone();
                record.key_name = key_name.clone();
                record.updated_at = now;
                changes.push(Change::Delete {
                    kind: Kind::Key,
                    id: old_token.clone(),
                });
                changes.push(put(Kind::Key, new_token, &record));
                let json = to_json(&record);
                self.keys.insert(new_hash, Arc::new(record));
                Outcome::Done {
                    records: vec![json],
                    missing: vec![],
                }
            }
        };
        (outcome, changes)
    }

    fn exists(&self, kind: Kind, id: &str) -> bool {
        match kind {
            Kind::Key => self.key(id).is_some(),
            Kind::Team => self.teams.contains_key(id),
            Kind::User => self.users.contains_key(id),
            Kind::Customer => self.customers.contains_key(id),
            Kind::Budget => self.budgets.contains_key(id),
            Kind::Model => self.models.contains_key(id),
        }
    }

    fn create(
        &mut self,
        kind: Kind,
        record: &Value,
        now: u64,
        changes: &mut Vec<Change>,
    ) -> Outcome {
        let mut record = match record {
            Value::Object(m) => m.clone(),
            _ => return Outcome::refused(Refusal::Invalid, "a record must be an object"),
        };
        record.insert("created_at".into(), now.into());
        record.insert("updated_at".into(), now.into());
        let Some(id) = record
            .get(id_field(kind))
            .and_then(Value::as_str)
            .map(str::to_owned)
        else {
            return Outcome::refused(
                Refusal::Invalid,
                format!("{} needs `{}`", kind.noun(), id_field(kind)),
            );
        };
        if self.exists(kind, &id) {
            return Outcome::refused(
                Refusal::AlreadyExists,
                format!("{} `{id}` already exists", kind.noun()),
            );
        }
        self.store(kind, &id, Value::Object(record), changes)
    }

    fn update(
        &mut self,
        kind: Kind,
        id: &str,
        patch: &Map<String, Value>,
        now: u64,
        changes: &mut Vec<Change>,
    ) -> Outcome {
        let Some(Value::Object(mut record)) = self.get_json(kind, id) else {
            return Outcome::refused(
                Refusal::NotFound,
                format!("{} `{id}` does not exist", kind.noun()),
            );
        };
        for (field, value) in patch {
            // Identity and history are not the caller's to change.
            if field == id_field(kind) || field == "created_at" {
                continue;
            }
            record.insert(field.clone(), value.clone());
        }
        record.insert("updated_at".into(), now.into());
        self.store(kind, id, Value::Object(record), changes)
    }

    /// Parses `json` as `kind`'s record and installs it. What is stored and
    /// returned is the record re-serialized, so defaults are explicit and every
    /// replica holds the same bytes.
    fn store(&mut self, kind: Kind, id: &str, json: Value, changes: &mut Vec<Change>) -> Outcome {
        fn parse<T: DeserializeOwned + Serialize>(json: Value) -> Result<(Arc<T>, Value), Outcome> {
            let record: T = serde_json::from_value(json)
                .map_err(|e| Outcome::refused(Refusal::Invalid, e.to_string()))?;
            let canonical = to_json(&record);
            Ok((Arc::new(record), canonical))
        }
        let result = match kind {
            Kind::Key => match token_bytes(id) {
                None => Err(Outcome::refused(
                    Refusal::Invalid,
                    "a key's token must be hex SHA-256",
                )),
                Some(hash) => parse(json).map(|(r, j)| {
                    self.keys.insert(hash, r);
                    j
                }),
            },
            Kind::Team => parse(json).map(|(r, j)| {
                self.teams.insert(id.to_owned(), r);
                j
            }),
            Kind::User => parse(json).map(|(r, j)| {
                self.users.insert(id.to_owned(), r);
                j
            }),
            Kind::Customer => parse(json).map(|(r, j)| {
                self.customers.insert(id.to_owned(), r);
                j
            }),
            Kind::Budget => parse(json).map(|(r, j)| {
                self.budgets.insert(id.to_owned(), r);
                j
            }),
            Kind::Model => parse(json).map(|(r, j)| {
                self.models.insert(id.to_owned(), r);
                self.models_generation = next_generation();
                j
            }),
        };
        match result {
            Err(refused) => refused,
            Ok(json) => {
                changes.push(Change::Put {
                    kind,
                    id: id.to_owned(),
                    json: json.to_string().into_bytes(),
                });
                Outcome::Done {
                    records: vec![json],
                    missing: vec![],
                }
            }
        }
    }

    fn remove(&mut self, kind: Kind, id: &str) -> Option<Value> {
        match kind {
            Kind::Key => token_bytes(id)
                .and_then(|h| self.keys.remove(&h))
                .map(|r| to_json(&*r)),
            Kind::Team => self.teams.remove(id).map(|r| to_json(&*r)),
            Kind::User => self.users.remove(id).map(|r| to_json(&*r)),
            Kind::Customer => self.customers.remove(id).map(|r| to_json(&*r)),
            Kind::Budget => self.budgets.remove(id).map(|r| to_json(&*r)),
            Kind::Model => self.models.remove(id).map(|r| {
                self.models_generation = next_generation();
                to_json(&*r)
            }),
        }
    }

    /// Installs a record read back from storage or a snapshot.
    pub fn load(&mut self, kind: Kind, id: &str, json: &[u8]) -> Result<(), String> {
        // Stored bytes are already canonical: parse straight into the typed
        // record (start-up loads every key this way).
        fn parse<T: DeserializeOwned>(kind: Kind, id: &str, json: &[u8]) -> Result<Arc<T>, String> {
            serde_json::from_slice(json)
                .map(Arc::new)
                .map_err(|e| format!("{} `{id}`: {e}", kind.noun()))
        }
        let id_owned = || id.to_owned();
        match kind {
            Kind::Key => {
                let hash = token_bytes(id)
                    .ok_or_else(|| format!("key `{id}`: not a hex SHA-256 token"))?;
                self.keys.insert(hash, parse(kind, id, json)?);
            }
            Kind::Team => {
                self.teams.insert(id_owned(), parse(kind, id, json)?);
            }
            Kind::User => {
                self.users.insert(id_owned(), parse(kind, id, json)?);
            }
            Kind::Customer => {
                self.customers.insert(id_owned(), parse(kind, id, json)?);
            }
            Kind::Budget => {
                self.budgets.insert(id_owned(), parse(kind, id, json)?);
            }
            Kind::Model => {
                self.models.insert(id_owned(), parse(kind, id, json)?);
                self.models_generation = next_generation();
            }
        }
        Ok(())
    }

    /// Every record as `(kind, id, json)`, in a deterministic order.
    pub fn records(&self) -> Vec<(Kind, String, Vec<u8>)> {
        let mut out = Vec::new();
        for key in self.keys() {
            out.push((
                Kind::Key,
                key.token.clone(),
                to_json(&**key).to_string().into_bytes(),
            ));
        }
        fn all<T: Serialize>(
            out: &mut Vec<(Kind, String, Vec<u8>)>,
            kind: Kind,
            m: &BTreeMap<String, Arc<T>>,
        ) {
            for (id, r) in m {
                out.push((kind, id.clone(), to_json(&**r).to_string().into_bytes()));
            }
        }
        all(&mut out, Kind::Team, &self.teams);
        all(&mut out, Kind::User, &self.users);
        all(&mut out, Kind::Customer, &self.customers);
        all(&mut out, Kind::Budget, &self.budgets);
        all(&mut out, Kind::Model, &self.models);
        out
    }
}

fn put<T: Serialize>(kind: Kind, id: &str, record: &T) -> Change {
    Change::Put {
        kind,
        id: id.to_owned(),
        json: to_json(record).to_string().into_bytes(),
    }
}

/// The field that names a record of `kind`.
pub fn id_field(kind: Kind) -> &'static str {
    match kind {
        Kind::Key => "token",
        Kind::Team => "team_id",
        Kind::User | Kind::Customer => "user_id",
        Kind::Budget => "budget_id",
        Kind::Model => "model_id",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::records::TeamRole;
    use serde_json::json;

    const T1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const T2: &str = "2222222222222222222222222222222222222222222222222222222222222222";

    fn at(ms: u64, command: Command) -> Proposal {
        Proposal { at_ms: ms, command }
    }

    fn key(token: &str) -> Command {
        Command::Create {
            kind: Kind::Key,
            record: json!({ "token": token, "key_name": "sk-...1111", "models": ["gpt"] }),
        }
    }

    #[test]
    fn create_update_delete_keys() {
        let mut s = MetadataState::default();
        let (out, changes) = s.apply(&at(5_000, key(T1)));
        assert!(matches!(out, Outcome::Done { .. }), "{out:?}");
        assert_eq!(changes.len(), 1);
        assert_eq!(s.key(T1).unwrap().created_at, 5);
        let (out, _) = s.apply(&at(6_000, key(T1)));
        assert!(matches!(
            out,
            Outcome::Refused {
                reason: Refusal::AlreadyExists,
                ..
            }
        ));

        let patch = json!({ "blocked": true, "created_at": 0, "token": T2 })
            .as_object()
            .unwrap()
            .clone();
        s.apply(&at(
            7_000,
            Command::Update {
                kind: Kind::Key,
                id: T1.into(),
                patch,
            },
        ));
        let k = s.key(T1).unwrap();
        assert!(k.blocked);
        assert_eq!(
            (k.created_at, k.updated_at, k.token.as_str()),
            (5, 7, T1),
            "identity and history are kept"
        );
        assert_eq!(k.models, vec!["gpt".to_string()]);

        let bad = json!({ "rpm_limit": "lots" }).as_object().unwrap().clone();
        let (out, changes) = s.apply(&at(
            8_000,
            Command::Update {
                kind: Kind::Key,
                id: T1.into(),
                patch: bad,
            },
        ));
        assert!(matches!(
            out,
            Outcome::Refused {
                reason: Refusal::Invalid,
                ..
            }
        ));
        assert!(changes.is_empty());
        assert_eq!(
            s.key(T1).unwrap().limits.rpm_limit,
            None,
            "a refused update changes nothing"
        );

        let (out, changes) = s.apply(&at(
            9_000,
            Command::Delete {
                kind: Kind::Key,
                ids: vec![T1.into(), T2.into()],
            },
        ));
        match out {
            Outcome::Done { records, missing } => {
                assert_eq!((records.len(), missing), (1, vec![T2.to_string()]))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            changes,
            vec![Change::Delete {
                kind: Kind::Key,
                id: T1.into()
            }]
        );
        assert!(s.key(T1).is_none());
    }

    #[test]
    fn regenerate_moves_settings_to_the_new_token() {
        let mut s = MetadataState::default();
        s.apply(&at(1_000, key(T1)));
        let (out, changes) = s.apply(&at(
            2_000,
            Command::Regenerate {
                old_token: T1.into(),
                new_token: T2.into(),
                key_name: "sk-...2222".into(),
            },
        ));
        assert!(matches!(out, Outcome::Done { .. }));
        assert_eq!(changes.len(), 2);
        assert!(s.key(T1).is_none());
        assert_eq!(s.key(T2).unwrap().models, vec!["gpt".to_string()]);
    }

    #[test]
    fn team_members_and_determinism() {
        let commands = [
            at(
                1_000,
                Command::Create {
                    kind: Kind::Team,
                    record: json!({ "team_id": "t1", "models": ["gpt"] }),
                },
            ),
            at(
                2_000,
                Command::AddMember {
                    team_id: "t1".into(),
                    user_id: "u1".into(),
                    role: TeamRole::Admin,
                },
            ),
            at(
                3_000,
                Command::AddMember {
                    team_id: "t9".into(),
                    user_id: "u1".into(),
                    role: TeamRole::User,
                },
            ),
            at(
                4_000,
                Command::RemoveMember {
                    team_id: "t1".into(),
                    user_id: "nobody".into(),
                },
            ),
            at(5_000, key(T1)),
        ];
        let run = || {
            let mut s = MetadataState::default();
            let outcomes: Vec<Outcome> = commands.iter().map(|c| s.apply(c).0).collect();
            (s.records(), outcomes)
        };
        let (records, outcomes) = run();
        assert_eq!(run().0, records, "same commands, same state");
        assert!(matches!(
            outcomes[2],
            Outcome::Refused {
                reason: Refusal::NotFound,
                ..
            }
        ));
        assert!(matches!(
            outcomes[3],
            Outcome::Refused {
                reason: Refusal::NotFound,
                ..
            }
        ));
        let mut s = MetadataState::default();
        for (kind, id, json) in &records {
            s.load(*kind, id, json).unwrap();
        }
        assert_eq!(s.records(), records, "records reload into the same state");
        assert_eq!(
            s.team("t1").unwrap().members.get("u1"),
            Some(&TeamRole::Admin)
        );
    }
}
