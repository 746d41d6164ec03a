//! The region this node belongs to. Today every node is a region of one; the
//! Raft group across several nodes (named in config, over gRPC) builds on the
//! same [`Region`].

use std::sync::Arc;

use meridian_consensus::raft::Member;
use meridian_consensus::transport::NoPeers;
use meridian_consensus::{Region, RegionConfig};
use meridian_storage::Store;

use crate::error::Result;

/// Starts (or restarts from `store`) a region whose only member is this node.
pub async fn single_node_region(store: Arc<dyn Store>, api_url: String) -> Result<Region> {
    let member = Member {
        raft_addr: String::new(),
        api_url,
    };
    let region = Region::start(RegionConfig::single(1, member), store, Arc::new(NoPeers)).await?;
    Ok(region)
}

/// Opens the node's database in its data directory.
#[cfg(feature = "rocksdb")]
pub fn open_store(data_dir: &std::path::Path) -> Result<Arc<dyn Store>> {
    let path = data_dir.join("db");
    let store = meridian_storage::RocksStore::open(&path)
        .map_err(|e| crate::error::Error::Internal(format!("opening {}: {e}", path.display())))?;
    Ok(Arc::new(store))
}
