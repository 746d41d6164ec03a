//! Gossip: every node pushes its own durable counter changes to every peer
//! in every region each round (default 100 ms), and pulls from one peer at a
//! time what it lacks (anti-entropy), which repairs lost pushes, partitions,
//! restarts and new nodes. Calls carry the cluster secret; the service refuses
//! any call without it before reading the message.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use meridian_link::{Claim, ClusterSecret, Dialer, with_deadline};
use meridian_proto::gossip::v1 as pb;
use pb::gossip_client::GossipClient;
pub use pb::gossip_server::GossipServer;
use tonic::{Request, Response, Status};

use crate::counters::{Completes, Counters};
use crate::wire;

pub use meridian_link::Peer;

/// Unix milliseconds, from the node's (injected) wall clock.
pub type WallClock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The current peers, all regions, this node excluded. Asked each round, so
/// membership changes are picked up.
pub type PeerList = Arc<dyn Fn() -> Vec<Peer> + Send + Sync>;

#[derive(Clone, Debug)]
pub struct GossipConfig {
    /// How often own changes are pushed.
    pub interval: Duration,
    /// How often this node pulls from one peer (peers in turn).
    pub sync_every: Duration,
    /// How long a period's counters are kept after it ends.
    pub retention: Duration,
    /// The deadline of every gossip call.
    pub deadline: Duration,
}

impl Default for GossipConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(100),
            sync_every: Duration::from_secs(1),
            retention: Duration::from_secs(3600),
            deadline: Duration::from_secs(2),
        }
    }
}

/// Pushes to one peer that may be under way at once.
const MAX_IN_FLIGHT: usize = 8;

/// The largest gossip message either way.
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// What this node's gossip has done with each peer, for the node's
/// metrics. Counts only grow; times are the node's wall clock (ms).
#[derive(Default)]
pub struct GossipStats {
    peers: Mutex<std::collections::BTreeMap<String, PeerStats>>,
}

/// One peer's gossip from this node's side.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PeerStats {
    /// The peer's region (empty when not known).
    pub region: String,
    pub pushes: u64,
    /// Pushes that failed, or were skipped (too many under way).
    pub push_failures: u64,
    pub syncs: u64,
    pub sync_failures: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Counter slots that syncs with this peer changed here: what
    /// anti-entropy repaired.
    pub repaired: u64,
    /// When the peer last answered a call.
    pub last_answer_ms: Option<u64>,
    /// Since when the peer may lack some of this node's own changes (a push
    /// to it failed or was skipped), and through which change: cleared once
    /// a sync shows the peer holds them. The age of the oldest change
    /// another region may not have: the staleness that bounds `available`
    /// overshoot.
    pub unacked: Option<(u64, u64)>,
}

