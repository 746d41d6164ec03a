//! What the other regions hold of this region's metadata documents, as the
//! sync task learns it from their answers — and from that, where a
//! document may be compacted (`crate::metadata::compact`):
//! at a version every other region holds as it was sent.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use crate::metadata::{Compactable, Kind};

/// A version of one of this region's documents.
#[derive(Clone, Debug)]
pub(crate) struct Version {
    pub seq: u64,
    /// A cut is only good in the epoch it was taken in.
    pub epoch: u64,
    /// Hex.
    pub heads: Vec<String>,
}

/// What a remote region answered for the last version of a document it was
/// pushed.
#[derive(Clone, Debug)]
enum Acked {
    /// Merged as sent: it holds this version.
    Version(Version),
    /// Merged otherwise (translated into a later epoch, holding a creation
    /// this version lacks) or skipped: no cut is good for it until a later
    /// version is held.
    NotHeld { seq: u64 },
}

/// One remote region's answers, per document.
type Answers = BTreeMap<(Kind, String), Acked>;

/// Document answers remembered per remote region (past this, the memory
/// is cleared; compaction then waits for the next pushes).
const MAX_HELD: usize = 16 * 1024;

/// Another region as the sync task knows it now.
pub(crate) struct Remote<'a> {
    pub name: &'a str,
    /// It holds this region's changes through this number: merged from
    /// pushes, or its own (echoes, never pushed back).
    pub cursor: Option<u64>,
    /// Its node last answered as following compaction epochs.
    pub compaction: bool,
}

/// Per remote region, per document: its last answer.
#[derive(Default)]
pub(crate) struct Holds {
    held: Mutex<BTreeMap<String, Answers>>,
}

impl Holds {
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// Notes that `region` merged these versions of documents — as sent,
    /// except the ones it names as not held.
    pub fn note(
        &self,
        region: &str,
        versions: Vec<((Kind, String), Version)>,
        not_held: &[(Kind, String)],
    ) {
        let mut held = self.lock();
        let held = held.entry(region.to_owned()).or_default();
        for (doc, version) in versions {
            if held.len() >= MAX_HELD {
                held.clear();
            }
            let entry = match not_held.contains(&doc) {
                true => Acked::NotHeld { seq: version.seq },
                false => Acked::Version(version),
            };
            held.insert(doc, entry);
        }
    }

    /// The oldest of the versions of `candidate` the `others` hold, as
    /// heads to compact at; `None` while one of them is not known to hold
    /// any in the document's epoch (or runs a build without compaction).
    pub fn cut(&self, candidate: &Compactable, others: &[Remote<'_>]) -> Option<Vec<String>> {
        let held = self.lock();
        let current = Version {
            seq: candidate.seq,
            epoch: candidate.epoch,
            heads: candidate.heads.clone(),
        };
        let mut cut = current.clone();
        let key = (candidate.kind, candidate.id.clone());
        for remote in others {
            if !remote.compaction {
                return None; // an older build there: never compact
            }
            let cursor = remote.cursor?;
            let acked = held.get(remote.name).and_then(|h| h.get(&key));
            let version = match acked {
                Some(Acked::NotHeld { seq }) if *seq >= candidate.seq => return None,
                // Its cursor covers the document's last change: pushed and
                // held, or not pushed back because it made it (an echo).
                _ if cursor >= candidate.seq => &current,
                Some(Acked::Version(version)) => version,
                _ => return None,
            };
            if version.epoch != candidate.epoch {
                return None; // it holds an older epoch: wait for it to move
            }
            if version.seq < cut.seq {
                cut = version.clone();
            }
        }
        Some(cut.heads)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Answers>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
