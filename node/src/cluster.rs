//! The region this node belongs to: a Raft group of the nodes named in
//! `meridian.peers`, reached over gRPC on `meridian.cluster_listen`; or, when
//! no cluster listener is configured, a region of one.
//!
//! A fresh region bootstraps exactly once: only the peer with the lowest
//! `raft_id` initializes it, and only if its own log is empty. A node joining
//! an existing region lists the current members and itself (so it is never the
//! lowest) and is then added with `meridian cluster add-node`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use meridian_consensus::grpc::{GrpcTransport, raft_service};
use meridian_consensus::raft::Member;
use meridian_consensus::transport::NoPeers;
use meridian_consensus::{Region, RegionConfig};
use meridian_link::{ClusterSecret, Dialer};
use meridian_replication::Counters;
use meridian_storage::{Durability, Store};
use tonic::service::Routes;

use crate::config::NodeSettings;
use crate::error::{Error, Result};

/// Starts (or restarts from `store`) a region whose only member is this node.
pub async fn single_node_region(store: Arc<dyn Store>, api_url: String) -> Result<Region> {
    let member = Member {
        raft_addr: String::new(),
        api_url,
    };
    let region = Region::start(RegionConfig::single(1, member), store, Arc::new(NoPeers)).await?;
    Ok(region)
}

/// A region of one and its counters, for embedding (tests, simulations): the
/// counters' flusher runs until the runtime stops.
pub async fn single_node(
    store: Arc<dyn Store>,
    settings: &NodeSettings,
    rng: &crate::clock::SeededRng,
) -> Result<(Region, Arc<Counters>)> {
    let api_url = format!("http://{}", settings.listen);
    let region = single_node_region(store.clone(), api_url).await?;
    let counters = start_counters(
        &settings.region,
        settings.cluster.raft_id,
        store,
        Durability::Process,
        rng,
        std::future::pending(),
    )?;
    Ok((region, counters))
}

/// Joins (or forms) this node's region as configured and serves its peers
/// until `shutdown` resolves. `api_addr` is where this node's HTTP API listens.
pub async fn start_region(
    settings: &NodeSettings,
    store: Arc<dyn Store>,
    api_addr: SocketAddr,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<Region> {
    let cluster = &settings.cluster;
    let api_url = cluster
        .advertise_url
        .clone()
        .unwrap_or_else(|| format!("http://{api_addr}"));
    let Some(listen) = cluster.listen else {
        return single_node_region(store, api_url).await;
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| Error::io(format!("listening for peers on {listen}"), e))?;
    let own_addr = match cluster.peers.iter().find(|p| p.raft_id == cluster.raft_id) {
        Some(me) => me.cluster_addr.clone(),
        None => listener
            .local_addr()
            .map_err(|e| Error::io("reading the peer listener's address", e))?
            .to_string(),
    };
    let mut members: BTreeMap<u64, Member> = cluster
        .peers
        .iter()
        .map(|p| {
            (
                p.raft_id,
                Member {
                    raft_addr: p.cluster_addr.clone(),
                    api_url: p.api_url.clone(),
                },
            )
        })
        .collect();
    members.insert(
        cluster.raft_id,
        Member {
            raft_addr: own_addr,
            api_url,
        },
    );
    let secret = ClusterSecret::new(cluster.secret.as_ref().map(|s| s.expose()))
        .map_err(|e| Error::Internal(e.to_string()))?;
    let transport = GrpcTransport::new(settings.region.clone(), secret.clone(), Dialer::tcp());
    let config = RegionConfig {
        node_id: cluster.raft_id,
        initial_members: members,
        seed: cluster.raft_id,
        heartbeat: Duration::from_millis(100),
        election_timeout: (Duration::from_millis(500), Duration::from_millis(1000)),
        snapshot_every: cluster.snapshot_every,
    };
    let region = Region::start(config, store, Arc::new(transport)).await?;
    let service = raft_service(region.clone(), secret, settings.region.clone());
    tokio::spawn(async move {
        if let Err(e) = meridian_link::serve(listener, Routes::new(service), shutdown).await {
            tracing::error!(error = %e, "the peer listener stopped");
        }
    });
    Ok(region)
}

/// Opens this node's counters from `store` and starts the task that makes
/// its own changes durable (until `shutdown`). `node` is the node's Raft id:
/// unique in its region, so `(region, node, incarnation)` names one writer.
pub fn start_counters(
    region: &str,
    node: u64,
    store: Arc<dyn Store>,
    durability: Durability,
    rng: &crate::clock::SeededRng,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<Arc<Counters>> {
    let counters = Counters::open(region, node, store, durability, || rng.next_u64())
        .map_err(|e| Error::Internal(format!("opening counters: {e}")))?;
    let counters = Arc::new(counters);
    tokio::spawn(counters.clone().run_flusher(shutdown));
    Ok(counters)
}

/// Opens the node's database in its data directory.
#[cfg(feature = "rocksdb")]
pub fn open_store(data_dir: &std::path::Path) -> Result<Arc<dyn Store>> {
    let path = data_dir.join("db");
    let store = meridian_storage::RocksStore::open(&path)
        .map_err(|e| Error::Internal(format!("opening {}: {e}", path.display())))?;
    Ok(Arc::new(store))
}
