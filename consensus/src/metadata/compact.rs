//! Compaction: a document whose history outgrew its record is replaced by a
//! new *epoch* — one base change holding the record as it was at a cut `H`
//! of the history, followed by every change made after `H`, translated.
//!
//! Pure code: no I/O, no clock, no randomness. Every function here is
//! deterministic in the changes it is given, which is what lets regions
//! compact independently and still hold the same document.
//!
//! # Why translate
//!
//! Automerge cannot drop history: a change names the hashes of the changes
//! it depends on. A compacted document is therefore a new lineage, and a
//! change of the old one can only enter it rewritten: same actor, time and
//! field operations, its dependencies mapped (a change inside `H` maps to
//! the base, a later one to its translation). The translation of a change
//! depends only on the change and its own history, so two regions that
//! translate it — one when it compacts its own document, one when it
//! receives the sender's old-epoch document — make byte-identical changes.
//!
//! # The base
//!
//! One change, with no dependencies, by an actor derived from the epoch
//! number: every record field with its resolved value at `H` (a sticky field
//! that holds a concurrent `true` is written `true`), the tombstone if
//! deleted, and three reserved fields: `~epoch`, `~origin` (the region that
//! compacts this document; the only one that may start the next epoch) and
//! `~base` (the heads of `H` in the previous epoch). Its time is the latest
//! time in `H`, so every region writes the same bytes.
//!
//! # Changes concurrent with the cut
//!
//! The region that compacts does so only at a version of its document that
//! every other region holds as sent (the sync task knows from their
//! answers), so a change made anywhere afterwards is causally after `H`.
//! A change made *before* a region received all of `H` — still in flight
//! when the compaction was decided — is concurrent with part of it, and the
//! base no longer holds what it was concurrent with. Such a change is
//! translated as if made after the base, except that it cannot lift a block
//! or a delete it did not see: its write of `false` to a sticky field, or
//! its removal of the tombstone, is dropped unless its history holds every
//! write of that field still standing at the cut. Every region applies the
//! same rule to the same change, so all converge; a region still on the old
//! epoch may, until it moves, resolve a concurrent edit of an ordinary
//! field to the other value.
//!
//! # Across epochs
//!
//! [`EntityDoc::merge_document`] takes a peer's whole document at the same
//! epoch (merged as usual), one epoch ahead (this document is compacted at
//! the peer's cut first: it holds that cut, since compaction waited for
//! every region to hold it), or one epoch behind (the peer's document is
//! translated into this epoch). A document that cannot be brought to the
//! same epoch — it lacks the cut, is two epochs away, or is another lineage
//! of the same epoch — is skipped. The receiving region reports the
//! documents it skipped, translated, or holds with a creation the sender
//! lacks, as not held (`MergeSummary::not_held`): the region that compacts
//! counts only versions held as sent, so every region can follow each
//! epoch, and all agree on who compacts (they see the same creations).

use std::collections::{BTreeMap, BTreeSet};

use automerge::legacy::{Key, OpType};
use automerge::transaction::{CommitOptions, Transactable};
use automerge::{
    ActorId, AutomergeError, Change, ChangeHash, ROOT, ReadDoc, ScalarValue, Value as AmValue,
};
use sha2::{Digest, Sha256};

use super::doc::{Actor, DocError, EntityDoc, STICKY_TRUE, TOMBSTONE, is_reserved, parse_frames};
use super::translate::{Lift, Translator, causal_order};

/// The compaction epoch of a document (absent: 0).
const EPOCH: &str = "~epoch";
/// The region that compacts the document next (absent: see
/// [`EntityDoc::compacted_by`]).
const ORIGIN: &str = "~origin";
/// The heads of the previous epoch's history the base stands for, as
/// concatenated 32-byte hashes.
const BASE: &str = "~base";

/// What [`EntityDoc::merge_document`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Merged {
    /// Merged; this document now holds the peer's as sent (whether it
    /// changed).
    Held(bool),
    /// Merged, but this document is not the peer's plus changes of its
    /// own: it is an epoch ahead (the peer's was translated into it), or it
    /// holds a creation of the entity the peer's lacks. Whether it changed.
    Diverged(bool),
    /// Not merged: the peer's document is at an epoch, or in a lineage,
    /// this one cannot reach (the sender will send a newer one).
    Skipped(&'static str),
}

impl Merged {
    /// Whether the document changed.
    pub fn changed(self) -> bool {
        matches!(self, Merged::Held(true) | Merged::Diverged(true))
    }

