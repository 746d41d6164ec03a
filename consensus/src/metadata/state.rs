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
//! Size: past the ~600-line rule, knowingly for now. One thing — the applied
//! state and the planner every command goes through — but the per-command
//! planning (records, members, merges, rights ledgers) shares the planner's
//! private effect list and the state's private maps, so it stays here until
//! it is split by command into child modules as `state_compact.rs` (document
//! compaction) already is: issue 16, item 5.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::command::{Command, Kind, MergeSummary, Outcome, Proposal, Refusal, RemoteChanges};
use super::compact::Merged;
use super::doc::{Actor, DocError, EntityDoc};

#[path = "state_compact.rs"]
mod compaction;
use super::ledger::{GrantReply, GrantRequest, Ledger, long_over};
use super::records::{
    BudgetRecord, CustomerRecord, KeyRecord, ModelRecord, TagRecord, TeamRecord, UserRecord,
};
pub use compaction::{COMPACT_FLOOR, Compactable};

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

/// Works out one proposal's effects against the state as it is.
struct Planner<'a> {
    state: &'a MetadataState,
    at_ms: u64,
    /// `at_ms` in seconds: records' `created_at` / `updated_at`.
    now: u64,
    /// The last change number handed out so far.
    next_seq: u64,
    effects: Vec<Effect>,
    /// Why a document could not be read, if one could not.
    fault: Option<String>,
}

/// A refusal ends planning; its plan has no effects.
type Planned<T = Outcome> = Result<T, Outcome>;

fn done(records: Vec<Value>, missing: Vec<String>) -> Outcome {
    Outcome::Done { records, missing }
}

fn invalid(message: impl Into<String>) -> Outcome {
    Outcome::refused(Refusal::Invalid, message)
}

