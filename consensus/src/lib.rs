//! `meridian-consensus`: metadata replicated by Raft inside one region.
//!
//! Owns the openraft type configuration, the log store and state machine (RocksDB
//! in production, an in-memory twin for tests and simulation), the typed metadata
//! commands (keys, teams, users, customers, budgets, region-scoped models) and Raft
//! RPC over tonic, and the cross-region sync of the metadata documents
//! ([`metadata_sync`], over `meridian.sync.v1`). It must not know about HTTP
//! or counters.
//!
//! Layout: [`metadata`] is the pure core (records, commands, deterministic
//! apply); the Raft storage, state machine and network wrap it.

pub mod compactor;
pub mod grpc;
pub mod metadata;
pub mod metadata_sync;
pub mod raft;
pub mod region;
mod sync_holds;
pub mod transport;

pub use grpc::GrpcTransport;
pub use region::{Region, RegionConfig, RegionStatus};

/// The crate's one error type.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("storage: {0}")]
    Storage(String),
    #[error("invalid Raft configuration: {0}")]
    Config(String),
    #[error("no leader elected within {0:?}")]
    NoLeader(std::time::Duration),
    #[error(
        "the write's outcome is unknown (leadership changed while it was in flight); check and retry"
    )]
    Uncertain,
    #[error("membership change failed: {0}")]
    Membership(String),
    #[error("peer unreachable: {0}")]
    Unreachable(String),
    #[error("Raft stopped: {0}")]
    Fatal(String),
    #[error(
        "This node cannot write to its storage, so it takes no changes until its writes work again. Retry on another node."
    )]
    WritesFailing,
}

use std::fmt;

/// Name of a region (`us-east`, `eu-west`, or `local` for the embedded default).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RegionId(String);

impl RegionId {
    pub fn new(name: impl Into<String>) -> Self {
        Self(name.into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RegionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_id_displays_its_name() {
        let region = RegionId::new("eu-west");
        assert_eq!(region.to_string(), "eu-west");
        assert_eq!(region.as_str(), "eu-west");
    }
}
