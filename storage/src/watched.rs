//! A store that remembers whether its writes are failing, so the node can
//! refuse new work (and readiness can say so) while its disk is full or
//! broken, instead of finding out call by call.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::{Cf, Durability, Error, Result, Store, WriteBatch};

/// What [`Watched::probe`] deletes; no owner of `RaftMeta` uses it.
const PROBE_KEY: &[u8] = b"~write-probe";

pub struct Watched {
    inner: Box<dyn Store>,
    /// Whether the latest write failed (set by a failed write, cleared by a
    /// successful one).
    failing: AtomicBool,
    /// The latest failed write's error, for logs and the readiness check.
    reason: Mutex<String>,
}

impl Watched {
    pub fn new(inner: impl Store) -> Self {
        Self {
            inner: Box::new(inner),
            failing: AtomicBool::new(false),
            reason: Mutex::new(String::new()),
        }
    }

    /// Tries a write that changes nothing readable (a tombstone for a key
    /// no one uses): while writes are failing, the node probes with it, so
    /// it notices the disk working again even when it has nothing else to
    /// write.
    pub fn probe(&self) -> Result<()> {
        let mut batch = WriteBatch::default();
        batch.delete(Cf::RaftMeta, PROBE_KEY);
        self.write(batch, Durability::Process)
    }
}

impl Store for Watched {
    fn write(&self, batch: WriteBatch, durability: Durability) -> Result<()> {
        let result = self.inner.write(batch, durability);
        match &result {
            Ok(()) => {
                if self.failing.load(Ordering::Acquire) {
                    self.failing.store(false, Ordering::Release);
                }
            }
            Err(e) => {
                *self.reason.lock().unwrap_or_else(|p| p.into_inner()) = e.to_string();
                self.failing.store(true, Ordering::Release);
            }
        }
        result
    }

    crate::reads_through!(inner);

    fn check(&self) -> Result<()> {
        self.writable()?;
        self.inner.check()
    }

    /// `Ok` unless the latest write failed; then that write's error. One
    /// atomic load on the success path: admission asks on every call.
    fn writable(&self) -> Result<()> {
        if !self.failing.load(Ordering::Acquire) {
            return Ok(());
        }
        let reason = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        Err(Error::WritesFailing(reason.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Faulty, MemStore};
    use std::sync::Arc;

    #[test]
    fn conforms() {
        crate::conformance::run(&Watched::new(MemStore::new()));
    }

    #[test]
    fn a_failed_write_is_remembered_until_one_succeeds() {
        let disk = Arc::new(Faulty::new(MemStore::new()));
        let store = Watched::new(disk.clone());
        let mut batch = WriteBatch::default();
        batch.put(Cf::State, b"k".to_vec(), b"v".to_vec());
        store.write(batch.clone(), Durability::Process).unwrap();
        assert!(store.writable().is_ok() && store.check().is_ok());

        disk.fail_writes(true);
        assert!(store.write(batch.clone(), Durability::Process).is_err());
        let e = store.writable().unwrap_err().to_string();
        assert!(e.contains("No space left on device"), "{e}");
        assert!(store.check().is_err(), "readiness sees it");
        assert_eq!(store.get(Cf::State, b"k").unwrap(), Some(b"v".to_vec()));

        disk.fail_writes(false);
        store.probe().unwrap();
        assert!(store.writable().is_ok() && store.check().is_ok());
        assert_eq!(store.range(Cf::RaftMeta, &[], None, 10).unwrap(), []);
    }
}
