//! Region metadata: records, the commands that change them, and the applied
//! state. Pure data and logic; Raft and storage live around it.

pub mod command;
pub mod compact;
pub mod doc;
pub mod ledger;
pub mod records;
pub mod state;
mod translate;

pub use command::{Command, Kind, MergeSummary, Outcome, Proposal, Refusal, RemoteChanges};
pub use compact::Merged;
pub use doc::{Actor, DocError, EntityDoc};
pub use ledger::{GrantReply, GrantRequest, Holder, Ledger};
pub use records::*;
pub use state::{
    COMPACT_FLOOR, Change, Compactable, DocSource, MetadataState, Outbox, OutboxLimits,
    OutgoingDoc, Plan, StoredDoc, id_field, token_bytes,
};
