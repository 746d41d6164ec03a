//! Compaction in the state: the `Compact` command, and the
//! documents this region should compact (see [`super::super::compact`]).

use std::sync::Arc;

use automerge::ChangeHash;

use super::plan::{Planned, Planner, done, invalid};
use super::{EntityDoc, EntityKey, Kind, MetadataState, Outcome, Refusal, StoredDoc};

/// A document is compacted once its saved form exceeds this plus twice its
/// record's JSON: its history, not its record, is what grew. Right after a
/// compaction a document is about its record's size, so it is not compacted
/// again until it has grown by this much once more.
pub const COMPACT_FLOOR: usize = 16 * 1024;

/// Changes after the cut a compaction translates at most; a later cut
/// (once the other regions hold more) leaves fewer.
const MAX_TRANSLATED: usize = 512;

/// A document this region may compact now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compactable {
    pub kind: Kind,
    pub id: String,
    /// The document's change number.
    pub seq: u64,
    /// Its compaction epoch.
    pub epoch: u64,
    /// Its heads (hex), for `Command::Compact`.
    pub heads: Vec<String>,
}

impl MetadataState {
    /// Keeps the set of documents to look at for compaction current: a
    /// document larger than [`COMPACT_FLOOR`] that this region compacts.
    pub(super) fn note_size(&mut self, key: &EntityKey, doc: &StoredDoc) {
        let ours = doc.saved.len() > COMPACT_FLOOR
            && EntityDoc::load(&doc.saved).is_ok_and(|d| d.compacted_by(&self.region));
        if ours {
            self.compactable.insert(key.clone());
        } else {
            self.compactable.remove(key);
        }
    }

    /// Up to `limit` documents this region compacts that outgrew their
    /// record, skipping those `skip` rules out (by kind, id and change
    /// number), in key order from just after `after` and around: a caller
    /// that passes the last one it was given sees every one in turn.
    pub fn compactable(
        &self,
        limit: usize,
        after: Option<&(Kind, String)>,
        skip: impl Fn(Kind, &str, u64) -> bool,
    ) -> Vec<Compactable> {
        use std::ops::Bound::{Excluded, Included, Unbounded};
        let start: Option<EntityKey> = after.map(|(kind, id)| (*kind, Arc::from(id.as_str())));
        let order: Vec<&EntityKey> = match &start {
            Some(start) => self
                .compactable
                .range((Excluded(start), Unbounded))
                .chain(self.compactable.range((Unbounded, Included(start))))
                .collect(),
            None => self.compactable.iter().collect(),
        };
        let mut out = Vec::new();
        for key in order {
            if out.len() >= limit {
                break;
            }
            let Ok(Some(stored)) = self.stored_doc(key) else {
                continue;
            };
            if skip(key.0, &key.1, stored.seq) {
                continue;
            }
            let record = self
                .get_json(key.0, &key.1)
                .map_or(0, |r| r.to_string().len());
            if stored.saved.len() <= COMPACT_FLOOR.saturating_add(record.saturating_mul(2)) {
                continue;
            }
            let Ok(doc) = EntityDoc::load(&stored.saved) else {
                continue;
            };
            out.push(Compactable {
                kind: key.0,
                id: key.1.to_string(),
                seq: stored.seq,
                epoch: doc.epoch(),
                heads: doc.heads().iter().map(ToString::to_string).collect(),
            });
        }
        out
    }
}

