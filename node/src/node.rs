//! A running node's shared state, built once from the config and the injected
//! seams (upstream client, clock, RNG). Handlers borrow it; nothing in it does
//! I/O on the request path.

use std::path::PathBuf;
use std::sync::Arc;

use meridian_consensus::Region;
use meridian_replication::Counters;

use crate::spendlog::SpendLog;

use crate::auth::Authenticator;
use crate::clock::{Clock, SeededRng, SystemClock};
use crate::config::{Config, Disabled};
use crate::error::Result;
use crate::providers::Providers;
use crate::router::ModelRouter;
use crate::secret::Secret;
use crate::upstream::{HttpUpstream, UpstreamClient};

/// Everything from outside the process that the node's behaviour depends on.
/// Production uses [`Seams::production`]; tests and simulations pass their own.
pub struct Seams {
    pub upstream: Arc<dyn UpstreamClient>,
    pub clock: Arc<dyn Clock>,
    pub rng: SeededRng,
}

impl Seams {
    pub fn production() -> Result<Self> {
        Ok(Self {
            upstream: Arc::new(HttpUpstream::new()?),
            clock: Arc::new(SystemClock),
            rng: SeededRng::from_os(),
        })
    }
}

/// The node's state that lives in its data directory, opened and with its
/// background tasks started (see `cluster`).
pub struct Local {
    pub metadata: Region,
    pub counters: Arc<Counters>,
    pub spend_log: Arc<SpendLog>,
    pub rights: Arc<crate::rights::Rights>,
    /// The region's other members' spend-log rows (`None`: a region of one).
    pub spend_peers: Option<crate::spend_rpc::SpendPeers>,
    /// The node's store (readiness asks it whether it is still usable).
    pub store: Arc<meridian_storage::Watched>,
    pub gossip: Option<Arc<meridian_replication::GossipStats>>,
}

impl Local {
    pub fn new(
        joined: crate::cluster::Joined,
        counters: Arc<Counters>,
        spend_log: Arc<SpendLog>,
        store: Arc<meridian_storage::Watched>,
    ) -> Self {
        Self {
            metadata: joined.region,
            counters,
            spend_log,
            rights: joined.rights,
            spend_peers: joined.spend_peers,
            store,
            gossip: joined.gossip,
        }
    }
}

pub struct Node {
    pub node_id: String,
    /// Seals and opens provider credentials kept in the region's metadata.
    pub sealer: crate::credentials::Sealer,
    /// The region's replicated metadata (keys, teams, users, ...).
    pub metadata: Region,
    /// This node's view of the global counters (spend, requests, tokens).
    pub counters: Arc<Counters>,
    /// The node's store, which knows whether its writes are failing (then
    /// the node takes no LLM calls and is not ready).
    pub store: Arc<meridian_storage::Watched>,
    /// Per-request spend rows served by this node (`/spend/logs`).
    pub spend_log: Arc<SpendLog>,
    /// Rights this node holds to `strict` limits, and the asking for more.
    pub rights: Arc<crate::rights::Rights>,
    /// Asks the region's other members for their spend-log rows.
    pub spend_peers: Option<crate::spend_rpc::SpendPeers>,
    /// What gossip does with each peer, for the metrics (`None`: a region
    /// of one).
    pub gossip: Option<Arc<meridian_replication::GossipStats>>,
    pub default_enforcement: meridian_consensus::metadata::Enforcement,
    pub strict_wait: std::time::Duration,
    /// What run-time models may read from the environment.
    pub model_env_allowlist: crate::config::EnvAllowlist,
    pub region: String,
    pub data_dir: PathBuf,
    pub router: ModelRouter,
    /// Background health checks and their latest round.
    pub health: crate::health::Health,
    pub providers: Providers,
    pub auth: Authenticator,
    pub max_request_bytes: usize,
    /// Limits of the public listener (and how long a body may take).
    pub http: crate::listener::HttpLimits,
    /// Keys each non-admin user made on this node lately.
    pub keys_made: crate::api::KeysMade,
    /// Memory bodies being parsed may take at once.
    pub parse_budget: crate::api::extract::ParseBudget,
    pub disable: Disabled,
    /// Prometheus metrics (`GET /metrics`), and whether reading them takes
    /// an admin's key.
    pub metrics: Arc<crate::metrics::Metrics>,
    pub metrics_require_auth: bool,
    pub upstream: Arc<dyn UpstreamClient>,
    pub clock: Arc<dyn Clock>,
    pub rng: SeededRng,
}

