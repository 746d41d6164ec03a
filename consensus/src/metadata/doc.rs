//! One small automerge document per metadata entity (key, team, user,
//! customer, budget, model deployment): the form in which metadata travels
//! *between* regions (REPLICATION.md, "Metadata across regions").
//!
//! Pure code: no I/O, no clock, no randomness.
//!
//! # Layout
//!
//! The document root is a map holding every top-level field of the record (its
//! `serde_json` object form). JSON scalars are stored as automerge scalars
//! (`null`, bool, `Uint`/`Int`/`F64`, `Str`); arrays and objects are stored
//! whole, as their compact JSON text in a `Bytes` scalar (bytes rather than a
//! string so a real string that looks like JSON is never misread). Each
//! top-level field is therefore a register: concurrent edits of *different*
//! fields merge, concurrent edits of the *same* field resolve to one winner,
//! picked by automerge's op id (Lamport counter, then actor), identically on
//! every replica. Keys starting with `~` are reserved; `~deleted` is the
//! tombstone.
//!
//! # Resolution rules
//!
//! - **Tombstone** (`~deleted`): once any replica deleted the entity it stays
//!   deleted. Nothing ever removes the key ([`EntityDoc::update`] refuses a
//!   deleted entity and reserved keys), so a delete wins over every concurrent
//!   edit and every later one.
//! - **Sticky block** (`blocked`): when the field holds several concurrent
//!   values (`ReadDoc::get_all`), it reads `true` if any of them is `true`. A
//!   causally-later write of `false` (an unblock made after seeing the block)
//!   supersedes the values it saw and wins.
//! - Every other field: automerge's deterministic winner.
//!
//! # Determinism
//!
//! Every replica of a region applies the same Raft commands, in the same
//! order, with the same [`Actor`] and the same `at_ms`, and so holds
//! byte-identical documents: the actor is derived from the region name, the
//! change time is set from `at_ms` (automerge otherwise writes 0, never the
//! wall clock), the fields of one change are written in key order, and
//! nothing else in a change varies. (`automerge::Automerge::new` and `load`
//! draw a random actor, but it is replaced before any change is made and
//! never reaches the document.)
//!
//! A document never holds changes whose dependencies it lacks:
//! [`EntityDoc::merge`] refuses such a batch as a whole. Automerge would
//! otherwise queue them and `save` would append them, so a replica that
//! restarted from a snapshot could diverge from one that did not.
//!
//! # History
//!
//! A document keeps its whole history until it is compacted into a new
//! epoch ([`super::compact`]); the reserved `~epoch`, `~origin` and `~base`
//! fields of a compacted document's first change say where its epoch starts.
//!
//! # Actor and sequence numbers
//!
//! Automerge numbers an actor's changes 1, 2, 3...; two *different* changes
//! with the same (actor, seq) corrupt every document that sees both. All
//! replicas of a region share one actor, which is safe only because a
//! region's changes are made solely by applying its Raft log in order: every
//! replica makes the same change at the same seq. Merging remote changes
//! first is fine (the next local seq continues after the highest one of our
//! actor the document holds). Never make a change outside the Raft apply path,
//! and never keep the region's actor after restoring a region from a backup
//! older than changes it already sent to other regions: derive a new actor
//! then (e.g. from the region name plus a restore epoch).

use std::collections::BTreeMap;

use automerge::transaction::{CommitOptions, Transactable};
use automerge::{
    ActorId, AutomergeError, Change, ChangeHash, ROOT, ReadDoc, ScalarValue, Value as AmValue,
};
use serde_json::{Map, Number, Value};
use sha2::{Digest, Sha256};

