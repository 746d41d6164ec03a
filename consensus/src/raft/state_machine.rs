//! The Raft state machine: applies committed proposals to the region's
//! [`MetadataState`] and keeps it durable in [`Cf::State`] — each entry's record
//! changes and the applied-log marker in one atomic batch, so after a crash the
//! state and the marker agree and Raft re-applies exactly what is missing.
//!
//! Readers (authentication, admin reads) share the state through
//! [`SharedState`]; an applied change is visible to them immediately. A
//! proposal is planned under the read lock (the costly document work) and
//! committed under the write lock, so readers wait only for map inserts.
//!
//! Layout of [`Cf::State`]: records under their kind's prefix (`k/<token>`,
//! `t/<team_id>`, ...), each entity's document under `d/` plus the same
//! (`d/k/<token>`), an index of documents by change number under `_seq/`
//! plus the number (big-endian) naming the record key, the sync cursor of each remote region under
//! `_cursor/<region>`, the rights ledgers of `strict` limits under `_ledger/`
//! plus the counter's bytes, and the applied and membership markers.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, RwLock};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use futures_util::TryStreamExt;
use meridian_storage::{Cf, Durability, Store, WriteBatch};
use openraft::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};

use super::{TypeConfig, io_error};
use crate::metadata::{Change, Kind, MetadataState, Outcome};

/// The applied metadata, shared between the state machine and its readers.
pub type SharedState = Arc<RwLock<MetadataState>>;

/// The last applied log id and the membership as of it.
type Applied = (Option<LogIdOf<TypeConfig>>, StoredMembershipOf<TypeConfig>);

const APPLIED: &[u8] = b"_applied";
const MEMBERSHIP: &[u8] = b"_membership";
const CURRENT_SNAPSHOT: &[u8] = b"current";

const DOC_PREFIX: &[u8] = b"d/";
const SEQ_PREFIX: &[u8] = b"_seq/";
/// Present once every document is in the `_seq/` index (stores written
/// before the index get it at their first start).
const DOCS_INDEXED: &[u8] = b"_docs_indexed";
const CURSOR_PREFIX: &[u8] = b"_cursor/";
const LEDGER_PREFIX: &[u8] = b"_ledger/";

/// A snapshot's bytes: every record, document and sync cursor.
#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    records: Vec<(Kind, String, String)>,
    /// `(kind, id, base64 of StoredDoc::encode)`. Absent from snapshots made
    /// before documents existed.
    #[serde(default)]
    docs: Vec<(Kind, String, String)>,
    #[serde(default)]
    cursors: BTreeMap<String, u64>,
    /// `(base64 of the counter, ledger JSON)`.
    #[serde(default)]
    ledgers: Vec<(String, String)>,
}

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMetaOf<TypeConfig>,
    data: Vec<u8>,
}

#[derive(Clone)]
pub struct StateMachine {
    /// This region's name (its documents' actor).
    region: Arc<str>,
    store: Arc<dyn Store>,
    state: SharedState,
    applied: Arc<RwLock<Applied>>,
}

fn record_key(kind: Kind, id: &str) -> Vec<u8> {
    let mut k = kind.prefix().as_bytes().to_vec();
    k.extend_from_slice(id.as_bytes());
    k
}

fn doc_key(kind: Kind, id: &str) -> Vec<u8> {
    let mut k = DOC_PREFIX.to_vec();
    k.extend_from_slice(&record_key(kind, id));
    k
}

fn seq_key(seq: u64) -> Vec<u8> {
    let mut k = SEQ_PREFIX.to_vec();
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// `k/<token>` → `(Kind::Key, token)`.
fn parse_record_key(key: &[u8]) -> Option<(Kind, String)> {
    let kind = Kind::ALL
        .into_iter()
        .find(|k| key.starts_with(k.prefix().as_bytes()))?;
    let id = std::str::from_utf8(key.get(kind.prefix().len()..)?).ok()?;
    Some((kind, id.to_owned()))
}

/// The documents the state does not hold in memory: read from the store.
struct StoreDocs(Arc<dyn Store>);

impl std::fmt::Debug for StoreDocs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreDocs")
    }
}

impl crate::metadata::DocSource for StoreDocs {
    fn get(&self, kind: Kind, id: &str) -> Result<Option<Vec<u8>>, String> {
        self.0
            .get(Cf::State, &doc_key(kind, id))
            .map_err(|e| e.to_string())
    }

