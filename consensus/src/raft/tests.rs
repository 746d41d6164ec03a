//! openraft's storage suite, run against both engines, plus a one-node Raft
//! that applies real proposals and comes back from its data directory.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use meridian_storage::{MemStore, RocksStore, Store};
use openraft::StorageError;
use openraft::storage::RaftStateMachine;
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::type_config::TypeConfigExt;
use serde_json::json;

use super::*;
use crate::metadata::{Command, Kind, Outcome, Proposal};

struct Mem;

impl StoreBuilder<TypeConfig, LogStore, StateMachine> for Mem {
    async fn build(&self) -> Result<((), LogStore, StateMachine), StorageError<TypeConfig>> {
        let store: Arc<dyn Store> = Arc::new(MemStore::new());
        let sm = StateMachine::open(store.clone(), "test")
            .map_err(|e| StorageError::read(TypeConfig::err_from_error(&e)))?;
        Ok(((), LogStore::new(store), sm))
    }
}

struct Rocks;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Rocks {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let err = |e: &dyn std::fmt::Display| {
            StorageError::read(TypeConfig::err_from_string(e.to_string()))
        };
        let dir = tempfile::tempdir().map_err(|e| err(&e))?;
        let store: Arc<dyn Store> = Arc::new(RocksStore::open(dir.path()).map_err(|e| err(&e))?);
        let sm = StateMachine::open(store.clone(), "test").map_err(|e| err(&e))?;
        Ok((dir, LogStore::new(store), sm))
    }
}

#[test]
fn memory_store_passes_the_openraft_suite() {
    TypeConfig::run(async { Suite::test_all(Mem).await.unwrap() });
}

#[test]
fn rocksdb_store_passes_the_openraft_suite() {
    TypeConfig::run(async { Suite::test_all(Rocks).await.unwrap() });
}

/// A network for a region of one: there is nobody to call.
struct Alone;

impl openraft::network::RaftNetworkFactory<TypeConfig> for Alone {
    type Network = Alone;
    async fn new_client(&mut self, _: u64, _: &Member) -> Alone {
        Alone
    }
}

impl openraft::network::RaftNetworkV2<TypeConfig> for Alone {
    type SnapshotData = Vec<u8>;
    async fn append_entries(
        &mut self,
        _: openraft::raft::AppendEntriesRequest<TypeConfig>,
        _: openraft::network::RPCOption,
    ) -> Result<
        openraft::raft::AppendEntriesResponse<TypeConfig>,
        openraft::errors::RPCError<TypeConfig>,
    > {
        Err(openraft::errors::RPCError::Unreachable(
            openraft::errors::Unreachable::from_string("alone"),
        ))
    }
    async fn vote(
        &mut self,
        _: openraft::raft::VoteRequest<TypeConfig>,
        _: openraft::network::RPCOption,
    ) -> Result<openraft::raft::VoteResponse<TypeConfig>, openraft::errors::RPCError<TypeConfig>>
    {
        Err(openraft::errors::RPCError::Unreachable(
            openraft::errors::Unreachable::from_string("alone"),
        ))
    }
    async fn full_snapshot(
        &mut self,
        _: openraft::alias::VoteOf<TypeConfig>,
        _: openraft::alias::SnapshotOf<TypeConfig, Vec<u8>>,
        _: impl std::future::Future<Output = openraft::errors::ReplicationClosed> + Send + 'static,
        _: openraft::network::RPCOption,
    ) -> Result<
        openraft::raft::SnapshotResponse<TypeConfig>,
        openraft::errors::StreamingError<TypeConfig>,
    > {
        Err(openraft::errors::StreamingError::Unreachable(
            openraft::errors::Unreachable::from_string("alone"),
        ))
    }
}

const TOKEN: &str = "abababababababababababababababababababababababababababababababab";

#[test]
fn a_single_node_applies_proposals_and_restarts_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let open = || -> (LogStore, StateMachine) {
        let store: Arc<dyn Store> = Arc::new(RocksStore::open(dir.path()).unwrap());
        (
            LogStore::new(store.clone()),
            StateMachine::open(store, "test").unwrap(),
        )
    };
    let config = Arc::new(openraft::Config::default().validate().unwrap());
    let documents = TypeConfig::run(async {
        let (log, sm) = open();
        let state = sm.shared_state();
        let raft =
            openraft::Raft::<TypeConfig, StateMachine>::new(1, config.clone(), Alone, log, sm)
                .await
                .unwrap();
        raft.initialize(BTreeMap::from([(1u64, Member::default())]))
            .await
            .unwrap();
        raft.wait(Some(Duration::from_secs(5)))
            .current_leader(1, "leader")
            .await
            .unwrap();
        let create = Proposal {
            at_ms: 42_000,
            command: Command::Create {
                kind: Kind::Key,
                record: json!({ "token": TOKEN, "key_name": "sk-...abab" }),
            },
        };
        let written = raft.client_write(create.clone()).await.unwrap();
        assert!(
            matches!(written.data, Outcome::Done { .. }),
            "{:?}",
            written.data
        );
        assert_eq!(state.read().unwrap().key(TOKEN).unwrap().created_at, 42);
        let again = raft.client_write(create).await.unwrap();
        assert!(
            matches!(again.data, Outcome::Refused { .. }),
            "a duplicate is refused by the state machine"
        );
        raft.trigger().snapshot().await.unwrap();
        raft.wait(Some(Duration::from_secs(5)))
            .snapshot(written.log_id, "snapshot")
            .await
            .ok();
        raft.shutdown().await.unwrap();
        let documents = state.read().unwrap().documents().unwrap();
        assert_eq!(documents.len(), 1, "the key's document");
        documents
    });
    TypeConfig::run(async {
        let (log, sm) = open();
        let state = sm.shared_state();
        assert!(
            state.read().unwrap().key(TOKEN).is_some(),
            "applied state is durable"
        );
        assert_eq!(
            state.read().unwrap().documents().unwrap(),
            documents,
            "documents too"
        );
        // A snapshot carries the documents to a fresh replica, durably.
        let snapshot = sm.clone().get_current_snapshot().await.unwrap().unwrap();
        let fresh: Arc<dyn Store> = Arc::new(MemStore::new());
        let mut replica = StateMachine::open(fresh.clone(), "test").unwrap();
        replica
            .install_snapshot(&snapshot.meta, snapshot.snapshot)
            .await
            .unwrap();
        assert_eq!(
            replica.shared_state().read().unwrap().documents().unwrap(),
            documents
        );
        let reopened = StateMachine::open(fresh, "test").unwrap();
        assert_eq!(
            reopened.shared_state().read().unwrap().documents().unwrap(),
            documents
        );
        let raft =
            openraft::Raft::<TypeConfig, StateMachine>::new(1, config.clone(), Alone, log, sm)
                .await
                .unwrap();
        assert!(raft.is_initialized().await.unwrap());
        raft.wait(Some(Duration::from_secs(5)))
            .current_leader(1, "leader again")
            .await
            .unwrap();
        let delete = Proposal {
            at_ms: 43_000,
            command: Command::Delete {
                kind: Kind::Key,
                ids: vec![TOKEN.into()],
            },
        };
        raft.client_write(delete).await.unwrap();
        assert!(state.read().unwrap().key(TOKEN).is_none());
        let doc = state.read().unwrap().document(Kind::Key, TOKEN);
        assert!(
            doc.unwrap().unwrap().is_deleted(),
            "a tombstone document stays"
        );
        raft.shutdown().await.unwrap();
    });
}
