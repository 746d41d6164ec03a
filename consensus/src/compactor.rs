//! Proposes [`Command::Compact`] for the documents of this region that
//! outgrew their records (see [`crate::metadata::compact`]). Runs on the
//! region's leader: inside the metadata sync task when there are other
//! regions (it knows how far each holds this region's documents), on its
//! own in a region alone.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use crate::Region;
use crate::metadata::{Command, Compactable, Kind, Outcome};

/// Documents compacted per round at most (each is one Raft write).
const PER_ROUND: usize = 8;

/// Documents looked at per round (those without a cut yet are passed over).
const LOOKED_AT: usize = 64;

/// Refusals remembered (a document refused at a change number is not
/// proposed again until it changes); forgotten wholesale past this.
const MAX_REMEMBERED: usize = 4096;

pub struct Compactor {
    region: Region,
    /// Per document: the change number at which compaction was refused.
    refused: Mutex<BTreeMap<(Kind, String), u64>>,
    /// Where the next round starts looking.
    next: Mutex<Option<(Kind, String)>>,
}

impl Compactor {
    pub fn new(region: Region) -> Self {
        Self {
            region,
            refused: Mutex::default(),
            next: Mutex::default(),
        }
    }

    /// On the leader: compacts up to a few documents, each at the cut
    /// `cut` names for it — heads (hex) of a version of the document every
    /// other region holds; `None`: not yet. Returns how many were compacted.
    pub async fn round(&self, cut: impl Fn(&Compactable) -> Option<Vec<String>>) -> usize {
        if !self.region.is_leader() {
            return 0;
        }
        let refused = self
            .refused
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let after = self
            .next
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let candidates = self.region.read(|s| {
            s.compactable(LOOKED_AT, after.as_ref(), |kind, id, seq| {
                refused.get(&(kind, id.to_owned())) == Some(&seq)
            })
        });
        if let Some(last) = candidates.last() {
            // The next round starts after these: every document gets its turn.
            *self.next.lock().unwrap_or_else(PoisonError::into_inner) =
                Some((last.kind, last.id.clone()));
        }
        let mut compacted = 0;
        let mut proposed = 0;
        for candidate in candidates {
            if proposed >= PER_ROUND {
                break;
            }
            let Some(heads) = cut(&candidate) else {
                continue;
            };
            proposed += 1;
            let command = Command::Compact {
                kind: candidate.kind,
                id: candidate.id.clone(),
                heads,
            };
            match self.region.propose(command, 0).await {
                Ok(Outcome::Done { .. }) => compacted += 1,
                Ok(Outcome::Refused { message, .. }) => {
                    tracing::debug!(kind = candidate.kind.noun(), %message, "compaction refused");
                    let mut refused = self.refused.lock().unwrap_or_else(PoisonError::into_inner);
                    if refused.len() >= MAX_REMEMBERED {
                        refused.clear();
                    }
                    refused.insert((candidate.kind, candidate.id), candidate.seq);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "compaction not proposed");
                    break;
                }
            }
        }
        compacted
    }

    /// A round every `every` until `shutdown`, for a region with no other
    /// regions.
    pub async fn run_alone(self, every: Duration, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                _ = tick.tick() => {}
            }
            // Alone, the region's own heads are held everywhere.
            self.round(|c| Some(c.heads.clone())).await;
        }
    }
}
