//! The applied metadata: typed records in memory, each entity's document, and
//! the changes that make them durable. Pure: applying a command touches no
//! I/O; the caller writes the returned [`Change`]s in the same batch as the
//! applied-log marker.
//!
//! # Plan, then commit
//!
//! Applying a proposal has two steps. [`MetadataState::plan`] only reads: it
//! checks the command, builds the new records and makes the documents' new
//! changes (loading, changing and saving automerge documents is the costly
//! part, ~0.1-1 ms each). [`MetadataState::commit`] installs the plan: map
//! inserts only. The state machine plans under the read lock and commits
//! under the write lock, so a large merge does not stall authentication;
//! [`MetadataState::apply`] does both.
//!
//! # Documents
//!
//! Every entity the region ever held has an [`EntityDoc`] (see `doc`), kept as
//! its saved bytes: an automerge document in memory costs ~19 KB, saved ~0.4
//! KB. Documents are cold data — only metadata changes and the cross-region
//! sync read them — so a state with a [`DocSource`] (the state machine's
//! store) holds in memory only the documents its latest commit changed, until
//! [`MetadataState::flushed`]; it reads the rest from the source. (At a
//! million keys, holding every document would cost ~0.7 GiB and ~10 s of
//! start-up.) A state without a source holds them all. A deleted entity keeps its document, tombstoned, so that another
//! region's concurrent edit cannot bring it back. Local commands change the
//! documents as the region's [`Actor`] at the proposal's `at_ms`, so every
//! replica of the region holds byte-identical documents;
//! [`Command::MergeRemote`] merges other regions' changes and re-derives the
//! records from the merged documents.
//!
//! Every document change takes the state's next *change number* (`seq`),
//! identical on every replica; the cross-region sync sends the documents
//! changed after the number a remote region has acknowledged (its cursor,
//! which the remote region keeps in its own state: [`Self::sync_cursor`]).
//!
//! Child modules: `state_plan.rs` plans each command, `state_docs.rs`
//! keeps the documents and builds the outbox for other regions,
//! `state_load.rs` loads the state back from storage and lists it for a
//! snapshot, `state_compact.rs` compacts documents, `state_tests.rs` tests
//! them all. They share the state's private fields, as methods of
//! [`MetadataState`].
//!
//! Size: at the ~600-line rule. What stays here is one thing: the records'
//! maps with their readers, and plan/commit/install over them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::command::{Kind, Outcome, Proposal, Refusal};
use super::doc::{Actor, DocError, EntityDoc};

#[path = "state_compact.rs"]
mod compaction;
#[path = "state_docs.rs"]
mod docs;
#[path = "state_load.rs"]
mod load;
#[path = "state_plan.rs"]
mod plan;
use super::ledger::Ledger;
use super::records::{
    BudgetRecord, CustomerRecord, KeyRecord, ModelRecord, TagRecord, TeamRecord, UserRecord,
};
pub use compaction::{COMPACT_FLOOR, Compactable};
pub use docs::{DocSource, Outbox, OutboxLimits, OutgoingDoc, StoredDoc};
use plan::Planner;

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
    /// An entity's document, as [`StoredDoc::encode`] writes it, with its
    /// change number and the one it had before (if any), for the index of
    /// documents by change number.
    Doc {
        kind: Kind,
        id: String,
        bytes: Vec<u8>,
        seq: u64,
        replaces: Option<u64>,
    },
    /// How far another region's changes are merged.
    Cursor {
        region: String,
        seq: u64,
    },
    /// A `strict` limit's rights ledger (JSON), or its removal (`None`).
    Ledger {
        counter: Vec<u8>,
        json: Option<Vec<u8>>,
    },
}

/// Hands out model generations: every state and every change to its models
/// gets a new one, so a cache of derived deployments knows when to rebuild.
static MODEL_GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn next_generation() -> u64 {
    MODEL_GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// An entity: its kind and id (a key's id is its token).
type EntityKey = (Kind, Arc<str>);

/// Whether records of `kind` have a home region (they carry limits).
fn has_home(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Key | Kind::Team | Kind::User | Kind::Customer | Kind::Tag
    )
}

/// Expired ledgers dropped per grant (bounds the work of one command).
const MAX_LEDGERS_DROPPED: usize = 64;

