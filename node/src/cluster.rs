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

use crate::rights::{Rights, rights_service};
use meridian_consensus::compactor::Compactor;
use meridian_consensus::grpc::{GrpcTransport, raft_service};
use meridian_consensus::metadata_sync::{
    MetadataSync, RemoteRegion, RemoteRegions, SyncConfig, sync_service,
};
use meridian_consensus::raft::Member;
use meridian_consensus::transport::NoPeers;
use meridian_consensus::{Region, RegionConfig, RegionId};
use meridian_link::{ClusterSecret, ClusterTls, Dialer};
use meridian_replication::gossip::{PeerList, WallClock};
use meridian_replication::{Counters, Gossip, GossipConfig, Peer, gossip_service};
use meridian_storage::{Durability, Store};
use tonic::service::Routes;

use crate::clock::Clock;
use crate::config::NodeSettings;
use crate::error::{Error, Result};

/// Starts (or restarts from `store`) a region whose only member is this node.
pub async fn single_node_region(
    region: &str,
    store: Arc<dyn Store>,
    api_url: String,
) -> Result<Region> {
    let member = Member {
        raft_addr: String::new(),
        api_url,
    };
    let region = Region::start(
        RegionConfig::single(RegionId::new(region), 1, member),
        store,
        Arc::new(NoPeers),
    )
    .await?;
    Ok(region)
}

/// What joining (or forming) a region gives a node: the region's metadata,
/// its rights to `strict` limits, and a way to ask the other members for
/// their spend-log rows (`None` in a region of one).
pub struct Joined {
    pub region: Region,
    pub rights: Arc<Rights>,
    pub spend_peers: Option<crate::spend_rpc::SpendPeers>,
    /// What gossip does with each peer (`None`: a region of one).
    pub gossip: Option<Arc<meridian_replication::GossipStats>>,
}

