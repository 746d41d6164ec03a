//! Metadata changes as typed commands. A command carries everything its
//! effect depends on — including the time, stamped by the node that proposed
//! it — so every replica that applies it reaches the same state.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::records::TeamRole;

/// The kinds of metadata records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Key,
    Team,
    User,
    Customer,
    Budget,
    Model,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Key,
        Kind::Team,
        Kind::User,
        Kind::Customer,
        Kind::Budget,
        Kind::Model,
    ];

    /// Prefix of the kind's records in the state column family.
    pub(crate) fn prefix(self) -> &'static str {
        match self {
            Kind::Key => "k/",
            Kind::Team => "t/",
            Kind::User => "u/",
            Kind::Customer => "c/",
            Kind::Budget => "b/",
            Kind::Model => "m/",
        }
    }

    /// What the admin API calls the kind in messages.
    pub fn noun(self) -> &'static str {
        match self {
            Kind::Key => "key",
            Kind::Team => "team",
            Kind::User => "user",
            Kind::Customer => "customer",
            Kind::Budget => "budget",
            Kind::Model => "model",
        }
    }
}

/// One proposal: a command and the proposer's wall-clock time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Proposal {
    /// Unix milliseconds on the proposing node; becomes `created_at` /
    /// `updated_at` (in seconds) of the records it touches.
    pub at_ms: u64,
    pub command: Command,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "op")]
pub enum Command {
    /// Creates a record; refused if one with the same id exists.
    Create {
        kind: Kind,
        record: Value,
    },
    /// Sets top-level fields of an existing record (`null` clears an optional
    /// field). Applied to the state as it is at apply time, so concurrent
    /// updates of different fields do not undo each other.
    Update {
        kind: Kind,
        id: String,
        patch: Map<String, Value>,
    },
    /// Deletes records; ids that do not exist are reported, not an error.
    Delete {
        kind: Kind,
        ids: Vec<String>,
    },
    AddMember {
        team_id: String,
        user_id: String,
        role: TeamRole,
    },
    RemoveMember {
        team_id: String,
        user_id: String,
    },
    /// Gives a key a new secret, keeping its settings.
    Regenerate {
        old_token: String,
        new_token: String,
        key_name: String,
    },
}

/// The outcome of applying a command, returned to the proposer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum Outcome {
    /// Applied; the records as they are after the command.
    Done {
        records: Vec<Value>,
        missing: Vec<String>,
    },
    /// Not applied: the state does not allow it.
    Refused { reason: Refusal, message: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    NotFound,
    AlreadyExists,
    Invalid,
}

impl Outcome {
    pub fn refused(reason: Refusal, message: impl Into<String>) -> Self {
        Outcome::Refused {
            reason,
            message: message.into(),
        }
    }
}