/// A region name longer than this is refused (it is stored with documents).
const MAX_REGION_NAME: usize = 64;

/// Every record of the region, as of some applied log index, and every
/// entity's document.
#[derive(Clone, Debug)]
pub struct MetadataState {
    /// This region's name; its documents' changes are made as its actor.
    region: Arc<str>,
    actor: Actor,
    /// Changes whenever `models` may have (node-local; not replicated).
    models_generation: u64,
    /// By token hash bytes: the authentication path's O(1) lookup.
    keys: HashMap<[u8; 32], Arc<KeyRecord>>,
    teams: BTreeMap<String, Arc<TeamRecord>>,
    users: BTreeMap<String, Arc<UserRecord>>,
    customers: BTreeMap<String, Arc<CustomerRecord>>,
    budgets: BTreeMap<String, Arc<BudgetRecord>>,
    models: BTreeMap<String, Arc<ModelRecord>>,
    tags: BTreeMap<String, Arc<TagRecord>>,
    docs: HashMap<EntityKey, StoredDoc>,
    /// Each document by its change number (only its latest).
    by_seq: BTreeMap<u64, EntityKey>,
    /// The latest change number handed out.
    seq: u64,
    /// Per remote region: its change number through which its changes are
    /// merged here.
    cursors: BTreeMap<String, u64>,
    /// Region names that documents' `echo` share.
    names: BTreeSet<Arc<str>>,
    /// Rights ledgers of `strict` limits whose home is this region, by
    /// counter; and by the time they may be dropped.
    ledgers: BTreeMap<Vec<u8>, Ledger>,
    ledger_expiry: BTreeSet<(u64, Vec<u8>)>,
    /// Where documents not in `docs` are; `None`: `docs` holds them all.
    source: Option<Arc<dyn DocSource>>,
    /// Documents this region compacts that are past the compaction floor
    /// (node-local, derived; see [`compaction`]).
    compactable: BTreeSet<EntityKey>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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

fn to_json<T: Serialize>(record: &T) -> Value {
    serde_json::to_value(record).unwrap_or(Value::Null)
}

/// A parsed record, ready to install.
#[derive(Clone, Debug)]
enum Typed {
    Key([u8; 32], Arc<KeyRecord>),
    Team(Arc<TeamRecord>),
    User(Arc<UserRecord>),
    Customer(Arc<CustomerRecord>),
    Budget(Arc<BudgetRecord>),
    Model(Arc<ModelRecord>),
    Tag(Arc<TagRecord>),
}

/// Parses `json` as `kind`'s record named `id`; returns it and its canonical
/// JSON (re-serialized, so defaults are explicit and every replica holds the
/// same bytes).
fn parse_typed(kind: Kind, id: &str, json: Value) -> Result<(Typed, Value), String> {
    fn parse<T: DeserializeOwned + Serialize>(json: Value) -> Result<(Arc<T>, Value), String> {
        let record: T = serde_json::from_value(json).map_err(|e| e.to_string())?;
        let canonical = to_json(&record);
        Ok((Arc::new(record), canonical))
    }
    Ok(match kind {
        Kind::Key => {
            let hash = token_bytes(id).ok_or("a key's token must be hex SHA-256")?;
            let (r, j) = parse(json)?;
            (Typed::Key(hash, r), j)
        }
        Kind::Team => parse(json).map(|(r, j)| (Typed::Team(r), j))?,
        Kind::User => parse(json).map(|(r, j)| (Typed::User(r), j))?,
        Kind::Customer => parse(json).map(|(r, j)| (Typed::Customer(r), j))?,
        Kind::Budget => parse(json).map(|(r, j)| (Typed::Budget(r), j))?,
        Kind::Model => parse(json).map(|(r, j)| (Typed::Model(r), j))?,
        Kind::Tag => parse(json).map(|(r, j)| (Typed::Tag(r), j))?,
    })
}

/// One effect of a plan.
#[derive(Clone, Debug)]
enum Effect {
    Put {
        kind: Kind,
        id: String,
        typed: Typed,
        json: Vec<u8>,
    },
    Remove {
        kind: Kind,
        id: String,
    },
    Doc {
        kind: Kind,
        id: Arc<str>,
        doc: StoredDoc,
        /// The change number of the document this one replaces.
        replaces: Option<u64>,
    },
    Cursor {
        region: String,
        seq: u64,
    },
    Ledger {
        counter: Vec<u8>,
        ledger: Option<Ledger>,
    },
}

/// What applying one proposal does, computed without changing the state
/// ([`MetadataState::plan`]); install it with [`MetadataState::commit`] on
/// the same state, before any other commit.
#[derive(Clone, Debug)]
pub struct Plan {
    outcome: Outcome,
    effects: Vec<Effect>,
    /// A document could not be read from the source: the plan is not a
    /// decision and must not be committed (the state machine stops, as on
    /// any storage failure).
    fault: Option<String>,
}

impl Plan {
    pub fn outcome(&self) -> &Outcome {
        &self.outcome
    }