    /// Whether this document now holds the peer's as sent.
    pub fn held(self) -> bool {
        matches!(self, Merged::Held(_))
    }
}

/// Where a compacted document's epoch starts.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Lineage {
    epoch: u64,
    origin: String,
    base: Vec<ChangeHash>,
}

/// The actor of epoch `epoch`'s base change.
fn base_actor(epoch: u64) -> ActorId {
    let mut hasher = Sha256::new();
    hasher.update(b"meridian-compaction:");
    hasher.update(epoch.to_be_bytes());
    let digest = hasher.finalize();
    ActorId::from(&digest[..16])
}

pub(super) fn framing(what: &'static str) -> DocError {
    DocError::Framing(what)
}

impl EntityDoc {
    /// The document's compaction epoch: 0 until first compacted.
    pub fn epoch(&self) -> u64 {
        match self.doc.get(ROOT, EPOCH) {
            Ok(Some((AmValue::Scalar(s), _))) => match s.as_ref() {
                ScalarValue::Uint(e) => *e,
                _ => 0,
            },
            _ => 0,
        }
    }

    /// Whether `region` is the one that compacts this document: the region
    /// named by the current epoch's base, or, before the first compaction,
    /// the region whose actor made the document's first change (the least
    /// such actor when regions created it concurrently). Exactly one region
    /// compacts a document, so no two epochs of the same number exist.
    pub fn compacted_by(&self, region: &str) -> bool {
        if let Some(lineage) = self.lineage().ok().flatten() {
            return lineage.origin == region;
        }
        let first = self
            .doc
            .get_changes(&[])
            .iter()
            .filter(|c| c.deps().is_empty())
            .map(|c| c.actor_id().clone())
            .min();
        first.as_ref() == Some(Actor::for_region(region).id())
    }

    /// The next epoch of this document, compacted by `region` at `cut` (a
    /// set of heads it holds: its own heads, or an earlier version that
    /// every region holds). The history up to the cut becomes one change.
    pub fn compact(&self, region: &str, cut: &[ChangeHash]) -> Result<EntityDoc, DocError> {
        if cut.is_empty() {
            return Err(framing("an empty cut"));
        }
        let lineage = Lineage {
            epoch: self
                .epoch()
                .checked_add(1)
                .ok_or(framing("epoch overflow"))?,
            origin: region.to_owned(),
            base: cut.to_vec(),
        };
        self.rebase(&lineage)
    }

    /// How many changes lie outside the history of `cut` (what compacting
    /// at it would translate).
    pub fn changes_outside(&self, cut: &[ChangeHash]) -> usize {
        self.doc.get_changes(cut).len()
    }

    /// Whether `cut` is a set of heads of some version of this document
    /// (held, and none in another's history).
    pub fn is_version(&self, cut: &[ChangeHash]) -> bool {
        if cut.is_empty() || !self.holds(cut) {
            return false;
        }
        let mut heads = match self.doc.fork_at(cut) {
            Ok(at) => at.get_heads(),
            Err(_) => return false,
        };
        let mut cut = cut.to_vec();
        heads.sort();
        cut.sort();
        cut.dedup();
        heads == cut
    }

    /// Whether the document holds every change in `heads`.
    pub fn holds(&self, heads: &[ChangeHash]) -> bool {
        heads
            .iter()
            .all(|h| self.doc.get_change_meta_by_hash(h).is_some())
    }

