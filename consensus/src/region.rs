//! A region's Raft group as the rest of the node sees it: propose a command
//! (forwarded to the leader when this node is not it), read the applied state,
//! make a read linearizable, change membership, report status, and serve the
//! peers' RPCs.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use meridian_storage::Store;
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, InitializeError, RaftError};
use openraft::raft::linearizable_read::ReadLogId;
use openraft::raft::{AppendEntriesRequest, VoteRequest};
use openraft::{ChangeMembers, Raft, ReadPolicy, ServerState};
use serde::{Deserialize, Serialize};

use crate::metadata::{Command, MetadataState, Outcome, Proposal};
use crate::raft::state_machine::SharedState;
use crate::raft::{LogStore, Member, Runtime, StateMachine, TypeConfig};
use crate::transport::{
    ForwardReply, Network, RpcKind, SnapshotMessage, Transport, TransportError, call,
};
use crate::{Error, RegionId};

/// How long a proposal may wait for a leader (an election takes ~1 s).
const PROPOSE_DEADLINE: Duration = Duration::from_secs(10);
const RPC_DEADLINE: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct RegionConfig {
    /// The region's name (`us-east`): every node of a region must give the
    /// same one. Its metadata documents' changes are made as this name's
    /// automerge actor, and other regions' changes are merged under it.
    pub region: RegionId,
    pub node_id: u64,
    /// The voters a fresh region starts with (from config). The one with the
    /// lowest id bootstraps the region, once; the others wait to hear from it.
    pub initial_members: BTreeMap<u64, Member>,
    /// Seeds the election-timeout RNG (simulations replay it).
    pub seed: u64,
    pub heartbeat: Duration,
    pub election_timeout: (Duration, Duration),
    /// Entries since the last snapshot before a new one is built.
    pub snapshot_every: u64,
}

impl RegionConfig {
    /// A region of one node, named `region`.
    pub fn single(region: RegionId, node_id: u64, member: Member) -> Self {
        Self {
            region,
            node_id,
            initial_members: BTreeMap::from([(node_id, member)]),
            seed: node_id,
            heartbeat: Duration::from_millis(100),
            election_timeout: (Duration::from_millis(400), Duration::from_millis(800)),
            snapshot_every: 5000,
        }
    }
}

#[derive(Clone)]
pub struct Region {
    name: RegionId,
    raft: Raft<TypeConfig, StateMachine>,
    state: SharedState,
    transport: Arc<dyn Transport>,
    node_id: u64,
    /// Asked before proposing: a write Raft fails to store stops Raft for
    /// good, so a node whose writes are failing proposes nothing.
    store: Arc<dyn Store>,
}

/// One member's place in the region, for `/cluster/status`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MemberStatus {
    pub node_id: u64,
    pub raft_addr: String,
    pub api_url: String,
    pub voter: bool,
    /// Entries the member is behind the leader (leader's view; `None` elsewhere).
    pub lag: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RegionStatus {
    pub node_id: u64,
    pub state: String,
    pub leader: Option<u64>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub applied_index: Option<u64>,
    /// Index of the latest snapshot this node holds (built or installed).
    pub snapshot_index: Option<u64>,
    /// Entries before this index have been purged from the log.
    pub purged_index: Option<u64>,
    pub members: Vec<MemberStatus>,
}

fn fatal(e: impl std::fmt::Display) -> Error {
    Error::Fatal(e.to_string())
}

impl Region {
    pub async fn start(
        config: RegionConfig,
        store: Arc<dyn Store>,
        transport: Arc<dyn Transport>,
    ) -> Result<Self, Error> {
        let sm = StateMachine::open(store.clone(), config.region.as_str())
            .map_err(|e| Error::Storage(e.to_string()))?;
        let state = sm.shared_state();
        let raft_config = openraft::Config {
            heartbeat_interval: config.heartbeat.as_millis() as u64,
            election_timeout_min: config.election_timeout.0.as_millis() as u64,
            election_timeout_max: config.election_timeout.1.as_millis() as u64,
            install_snapshot_timeout: 30_000,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(config.snapshot_every),
            max_in_snapshot_log_to_keep: config.snapshot_every.min(100),
            ..Default::default()
        }
        .validate()
        .map_err(|e| Error::Config(e.to_string()))?;
        let network = Network {
            transport: transport.clone(),
        };
        let raft = Runtime::scope(
            config.seed,
            Raft::new(
                config.node_id,
                Arc::new(raft_config),
                network,
                LogStore::new(store.clone()),
                sm,
            ),
        )
        .await
        .map_err(fatal)?;
        let region = Self {
            name: config.region.clone(),
            raft,
            state,
            transport,
            node_id: config.node_id,
            store,
        };
        let first = config.initial_members.keys().next().copied();
        let mut members = config.initial_members.clone();
        let first = if meridian_bugs::on(meridian_bugs::Bug::BootstrapEverywhere) {
            members.retain(|id, _| *id == config.node_id);
            Some(config.node_id)
        } else {
            first
        };
        if first == Some(config.node_id) && !region.raft.is_initialized().await.map_err(fatal)? {
            match region.raft.initialize(members).await {
                Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                Err(e) => return Err(Error::Config(format!("bootstrapping the region: {e}"))),
            }
        }
        Ok(region)
    }

    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// The region's name.
    pub fn name(&self) -> &RegionId {
        &self.name
    }

