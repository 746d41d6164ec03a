//! `meridian-storage`: a node's local, ordered key-value storage.
//!
//! One database per node, split into column families ([`Cf`]). Everything above
//! this crate talks to the [`Store`] trait; RocksDB is named only in `rocks.rs`
//! (feature `rocksdb`), and [`MemStore`] is its in-memory twin, used by unit
//! tests and by simulations (which must not run RocksDB's threads). This crate
//! holds no product policy: keys and values are bytes.

/// The reads of a [`Store`] that wraps another (in the field named), passed
/// through: a wrapper writes its own `write` (and `check`).
macro_rules! reads_through {
    ($inner:ident) => {
        fn get(&self, cf: $crate::Cf, key: &[u8]) -> $crate::Result<Option<Vec<u8>>> {
            self.$inner.get(cf, key)
        }

        fn range(
            &self,
            cf: $crate::Cf,
            from: &[u8],
            to: Option<&[u8]>,
            limit: usize,
        ) -> $crate::Result<Vec<(Vec<u8>, Vec<u8>)>> {
            self.$inner.range(cf, from, to, limit)
        }

        fn last(
            &self,
            cf: $crate::Cf,
            from: &[u8],
            to: Option<&[u8]>,
        ) -> $crate::Result<Option<(Vec<u8>, Vec<u8>)>> {
            self.$inner.last(cf, from, to)
        }

        fn scan(
            &self,
            cf: $crate::Cf,
            from: &[u8],
            to: Option<&[u8]>,
            visit: $crate::Visitor<'_>,
        ) -> $crate::Result<()> {
            self.$inner.scan(cf, from, to, visit)
        }

        fn scan_back(
            &self,
            cf: $crate::Cf,
            from: &[u8],
            to: Option<&[u8]>,
            visit: $crate::BackVisitor<'_>,
        ) -> $crate::Result<()> {
            self.$inner.scan_back(cf, from, to, visit)
        }
    };
}
pub(crate) use reads_through;

mod faulty;
mod mem;
#[cfg(feature = "rocksdb")]
mod rocks;
mod watched;

pub use faulty::Faulty;
pub use mem::MemStore;
#[cfg(feature = "rocksdb")]
pub use rocks::RocksStore;
pub use watched::Watched;

/// Column families. Each owner keeps its own keyspace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Cf {
    /// Raft log entries, keyed by big-endian index.
    RaftLog,
    /// Raft vote, committed and purged markers.
    RaftMeta,
    /// The Raft state machine: metadata records and the last-applied marker.
    State,
    /// The latest built or installed snapshot.
    Snapshot,
    /// Spend and rate counters (own slots durably, remote slots lazily).
    Counters,
    /// Per-request rows kept for a retention period.
    SpendLog,
}

impl Cf {
    pub const ALL: [Cf; 6] = [
        Cf::RaftLog,
        Cf::RaftMeta,
        Cf::State,
        Cf::Snapshot,
        Cf::Counters,
        Cf::SpendLog,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Cf::RaftLog => "raft_log",
            Cf::RaftMeta => "raft_meta",
            Cf::State => "state",
            Cf::Snapshot => "snapshot",
            Cf::Counters => "counters",
            Cf::SpendLog => "spend_log",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("storage engine: {0}")]
    Engine(String),
    #[error("opening storage at {path}: {reason}")]
    Open { path: String, reason: String },
    /// The latest write failed (a full or broken disk); see [`Watched`].
    #[error("writes are failing: {0}")]
    WritesFailing(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// One change in a [`WriteBatch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Put(Cf, Vec<u8>, Vec<u8>),
    Delete(Cf, Vec<u8>),
    /// Deletes keys in `[from, to)`.
    DeleteRange(Cf, Vec<u8>, Vec<u8>),
}

/// Changes applied atomically: all or none survive a crash.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteBatch {
    pub ops: Vec<Op>,
}

