//! The applied state's tests: commands, documents, merges between regions.
//!
//! Size: over the ~600-line rule, knowingly. It is one thing: the tests of
//! one state machine. They share its fixtures (regions, tokens, the
//! `batch`/`update` helpers that ship one region's changes to another).
//! Split by command, each file would carry a copy of those fixtures.

use super::*;
use crate::metadata::command::{Command, MergeSummary, RemoteChanges};
use crate::metadata::ledger::{GrantReply, GrantRequest};
use crate::metadata::records::TeamRole;
use serde_json::Map;
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
