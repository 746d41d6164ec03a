//! The RocksDB engine: one database per node, one column family per [`Cf`].
//! The only file in the project that names RocksDB.

use std::path::Path;

use rocksdb::{
    ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, ReadOptions, WriteOptions,
};

use crate::{BackVisitor, Cf, Durability, Error, Op, Result, Store, Visitor, WriteBatch};

pub struct RocksStore {
    db: DB,
    path: std::path::PathBuf,
}

fn engine(e: rocksdb::Error) -> Error {
    Error::Engine(e.into_string())
}

impl RocksStore {
    pub fn open(path: &Path) -> Result<Self> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        // Small metadata and counters: keep memory modest and the WAL bounded.
        opts.set_max_total_wal_size(64 * 1024 * 1024);
        opts.set_keep_log_file_num(4);
        let cfs = Cf::ALL
            .iter()
            .map(|cf| ColumnFamilyDescriptor::new(cf.name(), Options::default()));
        let db = DB::open_cf_descriptors(&opts, path, cfs).map_err(|e| Error::Open {
            path: path.display().to_string(),
            reason: e.into_string(),
        })?;
        Ok(Self {
            db,
            path: path.to_path_buf(),
        })
    }

    fn cf(&self, cf: Cf) -> Result<&rocksdb::ColumnFamily> {
        self.db
            .cf_handle(cf.name())
            .ok_or_else(|| Error::Engine(format!("column family {} missing", cf.name())))
    }

    fn read_options(from: &[u8], to: Option<&[u8]>) -> ReadOptions {
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(from.to_vec());
        if let Some(to) = to {
            ro.set_iterate_upper_bound(to.to_vec());
        }
        ro
    }
}

impl Store for RocksStore {
    fn check(&self) -> Result<()> {
        match std::fs::metadata(&self.path) {
            Ok(m) if m.is_dir() => Ok(()),
            _ => Err(Error::Engine(format!(
                "the store's directory {} is gone",
                self.path.display()
            ))),
        }
    }

    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.db.get_cf(self.cf(cf)?, key).map_err(engine)
    }

    fn write(&self, batch: WriteBatch, durability: Durability) -> Result<()> {
        let mut wb = rocksdb::WriteBatch::default();
        for op in &batch.ops {
            match op {
                Op::Put(cf, k, v) => wb.put_cf(self.cf(*cf)?, k, v),
                Op::Delete(cf, k) => wb.delete_cf(self.cf(*cf)?, k),
                Op::DeleteRange(cf, from, to) => wb.delete_range_cf(self.cf(*cf)?, from, to),
            }
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(durability == Durability::Power);
        self.db.write_opt(wb, &wo).map_err(engine)
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
        let it = self.db.iterator_cf_opt(
            self.cf(cf)?,
            Self::read_options(from, to),
            IteratorMode::From(from, Direction::Forward),
        );
        it.take(limit)
            .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(engine))
            .collect()
    }

    fn scan(&self, cf: Cf, from: &[u8], to: Option<&[u8]>, visit: Visitor<'_>) -> Result<()> {
        if to.is_some_and(|t| t <= from) {
            return Ok(());
        }
        let mut it = self
            .db
            .raw_iterator_cf_opt(self.cf(cf)?, Self::read_options(from, to));
        it.seek(from);
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            visit(k, v)?;
            it.next();
        }
        it.status().map_err(engine)
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
        let mut it = self
            .db
            .raw_iterator_cf_opt(self.cf(cf)?, Self::read_options(from, to));
        it.seek_to_last();
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            if visit(k, v)?.is_break() {
                break;
            }
            it.prev();
        }
        it.status().map_err(engine)
    }

    fn last(&self, cf: Cf, from: &[u8], to: Option<&[u8]>) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        if to.is_some_and(|t| t <= from) {
            return Ok(None);
        }
        let mut it = self.db.iterator_cf_opt(
            self.cf(cf)?,
            Self::read_options(from, to),
            IteratorMode::End,
        );
        it.next()
            .transpose()
            .map(|o| o.map(|(k, v)| (k.to_vec(), v.to_vec())))
            .map_err(engine)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conforms_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = RocksStore::open(dir.path()).unwrap();
            crate::conformance::run(&store);
        }
        let store = RocksStore::open(dir.path()).unwrap();
        assert_eq!(
            store.get(Cf::RaftLog, &[0, 3]).unwrap(),
            Some(b"c".to_vec())
        );
    }
}
