//! Raft RPC over tonic (gRPC): [`GrpcTransport`], the production
//! [`Transport`], and [`raft_service`], which answers peers' calls with
//! [`Region::handle`].
//!
//! Dialing, serving and the cluster secret come from `meridian-link`, so the
//! same code runs over TCP in production and over turmoil's simulated network
//! in simulations, and the Raft service shares its node's inter-node listener
//! with gossip. Every call names its region and carries the cluster secret;
//! the server refuses a call without the secret or for another region before
//! it reaches Raft.

use std::fmt;
use std::time::Duration;

use futures_util::future::BoxFuture;
use meridian_link::{
    Claim, ClusterSecret, Dialer, Expect, NodeIdentity, peer_identity, with_deadline,
};
use meridian_proto::raft::v1 as wire;
use tonic::{Request, Response, Status};
use wire::raft_client::RaftClient;
use wire::raft_server::Raft as RaftRpc;
pub use wire::raft_server::RaftServer;

use crate::raft::Member;
use crate::region::Region;
use crate::transport::{RpcKind, Transport, TransportError};

/// The largest message either way: a snapshot of a whole region ships as one
/// message (see `RaftNetworkV2::full_snapshot` in `transport`).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// Raft calls to peers over gRPC, through a [`Dialer`] (one lazily connected
/// channel per peer address). Cheap to clone.
#[derive(Clone)]
pub struct GrpcTransport {
    region: String,
    secret: ClusterSecret,
    dialer: Dialer,
}

impl GrpcTransport {
    /// Dials peers through `dialer`; `secret` is sent with every call.
    pub fn new(region: impl Into<String>, secret: ClusterSecret, dialer: Dialer) -> Self {
        Self {
            region: region.into(),
            secret,
            dialer,
        }
    }
}

impl fmt::Debug for GrpcTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcTransport")
            .field("region", &self.region)
            .field("secret", &self.secret)
            .finish_non_exhaustive()
    }
}

impl Transport for GrpcTransport {
    fn call(
        &self,
        target_id: Option<u64>,
        target: &Member,
        kind: RpcKind,
        payload: Vec<u8>,
        deadline: Duration,
    ) -> BoxFuture<'static, Result<Vec<u8>, TransportError>> {
        let this = self.clone();
        let addr = target.raft_addr.clone();
        // The node it should be, or at least one of this region.
        let expect = match target_id.map(|id| NodeIdentity::new(this.region.clone(), id)) {
            Some(Ok(node)) => Expect::Node(node),
            _ => Expect::Region(this.region.clone()),
        };
        Box::pin(async move {
            let mut client = RaftClient::new(this.dialer.channel_to(&addr, &expect)?)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES);
            let mut request = Request::new(wire::RaftRequest {
                kind: wire_kind(kind).into(),
                payload,
                region: this.region.clone(),
            });
            this.secret.stamp(&mut request, deadline);
            let reply = with_deadline(deadline, client.call(request)).await?;
            Ok(reply.payload)
        })
    }
}

fn wire_kind(kind: RpcKind) -> wire::RpcKind {
    match kind {
        RpcKind::AppendEntries => wire::RpcKind::AppendEntries,
        RpcKind::Vote => wire::RpcKind::Vote,
        RpcKind::Snapshot => wire::RpcKind::Snapshot,
        RpcKind::Forward => wire::RpcKind::Forward,
        RpcKind::ReadIndex => wire::RpcKind::ReadIndex,
        RpcKind::Membership => wire::RpcKind::Membership,
    }
}

/// `None` for `UNSPECIFIED` and for values this build does not know (a newer
/// peer's).
fn domain_kind(value: i32) -> Option<RpcKind> {
    match wire::RpcKind::try_from(value).ok()? {
        wire::RpcKind::Unspecified => None,
        wire::RpcKind::AppendEntries => Some(RpcKind::AppendEntries),
        wire::RpcKind::Vote => Some(RpcKind::Vote),
        wire::RpcKind::Snapshot => Some(RpcKind::Snapshot),
        wire::RpcKind::Forward => Some(RpcKind::Forward),
        wire::RpcKind::ReadIndex => Some(RpcKind::ReadIndex),
        wire::RpcKind::Membership => Some(RpcKind::Membership),
    }
}

/// Answers peers' Raft calls for one region; built by [`raft_service`].
pub struct RaftService {
    region: Region,
    region_name: String,
    secret: ClusterSecret,
}

/// The gRPC service for `region`, to add to the node's inter-node routes
/// (`meridian_link::serve`). Calls without `secret` (when one is set) and
/// calls for a region other than `region_name` are refused.
pub fn raft_service(
    region: Region,
    secret: ClusterSecret,
    region_name: String,
) -> RaftServer<RaftService> {
    RaftServer::new(RaftService {
        region,
        region_name,
        secret,
    })
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn call(
        &self,
        request: Request<wire::RaftRequest>,
    ) -> Result<Response<wire::RaftReply>, Status> {
        // Authentication first: an outsider learns nothing, not even the region.
        // A peer may speak for its own region only, and (below) lead or
        // campaign only as itself.
        let claimed = request.get_ref().region.clone();
        self.secret.admit(&request, Claim::Region(&claimed))?;
        let sender = peer_identity(&request).map(|id| id.node);
        let request = request.into_inner();
        if request.region != self.region_name {
            return Err(Status::failed_precondition(format!(
                "this node serves region {:?}, not {:?}",
                self.region_name, request.region
            )));
        }
        let kind = domain_kind(request.kind).ok_or_else(|| {
            Status::invalid_argument(format!("unknown Raft RPC kind {}", request.kind))
        })?;
        let payload = self.region.handle(kind, &request.payload, sender).await;
        Ok(Response::new(wire::RaftReply { payload }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [RpcKind; 6] = [
        RpcKind::AppendEntries,
        RpcKind::Vote,
        RpcKind::Snapshot,
        RpcKind::Forward,
        RpcKind::ReadIndex,
        RpcKind::Membership,
    ];

    #[test]
    fn every_kind_survives_the_wire() {
        for kind in ALL {
            assert_eq!(domain_kind(wire_kind(kind).into()), Some(kind));
        }
        assert_eq!(domain_kind(wire::RpcKind::Unspecified.into()), None);
        assert_eq!(
            domain_kind(99),
            None,
            "a newer peer's kind is not guessed at"
        );
    }

    #[test]
    fn the_secret_never_prints() {
        let secret = ClusterSecret::new(Some("hunter2hunter2")).unwrap();
        let transport = GrpcTransport::new("eu-west", secret, Dialer::tcp());
        let shown = format!("{transport:?}");
        assert!(
            shown.contains("eu-west") && !shown.contains("hunter2"),
            "{shown}"
        );
    }
}