/// Tombstone key: present (with the deleting command's `at_ms`) once deleted.
pub(super) const TOMBSTONE: &str = "~deleted";
/// Keys with this prefix belong to the document, not to the record.
const RESERVED_PREFIX: char = '~';
/// Fields where any concurrent `true` wins (see the module docs).
pub(super) const STICKY_TRUE: &[&str] = &["blocked", "admin_blocked"];

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum DocError {
    #[error("automerge: {0}")]
    Automerge(#[from] AutomergeError),
    #[error("invalid change: {0}")]
    Change(#[from] automerge::LoadChangeError),
    #[error("malformed change batch: {0}")]
    Framing(&'static str),
    /// The batch (or loaded document) depends on changes this document lacks;
    /// nothing was applied. Resend everything since our heads.
    #[error("missing {} change(s) the batch depends on", .0.len())]
    MissingDeps(Vec<ChangeHash>),
    #[error("the entity is deleted")]
    Deleted,
    #[error("storage: {0}")]
    Storage(String),
    #[error("a record needs at least one field")]
    EmptyRecord,
    #[error("field name {0:?} is reserved")]
    ReservedField(String),
    #[error("field {field:?}: {reason}")]
    BadValue { field: String, reason: String },
}

/// The automerge actor of one region: the first 16 bytes of
/// SHA-256(`"meridian-region:" + name`). Deterministic, so every replica of
/// the region writes as the same actor (see the module docs on seq numbers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actor(pub(super) ActorId);

impl Actor {
    pub fn for_region(name: &str) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(b"meridian-region:");
        hasher.update(name.as_bytes());
        let digest = hasher.finalize();
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        Self(ActorId::from(id))
    }

    pub fn id(&self) -> &ActorId {
        &self.0
    }
}

/// One entity's replicated document. See the module docs.
#[derive(Clone, Debug)]
pub struct EntityDoc {
    pub(super) doc: automerge::Automerge,
}

impl EntityDoc {
    /// A document holding every top-level field of `record`, as one change.
    pub fn new(actor: &Actor, at_ms: u64, record: &Map<String, Value>) -> Result<Self, DocError> {
        if record.is_empty() {
            return Err(DocError::EmptyRecord);
        }
        let mut ops = BTreeMap::new();
        for (field, value) in record {
            check_field(field)?;
            ops.insert(field.clone(), Some(encode(field, value)?));
        }
        let mut this = Self {
            doc: automerge::Automerge::new(),
        };
        this.commit(actor, at_ms, ops)?;
        Ok(this)
    }

    /// Makes the document hold `new`: puts the top-level fields whose current
    /// (resolved) value differs and deletes the ones `new` lacks, as one
    /// change. Returns whether anything changed; makes no empty change.
    pub fn update(
        &mut self,
        actor: &Actor,
        at_ms: u64,
        new: &Map<String, Value>,
    ) -> Result<bool, DocError> {
        if self.is_deleted() {
            return Err(DocError::Deleted);
        }
        let ops = self.diff(new)?;
        if ops.is_empty() {
            return Ok(false);
        }
        self.commit(actor, at_ms, ops)?;
        Ok(true)
    }

    /// The operations that make the record fields hold `new`: a put for each
    /// field whose resolved value differs, a delete for each field `new` lacks.
    fn diff(
        &self,
        new: &Map<String, Value>,
    ) -> Result<BTreeMap<String, Option<ScalarValue>>, DocError> {
        let mut ops = BTreeMap::new();
        for (field, value) in new {
            check_field(field)?;
            // An unreadable current value counts as different: overwrite it.
            if self.resolve(field).ok().flatten().as_ref() != Some(value) {
                ops.insert(field.clone(), Some(encode(field, value)?));
            }
        }
        for field in self.doc.keys(ROOT) {
            if !is_reserved(&field) && !new.contains_key(&field) {
                ops.insert(field, None);
            }
        }
        Ok(ops)
    }

    /// Brings a deleted entity back as `record` (an id re-used after its
    /// delete), as one change that removes every tombstone this replica has
    /// seen. Like a causally-later unblock, it wins only over the deletes it
    /// saw: a delete made concurrently elsewhere still wins after merging.
    /// Returns whether anything changed (nothing does when not deleted and
    /// already equal).
    pub fn recreate(
        &mut self,
        actor: &Actor,
        at_ms: u64,
        record: &Map<String, Value>,
    ) -> Result<bool, DocError> {
        if record.is_empty() {
            return Err(DocError::EmptyRecord);
        }
        let mut ops = self.diff(record)?;
        if self.is_deleted() {
            ops.insert(TOMBSTONE.to_owned(), None);
        }
        if ops.is_empty() {
            return Ok(false);
        }
        self.commit(actor, at_ms, ops)?;
        Ok(true)
    }

    /// A document holding exactly the changes of a peer's
    /// [`Self::changes_since`] (an entity this replica has never seen). Fails
    /// on an empty batch: a document without changes holds no record.
    pub fn from_changes(changes: &[u8]) -> Result<Self, DocError> {
        let mut this = Self {
            doc: automerge::Automerge::new(),
        };
        if !this.merge(changes)? {
            return Err(DocError::Framing("no changes"));
        }
        Ok(this)
    }

    /// Marks the entity deleted, for good. Returns `false` (and makes no
    /// change) when it already is.
    pub fn delete(&mut self, actor: &Actor, at_ms: u64) -> Result<bool, DocError> {
        if self.is_deleted() {
            return Ok(false);
        }
        let ops = BTreeMap::from([(TOMBSTONE.to_owned(), Some(ScalarValue::Uint(at_ms)))]);
        self.commit(actor, at_ms, ops)?;
        Ok(true)
    }

    /// Whether any replica deleted the entity (also `true` if the document
    /// cannot be read: fail closed).
    pub fn is_deleted(&self) -> bool {
        !matches!(self.doc.get(ROOT, TOMBSTONE), Ok(None))
    }

    /// The current record (keys in lexicographic order), `None` once deleted.
    /// Fails only if a peer wrote a value this code never writes.
    pub fn record(&self) -> Result<Option<Map<String, Value>>, DocError> {
        if self.is_deleted() {
            return Ok(None);
        }
        let mut record = Map::new();
        for field in self.doc.keys(ROOT) {
            if is_reserved(&field) {
                continue;
            }
            if let Some(value) = self.resolve(&field)? {
                record.insert(field, value);
            }
        }
        Ok(Some(record))
    }

    /// The whole document, history included (compressed). Byte-identical on
    /// every replica of a region.
    pub fn save(&self) -> Vec<u8> {
        self.doc.save()
    }

    /// Reads what [`Self::save`] wrote.
    pub fn load(bytes: &[u8]) -> Result<Self, DocError> {
        let doc = automerge::Automerge::load(bytes)?;
        let missing = doc.get_missing_deps(&[]);
        if !missing.is_empty() {
            return Err(DocError::MissingDeps(missing));
        }
        Ok(Self { doc })
    }

    /// The document's heads (sorted): what a peer acknowledges having.
    pub fn heads(&self) -> Vec<ChangeHash> {
        self.doc.get_heads()
    }

    /// The changes a peer whose heads are `heads` lacks, for [`Self::merge`]:
    /// each change as an 8-byte big-endian length followed by automerge's
    /// change encoding, in causal order. Empty when there is nothing to send.
    /// Heads this document does not know are ignored (what they cover cannot
    /// be told, so more is sent; duplicates are harmless): a sender should
    /// remember which of *its own* heads a peer acknowledged.
    pub fn changes_since(&self, heads: &[ChangeHash]) -> Vec<u8> {
        let known: Vec<ChangeHash> = heads
            .iter()
            .filter(|h| self.doc.get_change_meta_by_hash(h).is_some())
            .copied()
            .collect();
        let mut out = Vec::new();
        for change in self.doc.get_changes(&known) {
            let raw = change.raw_bytes();
            out.extend_from_slice(&(raw.len() as u64).to_be_bytes());
            out.extend_from_slice(raw);
        }
        out
    }

    /// Applies a peer's [`Self::changes_since`]. Idempotent and commutative;
    /// all or nothing (a malformed batch, or one depending on changes this
    /// document lacks, leaves it untouched). Returns whether it changed.
    pub fn merge(&mut self, changes: &[u8]) -> Result<bool, DocError> {
        let mut new = Vec::new();
        for change in parse_frames(changes)? {
            if self.doc.get_change_meta_by_hash(&change.hash()).is_none() {
                new.push(change);
            }
        }
        if new.is_empty() {
            return Ok(false);
        }
        let mut next = self.doc.clone();
        // Another region's bytes reach automerge here, inside Raft's apply:
        // automerge 0.12 panics on some corrupted changes, and a panic here
        // would stop every replica that applies the entry, at every restart.
        // The batch is refused instead — the same on every replica, since
        // the same bytes fail the same way — and the copy is dropped.
        let applied =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| next.apply_changes(new)));
        match applied {
            Ok(result) => result?,
            Err(_) => return Err(DocError::Framing("a change automerge cannot apply")),
        }
        let missing = next.get_missing_deps(&[]);
        if !missing.is_empty() {
            return Err(DocError::MissingDeps(missing));
        }
        self.doc = next;
        Ok(true)
    }

    /// A field's resolved value (see the module docs), `None` if absent.
    fn resolve(&self, field: &str) -> Result<Option<Value>, DocError> {
        if STICKY_TRUE.contains(&field) {
            let all = self.doc.get_all(ROOT, field)?;
            let any_true = all.iter().any(|(value, _)| {
                matches!(value, AmValue::Scalar(s) if matches!(s.as_ref(), ScalarValue::Boolean(true)))
            });
            if any_true {
                return Ok(Some(Value::Bool(true)));
            }
        }
        match self.doc.get(ROOT, field)? {
            None => Ok(None),
            Some((value, _)) => decode(field, &value).map(Some),
        }
    }

    /// One change by `actor` at `at_ms`: put (`Some`) or delete (`None`) each
    /// field, in key order.
    fn commit(
        &mut self,
        actor: &Actor,
        at_ms: u64,
        ops: BTreeMap<String, Option<ScalarValue>>,
    ) -> Result<(), DocError> {
        self.doc.set_actor(actor.0.clone());
        // Automerge's change time is advisory unix seconds.
        let time = i64::try_from(at_ms / 1000).unwrap_or(i64::MAX);
        self.doc
            .transact_with(
                |_| CommitOptions::default().with_time(time),
                |tx| {
                    for (field, op) in ops {
                        match op {
                            Some(value) => tx.put(ROOT, field, value)?,
                            None => tx.delete(ROOT, field)?,
                        }
                    }
                    Ok::<_, AutomergeError>(())
                },
            )
            .map_err(|failure| DocError::Automerge(failure.error))?;
        Ok(())
    }
}

