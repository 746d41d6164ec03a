//! A store twin whose disk can fill up or fail, for tests of what a node
//! does when its writes fail. Reads always work; a failed write changes
//! nothing (as RocksDB's atomic batches).

use std::sync::Mutex;

use crate::{Durability, Error, Op, Result, Store, WriteBatch};

/// What a full disk answers (RocksDB passes the OS's wording through).
const FULL: &str = "IO error: No space left on device";

pub struct Faulty {
    inner: Box<dyn Store>,
    disk: Mutex<Disk>,
}

#[derive(Default)]
struct Disk {
    failing: bool,
    /// Bytes of keys and values written so far.
    used: u64,
    /// Writes that would take `used` past this fail.
    capacity: Option<u64>,
}

impl Faulty {
    pub fn new(inner: impl Store) -> Self {
        Self {
            inner: Box::new(inner),
            disk: Mutex::default(),
        }
    }

    /// From now on every write fails (`true`), or none does (`false`).
    pub fn fail_writes(&self, failing: bool) {
        self.disk().failing = failing;
    }

    /// The disk fills up once `more` bytes beyond what is written so far
    /// have been written (`None`: never).
    pub fn fill_after(&self, more: Option<u64>) {
        let mut disk = self.disk();
        disk.capacity = more.map(|m| disk.used + m);
    }

    fn disk(&self) -> std::sync::MutexGuard<'_, Disk> {
        self.disk.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn size(batch: &WriteBatch) -> u64 {
    batch
        .ops
        .iter()
        .map(|op| match op {
            Op::Put(_, k, v) => k.len() + v.len(),
            Op::Delete(_, k) => k.len(),
            Op::DeleteRange(_, a, b) => a.len() + b.len(),
        } as u64)
        .sum()
}

impl Store for Faulty {
    fn write(&self, batch: WriteBatch, durability: Durability) -> Result<()> {
        let mut disk = self.disk();
        let used = disk.used + size(&batch);
        if disk.failing || disk.capacity.is_some_and(|c| used > c) {
            return Err(Error::Engine(FULL.to_owned()));
        }
        self.inner.write(batch, durability)?;
        disk.used = used;
        Ok(())
    }

    crate::reads_through!(inner);

    fn check(&self) -> Result<()> {
        self.inner.check()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Cf, MemStore};

    #[test]
    fn conforms() {
        crate::conformance::run(&Faulty::new(MemStore::new()));
    }

    #[test]
    fn a_full_disk_refuses_writes_and_keeps_what_it_had() {
        let store = Faulty::new(MemStore::new());
        let put = |k: &[u8]| {
            let mut b = WriteBatch::default();
            b.put(Cf::State, k.to_vec(), vec![0; 10]);
            store.write(b, Durability::Process)
        };
        put(b"a").unwrap();
        store.fill_after(Some(15));
        put(b"b").unwrap();
        let e = put(b"c").unwrap_err().to_string();
        assert!(e.contains("No space left"), "{e}");
        assert_eq!(store.get(Cf::State, b"c").unwrap(), None);
        assert!(store.get(Cf::State, b"b").unwrap().is_some());
        store.fill_after(None);
        put(b"c").unwrap();
    }
}
