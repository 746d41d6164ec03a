//! Configuration: a LiteLLM-style `config.yaml` plus Meridian's own `meridian:`
//! section, validated once into runtime types.
//!
//! LiteLLM keys are accepted; every key Meridian does not act on is reported by
//! its path ([`Config::ignored`]) — logged as one warning at start and listed by
//! `meridian config check` — never silently dropped. The `meridian:` section is
//! ours and rejects unknown keys. Errors name the file, the key's path and what
//! was expected.

mod parse;
mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use parse::{
    CREDENTIAL_PARAMS, EnvSource, ProcessEnv, deployment_from_json, load_file, parse_str,
    request_fallbacks,
};
pub use tls::{ClusterTlsFiles, PublicTlsFiles};

/// Environment variables run-time models may name, each with the upstream
/// it may be sent to: `None`, only the provider's own (the model sets no
/// `api_base`); `Some(prefix)`, an `api_base` that starts with `prefix`.
/// An admin can then never point an allowed secret at a server of its own.
pub type EnvAllowlist = std::collections::BTreeMap<String, Option<String>>;

use crate::pricing::Price;
use crate::secret::Secret;

/// LiteLLM's default for `timeout` and `stream_timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
/// Default request body limit (`general_settings.max_request_size_mb`).
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 32 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct Config {
    /// The file this came from, for messages; `None` for the embedded default.
    pub source: Option<PathBuf>,
    pub node: NodeSettings,
    pub master_key: Option<Secret>,
    /// Seals provider credentials stored in the region's metadata
    /// (`MERIDIAN_SALT_KEY` or `LITELLM_SALT_KEY`; the master key if unset).
    pub salt_key: Option<Secret>,
    pub deployments: Vec<Deployment>,
    pub max_request_bytes: usize,
    /// How long `/spend/logs` rows are kept
    /// (`general_settings.maximum_spend_logs_retention_period`).
    pub spend_log_retention: Duration,
    /// How limits are enforced where the entity says nothing
    /// (`meridian.enforcement`; default `available`).
    pub default_enforcement: meridian_consensus::metadata::Enforcement,
    /// How long a request under a `strict` limit may wait for rights from
    /// the limit's home region before it is refused (`meridian.strict_wait_ms`).
    pub strict_wait: Duration,
    /// How long in-flight calls may take to finish once the node is told
    /// to stop (`meridian.shutdown_drain_seconds`).
    pub shutdown_drain: Duration,
    /// Environment variables that models added at run time may name in their
    /// credential fields (`meridian.model_env_allowlist`), each with where
    /// it may be sent; none by default.
    pub model_env_allowlist: EnvAllowlist,
    /// Limits of the public listener's connections (`meridian.max_connections`, ...).
    pub http: crate::listener::HttpLimits,
    pub disable: Disabled,
    /// `GET /metrics`: who may read it, how many keys get labels.
    pub metrics: MetricsSettings,
    /// `router_settings`: strategy, retries, cooldowns, fallbacks.
    pub router: crate::router::RouterSettings,
    /// `general_settings.background_health_checks` and `health_check_interval`.
    pub health_checks: HealthChecks,
    /// Keys present in the file that Meridian accepts but does not act on.
    pub ignored: Vec<Ignored>,
    /// `os.environ/` references whose variable is not set (check mode only;
    /// `serve` fails on them instead).
    pub unset_env: Vec<Ignored>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSettings {
    pub node_id: String,
    pub region: String,
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub cluster: ClusterSettings,
    /// HTTPS on the public listener (`meridian.tls_cert`, `tls_key`).
    pub public_tls: Option<PublicTlsFiles>,
}

impl Default for NodeSettings {
    fn default() -> Self {
        Self {
            node_id: "node-1".into(),
            region: "local".into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 4000)),
            data_dir: PathBuf::from("./meridian-data"),
            cluster: ClusterSettings::default(),
            public_tls: None,
        }
    }
}

