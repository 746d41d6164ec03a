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
//! Child modules: `state_plan.rs` plans each command, `state_compact.rs`
//! compacts documents, `state_tests.rs` tests them all.
//!
//! Size: still past the ~600-line rule (about 1,050 lines): the records'
//! maps, the document store and its outbox, loading at start-up and the
//! plan/commit pair are one state with private fields; splitting the
//! document store out is the next step.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::command::{Kind, Outcome, Proposal, Refusal};
use super::doc::{Actor, DocError, EntityDoc};

#[path = "state_compact.rs"]
mod compaction;
#[path = "state_plan.rs"]
mod plan;
use super::ledger::Ledger;
use super::records::{
    BudgetRecord, CustomerRecord, KeyRecord, ModelRecord, TagRecord, TeamRecord, UserRecord,
};
pub use compaction::{COMPACT_FLOOR, Compactable};
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

/// One entity's document as the state keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredDoc {
    /// The state's change number at the document's last change.
    pub seq: u64,
    /// The region whose merge made the document what it is, when that
    /// region's document was then exactly this one: it needs nothing back.
    pub echo: Option<Arc<str>>,
    /// [`EntityDoc::save`].
    pub saved: Box<[u8]>,
}

impl StoredDoc {
    const FORMAT: u8 = 1;

    /// `[format][seq: u64 BE][echo length: u8][echo][saved document]`.
    pub fn encode(&self) -> Vec<u8> {
        let echo = self.echo.as_deref().unwrap_or("").as_bytes();
        let mut out = Vec::with_capacity(10 + echo.len() + self.saved.len());
        out.push(Self::FORMAT);
        out.extend_from_slice(&self.seq.to_be_bytes());
        // Region names are validated short (`MergeRemote` refuses longer).
        out.push(u8::try_from(echo.len()).unwrap_or(0));
        if echo.len() <= usize::from(u8::MAX) {
            out.extend_from_slice(echo);
        }
        out.extend_from_slice(&self.saved);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let [format, rest @ ..] = bytes else {
            return Err("empty".into());
        };
        if *format != Self::FORMAT {
            return Err(format!("unknown document format {format}"));
        }
        let (seq, rest) = rest
            .split_first_chunk::<8>()
            .ok_or("truncated change number")?;
        let (len, rest) = rest.split_first().ok_or("truncated echo")?;
        let len = usize::from(*len);
        if rest.len() < len {
            return Err("truncated echo".into());
        }
        let (echo, saved) = rest.split_at(len);
        let echo = std::str::from_utf8(echo).map_err(|e| e.to_string())?;
        Ok(Self {
            seq: u64::from_be_bytes(*seq),
            echo: (!echo.is_empty()).then(|| Arc::from(echo)),
            saved: saved.into(),
        })
    }
}

/// Where a state reads the documents it does not hold in memory: what was
/// written from its [`Change::Doc`]s.
pub trait DocSource: Send + Sync + std::fmt::Debug {
    /// An entity's document ([`StoredDoc::encode`] bytes).
    fn get(&self, kind: Kind, id: &str) -> Result<Option<Vec<u8>>, String>;
    /// At most `limit` entities whose documents last changed after change
    /// number `after`, with that number, in change order.
    fn changed_after(&self, after: u64, limit: usize) -> Result<Vec<(u64, Kind, String)>, String>;
}

/// A document to send to another region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutgoingDoc {
    pub kind: Kind,
    pub id: String,
    /// The document's change number.
    pub seq: u64,
    /// [`EntityDoc::save`]: load it to take its changes.
    pub saved: Vec<u8>,
}

/// The documents to send to a region, and the change number they cover:
/// every document changed after the requested number and up to `through`
/// is in `docs`, or needs nothing sent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outbox {
    pub through: u64,
    pub docs: Vec<OutgoingDoc>,
}

