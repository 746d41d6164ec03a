//! Rights of `strict` limits between nodes and regions (see `crdt::escrow`
//! for why they keep a limit exact, and `meridian_consensus::metadata::ledger`
//! for the issuer).
//!
//! - [`Rights`], on every node: asks the ledger of a limit's home region for
//!   rights when this node holds too few ([`Rights::obtain`]: the home region
//!   itself is asked through its own Raft log, another region over
//!   `meridian.rights.v1`), records the grants in this node's own slot of the
//!   rights counter, and gives back rights it has not used for a while
//!   ([`Rights::run_returns`]), so traffic that moves to another region finds
//!   the headroom there.
//! - [`rights_service`]: answers other regions' requests by proposing them to
//!   this region's ledger (forwarded to the leader).
//!
//! Only the asking for rights waits on the network, and only when a node runs
//! out: spending held rights is a memory operation on the request path.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use meridian_consensus::Region;
use meridian_consensus::metadata::{Command, GrantReply, GrantRequest, Holder, Outcome};
use meridian_link::{Claim, ClusterSecret, Dialer, with_deadline};
use meridian_proto::rights::v1 as pb;
use pb::rights_client::RightsClient;
pub use pb::rights_server::RightsServer;
use tonic::{Request, Response, Status};

use meridian_consensus::metadata_sync::RemoteRegions;
use meridian_replication::Counters;
use meridian_replication::crdt::{CounterId, escrow};
use meridian_replication::gossip::WallClock;

use crate::error::Error;

/// What a node asks for: rights to `id` (a limited counter), from the ledger
/// of region `home`, under `limit` as of `limit_version`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ask {
    pub id: CounterId,
    pub home: Arc<str>,
    pub need: u64,
    pub limit: u64,
    pub limit_version: u64,
}

impl Ask {
    fn rights_id(&self) -> CounterId {
        rights_id(&self.id)
    }
}

/// The counter holding the rights to `id`.
fn rights_id(id: &CounterId) -> CounterId {
    id.with_metric(id.metric.rights().unwrap_or(id.metric))
}

/// What this node holds of rights to `id` and may still spend.
pub fn available(t: &meridian_replication::Txn<'_>, id: &CounterId) -> u64 {
    escrow::available(&t.own(&rights_id(id)), &t.own(id))
}

/// A counter this node holds rights to, and when it last spent them.
struct Used {
    ask: Ask,
    at_ms: u64,
}

pub struct Rights {
    region: Region,
    counters: Arc<Counters>,
    remote: RemoteRegions,
    dialer: Dialer,
    secret: ClusterSecret,
    clock: WallClock,
    deadline: Duration,
    /// One request per counter at a time: requests that queue behind it find
    /// the rights it brought.
    asking: Mutex<HashMap<CounterId, Arc<tokio::sync::Mutex<()>>>>,
    /// Ordered: the sweep gives rights back in this order (replayable).
    used: Mutex<BTreeMap<CounterId, Used>>,
    next_peer: AtomicUsize,
}

