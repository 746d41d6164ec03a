use serde_json::{Map, Value, json};

use super::*;

const T0: u64 = 1_700_000_000_000;
const A: &str = "us-east";
const B: &str = "eu-west";

trait CompactNow {
    /// Compacts at the document's own heads, as region A.
    fn compact_now(&self) -> Result<EntityDoc, DocError>;
}

impl CompactNow for EntityDoc {
    fn compact_now(&self) -> Result<EntityDoc, DocError> {
        self.compact(A, &self.heads())
    }
}

fn actor(region: &str) -> Actor {
    Actor::for_region(region)
}

fn key(patch: Value) -> Map<String, Value> {
    let mut out = json!({
        "token": "ab12",
        "key_name": "sk-...abcd",
        "rpm_limit": 100,
        "max_budget": 10.5,
        "metadata": {"owner": "ops"},
        "blocked": false,
    });
    for (k, v) in patch.as_object().unwrap() {
        out[k] = v.clone();
    }
    out.as_object().unwrap().clone()
}

/// A key made in region A and edited there `edits` times, and region B's
/// copy of it (as a merge would make it).
fn edited(edits: u64) -> (EntityDoc, EntityDoc) {
    let mut a = EntityDoc::new(&actor(A), T0, &key(json!({}))).unwrap();
    for n in 0..edits {
        // Hex of hashes: 512 bytes that do not compress away.
        let note: String = (0..8u64)
            .map(|i| hex(&Sha256::digest((n * 8 + i).to_be_bytes())))
            .collect();
        let record = key(json!({"metadata": {"owner": "ops", "note": note}}));
        assert!(a.update(&actor(A), T0 + n + 1, &record).unwrap());
    }
    let b = EntityDoc::from_changes(&a.changes_since(&[])).unwrap();
    (a, b)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn whole(doc: &EntityDoc) -> Vec<u8> {
    doc.changes_since(&[])
}

fn record(doc: &EntityDoc) -> Map<String, Value> {
    doc.record().unwrap().unwrap()
}

/// Each side merges the other's whole document; both must then be equal.
fn exchange(x: &mut EntityDoc, y: &mut EntityDoc) {
    let (to_y, to_x) = (whole(x), whole(y));
    assert!(!matches!(
        y.merge_document(&to_y).unwrap(),
        Merged::Skipped(_)
    ));
    assert!(!matches!(
        x.merge_document(&to_x).unwrap(),
        Merged::Skipped(_)
    ));
    assert_eq!(x.heads(), y.heads(), "converged");
    assert_eq!(x.record().unwrap(), y.record().unwrap());
}

#[test]
fn compaction_keeps_the_record_and_drops_the_history() {
    let (a, _) = edited(200);
    let compacted = a.compact_now().unwrap();
    assert_eq!(record(&compacted), record(&a));
    assert_eq!(compacted.epoch(), 1);
    assert_eq!(a.epoch(), 0);
    let (before, after) = (a.save().len(), compacted.save().len());
    assert!(before > 50_000, "200 edits of a 512-byte field: {before}");
    assert!(after < 2_000, "one change holding the record: {after}");
    // Deterministic: the same document compacts to the same bytes.
    assert_eq!(a.compact_now().unwrap().save(), compacted.save());
    // And again, to the next epoch.
    assert_eq!(compacted.compact_now().unwrap().epoch(), 2);
}

#[test]
fn only_the_creating_region_compacts() {
    let (a, _) = edited(1);
    assert!(a.compacted_by(A));
    assert!(!a.compacted_by(B));
    let compacted = a.compact_now().unwrap();
    assert!(compacted.compacted_by(A));
    assert!(!compacted.compacted_by(B));
}

#[test]
fn a_region_reaches_the_new_epoch_from_the_base_alone() {
    let (a, mut b) = edited(20);
    let mut a = a.compact_now().unwrap();
    assert_eq!(b.merge_document(&whole(&a)).unwrap(), Merged::Held(true));
    assert_eq!(b.epoch(), 1);
    assert_eq!(b.save(), a.save());
    // Nothing new either way now.
    assert_eq!(a.merge_document(&whole(&b)).unwrap(), Merged::Held(false));
}

#[test]
fn edits_on_both_sides_of_the_epoch_change_are_kept() {
    let (a, mut b) = edited(20);
    // B edits the old epoch while A compacts and edits the new one.
    let b_edit = key(json!({"rpm_limit": 7}));
    let mut b_record = record(&b);
    b_record.insert("rpm_limit".into(), b_edit["rpm_limit"].clone());
    assert!(b.update(&actor(B), T0 + 100, &b_record).unwrap());
    let mut a = a.compact_now().unwrap();
    let mut a_record = record(&a);
    a_record.insert("max_budget".into(), json!(99.0));
    assert!(a.update(&actor(A), T0 + 101, &a_record).unwrap());
    exchange(&mut a, &mut b);
    assert_eq!(b.epoch(), 1);
    assert_eq!(record(&a)["rpm_limit"], json!(7));
    assert_eq!(record(&a)["max_budget"], json!(99.0));
    // B's next edit, made in the new epoch, merges as usual.
    let mut later = record(&b);
    later.insert("key_name".into(), json!("renamed"));
    assert!(b.update(&actor(B), T0 + 102, &later).unwrap());
    exchange(&mut a, &mut b);
    assert_eq!(record(&a)["key_name"], json!("renamed"));
}

#[test]
fn the_order_in_which_regions_move_does_not_matter() {
    let (a, mut b) = edited(5);
    let mut b_record = record(&b);
    b_record.insert("rpm_limit".into(), json!(1));
    b.update(&actor(B), T0 + 50, &b_record).unwrap();
    let a = a.compact_now().unwrap();
    // B moves first (receiving A's new epoch) or A translates B's old
    // document first: the same bytes either way.
    let mut b_first = b.clone();
    b_first.merge_document(&whole(&a)).unwrap();
    let mut a_first = a.clone();
    a_first.merge_document(&whole(&b)).unwrap();
    assert_eq!(a_first.save(), b_first.save());
}

/// Region B's change made before B held the whole cut (concurrent with a
/// block in it) would, translated naively, land after the block and lift it.
#[test]
fn a_change_concurrent_with_the_cut_cannot_lift_a_block() {
    let (mut a, mut b) = edited(0);
    let blocked = key(json!({"blocked": true}));
    let open = key(json!({"blocked": false}));
    a.update(&actor(A), T0 + 1, &blocked).unwrap();
    b.merge(&a.changes_since(&[])).unwrap();
    // A unblocks and blocks again; B, having seen only the first block,
    // unblocks concurrently with A's second block.
    a.update(&actor(A), T0 + 2, &open).unwrap();
    a.update(&actor(A), T0 + 3, &blocked).unwrap();
    b.update(&actor(B), T0 + 4, &open).unwrap();
    // B then receives A's changes: it holds the cut, and its own change.
    b.merge(&a.changes_since(&[])).unwrap();
    let mut merged = a.clone();
    merged.merge(&b.changes_since(&[])).unwrap();
    assert_eq!(
        record(&merged)["blocked"],
        json!(true),
        "sticky without compaction"
    );
    // A compacts while B's change is in flight.
    let mut a = a.compact_now().unwrap();
    exchange(&mut a, &mut b);
    assert_eq!(record(&a)["blocked"], json!(true));
    // A change made after the cut (having seen the block) still unblocks.
    let mut b_record = record(&b);
    b_record.insert("blocked".into(), json!(false));
    b.update(&actor(B), T0 + 5, &b_record).unwrap();
    exchange(&mut a, &mut b);
    assert_eq!(record(&a)["blocked"], json!(false));
}

#[test]
fn a_recreate_concurrent_with_the_cut_cannot_undo_a_delete() {
    let (mut a, mut b) = edited(0);
    // B deletes and recreates; A deletes concurrently: deleted, as without
    // compaction.
    b.delete(&actor(B), T0 + 1).unwrap();
    b.recreate(&actor(B), T0 + 2, &key(json!({"rpm_limit": 3})))
        .unwrap();
    a.delete(&actor(A), T0 + 3).unwrap();
    b.merge(&a.changes_since(&[])).unwrap();
    let mut merged = a.clone();
    merged.merge(&b.changes_since(&[])).unwrap();
    assert!(merged.is_deleted());
    let mut a = a.compact_now().unwrap();
    assert!(a.is_deleted());
    exchange(&mut a, &mut b);
    assert!(a.is_deleted() && b.is_deleted());
}

#[test]
fn documents_an_epoch_cannot_reach_are_skipped() {
    let (a, mut b) = edited(3);
    let stale = b.clone();
    // Two epochs ahead of B.
    let twice = a.compact_now().unwrap().compact_now().unwrap();
    let before = b.save();
    assert!(matches!(
        b.merge_document(&whole(&twice)).unwrap(),
        Merged::Skipped(_)
    ));
    assert_eq!(b.save(), before, "a skipped merge changes nothing");
    // A document older than the cut, one epoch behind.
    let mut newer = a.clone();
    let mut r = record(&newer);
    r.insert("rpm_limit".into(), json!(5));
    newer.update(&actor(A), T0 + 9, &r).unwrap();
    let mut compacted = newer.compact_now().unwrap();
    let mut old = stale.clone();
    let mut r = record(&old);
    r.insert("key_name".into(), json!("b"));
    old.update(&actor(B), T0 + 10, &r).unwrap();
    assert!(matches!(
        compacted.merge_document(&whole(&old)).unwrap(),
        Merged::Skipped(_)
    ));
    // B holding the cut too late to send it: it moves when it merges A's.
    assert!(matches!(
        old.merge_document(&whole(&compacted)).unwrap(),
        Merged::Skipped(_)
    ));
    old.merge(&newer.changes_since(&[])).unwrap();
    assert_eq!(
        old.merge_document(&whole(&compacted)).unwrap(),
        Merged::Held(true)
    );
    assert_eq!(record(&old)["key_name"], json!("b"));
}

#[test]
fn a_forged_base_is_refused() {
    let (a, mut b) = edited(3);
    // A "base" another region computed from a different record.
    let mut other = a.clone();
    let mut r = record(&other);
    r.insert("rpm_limit".into(), json!(1));
    other.update(&actor(A), T0 + 9, &r).unwrap();
    let lineage = Lineage {
        epoch: 1,
        origin: A.into(),
        base: a.heads(),
    };
    let fields = base_fields(&other.doc, &lineage).unwrap();
    let mut forged = automerge::Automerge::new();
    forged.set_actor(base_actor(1));
    forged
        .transact::<_, _, AutomergeError>(|tx| {
            for (field, value) in fields {
                tx.put(ROOT, field, value)?;
            }
            Ok(())
        })
        .unwrap();
    let forged = EntityDoc { doc: forged };
    let before = b.save();
    assert!(matches!(
        b.merge_document(&whole(&forged)).unwrap(),
        Merged::Skipped(_)
    ));
    assert_eq!(b.save(), before);
    // The honest base of the same cut is taken.
    assert_eq!(
        b.merge_document(&whole(&a.compact_now().unwrap())).unwrap(),
        Merged::Held(true)
    );
}

/// A change made after the cut but before its region moved to the new
/// epoch is translated whole: an unblock that saw the block still unblocks.
#[test]
fn a_change_after_the_cut_keeps_its_unblock() {
    let (mut a, mut b) = edited(0);
    a.update(&actor(A), T0 + 1, &key(json!({"blocked": true})))
        .unwrap();
    b.merge(&a.changes_since(&[])).unwrap();
    let mut a = a.compact_now().unwrap();
    b.update(&actor(B), T0 + 2, &key(json!({"blocked": false})))
        .unwrap();
    assert_eq!(b.epoch(), 0, "B edits the old epoch");
    exchange(&mut a, &mut b);
    assert_eq!(record(&a)["blocked"], json!(false));
}

/// The same id created in two regions at once: the other region's root,
/// outside the cut, goes on the base (an epoch has one root), and both
/// regions converge.
#[test]
fn a_concurrent_creation_after_the_cut_joins_the_epoch() {
    let (mut a, _) = edited(5);
    let mut b = EntityDoc::new(&actor(B), T0 + 50, &key(json!({"rpm_limit": 77}))).unwrap();
    let cut = a.heads();
    b.merge(&whole(&a)).unwrap(); // B holds A's version: the cut
    let b_old = b.clone();
    let mut next = a.compact(A, &cut).unwrap();
    exchange(&mut next, &mut b);
    assert_eq!(next.epoch(), 1);
    // When B's root reached A before it compacted, too.
    a.merge(&whole(&b_old)).unwrap();
    let with_root = a.compact(A, &cut).unwrap();
    let mut third = EntityDoc::from_changes(&whole(&edited(5).0)).unwrap();
    assert_eq!(
        third.merge_document(&whole(&with_root)).unwrap(),
        Merged::Held(true)
    );
}

/// An unblock that saw the block, concurrent with an unrelated part of the
/// cut, keeps its effect: it saw every block the base keeps.
#[test]
fn an_unblock_that_saw_the_block_survives_a_concurrent_cut() {
    let (mut a, _) = edited(0);
    a.update(&actor(A), T0 + 1, &key(json!({"blocked": true})))
        .unwrap();
    let mut b = EntityDoc::from_changes(&whole(&a)).unwrap();
    b.update(&actor(B), T0 + 2, &key(json!({"blocked": false})))
        .unwrap();
    a.update(
        &actor(A),
        T0 + 3,
        &key(json!({"blocked": true, "rpm_limit": 5})),
    )
    .unwrap();
    b.merge(&whole(&a)).unwrap();
    let mut plain = a.clone();
    plain.merge(&whole(&b)).unwrap();
    assert_eq!(record(&plain)["blocked"], json!(false));
    let mut a = a.compact_now().unwrap();
    exchange(&mut a, &mut b);
    assert_eq!(record(&a)["blocked"], json!(false));
}

/// Likewise a recreate that saw the delete.
#[test]
fn a_recreate_that_saw_the_delete_survives_a_concurrent_cut() {
    const C: &str = "ap-south";
    let (mut a, mut c) = edited(0);
    a.delete(&actor(A), T0 + 1).unwrap();
    c.update(&actor(C), T0 + 2, &key(json!({"rpm_limit": 3})))
        .unwrap();
    let mut b = EntityDoc::from_changes(&whole(&a)).unwrap();
    b.recreate(&actor(B), T0 + 3, &key(json!({"rpm_limit": 9})))
        .unwrap();
    a.merge(&whole(&c)).unwrap();
    b.merge(&whole(&a)).unwrap();
    let mut plain = a.clone();
    plain.merge(&whole(&b)).unwrap();
    assert!(!plain.is_deleted());
    let mut a = a.compact_now().unwrap();
    exchange(&mut a, &mut b);
    assert!(!a.is_deleted());
}

#[test]
fn a_cut_must_be_a_version() {
    let (a, _) = edited(3);
    let all: Vec<ChangeHash> = a.doc.get_changes(&[]).iter().map(Change::hash).collect();
    assert!(a.is_version(&a.heads()));
    assert!(a.is_version(&all[..1]));
    assert!(!a.is_version(&all), "a head and its ancestors");
    assert!(!a.is_version(&[]));
}
