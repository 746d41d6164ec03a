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
    Tag,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Key,
        Kind::Team,
        Kind::User,
        Kind::Customer,
        Kind::Budget,
        Kind::Model,
        Kind::Tag,
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
            Kind::Tag => "g/",
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
            Kind::Tag => "tag",
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
    /// Merges another region's document changes (cross-region metadata
    /// sync): `entities` hold every document `source` changed after its
    /// change number `since`, up to `through`. Each document is merged (made
    /// if absent) and its record re-derived: added, changed or, when the
    /// merged document is deleted, removed. All or nothing: one undecodable
    /// batch or invalid merged record refuses the whole command.
    ///
    /// Also advances how far `source` is known to be merged (its sync cursor)
    /// to `through`, when `since` does not leave a gap. Answered with
    /// `Done { records: [MergeSummary], .. }`. Time plays no part: `at_ms`
    /// is ignored.
    MergeRemote {
        source: String,
        since: u64,
        through: u64,
        entities: Vec<RemoteChanges>,
    },
    /// Asks this region's rights ledger of a `strict` limit for rights (see
    /// [`super::ledger`]). Answered with `Done { records: [GrantReply], .. }`.
    Grant(super::ledger::GrantRequest),
    /// Replaces an entity's document by its next compaction epoch (see
    /// [`super::compact`]) at the cut `heads` (hex): refused unless they are
    /// the heads of a version of the document, this region is the one that
    /// compacts it, few enough changes came after the cut, and the record
    /// stays the same. Proposed only once every other region holds that
    /// version (the sync task knows). Time plays no part.
    Compact {
        kind: Kind,
        id: String,
        heads: Vec<String>,
    },
}

/// One document's changes from another region.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteChanges {
    pub kind: Kind,
    pub id: String,
    /// [`EntityDoc::changes_since`](super::EntityDoc::changes_since) of the
    /// source's document (base64 in the log).
    #[serde(with = "base64_bytes")]
    pub changes: Vec<u8>,
    /// The source's heads for the document (hex). When the merged document
    /// has exactly these heads, the source holds all of it and is not sent
    /// it back. Optional: without them the document is echoed once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub heads: Vec<String>,
}

/// What applying [`Command::MergeRemote`] did (its outcome's one record).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergeSummary {
    pub source: String,
    /// The source's change number through which everything is merged.
    pub cursor: u64,
    /// Documents the batch changed.
    pub merged: u64,
    /// Documents of the batch this region does not now hold as sent: the
    /// sender must not compact them at that version (see
    /// [`super::compact::Merged`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_held: Vec<(Kind, String)>,
}

impl MergeSummary {
    /// The summary in a `MergeRemote` outcome; `None` for any other outcome.
    pub fn from_outcome(outcome: &Outcome) -> Option<Self> {
        match outcome {
            Outcome::Done { records, .. } => records
                .first()
                .and_then(|r| serde_json::from_value(r.clone()).ok()),
            Outcome::Refused { .. } => None,
        }
    }
}

/// Bytes as standard base64 in JSON (the Raft log and snapshots are JSON).
pub(crate) mod base64_bytes {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        STANDARD
            .decode(text.as_bytes())
            .map_err(serde::de::Error::custom)
    }
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