impl Rights {
    pub fn new(
        region: Region,
        counters: Arc<Counters>,
        remote: RemoteRegions,
        dialer: Dialer,
        secret: ClusterSecret,
        clock: WallClock,
        deadline: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            region,
            counters,
            remote,
            dialer,
            secret,
            clock,
            deadline,
            asking: Mutex::default(),
            used: Mutex::default(),
            next_peer: AtomicUsize::new(0),
        })
    }

    /// This node's region.
    pub fn region(&self) -> &str {
        &self.counters.me().region
    }

    /// What this node holds of rights to `id` and may still spend.
    pub fn held(&self, id: &CounterId) -> u64 {
        self.counters.read(|t| available(t, id))
    }

    /// Per region, the rights to `id` the ledger's `reply` says are out
    /// and that, as far as this node's view of the counter tells, are not
    /// spent; this node's own excluded. Where the headroom a refused request
    /// could not get is.
    pub fn unspent_elsewhere(&self, id: &CounterId, reply: &GrantReply) -> Vec<(String, u64)> {
        let reading = self.counters.reading(id);
        let (mine, my_use) = self
            .counters
            .read(|t| (t.own(&rights_id(id)).net(), t.own(id).net()));
        let me = self.region();
        reply
            .outstanding_by_region
            .iter()
            .map(|(region, out)| {
                let used = reading.by_region.get(region.as_str()).copied().unwrap_or(0);
                let (out, used) = match region.as_str() == me {
                    true => (out.saturating_sub(mine), used.saturating_sub(my_use)),
                    false => (*out, used),
                };
                (region.clone(), out.saturating_sub(used))
            })
            .filter(|(_, unspent)| *unspent > 0)
            .collect()
    }

    /// Notes that rights to `ask.id` were spent now (they are given back
    /// after a while without use).
    pub fn touch(&self, ask: &Ask) {
        let at_ms = (self.clock)();
        lock(&self.used).insert(
            ask.id.clone(),
            Used {
                ask: ask.clone(),
                at_ms,
            },
        );
    }

    /// Makes this node hold at least `ask.need` rights if the ledger can
    /// grant them. `None`: it held enough already; else the ledger's answer
    /// (whose `granted` is 0 when its pool could not cover the need).
    pub async fn obtain(&self, ask: &Ask) -> Result<Option<GrantReply>, Error> {
        let turn = self.turn(&ask.id);
        let _turn = turn.lock().await;
        let held = self.held(&ask.id);
        if held >= ask.need {
            return Ok(None);
        }
        let returned = self.counters.read(|t| t.own(&ask.rights_id()).n);
        // Only the shortfall: what this node holds counts towards the need.
        let reply = self.call(ask, ask.need - held, returned).await?;
        self.record(ask, &reply);
        Ok(Some(reply))
    }

    /// Gives back every right to `ask.id` this node holds and has not spent:
    /// made durable here before the ledger is told, so it can never be
    /// spent twice. If the ledger does not hear of it now, it does with this
    /// node's next request for the counter.
    pub async fn give_back(&self, ask: &Ask) -> Result<u64, Error> {
        let turn = self.turn(&ask.id);
        let _turn = turn.lock().await;
        let rights = ask.rights_id();
        let ((amount, returned), ticket) = self.counters.update(|t| {
            let amount = available(t, &ask.id);
            t.add(&rights, 0, amount);
            (amount, t.own(&rights).n)
        });
        if amount == 0 {
            return Ok(0);
        }
        self.counters
            .durable(ticket)
            .await
            .map_err(|_| Error::StorageFailing)?;
        let reply = self.call(ask, 0, returned).await?;
        self.record(ask, &reply);
        Ok(amount)
    }

    /// Every `every`, gives back the rights of counters unused for `idle`,
    /// and forgets counters whose period is over.
    pub async fn run_returns(
        self: Arc<Self>,
        every: Duration,
        idle: Duration,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                _ = tick.tick() => {}
            }
            let now = (self.clock)();
            let due: Vec<Ask> = {
                let mut used = lock(&self.used);
                used.retain(|id, _| id.ends_at().is_none_or(|end| end > now));
                used.values()
                    .filter(|u| u.at_ms.saturating_add(idle_ms) <= now)
                    .map(|u| u.ask.clone())
                    .collect()
            };
            for ask in due {
                match self.give_back(&ask).await {
                    Ok(amount) => {
                        lock(&self.used).remove(&ask.id);
                        if amount > 0 {
                            tracing::debug!(counter = ?ask.id, amount, "idle rights given back");
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "giving back rights failed; retrying"),
                }
            }
            lock(&self.asking).retain(|_, turn| Arc::strong_count(turn) > 1);
        }
    }

    /// Gives back every right this node holds and has not spent, as a node
    /// leaving its region does: the rest of the world may spend them while
    /// it is away. Returns how many counters could not be given back now
    /// (they are given back with this node's next request for them).
    pub async fn give_back_all(&self) -> usize {
        let held: Vec<Ask> = lock(&self.used).values().map(|u| u.ask.clone()).collect();
        let mut failed = 0;
        for ask in held {
            match self.give_back(&ask).await {
                Ok(_) => {
                    lock(&self.used).remove(&ask.id);
                }
                Err(e) => {
                    failed += 1;
                    tracing::debug!(counter = ?ask.id, error = %e, "giving back rights at shutdown failed");
                }
            }
        }
        failed
    }

    fn turn(&self, id: &CounterId) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.asking).entry(id.clone()).or_default().clone()
    }

    /// Raises this node's slot to what the ledger says it has issued here.
    fn record(&self, ask: &Ask, reply: &GrantReply) {
        let rights = ask.rights_id();
        let (_, _ticket) = self.counters.update(|t| {
            let add = escrow::grant_delta(&t.own(&rights), reply.issued);
            t.add(&rights, add, 0);
        });
        // Forgetting a grant (a crash before it is written) only loses
        // rights: nothing waits for it to be durable.
    }

    async fn call(&self, ask: &Ask, need: u64, returned: u64) -> Result<GrantReply, Error> {
        let me = self.counters.me();
        let request = GrantRequest {
            counter: ask.id.encode(),
            holder: Holder {
                region: me.region.to_string(),
                node: me.node,
                incarnation: me.incarnation,
            },
            need,
            returned,
            limit: ask.limit,
            limit_version: ask.limit_version,
            ends_at_ms: ask.id.window.end(ask.id.period),
        };
        if *ask.home == *self.region.name().as_str() {
            return propose(&self.region, request, (self.clock)()).await;
        }
        let unreachable = |reason: String| Error::RightsUnreachable {
            home: ask.home.to_string(),
            reason,
        };
        let peers = (self.remote)()
            .into_iter()
            .find(|r| *r.name == *ask.home)
            .map(|r| r.peers)
            .unwrap_or_default();
        if peers.is_empty() {
            return Err(unreachable("no node of it is configured".into()));
        }
        let start = self.next_peer.fetch_add(1, Ordering::Relaxed);
        let mut last = String::new();
        for i in 0..peers.len() {
            let peer = &peers[(start + i) % peers.len()];
            let attempt = async {
                peer.reach().await?;
                let mut client = RightsClient::new(peer.channel(&self.dialer)?);
                let mut call = Request::new(request_to_wire(&ask.home, &request));
                self.secret.stamp(&mut call, self.deadline);
                with_deadline(self.deadline, client.grant(call)).await
            };
            match attempt.await {
                Ok(reply) => return Ok(reply_from_wire(reply)),
                Err(e) => last = format!("{}: {e}", peer.addr),
            }
        }
        Err(unreachable(last))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn propose(region: &Region, request: GrantRequest, at_ms: u64) -> Result<GrantReply, Error> {
    let outcome = region
        .propose(Command::Grant(request), at_ms)
        .await
        .map_err(|e| Error::RightsLedger(e.to_string()))?;
    match outcome {
        Outcome::Done { records, .. } => records
            .into_iter()
            .next()
            .and_then(|r| serde_json::from_value(r).ok())
            .ok_or_else(|| Error::RightsLedger("a grant without a reply".into())),
        Outcome::Refused { message, .. } => Err(Error::RightsLedger(message)),
    }
}

fn request_to_wire(home: &str, r: &GrantRequest) -> pb::GrantRequest {
    pb::GrantRequest {
        home_region: home.to_owned(),
        counter: r.counter.clone(),
        holder_region: r.holder.region.clone(),
        holder_node: r.holder.node,
        holder_incarnation: r.holder.incarnation,
        need: r.need,
        returned: r.returned,
        limit: r.limit,
        limit_version: r.limit_version,
        ends_at_ms: r.ends_at_ms,
    }
}

fn request_from_wire(r: pb::GrantRequest) -> GrantRequest {
    GrantRequest {
        counter: r.counter,
        holder: Holder {
            region: r.holder_region,
            node: r.holder_node,
            incarnation: r.holder_incarnation,
        },
        need: r.need,
        returned: r.returned,
        limit: r.limit,
        limit_version: r.limit_version,
        ends_at_ms: r.ends_at_ms,
    }
}

fn reply_to_wire(reply: GrantReply) -> pb::GrantReply {
    pb::GrantReply {
        issued: reply.issued,
        granted: reply.granted,
        pool: reply.pool,
        limit: reply.limit,
        outstanding_by_region: reply.outstanding_by_region.into_iter().collect(),
    }
}

fn reply_from_wire(reply: pb::GrantReply) -> GrantReply {
    GrantReply {
        issued: reply.issued,
        granted: reply.granted,
        pool: reply.pool,
        limit: reply.limit,
        outstanding_by_region: reply.outstanding_by_region.into_iter().collect(),
    }
}

/// Answers other regions' requests for rights.
pub struct RightsService {
    region: Region,
    secret: ClusterSecret,
    clock: WallClock,
}

/// The rights service of `region`, for the node's inter-node routes. Calls
/// without `secret` (when one is set), and calls meant for another region,
/// are refused.
pub fn rights_service(
    region: Region,
    secret: ClusterSecret,
    clock: WallClock,
) -> RightsServer<RightsService> {
    RightsServer::new(RightsService {
        region,
        secret,
        clock,
    })
    // A grant request is a few ids and numbers.
    .max_decoding_message_size(MAX_GRANT_BYTES)
}

/// The largest grant request a node reads.
const MAX_GRANT_BYTES: usize = 64 * 1024;

#[tonic::async_trait]
impl pb::rights_server::Rights for RightsService {
    async fn grant(
        &self,
        request: Request<pb::GrantRequest>,
    ) -> Result<Response<pb::GrantReply>, Status> {
        let holder = request.get_ref();
        let (region, node) = (holder.holder_region.clone(), holder.holder_node);
        self.secret.admit(
            &request,
            Claim::Node {
                region: &region,
                node,
            },
        )?;
        let r = request.into_inner();
        let me = self.region.name().as_str();
        if r.home_region != me {
            return Err(Status::failed_precondition(format!(
                "this node serves region {me:?}, not {:?}",
                r.home_region
            )));
        }
        if r.counter.len() > 4096 || r.holder_region.len() > 64 {
            return Err(Status::invalid_argument("counter or region too long"));
        }
        let reply = propose(&self.region, request_from_wire(r), (self.clock)())
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(reply_to_wire(reply)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_replies_survive_the_wire() {
        let request = GrantRequest {
            counter: vec![1, 2, 3],
            holder: Holder {
                region: "eu-west".into(),
                node: 2,
                incarnation: 9,
            },
            need: 5,
            returned: 3,
            limit: 20,
            limit_version: 7,
            ends_at_ms: Some(60_000),
        };
        assert_eq!(
            request_from_wire(request_to_wire("us-east", &request)),
            request
        );
        let reply = GrantReply {
            issued: 8,
            granted: 5,
            pool: 12,
            limit: 20,
            outstanding_by_region: [("eu-west".to_owned(), 8)].into(),
        };
        assert_eq!(reply_from_wire(reply_to_wire(reply.clone())), reply);
    }
}
