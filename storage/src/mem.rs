//! The in-memory twin of the RocksDB engine: same ordering, same atomicity,
//! nothing survives the process.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Mutex;

use crate::{BackVisitor, Cf, Durability, Op, Result, Store, Visitor, WriteBatch};

/// One column family: ordered keys to values.
type Family = BTreeMap<Vec<u8>, Vec<u8>>;

#[derive(Default)]
pub struct MemStore {
    cfs: Mutex<BTreeMap<Cf, Family>>,
}

impl MemStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut BTreeMap<Cf, Family>) -> T) -> T {
        f(&mut self.cfs.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

fn bounds<'a>(from: &'a [u8], to: Option<&'a [u8]>) -> (Bound<&'a [u8]>, Bound<&'a [u8]>) {
    (
        Bound::Included(from),
        to.map_or(Bound::Unbounded, Bound::Excluded),
    )
}

impl Store for MemStore {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.with(|cfs| cfs.get(&cf).and_then(|m| m.get(key).cloned())))
    }

    fn write(&self, batch: WriteBatch, _durability: Durability) -> Result<()> {
        self.with(|cfs| {
            for op in batch.ops {
                match op {
                    Op::Put(cf, k, v) => {
                        cfs.entry(cf).or_default().insert(k, v);
                    }
                    Op::Delete(cf, k) => {
                        cfs.entry(cf).or_default().remove(&k);
                    }
                    Op::DeleteRange(cf, from, to) => {
                        let m = cfs.entry(cf).or_default();
                        let doomed: Vec<Vec<u8>> = m
                            .range::<[u8], _>(bounds(&from, Some(&to)))
                            .map(|(k, _)| k.clone())
                            .collect();
                        for k in doomed {
                            m.remove(&k);
                        }
                    }
                }
            }
        });
        Ok(())
    }

    fn range(
        &self,
        cf: Cf,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        if to.is_some_and(|t| t <= from) {
            return Ok(Vec::new());
        }
        Ok(self.with(|cfs| {
            cfs.get(&cf)
                .map(|m| {
                    m.range::<[u8], _>(bounds(from, to))
                        .take(limit)
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect()
                })
                .unwrap_or_default()
        }))
    }

    fn scan(&self, cf: Cf, from: &[u8], to: Option<&[u8]>, visit: Visitor<'_>) -> Result<()> {
        if to.is_some_and(|t| t <= from) {
            return Ok(());
        }
        self.with(|cfs| match cfs.get(&cf) {
            None => Ok(()),
            Some(m) => m
                .range::<[u8], _>(bounds(from, to))
                .try_for_each(|(k, v)| visit(k, v)),
        })
    }

    fn scan_back(
        &self,
        cf: Cf,
        from: &[u8],
        to: Option<&[u8]>,
        visit: BackVisitor<'_>,
    ) -> Result<()> {
        if to.is_some_and(|t| t <= from) {
            return Ok(());
        }
        self.with(|cfs| {
            if let Some(m) = cfs.get(&cf) {
                for (k, v) in m.range::<[u8], _>(bounds(from, to)).rev() {
                    if visit(k, v)?.is_break() {
                        break;
                    }
                }
            }
            Ok(())
        })
    }

    fn last(&self, cf: Cf, from: &[u8], to: Option<&[u8]>) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        if to.is_some_and(|t| t <= from) {
            return Ok(None);
        }
        Ok(self.with(|cfs| {
            cfs.get(&cf)
                .and_then(|m| m.range::<[u8], _>(bounds(from, to)).next_back())
                .map(|(k, v)| (k.clone(), v.clone()))
        }))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn conforms() {
        crate::conformance::run(&super::MemStore::new());
    }
}
