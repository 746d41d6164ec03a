//! Tests of `state_machine.rs`.

use super::*;
use crate::metadata::{Command, OutboxLimits, Proposal};
use meridian_storage::MemStore;
use serde_json::json;

fn create(i: u64) -> Proposal {
    Proposal {
        at_ms: 1_000 + i,
        command: Command::Create {
            kind: Kind::Key,
            record: json!({ "token": format!("{i:064x}"), "key_name": "sk-...0000",
                "created_at": 0, "updated_at": 0 }),
        },
    }
}

/// Everything `from`'s outbox sends to `to`, read `max_scan` at a time.
fn drain(from: &MetadataState, max_scan: usize) -> Vec<String> {
    let limits = OutboxLimits {
        max_docs: 100,
        max_bytes: 1 << 20,
        max_scan,
    };
    let (mut after, mut sent) = (0, Vec::new());
    while after < from.change_seq() {
        let outbox = from.outbox(after, "eu-west", limits);
        assert!(outbox.through > after, "no progress after {after}");
        sent.extend(outbox.docs.into_iter().map(|d| d.id));
        after = outbox.through;
    }
    sent
}

#[test]
fn documents_stay_in_the_store_and_old_stores_are_indexed() {
    let mut pure = MetadataState::new("us-east");
    let mut batch = WriteBatch::default();
    for i in 0..10 {
        stage(&mut batch, pure.apply(&create(i)).1);
    }
    // A store written before the index: documents, no `_seq/` entries.
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    batch.delete_range(Cf::State, SEQ_PREFIX.to_vec(), prefix_end(SEQ_PREFIX));
    store.write(batch, Durability::Power).unwrap();

    let sm = StateMachine::open(store.clone(), "us-east").unwrap();
    let state = sm.shared_state();
    let expected = pure.documents().unwrap();
    {
        let s = state.read().unwrap();
        assert_eq!(s.documents_in_memory(), 0, "documents stay in the store");
        assert_eq!(s.documents().unwrap(), expected);
        assert_eq!(s.change_seq(), pure.change_seq());
        // The sync reads them from the store, a few at a time, each
        // once and in change order, as it does from memory.
        assert_eq!(drain(&s, 3), drain(&pure, 3));
        assert_eq!(drain(&s, 3).len(), 10);
    }

    // A change on the store-backed state replaces its index entry.
    let update = Proposal {
        at_ms: 5_000,
        command: Command::Update {
            kind: Kind::Key,
            id: format!("{:064x}", 4),
            patch: json!({ "blocked": true }).as_object().cloned().unwrap(),
        },
    };
    let (_, pure_changes) = pure.apply(&update);
    let changes = {
        let plan = state.read().unwrap().plan(&update);
        assert!(plan.fault().is_none());
        state.write().unwrap().commit(plan).1
    };
    assert_eq!(changes, pure_changes, "the same changes either way");
    assert_eq!(state.read().unwrap().documents_in_memory(), 1);
    let mut batch = WriteBatch::default();
    stage(&mut batch, changes);
    store.write(batch, Durability::Power).unwrap();
    state.write().unwrap().flushed();
    let s = state.read().unwrap();
    assert_eq!(s.documents_in_memory(), 0);
    assert_eq!(s.documents().unwrap(), pure.documents().unwrap());
    assert_eq!(s.document_count().unwrap(), 10, "no stale index entry");
    assert_eq!(drain(&s, 4), drain(&pure, 4));
    drop(s);

    // Reopened, the index is used as it is: the same documents.
    let again = StateMachine::open(store, "us-east").unwrap();
    let s = again.shared_state();
    let s = s.read().unwrap();
    assert_eq!(s.documents().unwrap(), pure.documents().unwrap());
    assert_eq!(s.change_seq(), pure.change_seq());
}