    /// Merges a peer's whole document (its [`Self::changes_since`] from
    /// nothing), bringing the two to the same epoch first. See the module
    /// docs, "Across epochs". A batch without a root change (a partial one)
    /// is merged as usual.
    pub fn merge_document(&mut self, changes: &[u8]) -> Result<Merged, DocError> {
        // Another region's bytes: automerge panics on some corrupted
        // changes (see `merge`), here when decoding them too. Refused, the
        // same way on every replica, instead; `self` is untouched then.
        let mut next = self.clone();
        let merged =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| next.merge_whole(changes)));
        match merged {
            Ok(Ok(merged)) => {
                *self = next;
                Ok(merged)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(framing("a change automerge cannot apply")),
        }
    }

    fn merge_whole(&mut self, changes: &[u8]) -> Result<Merged, DocError> {
        let frames = parse_frames(changes)?;
        let Some(theirs) = batch_epoch(&frames)? else {
            return self.merge(changes).map(Merged::Held);
        };
        let their_roots: BTreeSet<ChangeHash> = frames
            .iter()
            .filter(|c| c.deps().is_empty())
            .map(Change::hash)
            .collect();
        let mine = self.epoch();
        if theirs == mine {
            if mine > 0 && self.roots() != their_roots {
                return Ok(Merged::Skipped("another lineage of the same epoch"));
            }
            let changed = self.merge(changes)?;
            // A creation of the same entity the peer has not seen yet: the
            // peer must not compact before it has (it would not know
            // whether it is the one that compacts).
            return Ok(match self.roots() == their_roots {
                true => Merged::Held(changed),
                false => Merged::Diverged(changed),
            });
        }
        let peer = EntityDoc::from_changes(changes)?;
        if theirs == mine.saturating_add(1) {
            let lineage = peer.lineage()?.ok_or(framing("a base without a lineage"))?;
            let rebased = match self.rebase(&lineage) {
                Err(DocError::MissingDeps(_)) => {
                    return Ok(Merged::Skipped("this document lacks the peer's cut"));
                }
                other => other?,
            };
            if rebased.roots() != their_roots {
                return Ok(Merged::Skipped(
                    "the peer's base differs from this region's",
                ));
            }
            let mut next = rebased;
            next.merge(changes)?;
            *self = next;
            return Ok(Merged::Held(true));
        }
        if theirs.saturating_add(1) == mine {
            let lineage = self.lineage()?.ok_or(framing("a base without a lineage"))?;
            let translated = match peer.rebase(&lineage) {
                Err(DocError::MissingDeps(_)) => {
                    return Ok(Merged::Skipped("the peer's document predates the cut"));
                }
                other => other?,
            };
            if translated.roots() != self.roots() {
                return Ok(Merged::Skipped(
                    "the peer's base differs from this region's",
                ));
            }
            return self
                .merge(&translated.changes_since(&[]))
                .map(Merged::Diverged);
        }
        Ok(Merged::Skipped(
            "the peer's document is more than one epoch away",
        ))
    }

    /// The changes without dependencies: the base of a compacted document,
    /// the creations of one that is not (several, when regions created the
    /// entity concurrently).
    fn roots(&self) -> BTreeSet<ChangeHash> {
        self.doc
            .get_changes(&[])
            .iter()
            .filter(|c| c.deps().is_empty())
            .map(Change::hash)
            .collect()
    }

    /// The current epoch's lineage, `None` at epoch 0.
    fn lineage(&self) -> Result<Option<Lineage>, DocError> {
        let epoch = self.epoch();
        if epoch == 0 {
            return Ok(None);
        }
        let scalar = |field: &str| -> Result<ScalarValue, DocError> {
            match self.doc.get(ROOT, field)? {
                Some((AmValue::Scalar(s), _)) => Ok(s.into_owned()),
                _ => Err(framing("a base without its lineage fields")),
            }
        };
        let ScalarValue::Str(origin) = scalar(ORIGIN)? else {
            return Err(framing("a base whose origin is not a string"));
        };
        let ScalarValue::Bytes(bytes) = scalar(BASE)? else {
            return Err(framing("a base whose cut is not bytes"));
        };
        if bytes.is_empty() || bytes.len() % 32 != 0 {
            return Err(framing("a base whose cut is not whole hashes"));
        }
        let base = bytes
            .chunks_exact(32)
            .map(|h| ChangeHash::try_from(h).map_err(|_| framing("a malformed hash")))
            .collect::<Result<_, _>>()?;
        Ok(Some(Lineage {
            epoch,
            origin: origin.to_string(),
            base,
        }))
    }

    /// This document as epoch `lineage.epoch`: the base standing for the
    /// history up to `lineage.base`, then every other change translated.
    /// `MissingDeps` when the document lacks part of the cut.
    fn rebase(&self, lineage: &Lineage) -> Result<EntityDoc, DocError> {
        let cut = &lineage.base;
        let missing: Vec<ChangeHash> = cut
            .iter()
            .filter(|h| self.doc.get_change_meta_by_hash(h).is_none())
            .copied()
            .collect();
        if !missing.is_empty() {
            return Err(DocError::MissingDeps(missing));
        }
        let at_cut = self.doc.fork_at(cut)?;
        let mut next = automerge::Automerge::new();
        next.set_actor(base_actor(lineage.epoch));
        let fields = base_fields(&at_cut, lineage)?;
        let time = at_cut
            .get_changes(&[])
            .iter()
            .map(Change::timestamp)
            .max()
            .unwrap_or(0);
        next.transact_with(
            |_| CommitOptions::default().with_time(time),
            |tx| {
                for (field, value) in fields {
                    tx.put(ROOT, field, value)?;
                }
                Ok::<_, AutomergeError>(())
            },
        )
        .map_err(|failure| DocError::Automerge(failure.error))?;
        let base = next.get_heads();
        let mut translator = Translator::new(next)?;
        // The changes after the cut, dependencies first.
        let after = causal_order(self.doc.get_changes(cut));
        let cut_set: BTreeSet<ChangeHash> = cut.iter().copied().collect();
        // Per translated change: the heads it became, and which heads of
        // the cut its history holds.
        let mut mapped: BTreeMap<ChangeHash, Vec<ChangeHash>> = BTreeMap::new();
        let mut covers: BTreeMap<ChangeHash, BTreeSet<ChangeHash>> = BTreeMap::new();
        for change in &after {
            let mut deps = BTreeSet::new();
            let mut seen = BTreeSet::new();
            for dep in change.deps() {
                match mapped.get(dep) {
                    Some(to) => {
                        deps.extend(to.iter().copied());
                        seen.extend(covers[dep].iter().copied());
                    }
                    None => {
                        deps.extend(base.iter().copied());
                        if cut_set.contains(dep) {
                            seen.insert(*dep);
                        }
                    }
                }
            }
            let after_cut = seen == cut_set;
            if deps.is_empty() {
                // A root (the entity created again, concurrently, in
                // another region) goes on the base like everything else:
                // an epoch has one root.
                deps.extend(base.iter().copied());
            }
            // Every translated change descends from the base: with one
            // among the dependencies, the base is redundant.
            if deps.iter().any(|d| !base.contains(d)) {
                deps.retain(|d| !base.contains(d));
            }
            let deps: Vec<ChangeHash> = deps.into_iter().collect();
            let lift = Lift {
                original: &self.doc,
                change,
                cut,
                after_cut,
            };
            let to = translator.translate(&lift, &deps)?;
            mapped.insert(change.hash(), to);
            covers.insert(change.hash(), seen);
        }
        Ok(EntityDoc {
            doc: translator.into_doc(),
        })
    }
}