impl Planner<'_> {
    fn command(&mut self, command: &Command) -> Planned {
        match command {
            Command::Create { kind, record } => self.create(*kind, record),
            Command::Update { kind, id, patch } => self.update(*kind, id, patch),
            Command::Delete { kind, ids } => {
                let (mut removed, mut missing) = (Vec::new(), Vec::new());
                let mut seen = BTreeSet::new();
                for id in ids {
                    let found = match seen.insert(id.as_str()) {
                        true => self.state.get_json(*kind, id),
                        false => None, // deleted a moment ago
                    };
                    match found {
                        Some(record) => {
                            self.remove(*kind, &stored_id(*kind, id, record.get("token")))?;
                            removed.push(record);
                        }
                        None => missing.push(id.clone()),
                    }
                }
                Ok(done(removed, missing))
            }
            Command::AddMember {
                team_id,
                user_id,
                role,
            } => {
                let Some(team) = self.state.teams.get(team_id) else {
                    return Err(Outcome::refused(
                        Refusal::NotFound,
                        format!("team `{team_id}` does not exist"),
                    ));
                };
                let mut members = team.members.clone();
                members.insert(user_id.clone(), *role);
                let mut patch = Map::new();
                patch.insert("members".into(), to_json(&members));
                self.update(Kind::Team, team_id, &patch)
            }
            Command::RemoveMember { team_id, user_id } => {
                let Some(team) = self.state.teams.get(team_id) else {
                    return Err(Outcome::refused(
                        Refusal::NotFound,
                        format!("team `{team_id}` does not exist"),
                    ));
                };
                if !team.members.contains_key(user_id) {
                    return Err(Outcome::refused(
                        Refusal::NotFound,
                        format!("`{user_id}` is not a member of team `{team_id}`"),
                    ));
                }
                let mut members = team.members.clone();
                members.remove(user_id);
                let mut patch = Map::new();
                patch.insert("members".into(), to_json(&members));
                self.update(Kind::Team, team_id, &patch)
            }
            Command::Regenerate {
                old_token,
                new_token,
                key_name,
            } => {
                let (Some(old), Some(new_hash)) = (token_bytes(old_token), token_bytes(new_token))
                else {
                    return Err(invalid("tokens must be hex SHA-256"));
                };
                if self.state.keys.contains_key(&new_hash) {
                    return Err(Outcome::refused(
                        Refusal::AlreadyExists,
                        "the new key already exists",
                    ));
                }
                let Some(record) = self.state.keys.get(&old) else {
                    return Err(Outcome::refused(Refusal::NotFound, "key not found"));
                };
                let mut record = (**record).clone();
                self.remove(Kind::Key, &record.token)?;
                record.token = new_token.clone();
                record.key_name = key_name.clone();
                record.updated_at = self.now;
                let json = self.put(Kind::Key, new_token, to_json(&record))?;
                Ok(done(vec![json], vec![]))
            }
            Command::MergeRemote {
                source,
                since,
                through,
                entities,
            } => self.merge_remote(source, *since, *through, entities),
            Command::Grant(request) => Ok(self.grant(request)),
            Command::Compact { kind, id, heads } => self.compact(*kind, id, heads),
        }
    }

    /// Applies a rights request to its counter's ledger, dropping ledgers
    /// whose period ended long enough ago.
    fn grant(&mut self, request: &GrantRequest) -> Outcome {
        // A period long over (a node with a very slow clock): its ledger may
        // be gone, and a new one must not hand its headroom out again.
        if long_over(request.ends_at_ms, self.at_ms) {
            return done(vec![to_json(&GrantReply::default())], vec![]);
        }
        let mut ledger = self
            .state
            .ledgers
            .get(&request.counter)
            .cloned()
            .unwrap_or_default();
        let reply = ledger.grant(request);
        for (_, counter) in self
            .state
            .ledger_expiry
            .iter()
            .take_while(|(end, _)| long_over(Some(*end), self.at_ms))
            .take(MAX_LEDGERS_DROPPED)
        {
            if *counter != request.counter {
                self.effects.push(Effect::Ledger {
                    counter: counter.clone(),
                    ledger: None,
                });
            }
        }
        self.effects.push(Effect::Ledger {
            counter: request.counter.clone(),
            ledger: Some(ledger),
        });
        done(vec![to_json(&reply)], vec![])
    }

    fn create(&mut self, kind: Kind, record: &Value) -> Planned {
        let mut record = match record {
            Value::Object(m) => m.clone(),
            _ => return Err(invalid("a record must be an object")),
        };
        record.insert("created_at".into(), self.now.into());
        record.insert("updated_at".into(), self.now.into());
        if has_home(kind) {
            record.insert("home_region".into(), self.state.region.to_string().into());
        }
        let Some(id) = record
            .get(id_field(kind))
            .and_then(Value::as_str)
            .map(str::to_owned)
        else {
            return Err(invalid(format!(
                "{} needs `{}`",
                kind.noun(),
                id_field(kind)
            )));
        };
        if self.state.exists(kind, &id) {
            return Err(Outcome::refused(
                Refusal::AlreadyExists,
                format!("{} `{id}` already exists", kind.noun()),
            ));
        }
        let json = self.put(kind, &id, Value::Object(record))?;
        Ok(done(vec![json], vec![]))
    }

    fn update(&mut self, kind: Kind, id: &str, patch: &Map<String, Value>) -> Planned {
        let Some(Value::Object(mut record)) = self.state.get_json(kind, id) else {
            return Err(Outcome::refused(
                Refusal::NotFound,
                format!("{} `{id}` does not exist", kind.noun()),
            ));
        };
        for (field, value) in patch {
            // Identity and history are not the caller's to change.
            if field == id_field(kind) || field == "created_at" || field == "home_region" {
                continue;
            }
            record.insert(field.clone(), value.clone());
        }
        // Records made before homes existed get this region's.
        if has_home(kind) && !record.contains_key("home_region") {
            record.insert("home_region".into(), self.state.region.to_string().into());
        }
        record.insert("updated_at".into(), self.now.into());
        let id = stored_id(kind, id, record.get("token"));
        let json = self.put(kind, &id, Value::Object(record))?;
        Ok(done(vec![json], vec![]))
    }

    /// Stores `json` as `kind`'s record `id` and makes its document hold it;
    /// returns the canonical record.
    fn put(&mut self, kind: Kind, id: &str, json: Value) -> Planned<Value> {
        let (typed, canonical) = parse_typed(kind, id, json).map_err(invalid)?;
        if let Value::Object(fields) = &canonical {
            self.write_doc(kind, id, Some(fields))?;
        }
        self.effects.push(Effect::Put {
            kind,
            id: id.to_owned(),
            typed,
            json: canonical.to_string().into_bytes(),
        });
        Ok(canonical)
    }

    /// Removes record `id` and tombstones its document.
    fn remove(&mut self, kind: Kind, id: &str) -> Planned<()> {
        self.write_doc(kind, id, None)?;
        self.effects.push(Effect::Remove {
            kind,
            id: id.to_owned(),
        });
        Ok(())
    }

    /// Makes entity `id`'s document hold `record`, or deleted (`None`), as
    /// this region's actor at the proposal's time.
    fn write_doc(
        &mut self,
        kind: Kind,
        id: &str,
        record: Option<&Map<String, Value>>,
    ) -> Planned<()> {
        let failed = |e: DocError| invalid(format!("{} `{id}`'s document: {e}", kind.noun()));
        let actor = &self.state.actor;
        let at = self.at_ms;
        let key: EntityKey = (kind, Arc::from(id));
        let stored = self.current_doc(&key)?;
        let replaces = stored.as_ref().map(|d| d.seq);
        let current = match stored {
            Some(stored) => Some(EntityDoc::load(&stored.saved).map_err(failed)?),
            None => None,
        };
        let doc = match (current, record) {
            (None, Some(record)) => EntityDoc::new(actor, at, record).map_err(failed)?,
            (Some(mut doc), Some(record)) => {
                let changed = if doc.is_deleted() {
                    doc.recreate(actor, at, record)
                } else {
                    let kept = self.with_unknown_fields(kind, id, &doc, record);
                    doc.update(actor, at, kept.as_ref().unwrap_or(record))
                };
                if !changed.map_err(failed)? {
                    return Ok(());
                }
                doc
            }
            (Some(mut doc), None) => {
                if !doc.delete(actor, at).map_err(failed)? {
                    return Ok(());
                }
                doc
            }
            (None, None) => {
                // A record stored before documents existed: its document
                // starts with what it held, then the delete.
                let Some(Value::Object(old)) = self.state.get_json(kind, id) else {
                    return Ok(());
                };
                let mut doc = EntityDoc::new(actor, at, &old).map_err(failed)?;
                doc.delete(actor, at).map_err(failed)?;
                doc
            }
        };
        self.push_doc(kind, key.1, doc.save(), None, replaces);
        Ok(())
    }

    /// The effect that stores a document's new saved form under the next
    /// change number.
    fn push_doc(
        &mut self,
        kind: Kind,
        id: Arc<str>,
        saved: Vec<u8>,
        echo: Option<Arc<str>>,
        replaces: Option<u64>,
    ) {
        self.next_seq += 1;
        self.effects.push(Effect::Doc {
            kind,
            id,
            doc: StoredDoc {
                seq: self.next_seq,
                echo,
                saved: saved.into_boxed_slice(),
            },
            replaces,
        });
    }

    /// An entity's current document; a read failure ends planning, faulted.
    fn current_doc(&mut self, key: &EntityKey) -> Planned<Option<StoredDoc>> {
        match self.state.stored_doc(key) {
            Ok(doc) => Ok(doc.map(std::borrow::Cow::into_owned)),
            Err(e) => {
                let refusal = invalid(format!("storage: {e}"));
                self.fault = Some(e);
                Err(refusal)
            }
        }
    }

    /// `record` plus the fields `doc` holds that this build's record type
    /// does not know (written by a newer region): an update here must not
    /// delete them. `None` when there are none.
    fn with_unknown_fields(
        &self,
        kind: Kind,
        id: &str,
        doc: &EntityDoc,
        record: &Map<String, Value>,
    ) -> Option<Map<String, Value>> {
        let Some(Value::Object(known)) = self.state.get_json(kind, id) else {
            return None;
        };
        let held = doc.record().ok().flatten()?;
        let mut unknown = held
            .into_iter()
            .filter(|(field, _)| !known.contains_key(field) && !record.contains_key(field))
            .peekable();
        unknown.peek()?;
        let mut out = record.clone();
        out.extend(unknown);
        Some(out)
    }

    fn merge_remote(
        &mut self,
        source: &str,
        since: u64,
        through: u64,
        entities: &[RemoteChanges],
    ) -> Planned {
        if source.is_empty() || source.len() > MAX_REGION_NAME {
            return Err(invalid(format!(
                "a region name has 1 to {MAX_REGION_NAME} bytes"
            )));
        }
        if source == &*self.state.region {
            return Err(invalid(format!(
                "changes from region `{source}` are this region's own"
            )));
        }
        // Every document the batch names, merged in order (an entity may
        // appear more than once), with whether it changed.
        // Per entity: its document, whether the batch changed it, the source's
        // heads for it, and the change number of the document it replaces.
        #[allow(clippy::type_complexity)]
        let mut work: BTreeMap<EntityKey, (EntityDoc, bool, &[String], Option<u64>)> =
            BTreeMap::new();
        // Documents not now held as the source sent them (see `Merged`).
        let mut not_held: Vec<(Kind, String)> = Vec::new();
        for entity in entities {
            let (kind, id) = (entity.kind, entity.id.as_str());
            let failed =
                |e: DocError| invalid(format!("{} `{id}` from {source}: {e}", kind.noun()));
            if kind == Kind::Key && token_bytes(id).is_none() {
                return Err(invalid(format!("key `{id}` from {source}: not a token")));
            }
            let key: EntityKey = (kind, Arc::from(id));
            let slot = match work.entry(key) {
                std::collections::btree_map::Entry::Occupied(slot) => slot.into_mut(),
                std::collections::btree_map::Entry::Vacant(slot) => {
                    let stored = self.current_doc(slot.key())?;
                    match stored {
                        Some(stored) => {
                            let doc = EntityDoc::load(&stored.saved).map_err(failed)?;
                            slot.insert((doc, false, &[], Some(stored.seq)))
                        }
                        None => {
                            let doc = EntityDoc::from_changes(&entity.changes).map_err(failed)?;
                            slot.insert((doc, true, &entity.heads, None))
                        }
                    }
                }
            };
            // A whole document, perhaps of another compaction epoch.
            let merged = slot.0.merge_document(&entity.changes).map_err(failed)?;
            slot.1 |= merged.changed();
            if let Merged::Skipped(why) = merged {
                tracing::warn!(kind = kind.noun(), source, why, "document not merged");
            }
            if !merged.held() {
                not_held.push((kind, id.to_owned()));
            }
            slot.2 = &entity.heads;
        }
        let source_name: Arc<str> = Arc::from(source);
        let mut merged = 0u64;
        for ((kind, id), (doc, changed, heads, replaces)) in work {
            if !changed {
                continue;
            }
            merged += 1;
            let record = doc
                .record()
                .map_err(|e| invalid(format!("{} `{id}` from {source}: {e}", kind.noun())))?;
            match record {
                Some(mut fields) => {
                    if kind == Kind::Key
                        && meridian_bugs::on(meridian_bugs::Bug::IgnoreRemoteBlocks)
                    {
                        fields.insert("blocked".into(), Value::Bool(false));
                    }
                    let named = fields.get(id_field(kind)).and_then(Value::as_str);
                    if named != Some(&*id) {
                        return Err(invalid(format!(
                            "{} `{id}` from {source}: its document names another entity",
                            kind.noun()
                        )));
                    }
                    let (typed, canonical) = parse_typed(kind, &id, Value::Object(fields))
                        .map_err(|e| {
                            invalid(format!("{} `{id}` from {source}: {e}", kind.noun()))
                        })?;
                    self.effects.push(Effect::Put {
                        kind,
                        id: id.to_string(),
                        typed,
                        json: canonical.to_string().into_bytes(),
                    });
                }
                None => {
                    if self.state.exists(kind, &id) {
                        self.effects.push(Effect::Remove {
                            kind,
                            id: id.to_string(),
                        });
                    }
                }
            }
            // The source holds exactly this document: nothing to send back.
            let ours: Vec<String> = doc.heads().iter().map(ToString::to_string).collect();
            let mut theirs = heads.to_vec();
            theirs.sort();
            let echo = (!theirs.is_empty() && ours == theirs).then(|| source_name.clone());
            self.push_doc(kind, id, doc.save(), echo, replaces);
        }
        // Everything in (since, through] is merged now; with nothing missed
        // before `since`, the source is merged through `through`. (A stale
        // batch may move the cursor back: that only makes the source resend.)
        let mut cursor = self.state.sync_cursor(source);
        if since <= cursor && through != cursor {
            cursor = through;
            self.effects.push(Effect::Cursor {
                region: source.to_owned(),
                seq: cursor,
            });
        }
        not_held.sort();
        not_held.dedup();
        let summary = MergeSummary {
            source: source.to_owned(),
            cursor,
            merged,
            not_held,
        };
        Ok(done(vec![to_json(&summary)], vec![]))
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
mod tests {
    use super::*;
    use crate::metadata::records::TeamRole;
    use serde_json::json;

    const US: &str = "us-east";
    const EU: &str = "eu-west";
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
        let mut s = MetadataState::new(US);
        let (out, changes) = s.apply(&at(5_000, key(T1)));
        assert!(matches!(out, Outcome::Done { .. }), "{out:?}");
        assert!(matches!(
            &changes[..],
            [Change::Doc { .. }, Change::Put { .. }]
        ));
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
            changes[1],
            Change::Delete {
                kind: Kind::Key,
                id: T1.into()
            }
        );
        assert!(matches!(&changes[0], Change::Doc { id, .. } if id == T1));
        assert!(s.key(T1).is_none());
        let doc = s.document(Kind::Key, T1).unwrap().unwrap();
        assert!(doc.is_deleted(), "a delete leaves a tombstone document");
    }

    #[test]
    fn regenerate_moves_settings_to_the_new_token() {
        let mut s = MetadataState::new(US);
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
        // Old: tombstone and record delete; new: document and record.
        assert_eq!(changes.len(), 4);
        assert!(s.key(T1).is_none());
        assert!(s.document(Kind::Key, T1).unwrap().unwrap().is_deleted());
        assert!(
            s.document(Kind::Key, T2)
                .unwrap()
                .unwrap()
                .record()
                .unwrap()
                .is_some()
        );
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
            let mut s = MetadataState::new(US);
            let outcomes: Vec<Outcome> = commands.iter().map(|c| s.apply(c).0).collect();
            (s.records(), s.documents().unwrap(), outcomes)
        };
        let (records, documents, outcomes) = run();
        let again = run();
        assert_eq!(again.0, records, "same commands, same state");
        assert_eq!(again.1, documents, "and byte-identical documents");
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
        let mut s = MetadataState::new(US);
        for (kind, id, json) in &records {
            s.load(*kind, id, json).unwrap();
        }
        for (kind, id, bytes) in &documents {
            s.load_doc(*kind, id, bytes).unwrap();
        }
        assert!(
            s.adopt_records().is_empty(),
            "every record has its document"
        );
        assert_eq!(s.records(), records, "records reload into the same state");
        assert_eq!(s.documents().unwrap(), documents);
        assert_eq!(
            s.team("t1").unwrap().members.get("u1"),
            Some(&TeamRole::Admin)
        );
    }

    const LIMITS: OutboxLimits = OutboxLimits {
        max_docs: 1000,
        max_bytes: 1 << 20,
        max_scan: 10_000,
    };

    /// What region `from` sends to `to` after `from`'s change number
    /// `after`, as the sync task builds it.
    fn batch(from: &MetadataState, to: &str, after: u64) -> Command {
        let outbox = from.outbox(after, to, LIMITS);
        let entities = outbox
            .docs
            .iter()
            .map(|d| {
                let doc = EntityDoc::load(&d.saved).unwrap();
                RemoteChanges {
                    kind: d.kind,
                    id: d.id.clone(),
                    changes: doc.changes_since(&[]),
                    heads: doc.heads().iter().map(ToString::to_string).collect(),
                }
            })
            .collect();
        Command::MergeRemote {
            source: from.region().to_owned(),
            since: after,
            through: outbox.through,
            entities,
        }
    }

    /// Sends `from`'s changes the receiver lacks, as the sync task does
    /// (the compaction tests use it too).
    pub(super) fn ship(from: &MetadataState, to: &mut MetadataState) -> MergeSummary {
        let after = to.sync_cursor(from.region());
        let (out, _) = to.apply(&at(0, batch(from, to.region(), after)));
        MergeSummary::from_outcome(&out).unwrap_or_else(|| panic!("{out:?}"))
    }

    fn patch(fields: Value) -> Map<String, Value> {
        fields.as_object().unwrap().clone()
    }

    fn update(kind: Kind, id: &str, fields: Value) -> Command {
        Command::Update {
            kind,
            id: id.into(),
            patch: patch(fields),
        }
    }

    #[test]
    fn a_key_created_in_one_region_authenticates_in_another() {
        let (mut us, mut eu) = (MetadataState::new(US), MetadataState::new(EU));
        us.apply(&at(1_000, key(T1)));
        let summary = ship(&us, &mut eu);
        assert_eq!((summary.merged, summary.cursor), (1, us.change_seq()));
        let hash = token_bytes(T1).unwrap();
        assert_eq!(eu.key_by_hash(&hash), us.key_by_hash(&hash));
        assert_eq!(eu.records(), us.records());
        // Nothing new: nothing changes, the cursor stays.
        let before = eu.documents().unwrap();
        let (out, changes) = eu.apply(&at(0, batch(&us, EU, 0)));
        assert_eq!(MergeSummary::from_outcome(&out).unwrap().merged, 0);
        assert!(
            changes.is_empty(),
            "a repeated batch changes nothing: {changes:?}"
        );
        assert_eq!(eu.documents().unwrap(), before);
    }

    #[test]
    fn tags_have_limits_a_home_and_replicate() {
        let (mut us, mut eu) = (MetadataState::new(US), MetadataState::new(EU));
        let create = Command::Create {
            kind: Kind::Tag,
            record: json!({"name": "eng", "max_budget": 5.0, "budget_duration": "30d",
                "enforcement": "strict", "created_at": 0, "updated_at": 0}),
        };
        let (out, _) = us.apply(&at(1_000, create.clone()));
        assert!(matches!(out, Outcome::Done { .. }), "{out:?}");
        let (again, _) = us.apply(&at(1_500, create));
        assert!(
            matches!(
                again,
                Outcome::Refused {
                    reason: Refusal::AlreadyExists,
                    ..
                }
            ),
            "{again:?}"
        );
        ship(&us, &mut eu);
        eu.apply(&at(
            2_000,
            update(Kind::Tag, "eng", json!({"rpm_limit": 30})),
        ));
        ship(&eu, &mut us);
        for s in [&us, &eu] {
            let tag = s.tag("eng").unwrap();
            assert_eq!(tag.limits.max_budget, Some(5.0), "{}", s.region());
            assert_eq!(tag.limits.rpm_limit, Some(30), "{}", s.region());
            assert_eq!(tag.limits.home_region.as_deref(), Some(US));
        }
        eu.apply(&at(
            3_000,
            Command::Delete {
                kind: Kind::Tag,
                ids: vec!["eng".into()],
            },
        ));
        ship(&eu, &mut us);
        assert!(us.tag("eng").is_none() && eu.tag("eng").is_none());
        assert_eq!(us.records(), eu.records());
    }

    #[test]
    fn merging_is_idempotent_and_order_free() {
        let (mut us, mut eu) = (MetadataState::new(US), MetadataState::new(EU));
        us.apply(&at(1_000, key(T1)));
        let first = batch(&us, EU, 0);
        let after = us.change_seq();
        us.apply(&at(2_000, update(Kind::Key, T1, json!({"rpm_limit": 5}))));
        us.apply(&at(
            3_000,
            Command::Create {
                kind: Kind::Team,
                record: json!({"team_id": "t1"}),
            },
        ));
        let second = batch(&us, EU, after);
        // Later batch first: merged, but the cursor waits for the gap.
        let (out, _) = eu.apply(&at(0, second.clone()));
        assert_eq!(MergeSummary::from_outcome(&out).unwrap().cursor, 0);
        assert!(eu.team("t1").is_some());
        eu.apply(&at(0, first.clone()));
        eu.apply(&at(0, second));
        eu.apply(&at(0, first));
        assert_eq!(eu.records(), us.records());
        assert_eq!(eu.key(T1).unwrap().limits.rpm_limit, Some(5));
    }

    #[test]
    fn garbage_is_refused_and_changes_nothing() {
        let (mut us, mut eu) = (MetadataState::new(US), MetadataState::new(EU));
        us.apply(&at(1_000, key(T1)));
        ship(&us, &mut eu);
        let (records, documents, seq) = (eu.records(), eu.documents().unwrap(), eu.change_seq());
        let good = match batch(&us, EU, 0) {
            Command::MergeRemote { entities, .. } => entities[0].clone(),
            other => panic!("{other:?}"),
        };
        let merge = |source: &str, entities: Vec<RemoteChanges>| Command::MergeRemote {
            source: source.into(),
            since: 0,
            through: 9,
            entities,
        };
        let with = |f: &dyn Fn(&mut RemoteChanges)| {
            let mut e = good.clone();
            f(&mut e);
            vec![good.clone(), e]
        };
        let bad = [
            merge(US, with(&|e| e.changes = b"garbage".to_vec())),
            merge(US, with(&|e| e.changes.truncate(e.changes.len() - 1))),
            merge(US, with(&|e| e.id = T2.into())), // names another key
            merge(US, with(&|e| e.id = "not-a-token".into())),
            merge(
                US,
                with(&|e| {
                    e.kind = Kind::Team;
                    e.id = "t9".into();
                }),
            ),
            merge(
                US,
                with(&|e| {
                    // Nothing to make a new document of.
                    e.changes.clear();
                    e.id = T2.into();
                }),
            ),
            merge(EU, vec![good.clone()]), // its own changes
            merge("", vec![good.clone()]),
        ];
        for command in bad {
            let (out, changes) = eu.apply(&at(0, command.clone()));
            assert!(
                matches!(
                    out,
                    Outcome::Refused {
                        reason: Refusal::Invalid,
                        ..
                    }
                ),
                "{command:?}: {out:?}"
            );
            assert!(changes.is_empty());
            assert_eq!(
                (eu.records(), eu.documents().unwrap(), eu.change_seq()),
                (records.clone(), documents.clone(), seq)
            );
            assert_eq!(eu.sync_cursor(US), us.change_seq());
        }
    }

    #[test]
    fn a_block_or_delete_anywhere_wins_everywhere() {
        let (mut us, mut eu) = (MetadataState::new(US), MetadataState::new(EU));
        us.apply(&at(1_000, key(T1)));
        us.apply(&at(1_000, key(T2)));
        ship(&us, &mut eu);
        // eu blocks T1 while us, concurrently, edits it; us deletes T2 while
        // eu edits it.
        eu.apply(&at(2_000, update(Kind::Key, T1, json!({"blocked": true}))));
        us.apply(&at(2_500, update(Kind::Key, T1, json!({"rpm_limit": 7}))));
        us.apply(&at(
            2_000,
            Command::Delete {
                kind: Kind::Key,
                ids: vec![T2.into()],
            },
        ));
        eu.apply(&at(3_000, update(Kind::Key, T2, json!({"rpm_limit": 9}))));
        ship(&us, &mut eu);
        ship(&eu, &mut us);
        for s in [&us, &eu] {
            let k = s.key(T1).unwrap();
            assert!(k.blocked, "{}", s.region());
            assert_eq!(k.limits.rpm_limit, Some(7));
            assert!(s.key(T2).is_none(), "{}", s.region());
            assert!(s.key_by_hash(&token_bytes(T2).unwrap()).is_none());
        }
        assert_eq!(us.records(), eu.records());
        // Recreating a deleted id after seeing the delete brings it back.
        eu.apply(&at(4_000, key(T2)));
        ship(&eu, &mut us);
        assert!(us.key(T2).is_some());
    }

    #[test]
    fn concurrent_edits_of_different_fields_converge() {
        let (mut us, mut eu) = (MetadataState::new(US), MetadataState::new(EU));
        let team = Command::Create {
            kind: Kind::Team,
            record: json!({"team_id": "t1", "models": ["gpt"]}),
        };
        us.apply(&at(1_000, team));
        ship(&us, &mut eu);
        us.apply(&at(
            2_000,
            update(Kind::Team, "t1", json!({"rpm_limit": 10})),
        ));
        eu.apply(&at(
            2_000,
            update(Kind::Team, "t1", json!({"team_alias": "eu"})),
        ));
        ship(&us, &mut eu);
        ship(&eu, &mut us);
        assert_eq!(us.records(), eu.records());
        let t = us.team("t1").unwrap();
        assert_eq!(
            (t.limits.rpm_limit, t.team_alias.as_deref()),
            (Some(10), Some("eu"))
        );
    }

    #[test]
    fn scoped_models_replicate_with_their_scope() {
        let (mut us, mut eu) = (MetadataState::new(US), MetadataState::new(EU));
        let model = Command::Create {
            kind: Kind::Model,
            record: json!({
                "model_id": "m1", "model_name": "gpt", "litellm_params": {"model": "x"},
                "scope": {"kind": "regions", "regions": [US]},
            }),
        };
        us.apply(&at(1_000, model));
        let generation = eu.models_generation();
        ship(&us, &mut eu);
        let m = eu.model("m1").unwrap();
        assert!(m.scope.includes(US) && !m.scope.includes(EU));
        assert_ne!(eu.models_generation(), generation);
    }

    #[test]
    fn fields_a_newer_region_wrote_survive_local_updates() {
        let (mut us, mut eu) = (MetadataState::new(US), MetadataState::new(EU));
        us.apply(&at(1_000, key(T1)));
        ship(&us, &mut eu);
        // A newer build in eu-west writes a field this build does not know.
        let mut doc = eu.document(Kind::Key, T1).unwrap().unwrap();
        let mut fields = doc.record().unwrap().unwrap();
        fields.insert("future_field".into(), json!("kept"));
        doc.update(&Actor::for_region(EU), 2_000, &fields).unwrap();
        let newer = RemoteChanges {
            kind: Kind::Key,
            id: T1.into(),
            changes: doc.changes_since(&[]),
            heads: vec![],
        };
        let (out, _) = us.apply(&at(
            0,
            Command::MergeRemote {
                source: EU.into(),
                since: 0,
                through: 1,
                entities: vec![newer],
            },
        ));
        assert!(matches!(out, Outcome::Done { .. }), "{out:?}");
        assert!(
            us.get_json(Kind::Key, T1)
                .unwrap()
                .get("future_field")
                .is_none()
        );
        us.apply(&at(3_000, update(Kind::Key, T1, json!({"rpm_limit": 3}))));
        let held = us
            .document(Kind::Key, T1)
            .unwrap()
            .unwrap()
            .record()
            .unwrap()
            .unwrap();
        assert_eq!(held["future_field"], json!("kept"));
        assert_eq!(held["rpm_limit"], json!(3));
        // A field this build knows is still removed when cleared.
        us.apply(&at(
            4_000,
            update(Kind::Key, T1, json!({"rpm_limit": null})),
        ));
        let held = us
            .document(Kind::Key, T1)
            .unwrap()
            .unwrap()
            .record()
            .unwrap()
            .unwrap();
        assert!(!held.contains_key("rpm_limit"), "{held:?}");
        assert_eq!(held["future_field"], json!("kept"));
    }

    #[test]
    fn steady_state_sends_nothing_back() {
        let (mut us, mut eu) = (MetadataState::new(US), MetadataState::new(EU));
        us.apply(&at(1_000, key(T1)));
        ship(&us, &mut eu);
        // eu's copy is exactly us's: covered, not sent back.
        let outbox = eu.outbox(0, US, LIMITS);
        assert!(outbox.docs.is_empty(), "{outbox:?}");
        assert_eq!(outbox.through, eu.change_seq());
        // A third region is sent it.
        assert_eq!(eu.outbox(0, "ap-south", LIMITS).docs.len(), 1);
        // An edit in eu is sent.
        eu.apply(&at(2_000, update(Kind::Key, T1, json!({"rpm_limit": 1}))));
        assert_eq!(eu.outbox(0, US, LIMITS).docs.len(), 1);
        assert_eq!(ship(&eu, &mut us).merged, 1);
        // us's copy is now exactly eu's: nothing goes back.
        assert!(us.outbox(eu.sync_cursor(US), EU, LIMITS).docs.is_empty());
    }

    #[test]
    fn outbox_respects_its_limits() {
        let mut us = MetadataState::new(US);
        for n in 0..10u8 {
            us.apply(&at(1_000, key(&format!("{n:02x}").repeat(32))));
        }
        let limits = OutboxLimits {
            max_docs: 3,
            ..LIMITS
        };
        let mut eu = MetadataState::new(EU);
        let mut rounds = 0;
        while eu.sync_cursor(US) < us.change_seq() {
            let out = us.outbox(eu.sync_cursor(US), EU, limits);
            assert!(out.docs.len() <= 3);
            let command = batch(&us, EU, eu.sync_cursor(US));
            let Command::MergeRemote {
                entities, since, ..
            } = command
            else {
                unreachable!()
            };
            eu.apply(&at(
                0,
                Command::MergeRemote {
                    source: US.into(),
                    since,
                    through: out.through,
                    entities: entities.into_iter().take(3).collect(),
                },
            ));
            rounds += 1;
            assert!(rounds < 10);
        }
        assert_eq!(eu.key_count(), 10);
        let scan = OutboxLimits {
            max_scan: 4,
            ..LIMITS
        };
        assert_eq!(us.outbox(0, EU, scan).through, 4);
    }

    #[test]
    fn plan_changes_nothing_until_committed() {
        let mut s = MetadataState::new(US);
        let plan = s.plan(&at(1_000, key(T1)));
        assert!(s.key(T1).is_none() && s.document_count().unwrap() == 0);
        assert!(matches!(plan.outcome(), Outcome::Done { .. }));
        s.commit(plan);
        assert!(s.key(T1).is_some() && s.document_count().unwrap() == 1);
        assert_eq!(s.change_seq(), 1);
    }

    #[test]
    fn stored_documents_round_trip() {
        let doc = StoredDoc {
            seq: 7,
            echo: Some(Arc::from(EU)),
            saved: vec![1, 2, 3].into_boxed_slice(),
        };
        assert_eq!(StoredDoc::decode(&doc.encode()).unwrap(), doc);
        let plain = StoredDoc { echo: None, ..doc };
        assert_eq!(StoredDoc::decode(&plain.encode()).unwrap(), plain);
        assert!(StoredDoc::decode(&[]).is_err());
        assert!(StoredDoc::decode(&[9, 0]).is_err());
        assert!(StoredDoc::decode(&plain.encode()[..5]).is_err());
    }

    #[test]
    fn records_stored_without_documents_are_adopted() {
        let mut s = MetadataState::new(US);
        s.apply(&at(5_000, key(T1)));
        let mut legacy = MetadataState::new(US);
        for (kind, id, json) in s.records() {
            legacy.load(kind, &id, &json).unwrap();
        }
        let changes = legacy.adopt_records();
        assert_eq!(changes.len(), 1);
        assert!(legacy.adopt_records().is_empty());
        let doc = legacy.document(Kind::Key, T1).unwrap().unwrap();
        assert_eq!(
            doc.record().unwrap().map(Value::Object),
            legacy.get_json(Kind::Key, T1)
        );
    }

    fn grant(counter: &[u8], need: u64, ends_at_ms: u64) -> Command {
        Command::Grant(GrantRequest {
            counter: counter.to_vec(),
            holder: crate::metadata::Holder {
                region: "eu-west".into(),
                node: 1,
                incarnation: 7,
            },
            need,
            returned: 0,
            limit: 10,
            limit_version: 1,
            ends_at_ms: Some(ends_at_ms),
        })
    }

    fn reply(outcome: &Outcome) -> GrantReply {
        match outcome {
            Outcome::Done { records, .. } => serde_json::from_value(records[0].clone()).unwrap(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rights_ledgers_are_durable_replicated_state_and_expire() {
        let mut state = MetadataState::new("us-east");
        let (out, changes) = state.apply(&at(1_000, grant(b"c1", 4, 60_000)));
        assert_eq!(reply(&out).issued, 4);
        assert!(matches!(
            changes.as_slice(),
            [Change::Ledger { json: Some(_), .. }]
        ));
        // What is stored loads back to the same ledger.
        let mut copy = MetadataState::new("us-east");
        for (counter, json) in state.ledgers() {
            copy.load_ledger(&counter, &json).unwrap();
        }
        assert_eq!(copy.ledger(b"c1"), state.ledger(b"c1"));
        // A period long over gets nothing, and its ledger is not made again.
        let late = 60_001 + crate::metadata::ledger::LEDGER_GRACE_MS;
        let (out, changes) = state.apply(&at(late, grant(b"c0", 1, 60_000)));
        assert_eq!(reply(&out).granted, 0);
        assert!(changes.is_empty());
        // The next grant drops the expired ledger.
        let (_, changes) = state.apply(&at(late, grant(b"c2", 1, late + 60_000)));
        assert!(changes.contains(&Change::Ledger {
            counter: b"c1".to_vec(),
            json: None
        }));
        assert!(state.ledger(b"c1").is_none() && state.ledger(b"c2").is_some());
    }

    #[test]
    fn the_creating_region_is_the_home_and_stays_so() {
        let mut state = MetadataState::new("eu-west");
        state.apply(&at(1_000, key(T1)));
        let home = |s: &MetadataState| s.key(T1).unwrap().limits.home_region.clone();
        assert_eq!(home(&state).as_deref(), Some("eu-west"));
        let mut patch = Map::new();
        patch.insert("home_region".into(), json!("us-east"));
        state.apply(&at(
            2_000,
            Command::Update {
                kind: Kind::Key,
                id: T1.into(),
                patch,
            },
        ));
        assert_eq!(home(&state).as_deref(), Some("eu-west"));
    }
}
