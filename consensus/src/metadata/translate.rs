//! How a change of an old epoch is rewritten into a new one (see
//! [`super::compact`], "Why translate" and "Changes concurrent with the
//! cut"). Pure and deterministic: the result depends only on the change and
//! its history.

use std::collections::{BTreeMap, BTreeSet};

use std::num::NonZeroU64;

use automerge::legacy::{Key, ObjectId, Op, OpId, OpType};
use automerge::{
    ActorId, Change, ChangeHash, ExpandedChange, ObjId as ExId, ROOT, ReadDoc, ScalarValue,
    Value as AmValue,
};

use super::compact::framing;
use super::doc::{DocError, STICKY_TRUE, TOMBSTONE, is_reserved};

/// Builds the new epoch's changes directly (no fork of the document per
/// change): what a change needs from its history — the next operation
/// counter, each actor's next sequence number, the values a write
/// overwrites — is tracked per translated change or read at its
/// dependencies.
pub(super) struct Translator {
    next: automerge::Automerge,
    /// Per change of `next`: the largest operation counter in its history.
    max_op: BTreeMap<ChangeHash, u64>,
    /// Per change of `next`: each actor's last sequence number in its
    /// history.
    seqs: BTreeMap<ChangeHash, BTreeMap<ActorId, u64>>,
}

impl Translator {
    /// Starts from `next`, which holds the base change only.
    pub fn new(next: automerge::Automerge) -> Result<Self, DocError> {
        let mut this = Self {
            next,
            max_op: BTreeMap::new(),
            seqs: BTreeMap::new(),
        };
        for change in this.next.get_changes(&[]) {
            let mut seqs = BTreeMap::new();
            seqs.insert(change.actor_id().clone(), change.seq());
            this.max_op.insert(change.hash(), change.max_op());
            this.seqs.insert(change.hash(), seqs);
        }
        Ok(this)
    }

    pub fn into_doc(self) -> automerge::Automerge {
        self.next
    }

    /// Rewrites `lift.change` on top of `deps` (changes of the new epoch);
    /// returns the heads it became (`deps` themselves when it changes
    /// nothing there). The change is rewritten by its effect: each field it
    /// touched gets the value it held right after the change (automerge may
    /// have recorded a put of the value already winning as a delete of the
    /// losing values; the effect says what was meant), written over every
    /// value standing at `deps` — a real write even when the value is the
    /// same (the value there may differ from the one the change saw: the
    /// base resolved the cut, a dropped unblock left a block; a write that
    /// vanished would lose its concurrency with later changes). See the
    /// module docs for what a change not after the cut loses.
    pub fn translate(
        &mut self,
        lift: &Lift<'_>,
        deps: &[ChangeHash],
    ) -> Result<Vec<ChangeHash>, DocError> {
        let change = lift.change;
        // On top of everything so far (the usual case): the current values,
        // without computing a version's.
        let mut heads = self.next.get_heads();
        heads.sort();
        let on_top = heads == deps;
        let mut ops = Vec::new();
        for (field, value) in effects(lift)? {
            let standing = match on_top {
                true => self.next.get_all(ROOT, field.as_str())?,
                false => self.next.get_all_at(ROOT, field.as_str(), deps)?,
            };
            let pred: Vec<OpId> = standing
                .into_iter()
                .filter_map(|(_, id)| match id {
                    ExId::Id(counter, actor, _) => Some(OpId(counter, actor)),
                    ExId::Root => None,
                })
                .collect();
            let action = match value {
                Some(value) => OpType::Put(value),
                None if pred.is_empty() => continue, // nothing to delete
                None => OpType::Delete,
            };
            ops.push(Op {
                action,
                obj: ObjectId::Root,
                key: Key::Map(field.as_str().into()),
                pred: pred.into(),
                insert: false,
            });
        }
        if ops.is_empty() {
            return Ok(deps.to_vec());
        }
        let mut max_op = 0;
        let mut seqs: BTreeMap<ActorId, u64> = BTreeMap::new();
        for dep in deps {
            max_op = max_op.max(
                *self
                    .max_op
                    .get(dep)
                    .ok_or(framing("an unknown dependency"))?,
            );
            for (actor, seq) in &self.seqs[dep] {
                let entry = seqs.entry(actor.clone()).or_insert(0);
                *entry = (*entry).max(*seq);
            }
        }
        let actor = change.actor_id().clone();
        let seq = seqs.get(&actor).copied().unwrap_or(0) + 1;
        let start_op = max_op + 1;
        let count = ops.len() as u64;
        let expanded = ExpandedChange {
            operations: ops,
            actor_id: actor.clone(),
            hash: None,
            seq,
            start_op: NonZeroU64::new(start_op).ok_or(framing("operation counter overflow"))?,
            time: change.timestamp(),
            message: None,
            deps: deps.to_vec(),
            extra_bytes: Vec::new(),
            author: None,
        };
        let made = Change::from(expanded);
        let hash = made.hash();
        self.next.apply_changes([made])?;
        seqs.insert(actor, seq);
        self.max_op.insert(hash, start_op + count - 1);
        self.seqs.insert(hash, seqs);
        Ok(vec![hash])
    }
}