impl WriteBatch {
    pub fn put(&mut self, cf: Cf, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> &mut Self {
        self.ops.push(Op::Put(cf, key.into(), value.into()));
        self
    }

    pub fn delete(&mut self, cf: Cf, key: impl Into<Vec<u8>>) -> &mut Self {
        self.ops.push(Op::Delete(cf, key.into()));
        self
    }

    pub fn delete_range(
        &mut self,
        cf: Cf,
        from: impl Into<Vec<u8>>,
        to: impl Into<Vec<u8>>,
    ) -> &mut Self {
        self.ops.push(Op::DeleteRange(cf, from.into(), to.into()));
        self
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// How durable a write must be before it returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// In the write-ahead log: survives the process being killed (SIGKILL),
    /// not necessarily a power loss.
    Process,
    /// fsync'ed: survives a power loss.
    Power,
}

/// Called on each entry of a [`Store::scan`]; an error stops the scan.
pub type Visitor<'a> = &'a mut dyn FnMut(&[u8], &[u8]) -> Result<()>;

/// Called on each entry of a [`Store::scan_back`]; `Break` (or an error)
/// stops the scan.
pub type BackVisitor<'a> = &'a mut dyn FnMut(&[u8], &[u8]) -> Result<std::ops::ControlFlow<()>>;

/// An ordered key-value store with atomic batches.
pub trait Store: Send + Sync + 'static {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>>;

    fn write(&self, batch: WriteBatch, durability: Durability) -> Result<()>;

    /// Entries with `from <= key < to` (`to = None`: to the end), in key order,
    /// at most `limit` of them.
    fn range(
        &self,
        cf: Cf,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;

    /// The entry with the greatest key in `[from, to)`.
    fn last(&self, cf: Cf, from: &[u8], to: Option<&[u8]>) -> Result<Option<(Vec<u8>, Vec<u8>)>>;

    /// Calls `visit` on every entry in `[from, to)`, in key order, without
    /// copying them out first (start-up reads every record this way).
    fn scan(&self, cf: Cf, from: &[u8], to: Option<&[u8]>, visit: Visitor<'_>) -> Result<()>;

    /// Calls `visit` on the entries in `[from, to)` from the greatest key
    /// down, until it answers `Break` (newest-first reads stop at a page).
    fn scan_back(
        &self,
        cf: Cf,
        from: &[u8],
        to: Option<&[u8]>,
        visit: BackVisitor<'_>,
    ) -> Result<()>;

    /// Whether the store is still usable, for readiness: an engine on disk
    /// whose directory is gone (a volume unmounted or wiped) is not, even
    /// while its open files still answer. In memory, always.
    fn check(&self) -> Result<()> {
        Ok(())
    }

    /// `Ok` unless the store knows its writes are failing now (see
    /// [`Watched`]); cheap enough to ask on every call.
    fn writable(&self) -> Result<()> {
        Ok(())
    }
}

/// A shared store is a store (a test keeps a handle on the [`Faulty`] disk
/// it gives a node).
impl<T: Store + ?Sized> Store for std::sync::Arc<T> {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        (**self).get(cf, key)
    }

    fn write(&self, batch: WriteBatch, durability: Durability) -> Result<()> {
        (**self).write(batch, durability)
    }

    fn range(
        &self,
        cf: Cf,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        (**self).range(cf, from, to, limit)
    }

    fn last(&self, cf: Cf, from: &[u8], to: Option<&[u8]>) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        (**self).last(cf, from, to)
    }

    fn scan(&self, cf: Cf, from: &[u8], to: Option<&[u8]>, visit: Visitor<'_>) -> Result<()> {
        (**self).scan(cf, from, to, visit)
    }

    fn scan_back(
        &self,
        cf: Cf,
        from: &[u8],
        to: Option<&[u8]>,
        visit: BackVisitor<'_>,
    ) -> Result<()> {
        (**self).scan_back(cf, from, to, visit)
    }

    fn check(&self) -> Result<()> {
        (**self).check()
    }

    fn writable(&self) -> Result<()> {
        (**self).writable()
    }
}

#[cfg(test)]
pub(crate) mod conformance {
    //! Checks both engines must pass, so the twin stays a twin.

    use super::*;

    pub fn run(store: &dyn Store) {
        let mut b = WriteBatch::default();
        b.put(Cf::RaftLog, [0, 1], b"a".to_vec())
            .put(Cf::RaftLog, [0, 2], b"b".to_vec())
            .put(Cf::RaftLog, [0, 3], b"c".to_vec())
            .put(Cf::State, [0, 2], b"other-cf".to_vec());
        store.write(b, Durability::Process).unwrap();
        assert_eq!(
            store.get(Cf::RaftLog, &[0, 2]).unwrap(),
            Some(b"b".to_vec())
        );
        assert_eq!(store.get(Cf::Snapshot, &[0, 2]).unwrap(), None);
        let all = store.range(Cf::RaftLog, &[], None, usize::MAX).unwrap();
        assert_eq!(
            all.iter().map(|(k, _)| k[1]).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        let some = store
            .range(Cf::RaftLog, &[0, 2], Some(&[0, 3]), 10)
            .unwrap();
        assert_eq!(some, vec![(vec![0, 2], b"b".to_vec())]);
        assert_eq!(store.range(Cf::RaftLog, &[], None, 2).unwrap().len(), 2);
        assert_eq!(
            store.last(Cf::RaftLog, &[], None).unwrap().unwrap().0,
            vec![0, 3]
        );
        assert_eq!(
            store
                .last(Cf::RaftLog, &[0, 0], Some(&[0, 3]))
                .unwrap()
                .unwrap()
                .0,
            vec![0, 2]
        );
        assert_eq!(store.last(Cf::RaftLog, &[0, 4], None).unwrap(), None);
        let mut seen = Vec::new();
        store
            .scan(Cf::RaftLog, &[0, 2], None, &mut |k, v| {
                seen.push((k.to_vec(), v.to_vec()));
                Ok(())
            })
            .unwrap();
        assert_eq!(
            seen,
            vec![(vec![0, 2], b"b".to_vec()), (vec![0, 3], b"c".to_vec())]
        );
        let mut back = Vec::new();
        store
            .scan_back(Cf::RaftLog, &[0, 1], Some(&[0, 3]), &mut |k, _| {
                back.push(k.to_vec());
                Ok(std::ops::ControlFlow::Continue(()))
            })
            .unwrap();
        assert_eq!(
            back,
            vec![vec![0, 2], vec![0, 1]],
            "newest first, `to` excluded"
        );
        let mut first = Vec::new();
        store
            .scan_back(Cf::RaftLog, &[], None, &mut |k, _| {
                first.push(k.to_vec());
                Ok(std::ops::ControlFlow::Break(()))
            })
            .unwrap();
        assert_eq!(first, vec![vec![0, 3]], "Break stops the scan");

        let mut b = WriteBatch::default();
        b.delete_range(Cf::RaftLog, [0, 1], [0, 3])
            .delete(Cf::State, [0, 2]);
        store.write(b, Durability::Power).unwrap();
        assert_eq!(
            store.range(Cf::RaftLog, &[], None, usize::MAX).unwrap(),
            vec![(vec![0, 3], b"c".to_vec())]
        );
        assert_eq!(store.get(Cf::State, &[0, 2]).unwrap(), None);
    }
}
