//! Metadata sync between regions (REPLICATION.md, "Metadata across
//! regions"): each region's metadata entities are automerge documents in its
//! Raft state machine ([`crate::metadata`]); this module carries
//! their changes to the other regions over `meridian.sync.v1`.
//!
//! - [`MetadataSync`], the task: on the region's current leader only, every
//!   round (default 200 ms) and for each remote region, it asks where the
//!   remote region stands (its cursor: this region's change number through
//!   which it has merged everything), then pushes the documents changed since,
//!   in bounded batches. A remote region that was unreachable is simply
//!   behind: the next round resumes from its cursor.
//! - [`sync_service`], the service: any node of a region accepts a push and
//!   proposes it as one `MergeRemote` command through its region's Raft log
//!   (forwarded to the leader); merging is idempotent and commutative, so
//!   duplicates, retries and reordering are harmless.
//!
//! No echo: a document a push made exactly the sender's is not sent back,
//! and the task skips, without any call, ranges that hold nothing to send, so
//! a region at rest sends nothing. Only admin-rate metadata travels here,
//! never per-request data (counters have gossip).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::Region;
use crate::compactor::Compactor;
use crate::metadata::Compactable;
use crate::metadata::{
    Command, EntityDoc, Kind, MergeSummary, OutboxLimits, Outcome, OutgoingDoc, RemoteChanges,
};
use meridian_link::{CallError, Claim, ClusterSecret, Dialer, with_deadline};
use meridian_proto::sync::v1 as pb;
use pb::metadata_sync_client::MetadataSyncClient;
pub use pb::metadata_sync_server::MetadataSyncServer;
use tonic::{Request, Response, Status};

use crate::sync_holds::{Holds, Remote, Version};
use meridian_link::Peer;

/// The other regions and their nodes' inter-node addresses; asked every
/// round, so configuration changes are picked up.
pub type RemoteRegions = Arc<dyn Fn() -> Vec<RemoteRegion> + Send + Sync>;

/// Another region: its name and the nodes that accept its pushes (any of
/// them will do; the task moves to the next one when a call fails).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteRegion {
    pub name: String,
    pub peers: Vec<Peer>,
}

#[derive(Clone, Debug)]
pub struct SyncConfig {
    /// How often the leader looks for changes to send.
    pub interval: Duration,
    /// The deadline of every call (a push waits for the receiver's Raft).
    pub deadline: Duration,
    /// Documents per push.
    pub max_docs: usize,
    /// Saved-document bytes per push (about the size of the changes sent).
    pub max_bytes: usize,
    /// Batches (pushed, or skipped as holding nothing to send) per region
    /// per round: catching up goes this fast.
    pub max_batches_per_round: usize,
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(200),
            deadline: Duration::from_secs(5),
            max_docs: 256,
            max_bytes: 1 << 20,
            max_batches_per_round: 8,
        }
    }
}

/// The largest sync message either way (a batch is bounded well below).
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Documents looked at per batch, sent or not: bounds the time spent under
/// the state's read lock.
const MAX_SCAN: usize = 16 * 1024;

/// Rounds after which a remote region's cursor is asked again even when all
/// is quiet, so a remote region that lost its state (rebuilt) is noticed.
const ASK_AGAIN_ROUNDS: u64 = 50;

/// Answers other regions' cursor questions and pushes.
pub struct SyncService {
    region: Region,
    secret: ClusterSecret,
}

