//! Raft for one region's metadata, on openraft.
//!
//! Version: openraft `=0.10.0-alpha.37`, pinned exactly. The 0.10 line is the
//! one openraft develops (0.9 takes only fixes), and it has what this project
//! needs: the v2 storage traits without feature gates, `RaftNetworkV2` (a
//! snapshot ships in one piece, so the transport stays simple), and a runtime
//! wrapper whose election timeouts come from a seed, so simulations replay.
//! Being an alpha, its API may change between releases: hence the `=` pin.
//!
//! - [`log_store`]: the Raft log on a [`Store`](meridian_storage::Store)
//!   (RocksDB in production, the in-memory twin in tests and simulations).
//! - [`state_machine`]: applies [`Proposal`]s to the [`MetadataState`] and keeps
//!   it durable in the same store; snapshots of it.

pub mod log_store;
pub mod state_machine;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use log_store::LogStore;
pub use state_machine::StateMachine;

use crate::metadata::{Outcome, Proposal};

/// How to reach a member of the region.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// `host:port` of its inter-node (Raft, gossip) listener.
    pub raft_addr: String,
    /// Base URL of its HTTP API, e.g. `http://10.0.0.5:4000`.
    pub api_url: String,
}

impl fmt::Display for Proposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Log lines name the operation, never the record (it may hold secrets).
        let op = match &self.command {
            crate::metadata::Command::Create { kind, .. } => format!("create {}", kind.noun()),
            crate::metadata::Command::Update { kind, .. } => format!("update {}", kind.noun()),
            crate::metadata::Command::Delete { kind, ids } => {
                format!("delete {} ×{}", kind.noun(), ids.len())
            }
            crate::metadata::Command::AddMember { .. } => "add team member".to_owned(),
            crate::metadata::Command::RemoveMember { .. } => "remove team member".to_owned(),
            crate::metadata::Command::Regenerate { .. } => "regenerate key".to_owned(),
            crate::metadata::Command::MergeRemote {
                source, entities, ..
            } => format!("merge {} document(s) from {source}", entities.len()),
            crate::metadata::Command::Grant(r) => format!("rights for {}", r.holder.region),
            crate::metadata::Command::Compact { kind, .. } => format!("compact {}", kind.noun()),
        };
        write!(f, "{op} @{}", self.at_ms)
    }
}

/// Election timeouts draw from a task-local seed (see
/// `openraft::rt::deterministic_rng`); every Raft task must run inside
/// [`Runtime::scope`].
pub type Runtime = openraft::rt::deterministic_rng::DeterministicRng<openraft::impls::TokioRuntime>;

// Standard Raft leader ids: one leader per term, the guarantee the README
// states and the simulation checks. openraft's default (`leader_id_adv`)
// lets several nodes lead one term (a leader is `(term, node)`); the
// simulation found two leaders of one term under it.
openraft::declare_raft_types!(
    pub TypeConfig:
        D = Proposal,
        R = Outcome,
        NodeId = u64,
        Node = Member,
        LeaderId = openraft::impls::leader_id_std::LeaderId<u64, u64>,
        AsyncRuntime = Runtime,
);

/// An openraft `io::Error` from a storage error: storage failures are fatal
/// to Raft (the node stops rather than diverge).
pub(crate) fn io_error(e: impl fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

#[cfg(test)]
mod tests;