/// The fields `lift.change` wrote and the value each held right after it,
/// less the lifts it may not make.
fn effects(lift: &Lift<'_>) -> Result<Vec<(String, Option<ScalarValue>)>, DocError> {
    let (original, change) = (lift.original, lift.change);
    let mut fields = BTreeSet::new();
    for op in change.decode().operations {
        let (ObjectId::Root, Key::Map(field), false) = (&op.obj, &op.key, op.insert) else {
            return Err(framing("an operation outside the document's root map"));
        };
        if !matches!(op.action, OpType::Put(_) | OpType::Delete) {
            return Err(framing("an operation this code never makes"));
        }
        let field = field.to_string();
        if is_reserved(&field) && field != TOMBSTONE {
            return Err(framing("an operation on a compaction field"));
        }
        fields.insert(field);
    }
    let at = [change.hash()];
    let mut out = Vec::new();
    for field in fields {
        let value = match original.get_at(ROOT, field.as_str(), &at)? {
            Some((AmValue::Scalar(s), _)) => Some(s.into_owned()),
            Some(_) => return Err(framing("an automerge object in a document")),
            None => None,
        };
        let lifts = if field == TOMBSTONE {
            value.is_none()
        } else {
            STICKY_TRUE.contains(&field.as_str())
                && !matches!(value, Some(ScalarValue::Boolean(true)))
        };
        if lifts && !lift.allowed(&field)? {
            continue;
        }
        out.push((field, value));
    }
    Ok(out)
}

/// Whether a change being translated may lift a block or a delete.
pub(super) struct Lift<'a> {
    pub original: &'a automerge::Automerge,
    pub change: &'a Change,
    pub cut: &'a [ChangeHash],
    pub after_cut: bool,
}

impl Lift<'_> {
    /// A change after the cut saw everything the base holds: yes. One
    /// concurrent with the cut: only if its history holds every write of
    /// `field` still standing at the cut (the blocks or deletes the base
    /// keeps); a block or delete it did not see stays.
    fn allowed(&self, field: &str) -> Result<bool, DocError> {
        if self.after_cut {
            return Ok(true);
        }
        let standing = self.original.get_all_at(ROOT, field, self.cut)?;
        if standing.is_empty() {
            return Ok(true);
        }
        // The changes outside this change's history.
        let unseen: BTreeSet<ChangeHash> = self
            .original
            .get_changes(&[self.change.hash()])
            .iter()
            .map(Change::hash)
            .collect();
        Ok(standing.iter().all(|(_, op)| {
            self.original
                .hash_for_opid(op)
                .is_some_and(|h| !unseen.contains(&h))
        }))
    }
}

/// `changes` ordered so that every change comes after its dependencies
/// among them (ties by hash: the order never depends on arrival).
pub(super) fn causal_order(changes: Vec<Change>) -> Vec<Change> {
    let mut waiting: BTreeMap<ChangeHash, Change> =
        changes.into_iter().map(|c| (c.hash(), c)).collect();
    // Per change: how many of its dependencies are still waiting, and who
    // depends on it.
    let mut pending: BTreeMap<ChangeHash, usize> = BTreeMap::new();
    let mut dependents: BTreeMap<ChangeHash, Vec<ChangeHash>> = BTreeMap::new();
    for (hash, change) in &waiting {
        let inside: Vec<&ChangeHash> = change
            .deps()
            .iter()
            .filter(|d| waiting.contains_key(d))
            .collect();
        pending.insert(*hash, inside.len());
        for dep in inside {
            dependents.entry(*dep).or_default().push(*hash);
        }
    }
    let mut ready: BTreeSet<ChangeHash> = pending
        .iter()
        .filter(|(_, n)| **n == 0)
        .map(|(h, _)| *h)
        .collect();
    let mut out = Vec::with_capacity(waiting.len());
    while let Some(hash) = ready.pop_first() {
        out.extend(waiting.remove(&hash));
        for next in dependents.remove(&hash).unwrap_or_default() {
            if let Some(n) = pending.get_mut(&next) {
                *n -= 1;
                if *n == 0 {
                    ready.insert(next);
                }
            }
        }
    }
    out
}