/// The sync service of `region`, to add to the node's inter-node routes
/// (`meridian_link::serve`). Calls without `secret` (when one is set), and
/// calls not meant for this region, are refused.
pub fn sync_service(region: Region, secret: ClusterSecret) -> MetadataSyncServer<SyncService> {
    MetadataSyncServer::new(SyncService { region, secret })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

impl SyncService {
    /// A misconfigured address (a node of another region, or of this one)
    /// is refused before anything is merged.
    #[allow(clippy::result_large_err)]
    fn check_regions(&self, from: &str, to: &str) -> Result<(), Status> {
        let me = self.region.name().as_str();
        if to != me {
            return Err(Status::failed_precondition(format!(
                "this node serves region {me:?}, not {to:?}"
            )));
        }
        if from == me {
            return Err(Status::failed_precondition(format!(
                "a push from region {from:?} to itself"
            )));
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl pb::metadata_sync_server::MetadataSync for SyncService {
    async fn cursor(
        &self,
        request: Request<pb::CursorRequest>,
    ) -> Result<Response<pb::CursorReply>, Status> {
        let from = request.get_ref().from_region.clone();
        self.secret.admit(&request, Claim::Region(&from))?;
        let request = request.into_inner();
        self.check_regions(&request.from_region, &request.to_region)?;
        // This node's applied state may trail the leader's: a lower cursor
        // only makes the sender resend.
        let cursor = self.region.read(|s| s.sync_cursor(&request.from_region));
        Ok(Response::new(pb::CursorReply {
            cursor,
            not_held: Vec::new(),
            compaction: true,
        }))
    }

    async fn push(
        &self,
        request: Request<pb::PushRequest>,
    ) -> Result<Response<pb::CursorReply>, Status> {
        let from = request.get_ref().from_region.clone();
        self.secret.admit(&request, Claim::Region(&from))?;
        let request = request.into_inner();
        self.check_regions(&request.from_region, &request.to_region)?;
        let entities = request
            .entities
            .into_iter()
            .map(entity_from_wire)
            .collect::<Result<Vec<_>, Status>>()?;
        let command = Command::MergeRemote {
            source: request.from_region,
            since: request.since,
            through: request.through,
            entities,
        };
        // A merge makes no change of its own: its time is not used.
        let outcome = self
            .region
            .propose(command, 0)
            .await
            .map_err(|e| Status::unavailable(format!("merging: {e}")))?;
        match (MergeSummary::from_outcome(&outcome), outcome) {
            (Some(summary), _) => Ok(Response::new(pb::CursorReply {
                cursor: summary.cursor,
                not_held: summary
                    .not_held
                    .iter()
                    .map(|(kind, id)| pb::EntityRef {
                        kind: kind_to_wire(*kind).into(),
                        id: id.clone(),
                    })
                    .collect(),
                compaction: true,
            })),
            (None, Outcome::Refused { message, .. }) => Err(Status::invalid_argument(message)),
            (None, Outcome::Done { .. }) => Err(Status::internal("a merge without a summary")),
        }
    }
}

fn kind_to_wire(kind: Kind) -> pb::Kind {
    match kind {
        Kind::Key => pb::Kind::Key,
        Kind::Team => pb::Kind::Team,
        Kind::User => pb::Kind::User,
        Kind::Customer => pb::Kind::Customer,
        Kind::Budget => pb::Kind::Budget,
        Kind::Model => pb::Kind::Model,
        Kind::Tag => pb::Kind::Tag,
    }
}

/// `None` for `UNSPECIFIED` and for kinds this build does not know.
fn kind_from_wire(value: i32) -> Option<Kind> {
    match pb::Kind::try_from(value).ok()? {
        pb::Kind::Unspecified => None,
        pb::Kind::Key => Some(Kind::Key),
        pb::Kind::Team => Some(Kind::Team),
        pb::Kind::User => Some(Kind::User),
        pb::Kind::Customer => Some(Kind::Customer),
        pb::Kind::Budget => Some(Kind::Budget),
        pb::Kind::Model => Some(Kind::Model),
        pb::Kind::Tag => Some(Kind::Tag),
    }
}

#[allow(clippy::result_large_err)]
fn entity_from_wire(entity: pb::EntityChanges) -> Result<RemoteChanges, Status> {
    let kind = kind_from_wire(entity.kind)
        .ok_or_else(|| Status::invalid_argument(format!("unknown kind {}", entity.kind)))?;
    let heads = entity
        .heads
        .iter()
        .map(|h| match h.len() {
            32 => Ok(hex(h)),
            n => Err(Status::invalid_argument(format!("a head of {n} bytes"))),
        })
        .collect::<Result<_, _>>()?;
    Ok(RemoteChanges {
        kind,
        id: entity.id,
        changes: entity.changes,
        heads,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A document as it travels: every change it holds, and its heads; with
/// its compaction epoch. `None` (logged) if the stored document cannot be
/// read.
fn entity_to_wire(doc: &OutgoingDoc) -> Option<(pb::EntityChanges, u64)> {
    match EntityDoc::load(&doc.saved) {
        Ok(loaded) => Some((
            pb::EntityChanges {
                kind: kind_to_wire(doc.kind).into(),
                id: doc.id.clone(),
                changes: loaded.changes_since(&[]),
                heads: loaded.heads().iter().map(|h| h.0.to_vec()).collect(),
            },
            loaded.epoch(),
        )),
        Err(e) => {
            tracing::error!(kind = doc.kind.noun(), id = %doc.id, error = %e, "unreadable document not synced");
            None
        }
    }
}

/// What the sync task has done since it started (for tests and metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// Rounds run as the leader.
    pub rounds: u64,
    /// Pushes answered (with any cursor).
    pub pushes: u64,
    /// Documents in those pushes.
    pub docs_sent: u64,
    /// Calls that failed (unreachable, refused, timed out).
    pub failures: u64,
}

#[derive(Default)]
struct Counters {
    rounds: AtomicU64,
    pushes: AtomicU64,
    docs_sent: AtomicU64,
    failures: AtomicU64,
}

/// Where one remote region stands, as this leader knows it.
#[derive(Clone, Copy, Debug, Default)]
struct Progress {
    /// The remote region's cursor, as it last answered (`None`: ask first).
    cursor: Option<u64>,
    /// Everything through this change number is sent or needs no sending.
    covered: u64,
    /// Which of the region's nodes to call.
    next_peer: usize,
    /// The round in which the cursor was last asked.
    asked: u64,
    /// Its node last answered as following compaction epochs.
    compaction: bool,
}

/// The sync task of one node; it works only while the node leads its region.
pub struct MetadataSync {
    region: Region,
    remote: RemoteRegions,
    dialer: Dialer,
    secret: ClusterSecret,
    config: SyncConfig,
    progress: Mutex<BTreeMap<String, Progress>>,
    counters: Counters,
    compactor: Compactor,
    /// What the other regions hold of this region's documents.
    holds: Holds,
}

impl MetadataSync {
    pub fn new(
        region: Region,
        remote: RemoteRegions,
        dialer: Dialer,
        secret: ClusterSecret,
        config: SyncConfig,
    ) -> Arc<Self> {
        Arc::new(Self {
            compactor: Compactor::new(region.clone()),
            region,
            remote,
            dialer,
            secret,
            config,
            progress: Mutex::default(),
            counters: Counters::default(),
            holds: Holds::default(),
        })
    }

    pub fn stats(&self) -> SyncStats {
        let c = &self.counters;
        SyncStats {
            rounds: c.rounds.load(Ordering::Relaxed),
            pushes: c.pushes.load(Ordering::Relaxed),
            docs_sent: c.docs_sent.load(Ordering::Relaxed),
            failures: c.failures.load(Ordering::Relaxed),
        }
    }

    /// Runs a round every interval until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(self.config.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                _ = tick.tick() => {}
            }
            tokio::select! {
                () = &mut shutdown => break,
                () = self.round() => {}
            }
        }
    }

    /// One round: on the leader, brings every remote region up to date (as
    /// far as this round's pushes allow), all regions at once.
    pub async fn round(&self) {
        if !self.region.is_leader() {
            // A later term as leader starts by asking again.
            self.progress().clear();
            self.holds.clear();
            return;
        }
        let round = self.counters.rounds.fetch_add(1, Ordering::Relaxed) + 1;
        let remotes = (self.remote)();
        let rounds = remotes.iter().map(|remote| self.sync_region(remote, round));
        futures_util::future::join_all(rounds).await;
        self.compactor
            .round(|candidate| self.cut_held_everywhere(candidate, &remotes))
            .await;
    }

    /// A version of `candidate` every other region holds, as heads to
    /// compact at; `None` while one of them is not known to hold any.
    fn cut_held_everywhere(
        &self,
        candidate: &Compactable,
        remotes: &[RemoteRegion],
    ) -> Option<Vec<String>> {
        let progress = self.progress();
        let me = self.region.name().as_str();
        let others: Vec<Remote<'_>> = remotes
            .iter()
            .filter(|r| r.name != me)
            .map(|r| {
                let known = progress.get(&r.name);
                Remote {
                    name: &r.name,
                    // Echoes are never pushed, so the remote's cursor does
                    // not pass a change that was one while nothing else
                    // follows it; what this leader has covered (pushed and
                    // answered, or skipped as the remote's own) does.
                    cursor: known.and_then(|p| p.cursor.map(|c| c.max(p.covered))),
                    compaction: known.is_some_and(|p| p.compaction),
                }
            })
            .collect();
        self.holds.cut(candidate, &others)
    }

    fn progress(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Progress>> {
        self.progress.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn sync_region(&self, remote: &RemoteRegion, round: u64) {
        if remote.peers.is_empty() || remote.name == self.region.name().as_str() {
            return;
        }
        let mut progress = self
            .progress()
            .get(&remote.name)
            .copied()
            .unwrap_or_default();
        if let Err(e) = self.bring_up_to_date(remote, &mut progress, round).await {
            self.counters.failures.fetch_add(1, Ordering::Relaxed);
            match &e {
                // Refused (a batch the remote region cannot merge): retried
                // every round until fixed, so say it loudly.
                CallError::Remote(_) => {
                    tracing::warn!(region = %remote.name, error = %e, "metadata sync refused")
                }
                _ => tracing::debug!(region = %remote.name, error = %e, "metadata sync failed"),
            }
            progress.next_peer = progress.next_peer.wrapping_add(1);
        }
        self.progress().insert(remote.name.clone(), progress);
    }

    async fn bring_up_to_date(
        &self,
        remote: &RemoteRegion,
        progress: &mut Progress,
        round: u64,
    ) -> Result<(), CallError> {
        let peer = &remote.peers[progress.next_peer % remote.peers.len()];
        let local = self.region.read(|s| s.change_seq());
        let cursor = match progress.cursor {
            Some(cursor) if round.saturating_sub(progress.asked) < ASK_AGAIN_ROUNDS => cursor,
            known => {
                let reply = self.ask_cursor(peer, &remote.name).await?;
                let cursor = reply.cursor;
                progress.compaction = reply.compaction;
                progress.asked = round;
                // Behind what was acknowledged (or first contact): resume
                // from what the remote region holds.
                if known.is_none_or(|known| cursor < known) {
                    progress.covered = cursor;
                }
                cursor
            }
        };
        if cursor > local {
            // The remote region has merged more of this region than this
            // region holds: this region's state was restored or rebuilt.
            // Send everything again (a push from 0 resets its cursor).
            tracing::warn!(region = %remote.name, cursor, local, "remote region is ahead of this one; resending everything");
            progress.covered = 0;
        }
        progress.cursor = Some(cursor.min(local));
        let limits = OutboxLimits {
            max_docs: self.config.max_docs.max(1),
            max_bytes: self.config.max_bytes.max(1),
            max_scan: MAX_SCAN,
        };
        // Skipping counts as a step too: a round's work stays bounded.
        let mut steps = 0;
        while progress.covered < local && steps < self.config.max_batches_per_round {
            steps += 1;
            let outbox = self
                .region
                .read(|s| s.outbox(progress.covered, &remote.name, limits));
            if outbox.docs.is_empty() {
                // Nothing there to send (echoes only): skip it, no call.
                progress.covered = progress.covered.max(outbox.through);
                continue;
            }
            let mut entities = Vec::with_capacity(outbox.docs.len());
            // The documents' versions, remembered once merged.
            let mut sent_versions: Vec<((Kind, String), Version)> = Vec::new();
            for (n, doc) in outbox.docs.iter().enumerate() {
                if let Some((entity, epoch)) = entity_to_wire(doc) {
                    let version = Version {
                        seq: doc.seq,
                        epoch,
                        heads: entity.heads.iter().map(|h| hex(h)).collect(),
                    };
                    sent_versions.push(((doc.kind, doc.id.clone()), version));
                    entities.push(entity);
                }
                // Loading documents is CPU work: let other tasks run.
                if n % 16 == 15 {
                    tokio::task::yield_now().await;
                }
            }
            let sent = entities.len() as u64;
            let since = progress.cursor.unwrap_or(0);
            let reply = self
                .push(peer, &remote.name, since, outbox.through, entities)
                .await?;
            let answered = reply.cursor;
            progress.compaction = reply.compaction;
            if answered == outbox.through {
                let not_held: Vec<(Kind, String)> = reply
                    .not_held
                    .iter()
                    .filter_map(|e| Some((kind_from_wire(e.kind)?, e.id.clone())))
                    .collect();
                self.holds.note(&remote.name, sent_versions, &not_held);
            }
            self.counters.pushes.fetch_add(1, Ordering::Relaxed);
            self.counters.docs_sent.fetch_add(sent, Ordering::Relaxed);
            progress.cursor = Some(answered);
            // The usual answer is `through`; anything else (the remote
            // region lost its place) restarts from what it says.
            progress.covered = if answered == outbox.through {
                outbox.through
            } else {
                answered
            };
        }
        Ok(())
    }

    fn client(
        &self,
        peer: &Peer,
    ) -> Result<MetadataSyncClient<tonic::transport::Channel>, CallError> {
        Ok(MetadataSyncClient::new(peer.channel(&self.dialer)?)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }

    async fn ask_cursor(&self, peer: &Peer, to: &str) -> Result<pb::CursorReply, CallError> {
        peer.reach().await?;
        let mut client = self.client(peer)?;
        let mut request = Request::new(pb::CursorRequest {
            from_region: self.region.name().to_string(),
            to_region: to.to_owned(),
        });
        self.secret.stamp(&mut request, self.config.deadline);
        with_deadline(self.config.deadline, client.cursor(request)).await
    }

    async fn push(
        &self,
        peer: &Peer,
        to: &str,
        since: u64,
        through: u64,
        entities: Vec<pb::EntityChanges>,
    ) -> Result<pb::CursorReply, CallError> {
        peer.reach().await?;
        let mut client = self.client(peer)?;
        let mut request = Request::new(pb::PushRequest {
            from_region: self.region.name().to_string(),
            to_region: to.to_owned(),
            since,
            through,
            entities,
        });
        self.secret.stamp(&mut request, self.config.deadline);
        with_deadline(self.config.deadline, client.push(request)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_survives_the_wire() {
        for kind in Kind::ALL {
            assert_eq!(kind_from_wire(kind_to_wire(kind).into()), Some(kind));
        }
        assert_eq!(kind_from_wire(pb::Kind::Unspecified.into()), None);
        assert_eq!(kind_from_wire(99), None, "a newer peer's kind is refused");
    }

    #[test]
    fn heads_must_be_change_hashes() {
        let entity = |heads: Vec<Vec<u8>>| pb::EntityChanges {
            kind: pb::Kind::Team.into(),
            id: "t1".into(),
            changes: vec![],
            heads,
        };
        let ok = entity_from_wire(entity(vec![vec![0xab; 32]])).unwrap();
        assert_eq!(ok.heads, vec!["ab".repeat(32)]);
        assert!(entity_from_wire(entity(vec![vec![1; 31]])).is_err());
        let mut unknown = entity(vec![]);
        unknown.kind = 0;
        assert!(entity_from_wire(unknown).is_err());
    }
}
