//! From YAML text to [`Config`]: walks the document by hand so every error and
//! every ignored key carries its exact path. Each section has its module; the
//! scalars they share (with LiteLLM's leniency) are in `scalars`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::{Map, Value};

use super::{
    Config, DEFAULT_MAX_REQUEST_BYTES, DEFAULT_TIMEOUT, Deployment, Disabled, Ignored, Mode,
    NodeSettings, ProviderKind,
};
use crate::error::{Error, Result};
use crate::pricing;
use crate::secret::Secret;

mod meridian;
mod model_list;
mod providers;
mod routing;
mod scalars;
mod settings;

pub use routing::request_fallbacks;
use scalars::is_truthy;
use settings::Timeouts;

/// Where `os.environ/VAR` references and `MERIDIAN_*` settings are read from.
pub trait EnvSource {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

impl EnvSource for BTreeMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// Reads and parses `path`. With `check`, unset `os.environ/` variables are
/// reported instead of failing (a config is often checked away from its secrets).
pub fn load_file(path: &Path, env: &dyn EnvSource, check: bool) -> Result<Config> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::io(format!("reading config file {}", path.display()), e))?;
    let mut config = parse_str(&text, &path.display().to_string(), env, check)?;
    config.source = Some(path.to_path_buf());
    Ok(config)
}

pub fn parse_str(text: &str, file: &str, env: &dyn EnvSource, check: bool) -> Result<Config> {
    let doc: Value = serde_yaml_ng::from_str(text).map_err(|e| Error::Config {
        file: file.to_owned(),
        path: "(document)".into(),
        expected: format!("valid YAML: {e}"),
    })?;
    Parser::new(file, env, check, None).config(&doc)
}

/// Parses one `model_list` entry given at run time (`/model/new`): the same
/// rules as the file, default timeouts, `source` naming where it came from in
/// errors. `Ok((None, why))`: a provider or mode that is not served.
///
/// An admin API must not become a way to read the node's environment: an
/// `os.environ/VAR` reference resolves only in a credential field
/// ([`CREDENTIAL_PARAMS`]) and only when `allowed_env` (the operator's
/// `meridian.model_env_allowlist`) names `VAR`; no variable is read
/// implicitly (a model without `api_key` has none, not `OPENAI_API_KEY`).
pub fn deployment_from_json(
    entry: &Value,
    source: &str,
    env: &dyn EnvSource,
    allowed_env: &super::EnvAllowlist,
) -> Result<(Option<Deployment>, Vec<Ignored>)> {
    let mut p = Parser::new(source, env, false, Some(allowed_env));
    let deployment = p.deployment(entry, "model", &Timeouts::default())?;
    Ok((deployment, p.ignored))
}

impl Config {
    /// The embedded default: one node, region `local`, built-in mock models.
    pub fn embedded(env: &dyn EnvSource) -> Config {
        let mock = |group: &str, model: &str, mode: Mode| Deployment {
            id: format!("builtin-{group}"),
            model_group: group.into(),
            provider: ProviderKind::Mock,
            provider_name: "mock".into(),
            upstream_model: model.into(),
            api_base: "mock://".into(),
            api_key: None,
            api_version: None,
            timeout: DEFAULT_TIMEOUT,
            stream_timeout: DEFAULT_TIMEOUT,
            rpm: None,
            tpm: None,
            weight: None,
            order: None,
            tags: Vec::new(),
            region_name: None,
            cooldown_time: None,
            allowed_fails: None,
            health: Default::default(),
            mode,
            price: pricing::lookup("mock"),
        };
        let mut config = Config {
            deployments: vec![
                mock("mock-chat", "chat", Mode::Chat),
                mock("mock-embedding", "embedding", Mode::Embedding),
            ],
            ..Config::defaults()
        };
        config.apply_env(env);
        config
    }

    /// What a file that sets nothing gives (before the environment's overrides).
    fn defaults() -> Config {
        Config {
            source: None,
            node: NodeSettings::default(),
            master_key: None,
            salt_key: None,
            deployments: Vec::new(),
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            spend_log_retention: crate::spendlog::DEFAULT_RETENTION,
            default_enforcement: Default::default(),
            strict_wait: DEFAULT_STRICT_WAIT,
            shutdown_drain: crate::runtime::DRAIN_DEADLINE,
            model_env_allowlist: Default::default(),
            http: crate::listener::HttpLimits::default(),
            disable: Disabled::default(),
            metrics: Default::default(),
            router: Default::default(),
            health_checks: Default::default(),
            ignored: Vec::new(),
            unset_env: Vec::new(),
        }
    }