    /// Whether this node is the region's leader now (it may learn otherwise
    /// at any moment).
    pub fn is_leader(&self) -> bool {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        m.state == ServerState::Leader && m.current_leader == Some(self.node_id)
    }

    /// The applied metadata. Reads are local: they may trail the leader by the
    /// replication delay (use [`Region::linearizable`] first when that matters).
    pub fn read<T>(&self, f: impl FnOnce(&MetadataState) -> T) -> T {
        f(&self.state.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Proposes a command and waits until it is applied on the leader; the
    /// outcome is the state machine's answer.
    pub async fn propose(&self, command: Command, at_ms: u64) -> Result<Outcome, Error> {
        if self.store.writable().is_err() {
            return Err(Error::WritesFailing);
        }
        let proposal = Proposal { at_ms, command };
        let deadline = tokio::time::Instant::now() + PROPOSE_DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            // A leader that lost its quorum after appending keeps the write
            // pending; bound the wait, and say the outcome is unknown.
            let written = tokio::time::timeout(left, self.raft.client_write(proposal.clone()))
                .await
                .map_err(|_| Error::Uncertain)?;
            let mut leader = match written {
                Ok(written) => return Ok(written.data),
                Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(_))) => {
                    // Appended, then overwritten by a new leader: it may or may
                    // not have been committed. Retrying could apply it twice.
                    return Err(Error::Uncertain);
                }
                Err(e) => match e.forward_to_leader() {
                    Some(forward) => forward.leader_node.clone(),
                    None => return Err(fatal(e)),
                },
            };
            if let Some(outcome) = acknowledged_unsent(&proposal.command) {
                return Ok(outcome);
            }
            // Follow "not leader" answers; stop at anything that may have
            // written, so a command is never applied twice.
            while let Some(target) = leader.take() {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                if left.is_zero() {
                    break;
                }
                let sent = call::<_, ForwardReply>(
                    self.transport.as_ref(),
                    None,
                    &target,
                    RpcKind::Forward,
                    &proposal,
                    left.min(RPC_DEADLINE),
                );
                match sent.await {
                    Ok(ForwardReply::Applied(outcome)) => return Ok(outcome),
                    Ok(ForwardReply::NotLeader { leader: next }) => {
                        leader = next.filter(|n| *n != target)
                    }
                    Ok(ForwardReply::Uncertain) | Err(TransportError::Timeout(_)) => {
                        return Err(Error::Uncertain);
                    }
                    Ok(ForwardReply::Failed(message)) => return Err(Error::Fatal(message)),
                    // Refused before anything was written (unreachable, wrong
                    // secret, wrong region): safe to try again below.
                    Err(e) => {
                        tracing::debug!(error = %e, "forwarding to the leader failed; retrying")
                    }
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::NoLeader(PROPOSE_DEADLINE));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until this node has applied everything committed when the call
    /// began (a read-index read, on any node).
    pub async fn linearizable(&self) -> Result<(), Error> {
        let index = match self.raft.ensure_linearizable(ReadPolicy::ReadIndex).await {
            Ok(_) => return Ok(()),
            Err(e) => match e.forward_to_leader().and_then(|f| f.leader_node.clone()) {
                Some(leader) => call::<_, u64>(
                    self.transport.as_ref(),
                    None,
                    &leader,
                    RpcKind::ReadIndex,
                    &(),
                    RPC_DEADLINE,
                )
                .await
                .map_err(|e| Error::Unreachable(e.to_string()))?,
                None => return Err(Error::NoLeader(Duration::ZERO)),
            },
        };
        self.raft
            .wait(Some(RPC_DEADLINE))
            .applied_index_at_least(Some(index), "read index")
            .await
            .map(drop)
            .map_err(|e| Error::Unreachable(e.to_string()))
    }

    /// Adds a node: as a learner (it catches up), then as a voter. On a
    /// follower the change is passed to the leader over the region's own
    /// authenticated link.
    pub async fn add_node(&self, node_id: u64, member: Member) -> Result<(), Error> {
        self.change_members(MembershipChange::Add { node_id, member })
            .await
    }

    pub async fn remove_node(&self, node_id: u64) -> Result<(), Error> {
        self.change_members(MembershipChange::Remove { node_id })
            .await
    }

    async fn change_members(&self, change: MembershipChange) -> Result<(), Error> {
        match self.change_here(&change).await {
            Err(LeaderIs(Some(leader))) => {
                let sent = call::<_, Result<(), String>>(
                    self.transport.as_ref(),
                    None,
                    &leader,
                    RpcKind::Membership,
                    &change,
                    MEMBERSHIP_DEADLINE,
                )
                .await
                .map_err(|e| Error::Unreachable(e.to_string()))?;
                sent.map_err(Error::Membership)
            }
            Err(LeaderIs(None)) => Err(Error::NoLeader(Duration::ZERO)),
            Ok(result) => result,
        }
    }

    /// Makes `change` on this node if it leads; else names the leader.
    async fn change_here(&self, change: &MembershipChange) -> Result<Result<(), Error>, LeaderIs> {
        let steps: Vec<ChangeMembers<u64, Member>> = match change {
            MembershipChange::Add { node_id, member } => {
                if let Err(e) = self.raft.add_learner(*node_id, member.clone(), true).await {
                    return membership_failure(e);
                }
                vec![ChangeMembers::AddVoterIds(BTreeSet::from([*node_id]))]
            }
            MembershipChange::Remove { node_id } => vec![
                ChangeMembers::RemoveVoters(BTreeSet::from([*node_id])),
                ChangeMembers::RemoveNodes(BTreeSet::from([*node_id])),
            ],
        };
        for step in steps {
            if let Err(e) = self.raft.change_membership(step, false).await {
                return membership_failure(e);
            }
        }
        Ok(Ok(()))
    }

    pub fn status(&self) -> RegionStatus {
        let m = self.raft.metrics().borrow_watched().clone();
        let last = m.last_log_index;
        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, member)| MemberStatus {
                node_id: *id,
                raft_addr: member.raft_addr.clone(),
                api_url: member.api_url.clone(),
                voter: voters.contains(id),
                lag: m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(id))
                    .map(|matched| {
                        // Entries held, as a count (indexes start at 0).
                        let have = matched.as_ref().map_or(0, |l| l.index + 1);
                        last.map_or(0, |l| l + 1).saturating_sub(have)
                    }),
            })
            .collect();
        RegionStatus {
            node_id: self.node_id,
            state: match m.state {
                ServerState::Leader => "leader",
                ServerState::Follower => "follower",
                ServerState::Candidate => "candidate",
                ServerState::Learner => "learner",
                ServerState::Shutdown => "shutdown",
            }
            .to_owned(),
            leader: m.current_leader,
            term: m.current_term,
            last_log_index: last,
            applied_index: m.last_applied.map(|l| l.index),
            snapshot_index: m.snapshot.map(|l| l.index),
            purged_index: m.purged.map(|l| l.index),
            members,
        }
    }

    /// Serves one peer RPC; the reply is JSON of `Result<_, String>`.
    /// `sender`: the peer's node id as its certificate proves it (`None` on
    /// plain links); a vote or an append must then be made in that node's
    /// name — a member cannot campaign or lead as another.
    pub async fn handle(&self, kind: RpcKind, payload: &[u8], sender: Option<u64>) -> Vec<u8> {
        fn reply<T: Serialize>(r: Result<T, String>) -> Vec<u8> {
            serde_json::to_vec(&r)
                .unwrap_or_else(|e| format!("{{\"Err\":\"encoding reply: {e}\"}}").into_bytes())
        }
        fn parse<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<T, String> {
            serde_json::from_slice(payload).map_err(|e| format!("bad request: {e}"))
        }
        let me = self.node_id;
        let in_name_of = |node: u64| match sender {
            Some(s) if s != node => Err(format!(
                "refused: the caller is node {s} but this message is in the name of node {node}"
            )),
            // No peer leads or campaigns as this node (openraft asserts it
            // never happens; a forged message would stop Raft here).
            _ if node == me => Err(format!(
                "refused: a message in the name of node {node}, which is this node"
            )),
            _ => Ok(()),
        };
        match kind {
            RpcKind::AppendEntries => reply(
                match parse::<AppendEntriesRequest<TypeConfig>>(payload)
                    .and_then(|rpc| in_name_of(rpc.vote.leader_id.voted_for).map(|()| rpc))
                {
                    Ok(rpc) => self
                        .raft
                        .append_entries(rpc)
                        .await
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e),
                },
            ),
            RpcKind::Vote => reply(
                match parse::<VoteRequest<TypeConfig>>(payload)
                    .and_then(|rpc| in_name_of(rpc.vote.leader_id.voted_for).map(|()| rpc))
                {
                    Ok(rpc) => self.raft.vote(rpc).await.map_err(|e| e.to_string()),
                    Err(e) => Err(e),
                },
            ),
            RpcKind::Snapshot => reply(
                match parse::<SnapshotMessage>(payload)
                    .and_then(|m| in_name_of(m.vote.leader_id.voted_for).map(|()| m))
                {
                    Ok(m) => {
                        let snapshot = openraft::alias::SnapshotOf::<TypeConfig, Vec<u8>> {
                            meta: m.meta,
                            snapshot: m.data.into_bytes(),
                        };
                        self.raft
                            .install_full_snapshot(m.vote, snapshot)
                            .await
                            .map_err(|e| e.to_string())
                    }
                    Err(e) => Err(e),
                },
            ),
            RpcKind::Forward => {
                let answer = match parse::<Proposal>(payload) {
                    Err(e) => ForwardReply::Failed(e),
                    // Writes come from the region's members only: a removed
                    // node's certificate writes nothing.
                    Ok(_) if !self.admits(sender, false) => ForwardReply::Failed(
                        "refused: the caller is not a member of this region".to_owned(),
                    ),
                    // Only the leader writes; a stale forward is refused and the
                    // sender retries with the leader named here.
                    Ok(p) => match self.raft.client_write(p).await {
                        Ok(written) => ForwardReply::Applied(written.data),
                        Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(_))) => {
                            ForwardReply::Uncertain
                        }
                        Err(e) => match e.forward_to_leader() {
                            Some(f) => ForwardReply::NotLeader {
                                leader: f.leader_node.clone(),
                            },
                            None => ForwardReply::Failed(e.to_string()),
                        },
                    },
                };
                reply::<ForwardReply>(Ok(answer))
            }
            RpcKind::Membership => reply(match parse::<MembershipChange>(payload) {
                // Only a voter passes on an admin's membership change: a
                // removed or spare node cannot add itself back.
                Ok(_) if !self.admits(sender, true) => {
                    Err("refused: the caller is not a voter of this region".to_owned())
                }
                Ok(change) => match self.change_here(&change).await {
                    Ok(result) => Ok(result.map_err(|e| e.to_string())),
                    Err(_) => Err("this node is not the leader".to_owned()),
                },
                Err(e) => Err(e),
            }),
            RpcKind::ReadIndex if !self.admits(sender, false) => reply::<u64>(Err(
                "refused: the caller is not a member of this region".to_owned(),
            )),
            RpcKind::ReadIndex => reply(
                self.raft
                    .ensure_linearizable(ReadPolicy::ReadIndex)
                    .await
                    .map(|read: ReadLogId<TypeConfig>| read.index())
                    .map_err(|e| e.to_string()),
            ),
        }
    }

    /// Whether a call from `sender` (its certificate's node id; `None` on
    /// plain links, where nothing vouches for it) may act on this region:
    /// it must be in the current membership, and a voter if `voter`.
    fn admits(&self, sender: Option<u64>, voter: bool) -> bool {
        let Some(id) = sender else {
            return true;
        };
        let metrics = self.raft.metrics().borrow_watched().clone();
        let membership = metrics.membership_config.membership();
        if voter {
            membership.voter_ids().any(|v| v == id)
        } else {
            membership.nodes().any(|(n, _)| *n == id)
        }
    }

    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
    }
}