    pub fn fault(&self) -> Option<&str> {
        self.fault.as_deref()
    }
}

impl MetadataState {
    /// The empty state of region `region`.
    pub fn new(region: &str) -> Self {
        Self {
            region: Arc::from(region),
            actor: Actor::for_region(region),
            models_generation: next_generation(),
            keys: HashMap::new(),
            teams: BTreeMap::new(),
            users: BTreeMap::new(),
            customers: BTreeMap::new(),
            budgets: BTreeMap::new(),
            models: BTreeMap::new(),
            tags: BTreeMap::new(),
            docs: HashMap::new(),
            by_seq: BTreeMap::new(),
            seq: 0,
            cursors: BTreeMap::new(),
            ledgers: BTreeMap::new(),
            ledger_expiry: BTreeSet::new(),
            source: None,
            compactable: BTreeSet::new(),
            names: BTreeSet::new(),
        }
    }

    /// This region's name.
    pub fn region(&self) -> &str {
        &self.region
    }

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

    /// Every key, unordered: pointer copies only, so a reader that filters,
    /// sorts or serializes them does it after letting go of the state (which
    /// authentication and Raft's apply also need).
    pub fn key_snapshot(&self) -> Vec<Arc<KeyRecord>> {
        self.keys.values().cloned().collect()
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

    pub fn tag(&self, name: &str) -> Option<&Arc<TagRecord>> {
        self.tags.get(name)
    }

    pub fn tags(&self) -> impl Iterator<Item = &Arc<TagRecord>> {
        self.tags.values()
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
            Kind::Tag => self.tags.get(id).map(|r| to_json(&**r)),
        }
    }

    /// Applies one proposal: [`Self::plan`], then [`Self::commit`].
    /// Deterministic: the result depends only on the state and the proposal.
    pub fn apply(&mut self, proposal: &Proposal) -> (Outcome, Vec<Change>) {
        let plan = self.plan(proposal);
        self.commit(plan)
    }

    /// What applying `proposal` would do. Deterministic; reads only. A
    /// refused command's plan changes nothing.
    pub fn plan(&self, proposal: &Proposal) -> Plan {
        let mut planner = Planner {
            state: self,
            at_ms: proposal.at_ms,
            now: proposal.at_ms / 1000,
            next_seq: self.seq,
            effects: Vec::new(),
            fault: None,
        };
        match planner.command(&proposal.command) {
            Ok(outcome) => Plan {
                outcome,
                effects: planner.effects,
                fault: planner.fault,
            },
            Err(refused) => Plan {
                outcome: refused,
                effects: Vec::new(),
                fault: planner.fault,
            },
        }
    }

    /// Installs a plan made by [`Self::plan`] on this state as it is now;
    /// returns its outcome and the durable changes to write.
    pub fn commit(&mut self, plan: Plan) -> (Outcome, Vec<Change>) {
        let mut changes = Vec::with_capacity(plan.effects.len());
        for effect in plan.effects {
            match effect {
                Effect::Put {
                    kind,
                    id,
                    typed,
                    json,
                } => {
                    self.install(&id, typed);
                    changes.push(Change::Put { kind, id, json });
                }
                Effect::Remove { kind, id } => {
                    self.remove(kind, &id);
                    changes.push(Change::Delete { kind, id });
                }
                Effect::Doc {
                    kind,
                    id,
                    mut doc,
                    replaces,
                } => {
                    doc.echo = doc.echo.map(|name| self.intern(&name));
                    changes.push(Change::Doc {
                        kind,
                        id: id.to_string(),
                        bytes: doc.encode(),
                        seq: doc.seq,
                        replaces,
                    });
                    self.install_doc((kind, id), doc);
                }
                Effect::Cursor { region, seq } => {
                    self.cursors.insert(region.clone(), seq);
                    changes.push(Change::Cursor { region, seq });
                }
                Effect::Ledger { counter, ledger } => {
                    let json = ledger.as_ref().map(|l| to_json(l).to_string().into_bytes());
                    self.install_ledger(counter.clone(), ledger);
                    changes.push(Change::Ledger { counter, json });
                }
            }
        }
        (plan.outcome, changes)
    }

