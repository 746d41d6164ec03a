//! How a region's nodes talk: the [`Transport`] seam (tonic in production, the
//! simulated network under turmoil) and openraft's network traits on top of it.
//! Every call carries a deadline: a simulated or partitioned link may swallow
//! a reply without closing the connection.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use openraft::alias::{SnapshotMetaOf, SnapshotOf, VoteOf};
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::raft::{Member, TypeConfig};

/// The calls between nodes of a region.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RpcKind {
    AppendEntries,
    Vote,
    /// A whole snapshot in one message.
    Snapshot,
    /// A proposal sent to the leader by a follower.
    Forward,
    /// Ask the leader for a read index (linearizable reads on followers).
    ReadIndex,
    /// A membership change sent to the leader by another member (an admin's
    /// `/cluster/add_node` on any node).
    Membership,
}

/// Why a call to a peer failed (shared with every inter-node protocol).
pub use meridian_link::CallError as TransportError;

/// Sends one request to a member and returns its reply; the payload is JSON.
/// `target_id` is the member's Raft id when the caller knows it (a transport
/// that authenticates peers then checks it is the node it reached; else it
/// checks only the region).
pub trait Transport: Send + Sync + 'static {
    fn call(
        &self,
        target_id: Option<u64>,
        target: &Member,
        kind: RpcKind,
        payload: Vec<u8>,
        deadline: Duration,
    ) -> BoxFuture<'static, Result<Vec<u8>, TransportError>>;
}

/// Calls `kind` on `target` with a typed request and reply.
pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
    transport: &dyn Transport,
    target_id: Option<u64>,
    target: &Member,
    kind: RpcKind,
    request: &Req,
    deadline: Duration,
) -> Result<Resp, TransportError> {
    let payload = serde_json::to_vec(request)
        .map_err(|e| TransportError::Remote(format!("encoding: {e}")))?;
    let call = transport.call(target_id, target, kind, payload, deadline);
    let bytes = match tokio::time::timeout(deadline, call).await {
        Ok(result) => result?,
        Err(_) => return Err(TransportError::Timeout(deadline)),
    };
    let reply: Result<Resp, String> = serde_json::from_slice(&bytes)
        .map_err(|e| TransportError::Remote(format!("decoding reply: {e}")))?;
    reply.map_err(TransportError::Remote)
}

/// A snapshot on the wire. The state machine's snapshot is JSON text; it
/// travels as a string (a byte array would be a JSON list of numbers, several
/// times larger).
#[derive(Serialize, Deserialize)]
pub(crate) struct SnapshotMessage {
    pub vote: VoteOf<TypeConfig>,
    pub meta: SnapshotMetaOf<TypeConfig>,
    pub data: String,
}

/// The leader's answer to a forwarded proposal.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ForwardReply {
    Applied(crate::metadata::Outcome),
    /// Not the leader (any more): nothing was written; try `leader`.
    NotLeader {
        leader: Option<Member>,
    },
    /// Written, then possibly discarded by a leader change: unknown outcome.
    Uncertain,
    Failed(String),
}

/// openraft's view of the network: one [`Peer`] per target.
#[derive(Clone)]
pub struct Network {
    pub transport: Arc<dyn Transport>,
}

pub struct Peer {
    transport: Arc<dyn Transport>,
    target_id: u64,
    target: Member,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: u64, node: &Member) -> Peer {
        Peer {
            transport: self.transport.clone(),
            target_id: target,
            target: node.clone(),
        }
    }
}

fn rpc_error(e: TransportError) -> RPCError<TypeConfig> {
    match e {
        TransportError::Remote(msg) => RPCError::Network(NetworkError::from_string(msg)),
        other => RPCError::Unreachable(Unreachable::from_string(other.to_string())),
    }
}

impl RaftNetworkV2<TypeConfig> for Peer {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        call(
            self.transport.as_ref(),
            Some(self.target_id),
            &self.target,
            RpcKind::AppendEntries,
            &rpc,
            option.soft_ttl(),
        )
        .await
        .map_err(rpc_error)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        call(
            self.transport.as_ref(),
            Some(self.target_id),
            &self.target,
            RpcKind::Vote,
            &rpc,
            option.soft_ttl(),
        )
        .await
        .map_err(rpc_error)
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<TypeConfig>,
        snapshot: SnapshotOf<TypeConfig, Vec<u8>>,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let data = String::from_utf8(snapshot.snapshot).map_err(|e| {
            StreamingError::from(rpc_error(TransportError::Remote(format!(
                "snapshot is not text: {e}"
            ))))
        })?;
        let message = SnapshotMessage {
            vote,
            meta: snapshot.meta,
            data,
        };
        // openraft does not bound a snapshot transfer itself.
        let deadline = option.hard_ttl().max(SNAPSHOT_DEADLINE_FLOOR);
        let send = call(
            self.transport.as_ref(),
            Some(self.target_id),
            &self.target,
            RpcKind::Snapshot,
            &message,
            deadline,
        );
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            reply = send => reply.map_err(|e| StreamingError::from(rpc_error(e))),
        }
    }
}

/// A snapshot of a large region takes longer than a heartbeat to ship.
const SNAPSHOT_DEADLINE_FLOOR: Duration = Duration::from_secs(30);

/// The transport of a region of one: there is nobody to call.
pub struct NoPeers;

impl Transport for NoPeers {
    fn call(
        &self,
        _: Option<u64>,
        target: &Member,
        _: RpcKind,
        _: Vec<u8>,
        _: Duration,
    ) -> BoxFuture<'static, Result<Vec<u8>, TransportError>> {
        let addr = target.raft_addr.clone();
        Box::pin(async move {
            Err(TransportError::Unreachable(format!(
                "{addr}: this node has no peers"
            )))
        })
    }
}
