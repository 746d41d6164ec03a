//! One way to start a node and one way to stop it. [`NodeBuilder`] takes the
//! config and the seams (store, clock, RNG, upstream client, how peers are
//! reached) and returns a [`Running`] node with its background tasks; the
//! `meridian` binary, the simulator, the routing world and every test
//! harness build their nodes here.
//!
//! Stopping runs in this order, because each step needs the ones after it:
//!
//! 1. **Stop accepting** and let in-flight calls finish, up to the drain
//!    deadline ([`listener::serve`](crate::listener::serve)).
//! 2. **Settle what remains**: calls still running at the deadline are cut;
//!    each one's settlement bills what was served (`pipeline::Settlement`'s
//!    `Drop`).
//! 3. **Give back strict-mode rights** this node holds (needs the counters'
//!    writer and the peer links still up), so other nodes may spend them.
//! 4. **Flush** the spend log's pending rows and the counters' pending
//!    changes, and wait until both are written.
//! 5. **Leave the region**: gossip, metadata sync, the rights tasks and the
//!    peer listener stop, then the Raft node shuts down.
//!
//! Dropping a [`Running`] without [`Running::shutdown`] detaches it: its
//! tasks run until the async runtime stops (tests that only need the node).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use meridian_storage::{Durability, Store};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cluster::{self, PeerNet};
use crate::config::Config;
use crate::error::Result;
use crate::node::{Local, Node, Seams};
use crate::secret::Secret;

/// How long in-flight calls may take to finish once a node is told to stop,
/// unless `meridian.shutdown_drain_seconds` says otherwise. Below
/// Kubernetes' default grace period (30 s), so the steps after it run
/// before a SIGKILL.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(20);

/// How long giving back strict-mode rights may take at shutdown; what is
/// not given back by then is returned with this node's next request for it.
const GIVE_BACK_DEADLINE: Duration = Duration::from_secs(3);

/// How this node reaches the other nodes of its region and of other regions.
pub enum Peers {
    /// As the config says: `cluster_listen` bound over TCP (mutual TLS when
    /// configured); without it, a region of one.
    Configured,
    /// A region of one, whatever the config says (embedding, tests).
    Alone,
    /// Over the given network (the simulator's), with this node's API URL
    /// as its peers should know it and the seed of its Raft timers.
    Net {
        net: PeerNet,
        api_url: String,
        seed: u64,
    },
}

/// Builds a node: `NodeBuilder::new(config, key, seams, store).start()`.
pub struct NodeBuilder {
    config: Config,
    master_key: Secret,
    seams: Seams,
    store: Arc<dyn Store>,
    peers: Peers,
    api_addr: Option<SocketAddr>,
    drain: Duration,
}

impl NodeBuilder {
    /// `master_key` is the resolved key (config, environment or generated);
    /// `store` holds the node's state (RocksDB in its data directory in
    /// production, in memory in tests).
    pub fn new(config: Config, master_key: Secret, seams: Seams, store: Arc<dyn Store>) -> Self {
        Self {
            drain: config.shutdown_drain,
            config,
            master_key,
            seams,
            store,
            peers: Peers::Configured,
            api_addr: None,
        }
    }

    pub fn peers(mut self, peers: Peers) -> Self {
        self.peers = peers;
        self
    }

    /// Where the HTTP API listens once bound (its URL is what peers are
    /// told, unless `advertise_url` says otherwise).
    pub fn api_addr(mut self, addr: SocketAddr) -> Self {
        self.api_addr = Some(addr);
        self
    }