    /// Settings the environment overrides whatever the file says.
    fn apply_env(&mut self, env: &dyn EnvSource) {
        if let Some(key) = env
            .var("MERIDIAN_MASTER_KEY")
            .or_else(|| env.var("LITELLM_MASTER_KEY"))
        {
            self.master_key = Some(Secret::new(key));
        }
        if let Some(salt) = env
            .var("MERIDIAN_SALT_KEY")
            .or_else(|| env.var("LITELLM_SALT_KEY"))
        {
            self.salt_key = Some(Secret::new(salt));
        }
        if let Some(secret) = env.var("MERIDIAN_CLUSTER_SECRET") {
            self.node.cluster.secret = Some(Secret::new(secret));
        }
        let flag = |name: &str| env.var(name).is_some_and(|v| is_truthy(&v));
        self.disable.admin |= flag("DISABLE_ADMIN_ENDPOINTS");
        self.disable.llm_api |= flag("DISABLE_LLM_API_ENDPOINTS") || flag("DISABLE_LLM_ENDPOINTS");
        self.disable.ui |= flag("DISABLE_ADMIN_UI");
    }
}

struct Parser<'a> {
    file: &'a str,
    env: &'a dyn EnvSource,
    /// `environment_variables:` from the file; they take precedence over the
    /// process environment, as LiteLLM exports them before resolving.
    overlay: BTreeMap<String, String>,
    check: bool,
    ignored: Vec<Ignored>,
    unset_env: Vec<Ignored>,
    /// Set for models added at run time (`/model/new`): the only variables
    /// their `os.environ/` references may name, and only in credential
    /// fields; nothing is read from the environment implicitly.
    runtime_env: Option<&'a super::EnvAllowlist>,
    /// Variables a run-time model's credentials named, with where each may
    /// be sent (checked once its `api_base` is known).
    env_bound: Vec<(String, Option<String>)>,
}

/// `litellm_params` that hold credentials: sealed when stored, the only
/// fields of a run-time model that may name an environment variable.
pub const CREDENTIAL_PARAMS: &[&str] = &[
    "api_key",
    "aws_access_key_id",
    "aws_secret_access_key",
    "aws_session_token",
    "vertex_credentials",
    "azure_ad_token",
    "client_secret",
];

impl<'a> Parser<'a> {
    fn new(
        file: &'a str,
        env: &'a dyn EnvSource,
        check: bool,
        runtime_env: Option<&'a super::EnvAllowlist>,
    ) -> Self {
        Parser {
            file,
            env,
            overlay: BTreeMap::new(),
            check,
            ignored: Vec::new(),
            unset_env: Vec::new(),
            runtime_env,
            env_bound: Vec::new(),
        }
    }

    fn err(&self, path: &str, expected: impl Into<String>) -> Error {
        Error::Config {
            file: self.file.to_owned(),
            path: path.to_owned(),
            expected: expected.into(),
        }
    }

    fn ignore(&mut self, path: String, reason: impl Into<String>) {
        self.ignored.push(Ignored {
            path,
            reason: reason.into(),
        });
    }

    fn config(&mut self, doc: &Value) -> Result<Config> {
        let empty = Map::new();
        let top = match doc {
            Value::Null => &empty,
            Value::Object(m) => m,
            _ => {
                return Err(self.err(
                    "(document)",
                    "a mapping of sections (model_list, general_settings, ...)",
                ));
            }
        };
        if let Some(vars) = top.get("environment_variables") {
            self.environment_variables(vars)?;
        }
        let mut config = Config::defaults();
        let mut defaults = Timeouts::default();
        // Settings first: deployment defaults depend on them.
        for (key, value) in top {
            match key.as_str() {
                "general_settings" => self.general_settings(value, &mut config)?,
                "router_settings" => {
                    self.router_settings(value, &mut defaults, &mut config.router)?
                }
                "litellm_settings" => self.litellm_settings(value, &mut defaults, &mut config)?,
                "meridian" => self.meridian(value, &mut config)?,
                "model_list" | "environment_variables" => {}
                "guardrails" => self.ignore(
                    "guardrails".into(),
                    "LiteLLM guardrails are not supported by Meridian; requests and answers pass unchecked by them",
                ),
                "credential_list" => self.ignore(
                    "credential_list".into(),
                    "shared credentials are not supported yet; put api_key on each deployment",
                ),
                other => self.ignore(other.to_owned(), "unknown top-level section; ignored"),
            }
        }
        if let Some(list) = top.get("model_list") {
            config.deployments = self.model_list(list, &defaults)?;
        }
        config.apply_env(self.env);
        super::tls::check(&config).map_err(|(path, expected)| self.err(path, expected))?;
        config.ignored = std::mem::take(&mut self.ignored);
        config.unset_env = std::mem::take(&mut self.unset_env);
        Ok(config)
    }
}

const NOT_YET: &str = "not supported by Meridian yet; ignored";
/// How long a request may wait for a `strict` limit's rights by default:
/// a few cross-region round trips and a Raft write.
const DEFAULT_STRICT_WAIT: Duration = Duration::from_millis(500);

#[cfg(test)]
mod tests;