    fn changed_after(&self, after: u64, limit: usize) -> Result<Vec<(u64, Kind, String)>, String> {
        let Some(from) = after.checked_add(1) else {
            return Ok(Vec::new());
        };
        let rows = self
            .0
            .range(
                Cf::State,
                &seq_key(from),
                Some(&prefix_end(SEQ_PREFIX)),
                limit,
            )
            .map_err(|e| e.to_string())?;
        rows.into_iter()
            .map(|(key, value)| {
                let seq = key
                    .get(SEQ_PREFIX.len()..)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map(u64::from_be_bytes);
                match (seq, parse_record_key(&value)) {
                    (Some(seq), Some((kind, id))) => Ok((seq, kind, id)),
                    _ => Err(format!(
                        "bad document index entry {:?}",
                        String::from_utf8_lossy(&key)
                    )),
                }
            })
            .collect()
    }
}

fn ledger_key(counter: &[u8]) -> Vec<u8> {
    let mut k = LEDGER_PREFIX.to_vec();
    k.extend_from_slice(counter);
    k
}

fn cursor_key(region: &str) -> Vec<u8> {
    let mut k = CURSOR_PREFIX.to_vec();
    k.extend_from_slice(region.as_bytes());
    k
}

/// The end of a prefix scan: the prefix with its last byte incremented.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

/// Adds `changes` to `batch` under the state's key layout.
pub fn stage(batch: &mut WriteBatch, changes: Vec<Change>) {
    for change in changes {
        match change {
            Change::Put { kind, id, json } => batch.put(Cf::State, record_key(kind, &id), json),
            Change::Delete { kind, id } => batch.delete(Cf::State, record_key(kind, &id)),
            Change::Doc {
                kind,
                id,
                bytes,
                seq,
                replaces,
            } => {
                if let Some(old) = replaces.filter(|old| *old != seq) {
                    batch.delete(Cf::State, seq_key(old));
                }
                batch.put(Cf::State, seq_key(seq), record_key(kind, &id));
                batch.put(Cf::State, doc_key(kind, &id), bytes)
            }
            Change::Cursor { region, seq } => {
                batch.put(Cf::State, cursor_key(&region), seq.to_be_bytes().to_vec())
            }
            Change::Ledger {
                counter,
                json: Some(json),
            } => batch.put(Cf::State, ledger_key(&counter), json),
            Change::Ledger {
                counter,
                json: None,
            } => batch.delete(Cf::State, ledger_key(&counter)),
        };
    }
}

/// The `_seq/` index entries of the documents `state` holds in memory.
fn index_entries(state: &MetadataState) -> impl Iterator<Item = (Vec<u8>, Vec<u8>)> {
    state
        .document_index()
        .into_iter()
        .map(|(seq, kind, id)| (seq_key(seq), record_key(kind, &id)))
}

fn write_lock<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

fn read_lock<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

impl StateMachine {
    /// Opens the state machine of region `region` on `store`, loading what
    /// was applied before.
    pub fn open(store: Arc<dyn Store>, region: &str) -> io::Result<Self> {
        let mut state = MetadataState::new(region);
        let engine = meridian_storage::Error::Engine;
        for kind in Kind::ALL {
            let prefix = kind.prefix().as_bytes();
            store
                .scan(
                    Cf::State,
                    prefix,
                    Some(&prefix_end(prefix)),
                    &mut |key, value| {
                        let id =
                            String::from_utf8_lossy(key.get(prefix.len()..).unwrap_or_default());
                        state.load(kind, &id, value).map_err(engine)
                    },
                )
                .map_err(io_error)?;
        }
        store
            .scan(
                Cf::State,
                CURSOR_PREFIX,
                Some(&prefix_end(CURSOR_PREFIX)),
                &mut |key, value| {
                    let name =
                        String::from_utf8_lossy(key.get(CURSOR_PREFIX.len()..).unwrap_or_default());
                    let seq = <[u8; 8]>::try_from(value)
                        .map_err(|_| engine(format!("sync cursor of {name}: not 8 bytes")))?;
                    state.load_cursor(&name, u64::from_be_bytes(seq));
                    Ok(())
                },
            )
            .map_err(io_error)?;
        store
            .scan(
                Cf::State,
                LEDGER_PREFIX,
                Some(&prefix_end(LEDGER_PREFIX)),
                &mut |key, value| {
                    let counter = key.get(LEDGER_PREFIX.len()..).unwrap_or_default();
                    state.load_ledger(counter, value).map_err(engine)
                },
            )
            .map_err(io_error)?;
        if store
            .get(Cf::State, DOCS_INDEXED)
            .map_err(io_error)?
            .is_none()
        {
            // Written before the index (or before documents): read every
            // document once, give records without one a document, and index
            // them all.
            store
                .scan(
                    Cf::State,
                    DOC_PREFIX,
                    Some(&prefix_end(DOC_PREFIX)),
                    &mut |key, value| {
                        let rest = key.get(DOC_PREFIX.len()..).unwrap_or_default();
                        let Some((kind, id)) = parse_record_key(rest) else {
                            return Err(engine(format!(
                                "unknown document key {:?}",
                                String::from_utf8_lossy(key)
                            )));
                        };
                        state.load_doc(kind, &id, value).map_err(engine)
                    },
                )
                .map_err(io_error)?;
            let adopted = state.adopt_records();
            if !adopted.is_empty() {
                tracing::info!(
                    documents = adopted.len(),
                    "made documents for records stored without one"
                );
            }
            // In chunks: the documents themselves are stored already. The
            // marker goes last, so an interrupted start indexes again.
            let mut batch = WriteBatch::default();
            stage(&mut batch, adopted);
            for (key, entity) in index_entries(&state) {
                batch.put(Cf::State, key, entity);
                if batch.ops.len() >= 10_000 {
                    let full = std::mem::take(&mut batch);
                    store.write(full, Durability::Process).map_err(io_error)?;
                }
            }
            batch.put(Cf::State, DOCS_INDEXED, Vec::new());
            store.write(batch, Durability::Power).map_err(io_error)?;
        }
        let seq = store
            .last(Cf::State, SEQ_PREFIX, Some(&prefix_end(SEQ_PREFIX)))
            .map_err(io_error)?
            .and_then(|(key, _)| <[u8; 8]>::try_from(key.get(SEQ_PREFIX.len()..)?).ok())
            .map_or(0, u64::from_be_bytes);
        state.attach_documents(Arc::new(StoreDocs(store.clone())), seq);
        let read = |key: &[u8]| -> io::Result<Option<Vec<u8>>> {
            store.get(Cf::State, key).map_err(io_error)
        };
        let applied = match read(APPLIED)? {
            Some(b) => serde_json::from_slice(&b).map_err(io_error)?,
            None => None,
        };
        let membership = match read(MEMBERSHIP)? {
            Some(b) => serde_json::from_slice(&b).map_err(io_error)?,
            None => StoredMembershipOf::<TypeConfig>::default(),
        };
        Ok(Self {
            region: Arc::from(region),
            store,
            state: Arc::new(RwLock::new(state)),
            applied: Arc::new(RwLock::new((applied, membership))),
        })
    }