/// How long a membership change forwarded to the leader may take (a new
/// node is added once it has caught up).
const MEMBERSHIP_DEADLINE: Duration = Duration::from_secs(60);

/// A membership change, as a member passes it to the leader.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum MembershipChange {
    Add { node_id: u64, member: Member },
    Remove { node_id: u64 },
}

/// This node does not lead; the leader, if one is known.
struct LeaderIs(Option<Member>);

fn membership_failure(
    e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>,
) -> Result<Result<(), Error>, LeaderIs> {
    match e.forward_to_leader() {
        Some(f) => Err(LeaderIs(f.leader_node.clone())),
        None => Ok(Err(Error::Membership(e.to_string()))),
    }
}

/// The simulator's `ack-unforwarded-creates` bug: a follower answers a key's
/// creation as done without forwarding it to the leader. `None` (forward
/// it) unless the bug is switched on.
fn acknowledged_unsent(command: &Command) -> Option<Outcome> {
    if !meridian_bugs::on(meridian_bugs::Bug::AckUnforwardedCreates) {
        return None;
    }
    match command {
        Command::Create {
            kind: crate::metadata::Kind::Key,
            record,
        } => Some(Outcome::Done {
            records: vec![record.clone()],
            missing: Vec::new(),
        }),
        _ => None,
    }
}
