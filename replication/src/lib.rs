//! `meridian-replication`: state shared between all nodes of all regions without
//! consensus.
//!
//! Owns the pure CRDTs (`crdt/`: PN-counters per period, sliding rate windows,
//! escrow rights for `strict` mode), this node's table of counters with its
//! durability rules (`counters`), and the gossip and anti-entropy that carry
//! their changes between nodes (`gossip`, over `meridian.gossip.v1`), and
//! the asking for and giving back of `strict` limits' rights (`rights`). It must not
//! know about HTTP or Raft internals.

pub mod counters;
pub mod crdt;
pub mod gossip;
pub mod metadata_sync;
pub mod rights;
mod sync_holds;
mod wire;

pub use counters::{Counters, Reading, Ticket, Txn};
pub use gossip::{Gossip, GossipConfig, Peer, gossip_service};

/// The crate's one error type.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("storage: {0}")]
    Storage(#[from] meridian_storage::Error),
    #[error("corrupt stored counters: {0}")]
    Corrupt(String),
    /// The home region of a `strict` limit did not answer a request for
    /// rights.
    #[error("region {home} (which issues this limit's rights) could not be reached: {reason}")]
    HomeUnreachable { home: String, reason: String },
    /// This region's rights ledger could not take a request (no leader, or
    /// the outcome is unknown).
    #[error("the rights ledger: {0}")]
    Ledger(String),
}