    pub fn shared_state(&self) -> SharedState {
        self.state.clone()
    }

    fn persist(
        &self,
        changes: Vec<Change>,
        applied: &Option<LogIdOf<TypeConfig>>,
        membership: Option<&StoredMembershipOf<TypeConfig>>,
    ) -> io::Result<()> {
        let mut batch = WriteBatch::default();
        stage(&mut batch, changes);
        batch.put(
            Cf::State,
            APPLIED,
            serde_json::to_vec(applied).map_err(io_error)?,
        );
        if let Some(m) = membership {
            batch.put(
                Cf::State,
                MEMBERSHIP,
                serde_json::to_vec(m).map_err(io_error)?,
            );
        }
        self.store.write(batch, Durability::Power).map_err(io_error)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> io::Result<SnapshotOf<TypeConfig, Vec<u8>>> {
        // Hold the state's read lock while reading the applied marker, so the
        // records and the marker describe the same instant.
        let (records, docs, cursors, ledgers, (last_log_id, last_membership)) = {
            let state = read_lock(&self.state);
            let applied = read_lock(&self.applied).clone();
            (
                state.records(),
                state.documents().map_err(io_error)?,
                state.sync_cursors().clone(),
                state.ledgers(),
                applied,
            )
        };
        let body = SnapshotBody {
            records: records
                .into_iter()
                .map(|(k, id, json)| (k, id, String::from_utf8_lossy(&json).into_owned()))
                .collect(),
            docs: docs
                .into_iter()
                .map(|(k, id, bytes)| (k, id, STANDARD.encode(bytes)))
                .collect(),
            cursors,
            ledgers: ledgers
                .into_iter()
                .map(|(counter, json)| {
                    (
                        STANDARD.encode(counter),
                        String::from_utf8_lossy(&json).into_owned(),
                    )
                })
                .collect(),
        };
        let data = serde_json::to_vec(&body).map_err(io_error)?;
        let meta = SnapshotMetaOf::<TypeConfig> {
            last_log_id,
            last_membership,
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        };
        let mut batch = WriteBatch::default();
        batch.put(
            Cf::Snapshot,
            CURRENT_SNAPSHOT,
            serde_json::to_vec(&stored).map_err(io_error)?,
        );
        self.store
            .write(batch, Durability::Power)
            .map_err(io_error)?;
        Ok(SnapshotOf::<TypeConfig, Vec<u8>> {
            meta,
            snapshot: data,
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> io::Result<(Option<LogIdOf<TypeConfig>>, StoredMembershipOf<TypeConfig>)> {
        Ok(read_lock(&self.applied).clone())
    }

    async fn apply<S>(&mut self, mut entries: S) -> io::Result<()>
    where
        S: futures_util::Stream<Item = io::Result<EntryResponder<TypeConfig>>> + Unpin + Send,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            let log_id = Some(entry.log_id);
            let (outcome, changes, membership) = match &entry.payload {
                EntryPayload::Blank => (
                    Outcome::Done {
                        records: vec![],
                        missing: vec![],
                    },
                    vec![],
                    None,
                ),
                EntryPayload::Normal(proposal) => {
                    // The state machine is the state's only writer: the plan
                    // made under the read lock still holds when committed.
                    let plan = read_lock(&self.state).plan(proposal);
                    if let Some(fault) = plan.fault() {
                        return Err(io_error(fault));
                    }
                    let (outcome, changes) = write_lock(&self.state).commit(plan);
                    (outcome, changes, None)
                }
                EntryPayload::Membership(m) => (
                    Outcome::Done {
                        records: vec![],
                        missing: vec![],
                    },
                    vec![],
                    Some(StoredMembershipOf::<TypeConfig>::new(log_id, m.clone())),
                ),
            };
            let wrote_docs = changes.iter().any(|c| matches!(c, Change::Doc { .. }));
            self.persist(changes, &log_id, membership.as_ref())?;
            if wrote_docs {
                write_lock(&self.state).flushed();
            }
            {
                let mut applied = write_lock(&self.applied);
                applied.0 = log_id;
                if let Some(m) = membership {
                    applied.1 = m;
                }
            }
            if let Some(responder) = responder {
                responder.send(outcome);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<TypeConfig>,
        snapshot: Vec<u8>,
    ) -> io::Result<()> {
        let body: SnapshotBody = serde_json::from_slice(&snapshot).map_err(io_error)?;
        let mut state = MetadataState::new(&self.region);
        let mut batch = WriteBatch::default();
        // Replace, not merge: everything the snapshot does not name is gone.
        batch.delete_range(Cf::State, Vec::new(), vec![0xff]);
        for (kind, id, json) in &body.records {
            state.load(*kind, id, json.as_bytes()).map_err(io_error)?;
            batch.put(Cf::State, record_key(*kind, id), json.as_bytes().to_vec());
        }
        for (kind, id, encoded) in &body.docs {
            let bytes = STANDARD.decode(encoded).map_err(io_error)?;
            state.load_doc(*kind, id, &bytes).map_err(io_error)?;
            batch.put(Cf::State, doc_key(*kind, id), bytes);
        }
        for (region, seq) in &body.cursors {
            state.load_cursor(region, *seq);
            batch.put(Cf::State, cursor_key(region), seq.to_be_bytes().to_vec());
        }
        for (counter, json) in &body.ledgers {
            let counter = STANDARD.decode(counter).map_err(io_error)?;
            state
                .load_ledger(&counter, json.as_bytes())
                .map_err(io_error)?;
            batch.put(Cf::State, ledger_key(&counter), json.as_bytes().to_vec());
        }
        stage(&mut batch, state.adopt_records());
        for (key, entity) in index_entries(&state) {
            batch.put(Cf::State, key, entity);
        }
        batch.put(Cf::State, DOCS_INDEXED, Vec::new());
        batch.put(
            Cf::State,
            APPLIED,
            serde_json::to_vec(&meta.last_log_id).map_err(io_error)?,
        );
        batch.put(
            Cf::State,
            MEMBERSHIP,
            serde_json::to_vec(&meta.last_membership).map_err(io_error)?,
        );
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: snapshot,
        };
        batch.put(
            Cf::Snapshot,
            CURRENT_SNAPSHOT,
            serde_json::to_vec(&stored).map_err(io_error)?,
        );
        self.store
            .write(batch, Durability::Power)
            .map_err(io_error)?;
        let seq = state.change_seq();
        state.attach_documents(Arc::new(StoreDocs(self.store.clone())), seq);
        *write_lock(&self.state) = state;
        *write_lock(&self.applied) = (meta.last_log_id, meta.last_membership.clone());
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> io::Result<Option<SnapshotOf<TypeConfig, Vec<u8>>>> {
        match self
            .store
            .get(Cf::Snapshot, CURRENT_SNAPSHOT)
            .map_err(io_error)?
        {
            None => Ok(None),
            Some(bytes) => {
                let stored: StoredSnapshot = serde_json::from_slice(&bytes).map_err(io_error)?;
                Ok(Some(SnapshotOf::<TypeConfig, Vec<u8>> {
                    meta: stored.meta,
                    snapshot: stored.data,
                }))
            }
        }
    }
}

#[cfg(test)]
#[path = "state_machine_tests.rs"]
mod tests;
