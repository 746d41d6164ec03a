//! Tests of `doc.rs`.

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
