//! `meridian-replication`: state shared between all nodes of all regions without
//! consensus.
//!
//! Owns the pure CRDTs (`crdt/`: PN-counters per period, sliding rate windows,
//! escrow rights for `strict` mode), the gossip and anti-entropy tasks that carry
//! their deltas, and the cross-region metadata sync. It must not know about HTTP
//! or Raft internals.

pub mod crdt;