/// Bounds on one [`Outbox`].
#[derive(Clone, Copy, Debug)]
pub struct OutboxLimits {
    pub max_docs: usize,
    /// Saved document bytes (changes are about the same size).
    pub max_bytes: usize,
    /// Documents looked at, sent or not (bounds the time under the lock).
    pub max_scan: usize,
}

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

    /// An entity's document (deleted entities included).
    pub fn document(&self, kind: Kind, id: &str) -> Option<Result<EntityDoc, DocError>> {
        match self.stored_doc(&(kind, Arc::from(id))) {
            Ok(doc) => doc.map(|d| EntityDoc::load(&d.saved)),
            Err(e) => Some(Err(DocError::Storage(e))),
        }
    }

    /// The saved size of an entity's document, in bytes: how much history
    /// its edits have built up.
    pub fn document_size(&self, kind: Kind, id: &str) -> Option<usize> {
        self.stored_doc(&(kind, Arc::from(id)))
            .ok()
            .flatten()
            .map(|d| d.saved.len())
    }

    /// How many documents the state has (deleted entities included). Reads
    /// the whole index of a source: for tools and tests.
    pub fn document_count(&self) -> Result<usize, String> {
        let stored = match &self.source {
            None => return Ok(self.docs.len()),
            Some(source) => source.changed_after(0, usize::MAX)?,
        };
        let new = self
            .docs
            .keys()
            .filter(|key| {
                !stored
                    .iter()
                    .any(|(_, kind, id)| *kind == key.0 && **id == *key.1)
            })
            .count();
        Ok(stored.len() + new)
    }

    /// Reads documents not held in memory from `source`, whose documents
    /// were written from this state's changes, the latest with change number
    /// `seq`; and lets go of those held.
    pub fn attach_documents(&mut self, source: Arc<dyn DocSource>, seq: u64) {
        self.seq = self.seq.max(seq);
        self.source = Some(source);
        self.flushed();
    }

    /// The documents held in memory: change number, kind and id.
    pub fn document_index(&self) -> Vec<(u64, Kind, Arc<str>)> {
        self.by_seq
            .iter()
            .map(|(seq, (kind, id))| (*seq, *kind, id.clone()))
            .collect()
    }

    /// How many documents are held in memory (all, without a source).
    pub fn documents_in_memory(&self) -> usize {
        self.docs.len()
    }

    /// Every change returned so far is written to the source: the documents
    /// held in memory can be let go. (Without a source, nothing happens.)
    pub fn flushed(&mut self) {
        if self.source.is_some() {
            self.docs = HashMap::new();
            self.by_seq = BTreeMap::new();
        }
    }

    /// An entity's document: held in memory, else from the source.
    fn stored_doc(
        &self,
        key: &EntityKey,
    ) -> Result<Option<std::borrow::Cow<'_, StoredDoc>>, String> {
        if let Some(doc) = self.docs.get(key) {
            return Ok(Some(std::borrow::Cow::Borrowed(doc)));
        }
        let Some(source) = &self.source else {
            return Ok(None);
        };
        match source.get(key.0, &key.1)? {
            None => Ok(None),
            Some(bytes) => StoredDoc::decode(&bytes)
                .map(|d| Some(std::borrow::Cow::Owned(d)))
                .map_err(|e| format!("{} `{}`'s stored document: {e}", key.0.noun(), key.1)),
        }
    }

    /// Entities whose documents changed after `after`, in change order, at
    /// most `limit` from the source (then every one held in memory), and
    /// whether the source had more.
    fn changed_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<(Vec<(u64, EntityKey)>, bool), String> {
        let mut out: Vec<(u64, EntityKey)> = Vec::new();
        let mut more = false;
        if let Some(source) = &self.source {
            let stored = source.changed_after(after, limit)?;
            more = stored.len() >= limit;
            out.extend(
                stored
                    .into_iter()
                    .map(|(seq, kind, id)| (seq, (kind, Arc::from(id))))
                    // A document held in memory is newer than its stored copy.
                    .filter(|(_, key)| !self.docs.contains_key(key)),
            );
        }
        let cap = match (more, out.last()) {
            (true, Some((seq, _))) => *seq,
            _ => u64::MAX,
        };
        out.extend(
            self.by_seq
                .range(after.saturating_add(1)..=cap)
                .map(|(seq, key)| (*seq, key.clone())),
        );
        out.sort_by_key(|(seq, _)| *seq);
        Ok((out, more))
    }

    /// The latest change number: it grows with every document change.
    pub fn change_seq(&self) -> u64 {
        self.seq
    }

    /// The change number of `region` through which its changes are merged
    /// here (0: none yet).
    pub fn sync_cursor(&self, region: &str) -> u64 {
        self.cursors.get(region).copied().unwrap_or(0)
    }

    /// Every sync cursor.
    pub fn sync_cursors(&self) -> &BTreeMap<String, u64> {
        &self.cursors
    }

    /// The documents to send to `to_region`, which holds this region's
    /// changes through change number `after`: those changed since, in change
    /// order, within `limits`. A document whose last change merged exactly
    /// what `to_region` sent is covered but not sent (no echo).
    pub fn outbox(&self, after: u64, to_region: &str, limits: OutboxLimits) -> Outbox {
        let mut out = Outbox {
            through: self.seq.max(after),
            docs: Vec::new(),
        };
        let (changed, more) = match self.changed_after(after, limits.max_scan) {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(error = %e, "documents to sync could not be read");
                out.through = after;
                return out;
            }
        };
        if more && let Some((seq, _)) = changed.last() {
            // The source had more than were read: only these are covered.
            out.through = out.through.min(*seq);
        }
        let (mut bytes, mut scanned) = (0usize, 0usize);
        for (seq, key) in &changed {
            if out.docs.len() >= limits.max_docs
                || bytes >= limits.max_bytes
                || scanned >= limits.max_scan
            {
                // Everything before this document is covered.
                out.through = seq - 1;
                break;
            }
            scanned += 1;
            let doc = match self.stored_doc(key) {
                Ok(Some(doc)) => doc,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "a document to sync could not be read");
                    out.through = seq - 1;
                    break;
                }
            };
            if doc.echo.as_deref() == Some(to_region) {
                continue;
            }
            bytes += doc.saved.len();
            out.docs.push(OutgoingDoc {
                kind: key.0,
                id: key.1.to_string(),
                seq: doc.seq,
                saved: doc.saved.to_vec(),
            });
        }
        out
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
            Kind::Tag => {
                self.tags.insert(id_owned(), parse(kind, id, json)?);
            }
        }
        Ok(())
    }

    /// Installs a document read back from storage or a snapshot
    /// ([`StoredDoc::encode`] bytes).
    pub fn load_doc(&mut self, kind: Kind, id: &str, bytes: &[u8]) -> Result<(), String> {
        let mut doc = StoredDoc::decode(bytes)
            .map_err(|e| format!("{} `{id}`'s document: {e}", kind.noun()))?;
        // One allocation per region name, not per document.
        doc.echo = doc.echo.map(|name| self.intern(&name));
        self.install_doc((kind, Arc::from(id)), doc);
        Ok(())
    }

    /// Installs a sync cursor read back from storage or a snapshot.
    pub fn load_cursor(&mut self, region: &str, seq: u64) {
        self.cursors.insert(region.to_owned(), seq);
    }

    /// Loads a stored rights ledger.
    pub fn load_ledger(&mut self, counter: &[u8], json: &[u8]) -> Result<(), String> {
        let ledger: Ledger = serde_json::from_slice(json)
            .map_err(|e| format!("rights ledger {}: {e}", hex(counter)))?;
        self.install_ledger(counter.to_vec(), Some(ledger));
        Ok(())
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

    /// The rights ledger of `counter`, if this region issues its rights.
    pub fn ledger(&self, counter: &[u8]) -> Option<&Ledger> {
        self.ledgers.get(counter)
    }

    /// Every rights ledger as `(counter, json)`.
    pub fn ledgers(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.ledgers
            .iter()
            .map(|(c, l)| (c.clone(), to_json(l).to_string().into_bytes()))
            .collect()
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

    /// Gives a document to every record that has none (records stored before
    /// documents existed), made at the record's `updated_at`; returns the
    /// changes to write. Run after loading; usually does nothing.
    pub fn adopt_records(&mut self) -> Vec<Change> {
        let mut missing: Vec<(Kind, String)> = Vec::new();
        let has = |docs: &HashMap<EntityKey, StoredDoc>, kind: Kind, id: &str| {
            docs.contains_key(&(kind, Arc::from(id)))
        };
        for key in self.keys.values() {
            if !has(&self.docs, Kind::Key, &key.token) {
                missing.push((Kind::Key, key.token.clone()));
            }
        }
        fn others<T>(
            out: &mut Vec<(Kind, String)>,
            docs: &HashMap<EntityKey, StoredDoc>,
            kind: Kind,
            m: &BTreeMap<String, Arc<T>>,
        ) {
            out.extend(
                m.keys()
                    .filter(|id| !docs.contains_key(&(kind, Arc::from(id.as_str()))))
                    .map(|id| (kind, id.clone())),
            );
        }
        others(&mut missing, &self.docs, Kind::Team, &self.teams);
        others(&mut missing, &self.docs, Kind::User, &self.users);
        others(&mut missing, &self.docs, Kind::Customer, &self.customers);
        others(&mut missing, &self.docs, Kind::Budget, &self.budgets);
        others(&mut missing, &self.docs, Kind::Model, &self.models);
        others(&mut missing, &self.docs, Kind::Tag, &self.tags);
        missing.sort();
        let mut changes = Vec::new();
        for (kind, id) in missing {
            let Some(Value::Object(record)) = self.get_json(kind, &id) else {
                continue;
            };
            let at_ms = record
                .get("updated_at")
                .and_then(Value::as_u64)
                .unwrap_or(0)
                .saturating_mul(1000);
            match EntityDoc::new(&self.actor, at_ms, &record) {
                Ok(doc) => {
                    let stored = StoredDoc {
                        seq: self.seq + 1,
                        echo: None,
                        saved: doc.save().into_boxed_slice(),
                    };
                    changes.push(Change::Doc {
                        kind,
                        id: id.clone(),
                        bytes: stored.encode(),
                        seq: stored.seq,
                        replaces: None,
                    });
                    self.install_doc((kind, Arc::from(id.as_str())), stored);
                }
                Err(e) => {
                    tracing::warn!(kind = kind.noun(), %id, error = %e, "no document for a stored record")
                }
            }
        }
        changes
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
        all(&mut out, Kind::Tag, &self.tags);
        out
    }

    /// Every document as `(kind, id, StoredDoc::encode bytes)`, in change
    /// order (from the source too: a snapshot reads them all).
    pub fn documents(&self) -> Result<Vec<(Kind, String, Vec<u8>)>, String> {
        let (changed, _) = self.changed_after(0, usize::MAX)?;
        let mut out = Vec::with_capacity(changed.len());
        for (_, key) in changed {
            if let Some(doc) = self.stored_doc(&key)? {
                out.push((key.0, key.1.to_string(), doc.encode()));
            }
        }
        Ok(out)
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