/// A region of one that no other node can reach, and its rights to `strict`
/// limits (all issued by its own ledger).
pub(crate) async fn lone_region(
    region: &str,
    store: Arc<dyn Store>,
    api_url: String,
    counters: &Arc<Counters>,
    clock: WallClock,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<Joined> {
    let region = single_node_region(region, store, api_url).await?;
    let secret = ClusterSecret::new(None).map_err(|e| Error::Internal(e.to_string()))?;
    let shutdown = futures_util::FutureExt::shared(Box::pin(shutdown));
    let compactor = Compactor::new(region.clone());
    tokio::spawn(compactor.run_alone(COMPACT_EVERY, shutdown.clone()));
    let rights = start_rights(
        &region,
        counters,
        Arc::new(Vec::new),
        Dialer::tcp(),
        secret,
        clock,
        shutdown,
    );
    Ok(Joined {
        region,
        rights,
        spend_peers: None,
        gossip: None,
    })
}

/// Opens the spend log in `store` and starts its writer, which writes what
/// is pending when `shutdown` resolves and then ends.
pub fn start_spend_log(
    store: Arc<dyn Store>,
    config: &crate::config::Config,
    clock: Arc<dyn Clock>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> (Arc<crate::spendlog::SpendLog>, tokio::task::JoinHandle<()>) {
    let log = Arc::new(crate::spendlog::SpendLog::new(
        store,
        config.spend_log_retention,
    ));
    let writer = tokio::spawn(log.clone().run(clock, shutdown));
    (log, writer)
}

/// How a node reaches the other nodes and is reached by them: TCP in
/// production, a simulated network under turmoil.
pub struct PeerNet {
    /// Dials peers (Raft, gossip, metadata sync, rights).
    pub dialer: Dialer,
    /// This node's inter-node address as its peers dial it.
    pub own_addr: String,
    /// Serves the inter-node services until the shutdown future resolves.
    pub serve: ServePeers,
}

/// Serves `Routes` until the future resolves (see [`PeerNet::serve`]).
pub type ServePeers = Box<
    dyn FnOnce(
            Routes,
            futures_util::future::BoxFuture<'static, ()>,
        ) -> futures_util::future::BoxFuture<
            'static,
            std::result::Result<(), meridian_link::Error>,
        > + Send,
>;

impl PeerNet {
    /// Peers over plain TCP: serves on `listener`, dials with TCP (a cluster
    /// secret or `insecure_cluster` only; see `config::tls`).
    pub fn tcp(listener: tokio::net::TcpListener, own_addr: String) -> Self {
        Self {
            dialer: Dialer::tcp(),
            own_addr,
            serve: Box::new(move |routes, shutdown| {
                Box::pin(meridian_link::serve(listener, routes, shutdown))
            }),
        }
    }

    /// Peers over mutual TLS: both ends prove with a certificate of the
    /// cluster's CA which node they are.
    pub fn tls(listener: tokio::net::TcpListener, own_addr: String, tls: ClusterTls) -> Self {
        Self {
            dialer: Dialer::tls(tls.clone()),
            own_addr,
            serve: Box::new(move |routes, shutdown| {
                Box::pin(meridian_link::serve_tls(listener, tls, routes, shutdown))
            }),
        }
    }
}

/// How often certificate files are looked at for a change (SIGHUP reloads
/// at once).
const TLS_RELOAD_EVERY: Duration = Duration::from_secs(10);

/// Loads this node's inter-node TLS material and checks that its certificate
/// names this node: a node must not run under another node's identity.
pub fn load_cluster_tls(settings: &NodeSettings) -> Result<Option<ClusterTls>> {
    let Some(files) = &settings.cluster.tls else {
        return Ok(None);
    };
    let tls = ClusterTls::load(&files.ca, &files.cert, &files.key)
        .map_err(|e| Error::Internal(format!("inter-node TLS: {e}")))?;
    let id = tls.identity();
    if id.region != settings.region || id.node != settings.cluster.raft_id {
        return Err(Error::Internal(format!(
            "inter-node TLS: {} is the certificate of node {} of region {}, but this node is node {} of region {} (issue one with `meridian cert issue --node {} --region {}`)",
            files.cert.display(),
            id.node,
            id.region,
            settings.cluster.raft_id,
            settings.region,
            settings.cluster.raft_id,
            settings.region
        )));
    }
    Ok(Some(tls))
}

/// Reloads `reload` when the files change and on SIGHUP, until `shutdown`:
/// a certificate is rotated without a restart (new connections use it).
pub fn keep_reloading<F>(
    name: &'static str,
    reload: F,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) where
    F: Fn() -> std::result::Result<(), meridian_link::Error> + Send + 'static,
{
    tokio::spawn(async move {
        #[cfg(unix)]
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        tokio::pin!(shutdown);
        loop {
            #[cfg(unix)]
            let hangup = async {
                match hup.as_mut() {
                    Some(h) => {
                        h.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            #[cfg(not(unix))]
            let hangup = std::future::pending::<()>();
            tokio::select! {
                () = hangup => match reload() {
                    Ok(()) => tracing::info!(what = name, "TLS material reloaded (SIGHUP)"),
                    Err(e) => tracing::warn!(what = name, error = %e, "TLS reload failed; the old material stays in use"),
                },
                () = &mut shutdown => break,
            }
        }
    });
}

/// Joins (or forms) this node's region as configured, gossips `counters` with
/// every peer of every region, serves its own spend-log rows to the region,
/// and serves peers (Raft and gossip on one listener, `cluster_listen`, over
/// TCP) until `shutdown` resolves. `api_addr` is where this node's HTTP API
/// listens.
#[allow(clippy::too_many_arguments)]
pub async fn start_region(
    settings: &NodeSettings,
    store: Arc<dyn Store>,
    api_addr: SocketAddr,
    counters: Arc<Counters>,
    spend_log: Arc<crate::spendlog::SpendLog>,
    clock: Arc<dyn Clock>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<Joined> {
    let cluster = &settings.cluster;
    let api_url = cluster
        .advertise_url
        .clone()
        .unwrap_or_else(|| format!("http://{api_addr}"));
    let Some(listen) = cluster.listen else {
        let wall = wall_clock(clock);
        return lone_region(&settings.region, store, api_url, &counters, wall, shutdown).await;
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
    let net = match load_cluster_tls(settings)? {
        Some(tls) => {
            // Both watchers live as long as the process.
            tls.clone()
                .spawn_reload_on_change(TLS_RELOAD_EVERY, std::future::pending());
            let on_hup = tls.clone();
            keep_reloading(
                "inter-node",
                move || on_hup.reload(),
                std::future::pending(),
            );
            PeerNet::tls(listener, own_addr, tls)
        }
        None => {
            if cluster.secret.is_some() {
                tracing::warn!(
                    "inter-node links are plain text (the cluster secret authenticates peers but nothing is encrypted); configure cluster_tls_* for production"
                );
            } else {
                tracing::warn!(
                    "insecure_cluster: inter-node links are neither authenticated nor encrypted (tests only)"
                );
            }
            PeerNet::tcp(listener, own_addr)
        }
    };
    let seed = cluster.raft_id;
    start_region_on(
        settings, store, api_url, counters, spend_log, clock, seed, net, shutdown,
    )
    .await
}

/// [`start_region`] over any network: the region's Raft group (election
/// timers seeded with `seed`), gossip, metadata sync and rights, all dialing
/// and served through `net`, until `shutdown` resolves.
#[allow(clippy::too_many_arguments)]
pub async fn start_region_on(
    settings: &NodeSettings,
    store: Arc<dyn Store>,
    api_url: String,
    counters: Arc<Counters>,
    spend_log: Arc<crate::spendlog::SpendLog>,
    clock: Arc<dyn Clock>,
    seed: u64,
    net: PeerNet,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<Joined> {
    let cluster = &settings.cluster;
    let wall = wall_clock(clock);
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
            raft_addr: net.own_addr.clone(),
            api_url,
        },
    );
    let secret = ClusterSecret::new(cluster.secret.as_ref().map(|s| s.expose()))
        .map_err(|e| Error::Internal(e.to_string()))?;
    let dialer = net.dialer;
    let transport = GrpcTransport::new(settings.region.clone(), secret.clone(), dialer.clone());
    let config = RegionConfig {
        region: RegionId::new(settings.region.clone()),
        node_id: cluster.raft_id,
        initial_members: members,
        seed,
        heartbeat: Duration::from_millis(100),
        election_timeout: (Duration::from_millis(500), Duration::from_millis(1000)),
        snapshot_every: cluster.snapshot_every,
    };
    let region = Region::start(config, store, Arc::new(transport)).await?;

    let gossip_config = GossipConfig {
        interval: cluster.gossip_interval,
        ..GossipConfig::default()
    };
    let routes = Routes::new(raft_service(
        region.clone(),
        secret.clone(),
        settings.region.clone(),
    ))
    .add_service(gossip_service(
        counters.clone(),
        secret.clone(),
        wall.clone(),
        &gossip_config,
    ))
    .add_service(sync_service(region.clone(), secret.clone()))
    .add_service(rights_service(region.clone(), secret.clone(), wall.clone()))
    .add_service(crate::spend_rpc::spend_service(
        spend_log,
        secret.clone(),
        settings.region.clone(),
    ));
    let spend_peers =
        crate::spend_rpc::SpendPeers::new(dialer.clone(), secret.clone(), settings.region.clone());
    let gossip = Gossip::new(
        counters.clone(),
        dialer.clone(),
        secret.clone(),
        wall.clone(),
        gossip_peers(&region, cluster),
        gossip_config,
    );
    let gossip_stats = gossip.stats();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until_stopped = move || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        }
    };
    tokio::spawn(gossip.run(until_stopped()));
    let metadata_sync = MetadataSync::new(
        region.clone(),
        remote_regions(cluster),
        dialer.clone(),
        secret.clone(),
        SyncConfig::default(),
    );
    tokio::spawn(metadata_sync.run(until_stopped()));
    let secret_for_guard = secret.clone();
    let rights = start_rights(
        &region,
        &counters,
        remote_regions(cluster),
        dialer,
        secret,
        wall,
        until_stopped(),
    );
    let routes = secret_for_guard.guard(routes);
    let serving = (net.serve)(routes, Box::pin(until_stopped()));
    tokio::spawn(async move {
        if let Err(e) = serving.await {
            tracing::error!(error = %e, "the peer listener stopped");
        }
    });
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop.send(true);
    });
    Ok(Joined {
        region,
        rights,
        spend_peers: Some(spend_peers),
        gossip: Some(gossip_stats),
    })
}

/// Unix milliseconds from the node's clock, for the replication tasks.
pub(crate) fn wall_clock(clock: Arc<dyn Clock>) -> WallClock {
    Arc::new(move || clock.since_epoch().as_millis() as u64)
}

/// How often a region alone looks for documents to compact (a region
/// with others does so in every metadata sync round).
const COMPACT_EVERY: Duration = Duration::from_secs(1);

/// How long an inter-region request for rights may take.
const RIGHTS_DEADLINE: Duration = Duration::from_secs(2);
/// How often unused rights are looked for, and how long unused they are
/// kept before they are given back to the ledger.
const RIGHTS_SWEEP: Duration = Duration::from_secs(1);
const RIGHTS_IDLE: Duration = Duration::from_secs(5);

/// This node's rights to `strict` limits, and the task that gives back the
/// ones it stops using.
fn start_rights(
    region: &Region,
    counters: &Arc<Counters>,
    remote: RemoteRegions,
    dialer: Dialer,
    secret: ClusterSecret,
    clock: WallClock,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Arc<Rights> {
    let rights = Rights::new(
        region.clone(),
        counters.clone(),
        remote,
        dialer,
        secret,
        clock,
        RIGHTS_DEADLINE,
    );
    tokio::spawn(
        rights
            .clone()
            .run_returns(RIGHTS_SWEEP, RIGHTS_IDLE, shutdown),
    );
    rights
}

/// Metadata is synced with every configured remote region (through any of
/// its nodes).
fn remote_regions(cluster: &crate::config::ClusterSettings) -> RemoteRegions {
    let delay = cluster.inject_region_delay;
    let cut = partition_file(cluster);
    let regions: Vec<RemoteRegion> = cluster
        .remote_regions
        .iter()
        .map(|(name, addrs)| RemoteRegion {
            name: name.clone(),
            peers: addrs
                .iter()
                .map(|addr| Peer {
                    addr: addr.clone(),
                    region: Some(name.clone()),
                    delay,
                    cut_while: cut.clone(),
                })
                .collect(),
        })
        .collect();
    Arc::new(move || regions.clone())
}

/// Gossip goes to every other member of this region (as Raft knows them now)
/// and every configured node of every other region.
fn gossip_peers(region: &Region, cluster: &crate::config::ClusterSettings) -> PeerList {
    let region = region.clone();
    let me = cluster.raft_id;
    let delay = cluster.inject_region_delay;
    let cut = partition_file(cluster);
    let remote: Vec<Peer> = cluster
        .remote_regions
        .iter()
        .flat_map(|(name, addrs)| addrs.iter().map(move |addr| (name, addr)))
        .map(|(name, addr)| Peer {
            addr: addr.clone(),
            region: Some(name.clone()),
            delay,
            cut_while: cut.clone(),
        })
        .collect();
    // Configured peers count until Raft knows the membership (a node that
    // has not joined yet still gossips).
    let configured: Vec<String> = cluster
        .peers
        .iter()
        .filter(|p| p.raft_id != me)
        .map(|p| p.cluster_addr.clone())
        .collect();
    Arc::new(move || {
        let mut local: std::collections::BTreeSet<String> = region
            .status()
            .members
            .into_iter()
            .filter(|m| m.node_id != me && !m.raft_addr.is_empty())
            .map(|m| m.raft_addr)
            .collect();
        if local.is_empty() {
            local.extend(configured.iter().cloned());
        }
        let own = region.name().as_str();
        let mut peers: Vec<Peer> = local
            .into_iter()
            .map(|addr| Peer::new(addr).of_region(own))
            .collect();
        peers.extend(remote.iter().cloned());
        peers
    })
}

/// The file whose existence cuts this node's links to other regions
/// (a test-only fault switch).
fn partition_file(cluster: &crate::config::ClusterSettings) -> Option<Arc<std::path::Path>> {
    cluster.inject_partition_file.as_deref().map(Arc::from)
}

/// Opens this node's counters from `store` and starts the task that makes
/// its own changes durable; it writes what is pending when `shutdown`
/// resolves and then ends. `node` is the node's Raft id: unique in its
/// region, so `(region, node, incarnation)` names one writer.
pub fn start_counters(
    region: &str,
    node: u64,
    store: Arc<dyn Store>,
    durability: Durability,
    rng: &crate::clock::SeededRng,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(Arc<Counters>, tokio::task::JoinHandle<()>)> {
    let counters = Counters::open(region, node, store, durability, || rng.next_u64())
        .map_err(|e| Error::Internal(format!("opening counters: {e}")))?;
    let counters = Arc::new(counters);
    // Requests in flight when this node last stopped are gone: free their
    // `max_parallel_requests` slots.
    let _ = counters.release_own(|id| id.metric == meridian_replication::crdt::Metric::Parallel);
    let flusher = tokio::spawn(counters.clone().run_flusher(shutdown));
    Ok((counters, flusher))
}

/// Opens the node's database in its data directory.
#[cfg(feature = "rocksdb")]
pub fn open_store(data_dir: &std::path::Path) -> Result<Arc<dyn Store>> {
    let path = data_dir.join("db");
    let store = meridian_storage::RocksStore::open(&path)
        .map_err(|e| Error::Internal(format!("opening {}: {e}", path.display())))?;
    Ok(Arc::new(store))
}