impl Planner<'_> {
    /// `Command::Compact`.
    pub(super) fn compact(&mut self, kind: Kind, id: &str, heads: &[String]) -> Planned {
        let key: EntityKey = (kind, Arc::from(id));
        let noun = kind.noun();
        let Some(stored) = self.current_doc(&key)? else {
            return Err(Outcome::refused(
                Refusal::NotFound,
                format!("{noun} `{id}` has no document"),
            ));
        };
        let failed = |e: super::DocError| invalid(format!("{noun} `{id}`: {e}"));
        let doc = EntityDoc::load(&stored.saved).map_err(failed)?;
        // The cut: a version of this document every other region holds.
        let cut: Option<Vec<ChangeHash>> = heads.iter().map(|h| h.parse().ok()).collect();
        let cut = cut.filter(|c| doc.is_version(c));
        let Some(cut) = cut else {
            return Err(invalid(format!(
                "{noun} `{id}`: that cut is not a version of its document"
            )));
        };
        // Translating is work on every replica's apply path: bounded.
        let outside = doc.changes_outside(&cut);
        if outside > MAX_TRANSLATED {
            return Err(invalid(format!(
                "{noun} `{id}`: {outside} changes after that cut (at most {MAX_TRANSLATED})"
            )));
        }
        let region = &self.state.region;
        if !doc.compacted_by(region) {
            return Err(invalid(format!(
                "{noun} `{id}` is compacted by another region"
            )));
        }
        let next = doc.compact(region, &cut).map_err(failed)?;
        // A change merged here that is concurrent with the cut may lose an
        // unblock in translation (see `compact`): compact at a later cut then.
        if next.record().map_err(failed)? != doc.record().map_err(failed)? {
            return Err(invalid(format!(
                "{noun} `{id}`: compaction at that cut would change it"
            )));
        }
        let saved = next.save();
        let summary = serde_json::json!({
            "epoch": next.epoch(),
            "bytes_before": stored.saved.len(),
            "bytes_after": saved.len(),
        });
        self.push_doc(kind, key.1, saved, None, Some(stored.seq));
        Ok(done(vec![summary], vec![]))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use sha2::{Digest, Sha256};

    use super::super::tests::ship;
    use super::super::{Change, Proposal};
    use super::*;
    use crate::metadata::Command;

    const US: &str = "us-east";
    const EU: &str = "eu-west";
    const T1: &str = "1111111111111111111111111111111111111111111111111111111111111111";

    fn apply(state: &mut MetadataState, command: Command) -> (Outcome, Vec<Change>) {
        state.apply(&Proposal {
            at_ms: 1_000,
            command,
        })
    }

    fn size(state: &MetadataState) -> usize {
        state.document_size(Kind::Key, T1).unwrap()
    }

    fn compact(state: &mut MetadataState, heads: Vec<String>) -> Outcome {
        let command = Command::Compact {
            kind: Kind::Key,
            id: T1.into(),
            heads,
        };
        apply(state, command).0
    }

    /// A key made in `us-east` and its metadata rewritten `edits` times
    /// (1 KiB that does not compress away).
    fn edited_key(edits: u64) -> MetadataState {
        let mut us = MetadataState::new(US);
        edit_key(&mut us, T1, edits);
        us
    }

    fn edit_key(us: &mut MetadataState, token: &str, edits: u64) {
        let create = Command::Create {
            kind: Kind::Key,
            record: json!({"token": token, "key_name": "sk-...1111"}),
        };
        apply(us, create);
        for n in 0..edits {
            let note: String = (0..16u64)
                .flat_map(|i| Sha256::digest((n * 16 + i).to_be_bytes()))
                .map(|b| format!("{b:02x}"))
                .collect();
            let patch = json!({"metadata": {"note": note}});
            let update = Command::Update {
                kind: Kind::Key,
                id: token.into(),
                patch: patch.as_object().unwrap().clone(),
            };
            assert!(matches!(apply(us, update).0, Outcome::Done { .. }));
        }
    }

    #[test]
    fn every_candidate_gets_its_turn() {
        let tokens = ["1", "2", "3"].map(|d| d.repeat(64));
        let mut us = MetadataState::new(US);
        for token in &tokens {
            edit_key(&mut us, token, 40);
        }
        let mut after = None;
        let mut seen = Vec::new();
        for _ in 0..4 {
            let found = us.compactable(1, after.as_ref(), |_, _, _| false);
            let next = (found[0].kind, found[0].id.clone());
            seen.push(next.1.clone());
            after = Some(next);
        }
        let expected: Vec<String> = tokens.iter().chain(&tokens[..1]).cloned().collect();
        assert_eq!(seen, expected);
    }

    #[test]
    fn a_grown_document_is_compacted_by_its_region_and_followed_by_others() {
        let mut us = edited_key(40);
        let mut eu = MetadataState::new(EU);
        ship(&us, &mut eu);
        let before = size(&us);
        assert!(before > COMPACT_FLOOR + 4_000, "{before}");
        let record = us.get_json(Kind::Key, T1);

        // Only the region that made the key compacts it.
        let found = us.compactable(8, None, |_, _, _| false);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].seq, us.change_seq());
        assert!(eu.compactable(8, None, |_, _, _| false).is_empty());
        assert!(
            us.compactable(8, None, |_, _, _| true).is_empty(),
            "skip rules out"
        );

        // No cut, a cut not held, and another region, are refused.
        assert!(matches!(compact(&mut us, vec![]), Outcome::Refused { .. }));
        let unknown = vec!["ab".repeat(32)];
        assert!(matches!(compact(&mut us, unknown), Outcome::Refused { .. }));
        let heads = found[0].heads.clone();
        assert!(matches!(
            compact(&mut eu, heads.clone()),
            Outcome::Refused { .. }
        ));

        let Outcome::Done { records, .. } = compact(&mut us, heads) else {
            panic!("compaction refused");
        };
        assert_eq!(records[0]["epoch"], json!(1));
        let after = size(&us);
        assert!(after * 10 < before, "{before} -> {after}");
        assert_eq!(
            us.get_json(Kind::Key, T1),
            record,
            "the record is unchanged"
        );
        assert!(us.compactable(8, None, |_, _, _| false).is_empty());

        // The other region moves to the new epoch when it is sent.
        ship(&us, &mut eu);
        assert_eq!(eu.document_size(Kind::Key, T1), Some(after));
        assert_eq!(eu.get_json(Kind::Key, T1), record);
        let doc = eu.document(Kind::Key, T1).unwrap().unwrap();
        assert_eq!(doc.epoch(), 1);
    }

    #[test]
    fn an_edit_in_flight_survives_the_compaction() {
        let mut us = edited_key(40);
        let mut eu = MetadataState::new(EU);
        ship(&us, &mut eu);
        // `eu-west` edits the old epoch while `us-east` compacts.
        let patch = json!({"rpm_limit": 7});
        let update = Command::Update {
            kind: Kind::Key,
            id: T1.into(),
            patch: patch.as_object().unwrap().clone(),
        };
        assert!(matches!(apply(&mut eu, update).0, Outcome::Done { .. }));
        let heads = us.compactable(8, None, |_, _, _| false)[0].heads.clone();
        assert!(matches!(compact(&mut us, heads), Outcome::Done { .. }));
        ship(&eu, &mut us);
        ship(&us, &mut eu);
        for state in [&us, &eu] {
            assert_eq!(state.key(T1).unwrap().limits.rpm_limit, Some(7));
            let doc = state.document(Kind::Key, T1).unwrap().unwrap();
            assert_eq!(doc.epoch(), 1);
        }
        assert_eq!(
            us.document(Kind::Key, T1).unwrap().unwrap().heads(),
            eu.document(Kind::Key, T1).unwrap().unwrap().heads()
        );
    }

    /// A document merged otherwise than as sent is reported, so the sender
    /// does not count it as held.
    #[test]
    fn a_translated_document_is_reported_not_held() {
        let mut us = edited_key(40);
        let mut ap = MetadataState::new("ap-south");
        assert!(ship(&us, &mut ap).not_held.is_empty(), "held as sent");
        let heads = us.compactable(8, None, |_, _, _| false)[0].heads.clone();
        assert!(matches!(compact(&mut us, heads), Outcome::Done { .. }));
        // `ap-south`, still on the old epoch, edits and sends it.
        let patch = json!({"rpm_limit": 9});
        let update = Command::Update {
            kind: Kind::Key,
            id: T1.into(),
            patch: patch.as_object().unwrap().clone(),
        };
        assert!(matches!(apply(&mut ap, update).0, Outcome::Done { .. }));
        let summary = ship(&ap, &mut us);
        assert_eq!(summary.not_held, vec![(Kind::Key, T1.to_owned())]);
        assert_eq!(us.key(T1).unwrap().limits.rpm_limit, Some(9));
        // And the other way: held as sent.
        assert!(ship(&us, &mut ap).not_held.is_empty());
    }
}
