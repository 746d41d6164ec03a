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
mod tests {
    use serde_json::json;

    use super::*;

    const T0: u64 = 1_700_000_000_000;

    fn a() -> Actor {
        Actor::for_region("us-east")
    }
    fn b() -> Actor {
        Actor::for_region("eu-west")
    }
    fn c() -> Actor {
        Actor::for_region("ap-south")
    }

    fn map(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(m) => m,
            other => panic!("not an object: {other}"),
        }
    }

    fn key() -> Map<String, Value> {
        map(json!({
            "token": "ab12",
            "key_name": "sk-...abcd",
            "models": ["gpt-4o", "claude"],
            "max_budget": 10.5,
            "rpm_limit": 100,
            "metadata": {"owner": "ops", "n": [1, 2]},
            "blocked": false,
            "team_id": null,
            "created_at": 1_700_000_000u64,
            "updated_at": 1_700_000_000u64,
        }))
    }

    fn with(base: &Map<String, Value>, patch: Value) -> Map<String, Value> {
        let mut out = base.clone();
        for (k, v) in map(patch) {
            out.insert(k, v);
        }
        out
    }

    fn record(doc: &EntityDoc) -> Option<Map<String, Value>> {
        doc.record().unwrap()
    }

    fn field(doc: &EntityDoc, name: &str) -> Value {
        record(doc).unwrap()[name].clone()
    }

    /// A second region's copy of `doc`, as if received through a merge.
    fn fork(doc: &EntityDoc) -> EntityDoc {
        EntityDoc::load(&doc.save()).unwrap()
    }

    /// Sends each side what the other lacks.
    fn exchange(x: &mut EntityDoc, y: &mut EntityDoc) {
        let to_y = x.changes_since(&y.heads());
        let to_x = y.changes_since(&x.heads());
        y.merge(&to_y).unwrap();
        x.merge(&to_x).unwrap();
        assert_eq!(x.heads(), y.heads());
    }

    #[test]
    fn actor_is_derived_from_the_region_name() {
        assert_eq!(a(), Actor::for_region("us-east"));
        assert_ne!(a(), b());
        assert_eq!(a().id().to_bytes().len(), 16);
        // Pinned: the derivation must never change, or a region's next
        // change would start a new actor (and existing documents could no
        // longer be extended by the old one's replicas consistently).
        assert_eq!(a().id().to_hex_string(), "af91917afec302fa3c04dc16fd344267");
    }

    fn hex_string(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn replicas_of_a_region_save_identical_bytes() {
        let steps = |doc: &mut Option<EntityDoc>, step: usize| match step {
            0 => *doc = Some(EntityDoc::new(&a(), T0, &key()).unwrap()),
            1 => assert!(
                doc.as_mut()
                    .unwrap()
                    .update(&a(), T0 + 1, &with(&key(), json!({"rpm_limit": 5})))
                    .unwrap()
            ),
            2 => {
                let mut k = with(&key(), json!({"blocked": true, "tags": ["x"]}));
                k.remove("team_id");
                assert!(doc.as_mut().unwrap().update(&a(), T0 + 2, &k).unwrap());
            }
            _ => assert!(doc.as_mut().unwrap().delete(&a(), T0 + 3).unwrap()),
        };
        let (mut r1, mut r2, mut r3) = (None, None, None);
        for step in 0..4 {
            steps(&mut r1, step);
            steps(&mut r2, step);
            // r3 restarts from its snapshot before every step.
            r3 = r3.map(|d: EntityDoc| fork(&d));
            steps(&mut r3, step);
            let (d1, d2, d3) = (
                r1.as_ref().unwrap(),
                r2.as_ref().unwrap(),
                r3.as_ref().unwrap(),
            );
            assert_eq!(d1.save(), d2.save(), "step {step}");
            assert_eq!(d1.save(), d3.save(), "step {step} after reload");
            assert_eq!(d1.changes_since(&[]), d3.changes_since(&[]));
        }
        // The same after merging another region's change, one replica
        // having restarted in between.
        let batch = EntityDoc::new(&b(), T0, &key()).unwrap().changes_since(&[]);
        let mut x = EntityDoc::new(&a(), T0, &key()).unwrap();
        let mut y = EntityDoc::new(&a(), T0, &key()).unwrap();
        x.merge(&batch).unwrap();
        y.merge(&batch).unwrap();
        let mut y = fork(&y);
        let k2 = with(&key(), json!({"rpm_limit": 7}));
        assert!(x.update(&a(), T0 + 5, &k2).unwrap());
        assert!(y.update(&a(), T0 + 5, &k2).unwrap());
        assert_eq!(x.save(), y.save());
        assert_eq!(field(&x, "rpm_limit"), json!(7));
    }

    #[test]
    fn record_round_trips_every_json_shape() {
        let k = with(
            &key(),
            json!({"neg": -5, "big": u64::MAX, "s": "{\"not\":\"json\"}", "e": [], "o": {}}),
        );
        let doc = EntityDoc::new(&a(), T0, &k).unwrap();
        assert_eq!(record(&doc).unwrap(), k);
    }

    #[test]
    fn reserved_and_empty_records_are_refused() {
        let bad = with(&key(), json!({"~deleted": 1}));
        assert!(matches!(
            EntityDoc::new(&a(), T0, &bad),
            Err(DocError::ReservedField(_))
        ));
        assert!(matches!(
            EntityDoc::new(&a(), T0, &Map::new()),
            Err(DocError::EmptyRecord)
        ));
        let mut doc = EntityDoc::new(&a(), T0, &key()).unwrap();
        assert!(doc.update(&a(), T0, &bad).is_err());
        assert_eq!(record(&doc).unwrap(), key());
    }

    #[test]
    fn concurrent_edits_of_different_fields_merge() {
        let mut x = EntityDoc::new(&a(), T0, &key()).unwrap();
        let mut y = fork(&x);
        x.update(&a(), T0 + 1, &with(&key(), json!({"key_alias": "prod"})))
            .unwrap();
        y.update(&b(), T0 + 2, &with(&key(), json!({"rpm_limit": 9})))
            .unwrap();
        exchange(&mut x, &mut y);
        let merged = record(&x).unwrap();
        assert_eq!(Some(&merged), record(&y).as_ref());
        assert_eq!(merged["key_alias"], json!("prod"));
        assert_eq!(merged["rpm_limit"], json!(9));
        // Note: same changes and heads, yet (automerge 0.12) not the same
        // saved bytes: a document lists changes in the order it applied
        // them. Byte identity holds between replicas of one region only.
    }

    #[test]
    fn concurrent_edits_of_the_same_field_converge() {
        let mut x = EntityDoc::new(&a(), T0, &key()).unwrap();
        let mut y = fork(&x);
        x.update(&a(), T0 + 1, &with(&key(), json!({"models": ["a"]})))
            .unwrap();
        y.update(&b(), T0 + 1, &with(&key(), json!({"models": ["b"]})))
            .unwrap();
        exchange(&mut x, &mut y);
        assert_eq!(record(&x), record(&y));
        let models = field(&x, "models");
        assert!(models == json!(["a"]) || models == json!(["b"]));
    }

    #[test]
    fn merge_is_idempotent() {
        let mut x = EntityDoc::new(&a(), T0, &key()).unwrap();
        let mut y = fork(&x);
        y.update(&b(), T0 + 1, &with(&key(), json!({"rpm_limit": 1})))
            .unwrap();
        let batch = y.changes_since(&[]);
        assert!(x.merge(&batch).unwrap());
        let (heads, bytes) = (x.heads(), x.save());
        assert!(!x.merge(&batch).unwrap());
        assert!(!x.merge(&y.changes_since(&[])).unwrap());
        assert!(!x.merge(&[]).unwrap());
        assert_eq!((x.heads(), x.save()), (heads, bytes));
        assert_eq!(record(&x), record(&y));
    }

    #[test]
    fn merge_is_order_independent() {
        let base = EntityDoc::new(&a(), T0, &key()).unwrap();
        let (mut x, mut y, mut z) = (fork(&base), fork(&base), fork(&base));
        x.update(&a(), T0 + 1, &with(&key(), json!({"rpm_limit": 1})))
            .unwrap();
        y.update(
            &b(),
            T0 + 2,
            &with(&key(), json!({"rpm_limit": 2, "tags": ["y"]})),
        )
        .unwrap();
        z.update(&c(), T0 + 3, &with(&key(), json!({"blocked": true})))
            .unwrap();
        z.update(
            &c(),
            T0 + 4,
            &with(&key(), json!({"blocked": true, "key_alias": "z"})),
        )
        .unwrap();
        let batches = [
            x.changes_since(&[]),
            y.changes_since(&[]),
            z.changes_since(&[]),
        ];
        let orders = [[0, 1, 2], [2, 1, 0], [1, 2, 0], [1, 0, 2]];
        let docs: Vec<EntityDoc> = orders
            .iter()
            .map(|order| {
                let mut d = fork(&base);
                for &i in order {
                    d.merge(&batches[i]).unwrap();
                }
                d
            })
            .collect();
        for d in &docs[1..] {
            assert_eq!(d.heads(), docs[0].heads());
            assert_eq!(d.record().unwrap(), docs[0].record().unwrap());
        }
        let r = record(&docs[0]).unwrap();
        assert!(r["rpm_limit"] == json!(1) || r["rpm_limit"] == json!(2));
        assert_eq!(r["tags"], json!(["y"]));
        assert_eq!(r["key_alias"], json!("z"));
        assert_eq!(r["blocked"], json!(true));
    }

    #[test]
    fn block_is_sticky_under_concurrency() {
        let mut base = key();
        base.remove("blocked");
        let mut ra = EntityDoc::new(&a(), T0, &base).unwrap();
        let mut rb = fork(&ra);
        // A blocks while B, concurrently, writes `blocked: false`.
        assert!(
            ra.update(&a(), T0 + 1, &with(&base, json!({"blocked": true})))
                .unwrap()
        );
        assert!(
            rb.update(&b(), T0 + 1, &with(&base, json!({"blocked": false})))
                .unwrap()
        );
        assert_eq!(field(&rb, "blocked"), json!(false));
        exchange(&mut ra, &mut rb);
        assert_eq!(field(&ra, "blocked"), json!(true));
        assert_eq!(field(&rb, "blocked"), json!(true));
        assert_eq!(record(&ra), record(&rb));
        // Both values are still there; the rule, not automerge's winner, decided.
        assert_eq!(ra.doc.get_all(ROOT, "blocked").unwrap().len(), 2);
    }

    #[test]
    fn causally_later_unblock_wins() {
        let mut ra = EntityDoc::new(&a(), T0, &key()).unwrap();
        let mut rb = fork(&ra);
        ra.update(&a(), T0 + 1, &with(&key(), json!({"blocked": true})))
            .unwrap();
        exchange(&mut ra, &mut rb);
        assert_eq!(field(&rb, "blocked"), json!(true));
        // B saw the block; its unblock supersedes it everywhere.
        assert!(rb.update(&b(), T0 + 2, &key()).unwrap());
        exchange(&mut ra, &mut rb);
        assert_eq!(field(&ra, "blocked"), json!(false));
        assert_eq!(field(&rb, "blocked"), json!(false));
    }

    #[test]
    fn unblock_after_a_concurrent_conflict_wins() {
        let blocked = with(&key(), json!({"blocked": true}));
        let mut ra = EntityDoc::new(&a(), T0, &blocked).unwrap();
        let mut rb = fork(&ra);
        ra.update(&a(), T0 + 1, &key()).unwrap(); // A unblocks
        // B writes `blocked: true` again concurrently (through a
        // false→true round trip on its side).
        rb.update(&b(), T0 + 1, &key()).unwrap();
        rb.update(&b(), T0 + 2, &blocked).unwrap();
        exchange(&mut ra, &mut rb);
        assert_eq!(field(&ra, "blocked"), json!(true)); // conflict: true wins
        // An unblock that saw both values settles it.
        assert!(ra.update(&a(), T0 + 3, &key()).unwrap());
        exchange(&mut ra, &mut rb);
        assert_eq!(field(&rb, "blocked"), json!(false));
    }

    #[test]
    fn delete_wins_over_a_concurrent_update() {
        let mut ra = EntityDoc::new(&a(), T0, &key()).unwrap();
        let mut rb = fork(&ra);
        assert!(ra.delete(&a(), T0 + 1).unwrap());
        rb.update(&b(), T0 + 2, &with(&key(), json!({"rpm_limit": 3})))
            .unwrap();
        exchange(&mut ra, &mut rb);
        assert_eq!(record(&ra), None);
        assert_eq!(record(&rb), None);
        assert!(rb.is_deleted());
        assert!(!rb.delete(&b(), T0 + 3).unwrap()); // already deleted: no change
    }

    #[test]
    fn delete_wins_over_a_later_update() {
        let mut ra = EntityDoc::new(&a(), T0, &key()).unwrap();
        let mut rb = fork(&ra);
        ra.delete(&a(), T0 + 1).unwrap();
        exchange(&mut ra, &mut rb);
        let heads = rb.heads();
        assert!(matches!(
            rb.update(&b(), T0 + 2, &key()),
            Err(DocError::Deleted)
        ));
        assert_eq!(rb.heads(), heads);
        // Even a later write that bypasses `update` (an old or buggy peer)
        // does not resurrect it.
        rb.commit(
            &b(),
            T0 + 3,
            BTreeMap::from([("rpm_limit".to_owned(), Some(ScalarValue::Uint(4)))]),
        )
        .unwrap();
        exchange(&mut ra, &mut rb);
        assert_eq!(record(&ra), None);
        assert_eq!(record(&rb), None);
    }

    #[test]
    fn recreate_wins_over_the_deletes_it_saw_only() {
        let mut ra = EntityDoc::new(&a(), T0, &key()).unwrap();
        let mut rb = fork(&ra);
        ra.delete(&a(), T0 + 1).unwrap();
        exchange(&mut ra, &mut rb);
        // B re-creates the id after seeing the delete: it is back everywhere.
        let again = with(&key(), json!({"rpm_limit": 1}));
        assert!(rb.recreate(&b(), T0 + 2, &again).unwrap());
        assert_eq!(record(&rb).unwrap(), again);
        exchange(&mut ra, &mut rb);
        assert_eq!(record(&ra).unwrap(), again);
        // A delete concurrent with a re-create still wins.
        let mut rc = fork(&ra);
        ra.delete(&a(), T0 + 3).unwrap();
        rc.delete(&c(), T0 + 3).unwrap();
        exchange(&mut ra, &mut rc);
        let mut rd = fork(&ra);
        rb.recreate(&b(), T0 + 4, &key()).unwrap(); // saw neither delete
        let d = Actor::for_region("sa-east");
        assert!(rd.recreate(&d, T0 + 4, &key()).unwrap()); // saw both
        exchange(&mut ra, &mut rb);
        assert_eq!(record(&ra), None);
        exchange(&mut rd, &mut ra);
        assert_eq!(record(&ra).unwrap(), key());
        // Nothing to do: no change.
        let heads = ra.heads();
        assert!(!ra.recreate(&a(), T0 + 5, &key()).unwrap());
        assert_eq!(ra.heads(), heads);
    }

    #[test]
    fn from_changes_rebuilds_a_peer_document() {
        let mut doc = EntityDoc::new(&a(), T0, &key()).unwrap();
        doc.delete(&a(), T0 + 1).unwrap();
        let copy = EntityDoc::from_changes(&doc.changes_since(&[])).unwrap();
        assert_eq!(copy.heads(), doc.heads());
        assert!(copy.is_deleted());
        assert!(EntityDoc::from_changes(&[]).is_err());
        assert!(EntityDoc::from_changes(b"garbage").is_err());
    }

    #[test]
    fn identical_update_makes_no_change() {
        let mut doc = EntityDoc::new(&a(), T0, &key()).unwrap();
        let (heads, bytes) = (doc.heads(), doc.save());
        assert!(!doc.update(&a(), T0 + 1, &key()).unwrap());
        // Same content, different key order: still no change.
        let reordered: Map<String, Value> = key().into_iter().rev().collect();
        assert!(!doc.update(&a(), T0 + 2, &reordered).unwrap());
        assert_eq!((doc.heads(), doc.save()), (heads, bytes));
        // A removed field is a change.
        let mut fewer = key();
        fewer.remove("rpm_limit");
        assert!(doc.update(&a(), T0 + 3, &fewer).unwrap());
        assert_eq!(record(&doc).unwrap(), fewer);
    }

    #[test]
    fn save_load_round_trip() {
        let mut doc = EntityDoc::new(&a(), T0, &key()).unwrap();
        doc.update(&a(), T0 + 1, &with(&key(), json!({"tags": ["t"]})))
            .unwrap();
        let bytes = doc.save();
        let loaded = EntityDoc::load(&bytes).unwrap();
        assert_eq!(loaded.save(), bytes);
        assert_eq!(loaded.heads(), doc.heads());
        assert_eq!(loaded.record().unwrap(), doc.record().unwrap());
        assert!(EntityDoc::load(b"not a document").is_err());
    }

    #[test]
    fn merge_refuses_gaps_and_garbage_untouched() {
        let mut ra = EntityDoc::new(&a(), T0, &key()).unwrap();
        let mut rb = fork(&ra);
        let h1 = rb.heads();
        rb.update(&b(), T0 + 1, &with(&key(), json!({"rpm_limit": 1})))
            .unwrap();
        let h2 = rb.heads();
        rb.update(&b(), T0 + 2, &with(&key(), json!({"rpm_limit": 2})))
            .unwrap();
        let (heads, bytes) = (ra.heads(), ra.save());
        // Only the second change: its dependency is missing.
        assert!(matches!(
            ra.merge(&rb.changes_since(&h2)),
            Err(DocError::MissingDeps(_))
        ));
        let mut garbage = rb.changes_since(&h1);
        garbage.truncate(garbage.len() - 1);
        assert!(ra.merge(&garbage).is_err());
        assert!(ra.merge(b"\x00\x00\x00\x00\x00\x00\x00\x03abc").is_err());
        assert_eq!((ra.heads(), ra.save()), (heads, bytes));
        assert!(ra.merge(&rb.changes_since(&h1)).unwrap());
        assert_eq!(field(&ra, "rpm_limit"), json!(2));
    }

    #[test]
    fn changes_since_falls_back_on_unknown_heads() {
        let mut ra = EntityDoc::new(&a(), T0, &key()).unwrap();
        let mut rb = fork(&ra);
        let base = ra.heads();
        ra.update(&a(), T0 + 1, &with(&key(), json!({"rpm_limit": 1})))
            .unwrap();
        rb.update(&b(), T0 + 1, &with(&key(), json!({"tpm_limit": 1})))
            .unwrap();
        // Heads rb knows: exactly what ra lacks.
        assert_eq!(parse_frames(&rb.changes_since(&base)).unwrap().len(), 1);
        // ra's heads are unknown to rb: it cannot tell what they cover, so
        // it sends everything; the duplicate is ignored.
        let batch = rb.changes_since(&ra.heads());
        assert_eq!(parse_frames(&batch).unwrap().len(), 2);
        assert!(ra.merge(&batch).unwrap());
        assert_eq!(field(&ra, "tpm_limit"), json!(1));
        assert_eq!(field(&ra, "rpm_limit"), json!(1));
    }

    /// Byte identity across processes and builds, not only within one test:
    /// a pinned digest of a fixed sequence. If an automerge upgrade changes
    /// it, replicas on the old and new version would diverge during a rolling
    /// upgrade: upgrade with care (and re-pin).
    #[test]
    fn saved_bytes_are_pinned() {
        let mut doc = EntityDoc::new(&a(), T0, &key()).unwrap();
        doc.update(&a(), T0 + 1, &with(&key(), json!({"blocked": true})))
            .unwrap();
        doc.delete(&a(), T0 + 2).unwrap();
        let digest = hex_string(&Sha256::digest(doc.save()));
        assert_eq!(
            digest,
            "f3cf32308c24d5c0ed69d66a72deb2e554317576789c3b8dc8452ee3e1895236"
        );
    }
}
