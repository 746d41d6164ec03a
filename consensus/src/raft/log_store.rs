//! The Raft log and vote on a [`Store`]: entries under their big-endian index
//! in [`Cf::RaftLog`], the vote and the committed and purged markers in
//! [`Cf::RaftMeta`]. Every write is fsync'ed before openraft is told it is
//! durable: a vote or an entry acknowledged to a peer must survive power loss.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use meridian_storage::{Cf, Durability, Store, WriteBatch};
use openraft::RaftLogReader;
use openraft::alias::{EntryOf, LogIdOf, VoteOf};
use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{TypeConfig, io_error};

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const PURGED: &[u8] = b"purged";

/// Cheap to clone: readers share the store, so they see entries as soon as
/// `append` returns.
#[derive(Clone)]
pub struct LogStore {
    store: Arc<dyn Store>,
}

impl LogStore {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    fn meta<T: DeserializeOwned>(&self, key: &[u8]) -> io::Result<Option<T>> {
        match self.store.get(Cf::RaftMeta, key).map_err(io_error)? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(io_error),
        }
    }

    fn put_meta<T: Serialize>(&self, key: &[u8], value: &T) -> io::Result<()> {
        let mut batch = WriteBatch::default();
        batch.put(
            Cf::RaftMeta,
            key,
            serde_json::to_vec(value).map_err(io_error)?,
        );
        self.store.write(batch, Durability::Power).map_err(io_error)
    }
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn decode(bytes: &[u8]) -> io::Result<EntryOf<TypeConfig>> {
    serde_json::from_slice(bytes).map_err(io_error)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> io::Result<Vec<EntryOf<TypeConfig>>> {
        let from = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let to = match range.end_bound() {
            Bound::Included(i) => i.checked_add(1),
            Bound::Excluded(i) => Some(*i),
            Bound::Unbounded => None,
        };
        let to_key = to.map(index_key);
        self.store
            .range(
                Cf::RaftLog,
                &index_key(from),
                to_key.as_ref().map(|k| &k[..]),
                usize::MAX,
            )
            .map_err(io_error)?
            .iter()
            .map(|(_, v)| decode(v))
            .collect()
    }

    async fn read_vote(&mut self) -> io::Result<Option<VoteOf<TypeConfig>>> {
        self.meta(VOTE)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> io::Result<LogState<TypeConfig>> {
        let purged: Option<LogIdOf<TypeConfig>> = self.meta(PURGED)?;
        let last = match self.store.last(Cf::RaftLog, &[], None).map_err(io_error)? {
            Some((_, bytes)) => Some(decode(&bytes)?.log_id),
            None => purged,
        };
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<TypeConfig>) -> io::Result<()> {
        self.put_meta(VOTE, vote)
    }

    async fn save_committed(&mut self, committed: Option<LogIdOf<TypeConfig>>) -> io::Result<()> {
        self.put_meta(COMMITTED, &committed)
    }

    async fn read_committed(&mut self) -> io::Result<Option<LogIdOf<TypeConfig>>> {
        Ok(self
            .meta::<Option<LogIdOf<TypeConfig>>>(COMMITTED)?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> io::Result<()>
    where
        I: IntoIterator<Item = EntryOf<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut batch = WriteBatch::default();
        for entry in entries {
            batch.put(
                Cf::RaftLog,
                index_key(entry.log_id.index),
                serde_json::to_vec(&entry).map_err(io_error)?,
            );
        }
        let result = self.store.write(batch, Durability::Power).map_err(io_error);
        match result {
            Ok(()) => {
                callback.io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.io_completed(Err(io_error(&e)));
                Err(e)
            }
        }
    }

    async fn truncate_after(&mut self, last: Option<LogIdOf<TypeConfig>>) -> io::Result<()> {
        let from = last.map_or(0, |l| l.index + 1);
        let mut batch = WriteBatch::default();
        batch.delete_range(Cf::RaftLog, index_key(from), index_key(u64::MAX));
        batch.delete(Cf::RaftLog, index_key(u64::MAX));
        self.store.write(batch, Durability::Power).map_err(io_error)
    }

    async fn purge(&mut self, log_id: LogIdOf<TypeConfig>) -> io::Result<()> {
        // The marker first, in the same batch: the log never looks shorter than
        // what it claims to have purged.
        let mut batch = WriteBatch::default();
        batch.put(
            Cf::RaftMeta,
            PURGED,
            serde_json::to_vec(&log_id).map_err(io_error)?,
        );
        batch.delete_range(Cf::RaftLog, index_key(0), index_key(log_id.index + 1));
        self.store.write(batch, Durability::Power).map_err(io_error)
    }
}