    /// Opens the node's state, joins (or forms) its region, and starts its
    /// background tasks.
    pub async fn start(self) -> Result<Running> {
        let Self {
            config,
            master_key,
            seams,
            store,
            peers,
            api_addr,
            drain,
        } = self;
        // Every write of the node goes through one watcher: a failing disk
        // is seen by admission and readiness whoever hit it first.
        let watched = Arc::new(meridian_storage::Watched::new(store));
        let store: Arc<dyn Store> = watched.clone();
        let flush = Phase::new();
        let leave = Phase::new();
        let settings = &config.node;
        let (counters, counter_writer) = cluster::start_counters(
            &settings.region,
            settings.cluster.raft_id,
            store.clone(),
            Durability::Process,
            &seams.rng,
            flush.stopped(),
        )?;
        let (spend_log, log_writer) =
            cluster::start_spend_log(store.clone(), &config, seams.clock.clone(), flush.stopped());
        let api_addr = api_addr.unwrap_or(settings.listen);
        let clock = seams.clock.clone();
        let joined = match peers {
            Peers::Configured => {
                cluster::start_region(
                    settings,
                    store.clone(),
                    api_addr,
                    counters.clone(),
                    spend_log.clone(),
                    clock,
                    leave.stopped(),
                )
                .await?
            }
            Peers::Alone => {
                cluster::lone_region(
                    &settings.region,
                    store.clone(),
                    format!("http://{api_addr}"),
                    &counters,
                    cluster::wall_clock(clock),
                    leave.stopped(),
                )
                .await?
            }
            Peers::Net { net, api_url, seed } => {
                cluster::start_region_on(
                    settings,
                    store.clone(),
                    api_url,
                    counters.clone(),
                    spend_log.clone(),
                    clock,
                    seed,
                    net,
                    leave.stopped(),
                )
                .await?
            }
        };
        let prober = tokio::spawn(probe_writes(watched.clone(), flush.stopped()));
        let local = Local::new(joined, counters, spend_log, watched);
        let node = Node::new(config, &master_key, seams, local);
        let health = node
            .health
            .settings
            .enabled
            .then(|| tokio::spawn(crate::health::run(node.clone())));
        Ok(Running {
            node,
            drain,
            flush,
            leave,
            writers: vec![
                ("spend log", log_writer),
                ("counters", counter_writer),
                ("storage probe", prober),
            ],
            health,
        })
    }
}

/// A started node and its background tasks.
pub struct Running {
    pub node: Arc<Node>,
    drain: Duration,
    /// Ends the spend log's and the counters' writers (after a last write).
    flush: Phase,
    /// Ends the region's tasks: gossip, sync, rights, the peer listener.
    leave: Phase,
    writers: Vec<(&'static str, JoinHandle<()>)>,
    health: Option<JoinHandle<()>>,
}

impl Running {
    /// Serves the node's API on `listener` (over HTTPS when `tls` is given)
    /// until `signal` resolves, then stops in order (see the module docs).
    pub async fn serve<L>(
        self,
        listener: L,
        tls: Option<meridian_link::PublicTls>,
        signal: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<()>
    where
        L: axum::serve::Listener<Addr = SocketAddr>,
    {
        let app = crate::api::router(self.node.clone());
        let limits = self.node.http;
        crate::listener::serve(listener, app, limits, tls, signal, self.drain).await;
        self.shutdown().await;
        Ok(())
    }

    /// Steps 3–5 of stopping: give back rights, flush, leave the region.
    /// (Serving has stopped and in-flight calls are settled.)
    pub async fn shutdown(self) {
        if let Some(health) = self.health {
            health.abort();
        }
        let node = self.node;
        match tokio::time::timeout(GIVE_BACK_DEADLINE, node.rights.give_back_all()).await {
            Ok(0) => {}
            Ok(left) => tracing::warn!(
                counters = left,
                "some strict-mode rights could not be given back; they are returned with this node's next request for them"
            ),
            Err(_) => tracing::warn!("giving back strict-mode rights took too long; stopped"),
        }
        self.flush.stop();
        for (name, writer) in self.writers {
            if let Err(e) = writer.await {
                tracing::error!(writer = name, error = %e, "a writer failed at shutdown");
            }
        }
        self.leave.stop();
        node.metadata.shutdown().await;
        tracing::info!("stopped: in-flight calls settled, spend log and counters written");
    }
}

/// While the store's writes are failing, tries one every
/// [`PROBE_EVERY`]: the node takes calls again as soon as its disk works,
/// even when nothing else has a write to retry.
async fn probe_writes(
    store: Arc<meridian_storage::Watched>,
    stopped: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            () = tokio::time::sleep(PROBE_EVERY) => {
                if store.writable().is_err() && store.probe().is_ok() {
                    tracing::info!("storage writes work again");
                }
            }
            () = &mut stopped => return,
        }
    }
}

/// How often a node whose writes fail tries one.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// One step of stopping, which the tasks of that step wait for. If it is
/// dropped without [`Phase::stop`], the tasks run on (detached).
struct Phase(watch::Sender<bool>);

impl Phase {
    fn new() -> Self {
        Self(watch::channel(false).0)
    }

    fn stop(&self) {
        self.0.send_replace(true);
    }

    fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.0.subscribe();
        async move {
            if rx.wait_for(|s| *s).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}