impl Node {
    /// `master_key` is the resolved key (config, environment or generated).
    pub fn new(config: Config, master_key: &Secret, seams: Seams, local: Local) -> Arc<Self> {
        let sealer =
            crate::credentials::Sealer::new(config.salt_key.as_ref().unwrap_or(master_key));
        let router = ModelRouter::new(config.deployments, config.router, &config.node.region);
        let metrics = crate::metrics::Metrics::new(
            &config.node.region,
            &config.node.node_id,
            config.metrics.max_keys,
            config.metrics.on,
        );
        Arc::new(Self {
            sealer,
            node_id: config.node.node_id,
            metadata: local.metadata,
            counters: local.counters,
            store: local.store,
            spend_log: local.spend_log,
            rights: local.rights,
            spend_peers: local.spend_peers,
            gossip: local.gossip,
            default_enforcement: config.default_enforcement,
            strict_wait: config.strict_wait,
            model_env_allowlist: config.model_env_allowlist,
            region: config.node.region,
            data_dir: config.node.data_dir,
            router,
            health: crate::health::Health::new(config.health_checks),
            providers: Providers::default(),
            auth: Authenticator::new(master_key),
            max_request_bytes: config.max_request_bytes,
            http: config.http,
            keys_made: Default::default(),
            parse_budget: Default::default(),
            disable: config.disable,
            metrics: Arc::new(metrics),
            metrics_require_auth: config.metrics.require_auth,
            upstream: seams.upstream,
            clock: seams.clock,
            rng: seams.rng,
        })
    }

    /// Brings the router's run-time deployments up to date with the applied
    /// models visible in this region. A generation compare when nothing
    /// changed; a rebuild (credentials opened in memory) when something did.
    pub fn refresh_models(&self) {
        let generation = self.metadata.read(|s| s.models_generation());
        if generation == self.router.runtime_generation() {
            return;
        }
        let records: Vec<_> = self.metadata.read(|s| {
            s.models()
                .filter(|m| m.scope.includes(&self.region))
                .cloned()
                .collect()
        });
        let deployments = records
            .iter()
            .filter_map(|m| match self.deployment_of(m) {
                Ok(d) => Some(d),
                Err(e) => {
                    tracing::warn!(model_id = %m.model_id, error = %e, "a stored model cannot be served here");
                    None
                }
            })
            .collect();
        self.router.set_runtime(generation, deployments);
    }

    /// A stored model as a deployment of this node.
    pub fn deployment_of(
        &self,
        m: &meridian_consensus::metadata::ModelRecord,
    ) -> crate::error::Result<crate::config::Deployment> {
        let mut params = m.litellm_params.clone();
        if let Some(sealed) = &m.encrypted_api_key {
            params.insert("api_key".into(), self.sealer.open(sealed)?.expose().into());
        }
        for (name, sealed) in &m.sealed_params {
            params.insert(name.clone(), self.sealer.open(sealed)?.expose().into());
        }
        let mut info = m.model_info.clone();
        info.insert("id".into(), m.model_id.clone().into());
        let entry = serde_json::json!({ "model_name": m.model_name, "litellm_params": params, "model_info": info });
        match crate::config::deployment_from_json(
            &entry,
            "stored model",
            &crate::config::ProcessEnv,
            &self.model_env_allowlist,
        )? {
            (Some(d), _) => Ok(d),
            (None, why) => Err(crate::error::Error::Internal(
                why.first()
                    .map_or_else(|| "not servable".to_owned(), |i| i.reason.clone()),
            )),
        }
    }

    /// Unix milliseconds on this node's clock (stamped on metadata changes).
    pub fn now_ms(&self) -> u64 {
        self.clock.since_epoch().as_millis() as u64
    }

    /// Whether this node serves `model` (a group, or a deployment's id).
    pub fn serves(&self, model: &str) -> bool {
        self.router.has_group(model) || self.router.by_id(model).is_some()
    }

    /// A fresh request id (32 hex digits) from the node's RNG.
    pub fn request_id(&self) -> String {
        self.rng.hex(16)
    }
}