    fn exists(&self, kind: Kind, id: &str) -> bool {
        match kind {
            Kind::Key => self.key(id).is_some(),
            Kind::Team => self.teams.contains_key(id),
            Kind::User => self.users.contains_key(id),
            Kind::Customer => self.customers.contains_key(id),
            Kind::Budget => self.budgets.contains_key(id),
            Kind::Model => self.models.contains_key(id),
            Kind::Tag => self.tags.contains_key(id),
        }
    }

    fn install(&mut self, id: &str, typed: Typed) {
        match typed {
            Typed::Key(hash, r) => {
                self.keys.insert(hash, r);
            }
            Typed::Team(r) => {
                self.teams.insert(id.to_owned(), r);
            }
            Typed::User(r) => {
                self.users.insert(id.to_owned(), r);
            }
            Typed::Customer(r) => {
                self.customers.insert(id.to_owned(), r);
            }
            Typed::Budget(r) => {
                self.budgets.insert(id.to_owned(), r);
            }
            Typed::Model(r) => {
                self.models.insert(id.to_owned(), r);
                self.models_generation = next_generation();
            }
            Typed::Tag(r) => {
                self.tags.insert(id.to_owned(), r);
            }
        }
    }

    fn remove(&mut self, kind: Kind, id: &str) {
        match kind {
            Kind::Key => {
                if let Some(h) = token_bytes(id) {
                    self.keys.remove(&h);
                }
            }
            Kind::Team => {
                self.teams.remove(id);
            }
            Kind::User => {
                self.users.remove(id);
            }
            Kind::Customer => {
                self.customers.remove(id);
            }
            Kind::Budget => {
                self.budgets.remove(id);
            }
            Kind::Model => {
                self.models.remove(id);
                self.models_generation = next_generation();
            }
            Kind::Tag => {
                self.tags.remove(id);
            }
        }
    }

    fn install_doc(&mut self, key: EntityKey, doc: StoredDoc) {
        self.note_size(&key, &doc);
        let seq = doc.seq;
        self.seq = self.seq.max(seq);
        self.by_seq.insert(seq, key.clone());
        if let Some(old) = self.docs.insert(key, doc)
            && old.seq != seq
        {
            self.by_seq.remove(&old.seq);
        }
    }

    fn install_ledger(&mut self, counter: Vec<u8>, ledger: Option<Ledger>) {
        if let Some(old) = self.ledgers.get(&counter)
            && let Some(end) = old.ends_at_ms
        {
            self.ledger_expiry.remove(&(end, counter.clone()));
        }
        match ledger {
            Some(ledger) => {
                if let Some(end) = ledger.ends_at_ms {
                    self.ledger_expiry.insert((end, counter.clone()));
                }
                self.ledgers.insert(counter, ledger);
            }
            None => {
                self.ledgers.remove(&counter);
            }
        }
    }

    fn intern(&mut self, name: &str) -> Arc<str> {
        match self.names.get(name) {
            Some(name) => name.clone(),
            None => {
                let name: Arc<str> = Arc::from(name);
                self.names.insert(name.clone());
                name
            }
        }
    }
}

/// The id an entity's record and document are stored under: a key's token as
/// its record spells it (a caller may spell the token in upper case).
fn stored_id(kind: Kind, id: &str, token: Option<&Value>) -> String {
    match (kind, token.and_then(Value::as_str)) {
        (Kind::Key, Some(token)) => token.to_owned(),
        _ => id.to_owned(),
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
        Kind::Tag => "name",
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