/// The base's fields: the record (and tombstone) resolved at the cut, and
/// the lineage.
fn base_fields(
    at_cut: &automerge::Automerge,
    lineage: &Lineage,
) -> Result<BTreeMap<String, ScalarValue>, DocError> {
    let mut fields = BTreeMap::new();
    for field in at_cut.keys(ROOT) {
        if is_reserved(&field) && field != TOMBSTONE {
            continue;
        }
        let sticky_true = STICKY_TRUE.contains(&field.as_str())
            && at_cut.get_all(ROOT, field.as_str())?.iter().any(|(v, _)| {
                matches!(v, AmValue::Scalar(s) if matches!(s.as_ref(), ScalarValue::Boolean(true)))
            });
        let value = if sticky_true {
            ScalarValue::Boolean(true)
        } else {
            match at_cut.get(ROOT, field.as_str())? {
                Some((AmValue::Scalar(s), _)) => s.into_owned(),
                Some(_) => return Err(framing("an automerge object in a document")),
                None => continue,
            }
        };
        fields.insert(field, value);
    }
    fields.insert(EPOCH.to_owned(), ScalarValue::Uint(lineage.epoch));
    fields.insert(
        ORIGIN.to_owned(),
        ScalarValue::Str(lineage.origin.as_str().into()),
    );
    let mut cut = lineage.base.clone();
    cut.sort();
    let bytes = cut.iter().flat_map(|h| h.0).collect();
    fields.insert(BASE.to_owned(), ScalarValue::Bytes(bytes));
    Ok(fields)
}

/// The epoch of a whole document's batch, read from its root change:
/// `None` when the batch holds no root (a partial batch).
fn batch_epoch(frames: &[Change]) -> Result<Option<u64>, DocError> {
    let mut epoch = None;
    for root in frames.iter().filter(|c| c.deps().is_empty()) {
        let mut this = 0;
        for op in root.decode().operations {
            if let (Key::Map(field), OpType::Put(ScalarValue::Uint(e))) = (&op.key, &op.action)
                && field.as_str() == EPOCH
            {
                this = *e;
            }
        }
        match epoch {
            None => epoch = Some(this),
            Some(seen) if seen != this => return Err(framing("roots of different epochs")),
            Some(_) => {}
        }
    }
    Ok(epoch)
}

#[cfg(test)]
#[path = "compact_tests.rs"]
mod tests;