/// This node's place in its region's Raft group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    /// This node's Raft id: unique in the region, never reused.
    pub raft_id: u64,
    /// Where peers reach this node (inter-node gRPC). `None`: a region of one
    /// that no other node can join.
    pub listen: Option<SocketAddr>,
    /// This node's HTTP API as peers and clients should reach it; default
    /// `http://<listen address>`.
    pub advertise_url: Option<String>,
    /// The region's initial voters (this node included). Empty: this node alone.
    pub peers: Vec<Peer>,
    /// Shared by the region's nodes; inter-node calls without it are refused.
    pub secret: Option<Secret>,
    /// Mutual TLS on every inter-node link (`meridian.cluster_tls_*`).
    pub tls: Option<ClusterTlsFiles>,
    /// Inter-node links in plain text with no secret (`insecure_cluster`):
    /// tests only; without it such a node refuses to start.
    pub insecure: bool,
    /// Raft log entries between snapshots (older entries are then purged).
    pub snapshot_every: u64,
    /// Other regions' nodes (their inter-node addresses), by region: counters
    /// are gossiped to them and metadata is synced with them.
    pub remote_regions: std::collections::BTreeMap<String, Vec<String>>,
    /// How often counter changes are pushed to every peer.
    pub gossip_interval: std::time::Duration,
    /// Added to every message sent to another region, to demonstrate and test
    /// inter-region latency on one machine. Zero in production.
    pub inject_region_delay: std::time::Duration,
    /// While this file exists, every link to another region is cut (tests
    /// and demos of partitions on one machine). `None` in production.
    pub inject_partition_file: Option<PathBuf>,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        Self {
            raft_id: 1,
            listen: None,
            advertise_url: None,
            peers: Vec::new(),
            secret: None,
            tls: None,
            insecure: false,
            snapshot_every: 5000,
            remote_regions: std::collections::BTreeMap::new(),
            gossip_interval: std::time::Duration::from_millis(100),
            inject_region_delay: std::time::Duration::ZERO,
            inject_partition_file: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub raft_id: u64,
    /// `host:port` of its inter-node listener.
    pub cluster_addr: String,
    pub api_url: String,
}

/// Halves of the API this node does not serve (LiteLLM's control/data-plane
/// split: `DISABLE_ADMIN_ENDPOINTS`, `DISABLE_LLM_API_ENDPOINTS`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Disabled {
    pub admin: bool,
    pub llm_api: bool,
    pub ui: bool,
}

/// `GET /metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsSettings {
    /// Recorded and served (`meridian.disable_metrics: true` turns them off).
    pub on: bool,
    /// Only admins (and the master key) may read it, unless
    /// `litellm_settings.require_auth_for_metrics_endpoint: false`.
    pub require_auth: bool,
    /// The most keys whose series carry their own labels
    /// (`meridian.metrics_max_keys`); the rest are counted as `other`.
    pub max_keys: usize,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        Self {
            on: true,
            require_auth: true,
            max_keys: crate::metrics::DEFAULT_MAX_KEYS,
        }
    }
}

/// A key the file sets that Meridian does not act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ignored {
    /// `router_settings.redis_host`, `model_list[3].litellm_params.aws_region_name`
    pub path: String,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    /// OpenAI or any server speaking its API (vLLM, Ollama, Groq, Together, ...).
    OpenAi,
    Azure,
    Anthropic,
    /// Built-in deterministic models for tests and the embedded default.
    Mock,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Chat,
    Completion,
    Embedding,
}

/// Background health checks: every `interval`, each deployment is called
/// with a one-token request; one that fails is left out of routing until a
/// check passes again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthChecks {
    pub enabled: bool,
    /// LiteLLM's default: 300 s.
    pub interval: Duration,
}

impl Default for HealthChecks {
    fn default() -> Self {
        Self {
            enabled: false,
            interval: Duration::from_secs(300),
        }
    }
}

/// A deployment's own health-check settings (`model_info`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeploymentHealth {
    /// The upstream model probed instead of the deployment's (a cheaper one,
    /// or a concrete one behind a wildcard).
    pub model: Option<String>,
    pub timeout: Option<Duration>,
    /// Left out of background checks (`disable_background_health_check`).
    pub disabled: bool,
}

/// One upstream model behind a model group (LiteLLM's `model_list` entry).
#[derive(Debug, Clone)]
pub struct Deployment {
    /// `model_info.id`, or a stable hash of `litellm_params` when absent.
    pub id: String,
    /// `model_name`: what clients ask for.
    pub model_group: String,
    pub provider: ProviderKind,
    /// The prefix as written (`openai`, `groq`, `azure`, ...), for display.
    pub provider_name: String,
    /// `litellm_params.model` without its provider prefix.
    pub upstream_model: String,
    /// Base URL with no trailing slash. Always set for OpenAI-compatible and
    /// Anthropic deployments (defaults applied); the Azure resource URL for Azure.
    pub api_base: String,
    pub api_key: Option<Secret>,
    pub api_version: Option<String>,
    pub timeout: Duration,
    pub stream_timeout: Duration,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub weight: Option<f64>,
    pub order: Option<u32>,
    pub tags: Vec<String>,
    /// Where it runs: `region_name`, else `aws_region_name` or
    /// `vertex_location`. Preferred by nodes of that region; checked by
    /// data-residency policies.
    pub region_name: Option<String>,
    /// Its own `cooldown_time` (else `router_settings.cooldown_time`).
    pub cooldown_time: Option<std::time::Duration>,
    /// Its own `allowed_fails` per minute (`model_info.allowed_fails`).
    pub allowed_fails: Option<u32>,
    /// `model_info.health_check_*`.
    pub health: DeploymentHealth,
    pub mode: Mode,
    /// Price per token; `None` when neither the config nor the built-in table
    /// knows the model (its calls then cost 0, and start-up warns).
    pub price: Option<Price>,
}
