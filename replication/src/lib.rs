//! `meridian-replication`: state shared between all nodes of all regions without
//! consensus.
//!
//! Owns the pure CRDTs (`crdt/`: PN-counters per period, sliding rate windows,
//! escrow rights for `strict` mode), this node's table of counters with its
//! durability rules (`counters`), and the gossip and anti-entropy that carry
//! their changes between nodes (`gossip`, over `meridian.gossip.v1`). It must
//! not know about HTTP, and it does not depend on `meridian-consensus`: the
//! node joins the counters to the region's Raft log (the rights of `strict`
//! limits, `meridian-node`'s `rights`).

pub mod counters;
pub mod crdt;
pub mod gossip;
mod wire;

pub use counters::{Counters, Reading, Ticket, Txn};
pub use gossip::{Gossip, GossipConfig, GossipStats, Peer, PeerStats, gossip_service};

/// The crate's one error type.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("storage: {0}")]
    Storage(#[from] meridian_storage::Error),
    #[error("corrupt stored counters: {0}")]
    Corrupt(String),
    /// The write that was to make a change durable failed; the change is
    /// kept in memory and retried, but must not be acknowledged yet.
    #[error("this node's storage is failing writes, so the change is not durable yet")]
    NotDurable,
}
