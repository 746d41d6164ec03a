//! `meridian-proto`: the messages Meridian nodes exchange with each other.
//!
//! Owns the `.proto` files (under `proto/`) and the prost messages and tonic
//! clients and servers generated from them at build time by a pure-Rust
//! protobuf compiler, so no system `protoc` is needed. It contains no logic and
//! no service implementations, and depends on no other Meridian crate: the
//! conversions between wire and domain types live with the domain types (for
//! Raft, in `meridian-consensus`).
//!
//! - [`raft::v1`]: Raft calls between the nodes of one region. The Raft
//!   messages travel as opaque JSON inside them.
//! - [`gossip::v1`]: counter deltas and anti-entropy between every node of
//!   every region.
//! - [`sync::v1`]: metadata documents' changes between regions.
//! - [`rights::v1`]: rights of `strict` limits, asked of the entity's home
//!   region.
//! - [`spend::v1`]: spend-log rows gathered from a region's members.

/// Version of the inter-node protocol. Nodes refuse peers with a different major.
pub const PROTOCOL_VERSION: u32 = 1;

/// Raft traffic inside a region (`meridian.raft.v1`).
pub mod raft {
    /// Version 1 of the Raft service: [`v1::raft_client::RaftClient`],
    /// [`v1::raft_server::RaftServer`] and their messages.
    pub mod v1 {
        tonic::include_proto!("meridian.raft.v1");
    }
}

/// Counter gossip between all nodes of all regions (`meridian.gossip.v1`).
pub mod gossip {
    /// Version 1: [`v1::gossip_client::GossipClient`],
    /// [`v1::gossip_server::GossipServer`] and their messages.
    pub mod v1 {
        tonic::include_proto!("meridian.gossip.v1");
    }
}

/// Metadata sync between regions (`meridian.sync.v1`).
pub mod sync {
    /// Version 1: [`v1::metadata_sync_client::MetadataSyncClient`],
    /// [`v1::metadata_sync_server::MetadataSyncServer`] and their messages.
    pub mod v1 {
        tonic::include_proto!("meridian.sync.v1");
    }
}

/// Rights of `strict` limits (`meridian.rights.v1`).
pub mod rights {
    /// Version 1: [`v1::rights_client::RightsClient`],
    /// [`v1::rights_server::RightsServer`] and their messages.
    pub mod v1 {
        tonic::include_proto!("meridian.rights.v1");
    }
}

/// Spend-log rows between the members of a region (`meridian.spend.v1`).
pub mod spend {
    /// Version 1: [`v1::spend_logs_client::SpendLogsClient`],
    /// [`v1::spend_logs_server::SpendLogsServer`] and their messages.
    pub mod v1 {
        tonic::include_proto!("meridian.spend.v1");
    }
}