impl GossipStats {
    /// Every peer's figures, by address.
    pub fn snapshot(&self) -> Vec<(String, PeerStats)> {
        self.lock()
            .iter()
            .map(|(addr, s)| (addr.clone(), s.clone()))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<String, PeerStats>> {
        self.peers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn with(&self, peer: &Peer, f: impl FnOnce(&mut PeerStats)) {
        let mut peers = self.lock();
        let stats = peers.entry(peer.addr.clone()).or_default();
        if let Some(region) = &peer.region
            && stats.region != *region
        {
            stats.region.clone_from(region);
        }
        f(stats);
    }
}

/// Answers peers' pushes and syncs.
pub struct GossipService {
    counters: Arc<Counters>,
    secret: ClusterSecret,
    clock: WallClock,
    retention_ms: u64,
}

pub fn gossip_service(
    counters: Arc<Counters>,
    secret: ClusterSecret,
    clock: WallClock,
    config: &GossipConfig,
) -> GossipServer<GossipService> {
    GossipServer::new(GossipService {
        counters,
        secret,
        clock,
        retention_ms: millis(config.retention),
    })
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

#[tonic::async_trait]
impl pb::gossip_server::Gossip for GossipService {
    async fn push(
        &self,
        request: Request<pb::PushRequest>,
    ) -> Result<Response<pb::PushReply>, Status> {
        let sender = request
            .get_ref()
            .sender
            .as_ref()
            .map(wire::replica_of)
            .ok_or_else(|| Status::invalid_argument("a push names its sender"))?;
        self.secret.admit(
            &request,
            Claim::Node {
                region: &sender.region,
                node: sender.node,
            },
        )?;
        let push = request.into_inner();
        let slots = push.deltas.as_ref().map(wire::slots).unwrap_or_default();
        // A push carries its sender's own slots only (others' travel in
        // anti-entropy): a node cannot write another node's counts this way.
        if slots.iter().any(|(_, r, _)| *r != sender) {
            return Err(Status::invalid_argument(
                "a push carries its sender's own slots only",
            ));
        }
        self.counters.merge(
            slots,
            Completes::Range {
                replica: sender,
                since: push.since,
                through: push.through,
            },
            (self.clock)(),
            self.retention_ms,
        );
        Ok(Response::new(pb::PushReply {}))
    }

    async fn sync(&self, request: Request<pb::Digest>) -> Result<Response<pb::SyncReply>, Status> {
        self.secret.admit(&request, Claim::Member)?;
        let theirs = wire::digest_from_wire(request.get_ref());
        let (missing, digest) = self.counters.missing(&theirs);
        Ok(Response::new(pb::SyncReply {
            missing: Some(wire::deltas(missing.iter().map(|(id, r, s)| (id, r, s)))),
            digest: Some(wire::digest_to_wire(&digest)),
        }))
    }
}

/// The gossip task of one node.
pub struct Gossip {
    counters: Arc<Counters>,
    dialer: Dialer,
    secret: ClusterSecret,
    clock: WallClock,
    peers: PeerList,
    config: GossipConfig,
    /// Peers that missed a push (failed or skipped): synced with first.
    behind: Mutex<BTreeSet<String>>,
    /// Pushes under way per peer. A slow link (a round trip longer than the
    /// interval) keeps several in flight; only beyond `MAX_IN_FLIGHT` is a
    /// round skipped for that peer (and repaired by a sync).
    in_flight: Mutex<std::collections::BTreeMap<String, Arc<AtomicUsize>>>,
    stats: Arc<GossipStats>,
}

impl Gossip {
    pub fn new(
        counters: Arc<Counters>,
        dialer: Dialer,
        secret: ClusterSecret,
        clock: WallClock,
        peers: PeerList,
        config: GossipConfig,
    ) -> Arc<Self> {
        Arc::new(Self {
            counters,
            dialer,
            secret,
            clock,
            peers,
            config,
            behind: Mutex::default(),
            in_flight: Mutex::default(),
            stats: Arc::default(),
        })
    }

    /// What gossip has done with each peer so far.
    pub fn stats(&self) -> Arc<GossipStats> {
        self.stats.clone()
    }

    /// Pushes every round, syncs and tidies up periodically, until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut push = tokio::time::interval(self.config.interval);
        push.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sync = tokio::time::interval(self.config.sync_every);
        sync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_peer = 0usize;
        loop {
            tokio::select! {
                _ = push.tick() => self.push_round(),
                _ = sync.tick() => {
                    next_peer = next_peer.wrapping_add(1);
                    self.sync_round(next_peer).await;
                    self.tidy();
                }
                () = &mut shutdown => break,
            }
        }
    }

    /// Sends this round's own changes to every peer, each in its own task.
    /// Pushes may overtake each other; a receiver then merges the values all
    /// the same and only raises its mark once the ranges join up.
    fn push_round(self: &Arc<Self>) {
        let outbox = self.counters.take_outbox();
        if outbox.slots.is_empty() {
            return;
        }
        let me = self.counters.me().clone();
        let through = outbox.through;
        let request = pb::PushRequest {
            sender: Some(wire::replica(&me)),
            since: outbox.since,
            through: outbox.through,
            deltas: Some(wire::deltas(
                outbox.slots.iter().map(|(id, slot)| (id, &me, slot)),
            )),
        };
        for peer in (self.peers)() {
            let busy = {
                let mut in_flight = self
                    .in_flight
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                in_flight.entry(peer.addr.clone()).or_default().clone()
            };
            if busy.fetch_add(1, Ordering::AcqRel) >= MAX_IN_FLIGHT {
                busy.fetch_sub(1, Ordering::AcqRel);
                self.missed(&peer, through);
                continue;
            }
            let this = self.clone();
            let request = request.clone();
            tokio::spawn(async move {
                let bytes = prost::Message::encoded_len(&request) as u64;
                match this.push_to(&peer, request).await {
                    Ok(()) => this.stats.with(&peer, |s| {
                        s.pushes += 1;
                        s.bytes_sent += bytes;
                        s.last_answer_ms = Some((this.clock)());
                    }),
                    Err(e) => {
                        tracing::debug!(peer = %peer.addr, error = %e, "gossip push failed");
                        this.missed(&peer, through);
                    }
                }
                busy.fetch_sub(1, Ordering::AcqRel);
            });
        }
    }

    async fn push_to(
        &self,
        peer: &Peer,
        push: pb::PushRequest,
    ) -> Result<(), meridian_link::CallError> {
        peer.reach().await?;
        let mut client = self.client(peer)?;
        let mut request = Request::new(push);
        self.secret.stamp(&mut request, self.config.deadline);
        with_deadline(self.config.deadline, client.push(request)).await?;
        Ok(())
    }

    /// A push of changes through `through` did not reach `peer`.
    fn missed(&self, peer: &Peer, through: u64) {
        let now = (self.clock)();
        self.stats.with(peer, |s| {
            s.push_failures += 1;
            let (since, upto) = s.unacked.get_or_insert((now, through));
            *upto = (*upto).max(through);
            *since = (*since).min(now);
        });
        self.fell_behind(&peer.addr);
    }

    fn fell_behind(&self, peer: &str) {
        self.behind
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(peer.to_owned());
    }

    /// Pulls from peers that missed a push, or else from the next peer in turn.
    async fn sync_round(&self, turn: usize) {
        let behind: Vec<String> =
            std::mem::take(&mut *self.behind.lock().unwrap_or_else(PoisonError::into_inner))
                .into_iter()
                .collect();
        let all = (self.peers)();
        let peers: Vec<Peer> = if behind.is_empty() {
            match all.len() {
                0 => Vec::new(),
                n => vec![all[turn % n].clone()],
            }
        } else {
            all.into_iter()
                .filter(|p| behind.contains(&p.addr))
                .collect()
        };
        for peer in peers {
            if let Err(e) = self.sync_with(&peer).await {
                tracing::debug!(peer = %peer.addr, error = %e, "gossip sync failed");
                self.stats.with(&peer, |s| s.sync_failures += 1);
                self.fell_behind(&peer.addr);
            }
        }
    }

    /// One anti-entropy exchange: send this node's digest, merge what the
    /// peer says this node lacks. Returns how many slots changed.
    pub async fn sync_with(&self, peer: &Peer) -> Result<usize, meridian_link::CallError> {
        peer.reach().await?;
        let mut client = self.client(peer)?;
        let mut request = Request::new(wire::digest_to_wire(&self.counters.digest()));
        let sent = prost::Message::encoded_len(request.get_ref()) as u64;
        self.secret.stamp(&mut request, self.config.deadline);
        let reply = with_deadline(self.config.deadline, client.sync(request)).await?;
        let received = prost::Message::encoded_len(&reply) as u64;
        let slots = reply.missing.as_ref().map(wire::slots).unwrap_or_default();
        let digest = reply
            .digest
            .as_ref()
            .map(wire::digest_from_wire)
            .unwrap_or_default();
        // The peer's digest says how much of this node's changes it holds.
        let holds = digest.get(self.counters.me()).copied().unwrap_or(0);
        let now = (self.clock)();
        let changed = self.counters.merge(
            slots,
            Completes::Digest(digest),
            now,
            millis(self.config.retention),
        );
        self.stats.with(peer, |s| {
            s.syncs += 1;
            s.bytes_sent += sent;
            s.bytes_received += received;
            s.repaired += changed as u64;
            s.last_answer_ms = Some(now);
            if s.unacked.is_some_and(|(_, through)| holds >= through) {
                s.unacked = None;
            }
        });
        Ok(changed)
    }

    /// Persists peers' changes and forgets periods past their retention.
    fn tidy(&self) {
        if let Err(e) = self.counters.persist_remote() {
            tracing::warn!(error = %e, "persisting peers' counters failed");
        }
        match self
            .counters
            .collect((self.clock)(), millis(self.config.retention))
        {
            Ok(0) => {}
            Ok(n) => tracing::debug!(counters = n, "collected expired counters"),
            Err(e) => tracing::warn!(error = %e, "collecting expired counters failed"),
        }
    }

    fn client(
        &self,
        peer: &Peer,
    ) -> Result<GossipClient<tonic::transport::Channel>, meridian_link::CallError> {
        Ok(GossipClient::new(peer.channel(&self.dialer)?)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
