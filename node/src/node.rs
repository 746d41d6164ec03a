//! A running node's shared state, built once from the config and the injected
//! seams (upstream client, clock, RNG). Handlers borrow it; nothing in it does
//! I/O on the request path.

use std::path::PathBuf;
use std::sync::Arc;

use meridian_consensus::Region;

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

pub struct Node {
    pub node_id: String,
    /// The region's replicated metadata (keys, teams, users, ...).
    pub metadata: Region,
    pub region: String,
    pub data_dir: PathBuf,
    pub router: ModelRouter,
    pub providers: Providers,
    pub auth: Authenticator,
    pub max_request_bytes: usize,
    pub disable: Disabled,
    pub upstream: Arc<dyn UpstreamClient>,
    pub clock: Arc<dyn Clock>,
    pub rng: SeededRng,
}

impl Node {
    /// `master_key` is the resolved key (config, environment or generated).
    pub fn new(config: Config, master_key: &Secret, seams: Seams, region: Region) -> Arc<Self> {
        Arc::new(Self {
            node_id: config.node.node_id,
            metadata: region,
            region: config.node.region,
            data_dir: config.node.data_dir,
            router: ModelRouter::new(config.deployments),
            providers: Providers::default(),
            auth: Authenticator::new(master_key),
            max_request_bytes: config.max_request_bytes,
            disable: config.disable,
            upstream: seams.upstream,
            clock: seams.clock,
            rng: seams.rng,
        })
    }

    /// Unix milliseconds on this node's clock (stamped on metadata changes).
    pub fn now_ms(&self) -> u64 {
        self.clock.since_epoch().as_millis() as u64
    }

    /// A fresh request id (32 hex digits) from the node's RNG.
    pub fn request_id(&self) -> String {
        self.rng.hex(16)
    }
}
