//! A `strict` limit this node holds too few rights for, and the refusal
//! that says where the headroom is.

use super::refusal::{Exceeded, LimitKind};
use crate::error::Error;
use crate::pricing::Cost;
use crate::rights::{Ask, Rights};

/// A `strict` limit this node holds too few rights for.
pub(super) struct Short {
    pub(super) ask: Ask,
    pub(super) refusal: Exceeded,
}

impl Short {
    /// Rights as the limit counts them: dollars for budgets.
    fn amount(&self, rights: u64) -> String {
        match self.refusal.kind {
            LimitKind::Budget => format!("${}", Cost(u128::from(rights))),
            _ => rights.to_string(),
        }
    }

    /// The refusal, with `note` saying why the rights could not be had.
    pub(super) fn refuse(&self, rights: &Rights, note: String) -> Error {
        let held = rights.held(&self.ask.id);
        let mut refusal = self.refusal.clone();
        refusal.strict = Some(format!(
            "{note} This node holds {} of the {} this request needs.",
            self.amount(held),
            self.amount(self.ask.need)
        ));
        Error::LimitExceeded(Box::new(refusal))
    }

    /// The ledger had too little left to grant: the limit is used up, or its
    /// rights are held by other regions' nodes.
    pub(super) fn exhausted(
        &self,
        rights: &Rights,
        reply: &meridian_consensus::metadata::GrantReply,
    ) -> Error {
        let elsewhere: Vec<String> = rights
            .unspent_elsewhere(&self.ask.id, reply)
            .into_iter()
            .map(|(region, held)| format!("{region} ({})", self.amount(held)))
            .collect();
        if elsewhere.is_empty() {
            let mut refusal = self.refusal.clone();
            refusal.used = refusal.used.max(reply.limit.saturating_sub(reply.pool));
            return Error::LimitExceeded(Box::new(refusal));
        }
        self.refuse(
            rights,
            format!(
                "It is enforced strictly: {} of {} is unissued, and unspent rights are held by other nodes, in {} (they are given back after a few seconds unused).",
                self.amount(reply.pool),
                self.amount(reply.limit),
                elsewhere.join(", ")
            ),
        )
    }
}
