//! Spend-log rows between the members of a region, over the inter-node link
//! (`meridian.spend.v1`). `/spend/logs` on one member gathers the rows the
//! others served through this service: the asking node narrows the filter to
//! what its caller may see, and no caller credential crosses the link — a
//! member is reached at its inter-node address, which answers only to peers
//! of the cluster, never at a URL an admin typed in.

use std::sync::Arc;
use std::time::Duration;

use meridian_link::{CallError, Claim, ClusterSecret, Dialer, with_deadline};
use meridian_proto::spend::v1 as pb;
use pb::spend_logs_client::SpendLogsClient;
use pb::spend_logs_server::{SpendLogs, SpendLogsServer};
use tonic::{Request, Response, Status};

use crate::spendlog::{Filter, SpendLog, SpendRow};

/// The most rows one member sends for one query (the HTTP API's own cap).
pub const MAX_ROWS: u32 = 1000;

/// Serves this node's own rows to the members of `region`.
pub fn spend_service(
    log: Arc<SpendLog>,
    secret: ClusterSecret,
    region: String,
) -> SpendLogsServer<SpendService> {
    SpendLogsServer::new(SpendService {
        log,
        secret,
        region,
    })
    .max_decoding_message_size(64 * 1024)
}

pub struct SpendService {
    log: Arc<SpendLog>,
    secret: ClusterSecret,
    region: String,
}

#[tonic::async_trait]
impl SpendLogs for SpendService {
    async fn query(
        &self,
        request: Request<pb::QueryRequest>,
    ) -> Result<Response<pb::QueryReply>, Status> {
        let claimed = request.get_ref().region.clone();
        self.secret.admit(&request, Claim::Region(&claimed))?;
        let q = request.into_inner();
        if q.region != self.region {
            return Err(Status::permission_denied(format!(
                "spend logs are shared inside region {:?} only",
                self.region
            )));
        }
        let filter = Filter {
            api_key: q.api_key,
            team_id: q.team_id,
            user_id: q.user_id,
            end_user: q.end_user,
            request_id: q.request_id,
            start_ms: q.start_ms,
            end_ms: q.end_ms,
        };
        let limit = q.limit.clamp(1, MAX_ROWS) as usize;
        let rows = self
            .log
            .query_bounded(&filter, limit, q.max_scanned as usize)
            .await
            .iter()
            .filter_map(|r| serde_json::to_vec(r).ok())
            .collect();
        Ok(Response::new(pb::QueryReply { rows }))
    }
}

/// Asks region members for their rows.
#[derive(Clone)]
pub struct SpendPeers {
    dialer: Dialer,
    secret: ClusterSecret,
    region: String,
}

impl SpendPeers {
    pub fn new(dialer: Dialer, secret: ClusterSecret, region: String) -> Self {
        Self {
            dialer,
            secret,
            region,
        }
    }

    /// The rows matching `filter` that the member at `addr` served.
    pub async fn ask(
        &self,
        addr: &str,
        filter: &Filter,
        (limit, max_scanned): (usize, usize),
        deadline: Duration,
    ) -> Result<Vec<SpendRow>, CallError> {
        // A member of this region, and no other node.
        let member = meridian_link::Expect::Region(self.region.clone());
        let mut client = SpendLogsClient::new(self.dialer.channel_to(addr, &member)?)
            .max_decoding_message_size(32 * 1024 * 1024);
        let mut request = Request::new(pb::QueryRequest {
            region: self.region.clone(),
            api_key: filter.api_key.clone(),
            team_id: filter.team_id.clone(),
            user_id: filter.user_id.clone(),
            end_user: filter.end_user.clone(),
            request_id: filter.request_id.clone(),
            start_ms: filter.start_ms,
            end_ms: filter.end_ms,
            limit: u32::try_from(limit).unwrap_or(MAX_ROWS).min(MAX_ROWS),
            max_scanned: u32::try_from(max_scanned).unwrap_or(u32::MAX),
        });
        self.secret.stamp(&mut request, deadline);
        let reply = with_deadline(deadline, client.query(request)).await?;
        Ok(reply
            .rows
            .iter()
            .filter_map(|r| serde_json::from_slice(r).ok())
            .collect())
    }
}