pub(super) fn is_reserved(field: &str) -> bool {
    field.starts_with(RESERVED_PREFIX)
}

fn check_field(field: &str) -> Result<(), DocError> {
    if is_reserved(field) {
        return Err(DocError::ReservedField(field.to_owned()));
    }
    Ok(())
}

fn bad(field: &str, reason: impl ToString) -> DocError {
    DocError::BadValue {
        field: field.to_owned(),
        reason: reason.to_string(),
    }
}

fn encode(field: &str, value: &Value) -> Result<ScalarValue, DocError> {
    Ok(match value {
        Value::Null => ScalarValue::Null,
        Value::Bool(b) => ScalarValue::Boolean(*b),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                ScalarValue::Uint(u)
            } else if let Some(i) = n.as_i64() {
                ScalarValue::Int(i)
            } else if let Some(f) = n.as_f64() {
                ScalarValue::F64(f)
            } else {
                return Err(bad(field, "unrepresentable number"));
            }
        }
        Value::String(s) => ScalarValue::Str(s.as_str().into()),
        Value::Array(_) | Value::Object(_) => {
            ScalarValue::Bytes(serde_json::to_vec(value).map_err(|e| bad(field, e))?)
        }
    })
}

fn decode(field: &str, value: &AmValue<'_>) -> Result<Value, DocError> {
    let AmValue::Scalar(scalar) = value else {
        return Err(bad(field, "an automerge object, not a scalar"));
    };
    Ok(match scalar.as_ref() {
        ScalarValue::Null => Value::Null,
        ScalarValue::Boolean(b) => Value::Bool(*b),
        ScalarValue::Uint(u) => Value::from(*u),
        ScalarValue::Int(i) => Value::from(*i),
        ScalarValue::F64(f) => Number::from_f64(*f)
            .map(Value::Number)
            .ok_or_else(|| bad(field, "non-finite number"))?,
        ScalarValue::Str(s) => Value::String(s.to_string()),
        ScalarValue::Bytes(json) => serde_json::from_slice(json).map_err(|e| bad(field, e))?,
        other => return Err(bad(field, format!("unsupported scalar {other:?}"))),
    })
}

/// Splits [`EntityDoc::changes_since`] output into verified changes.
pub(super) fn parse_frames(mut bytes: &[u8]) -> Result<Vec<Change>, DocError> {
    let mut changes = Vec::new();
    while !bytes.is_empty() {
        let Some((len, rest)) = bytes.split_first_chunk::<8>() else {
            return Err(DocError::Framing("truncated length"));
        };
        let len = usize::try_from(u64::from_be_bytes(*len))
            .map_err(|_| DocError::Framing("length overflows"))?;
        if rest.len() < len {
            return Err(DocError::Framing("truncated change"));
        }
        let (change, rest) = rest.split_at(len);
        changes.push(Change::try_from(change)?);
        bytes = rest;
    }
    Ok(changes)
}

#[cfg(test)]
#[path = "doc_tests.rs"]
mod tests;
