//! From YAML text to [`Config`]: walks the document by hand so every error and
//! every ignored key carries its exact path.
//!
//! Size: past the ~600-line rule, knowingly for now: the hand walk over the
//! YAML document is one thing, but it is to be replaced by raw serde structs
//! validated into runtime types (issue 16, item 5), which splits it.

use std::collections::{BTreeMap, BTreeSet};

use std::path::Path;
use std::time::Duration;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::{
    Config, DEFAULT_MAX_REQUEST_BYTES, DEFAULT_TIMEOUT, Deployment, Disabled, Ignored, Mode,
    NodeSettings, ProviderKind,
};
use crate::error::{Error, Result};

mod routing;
use crate::pricing::{self, Price};
use crate::secret::Secret;
pub use routing::request_fallbacks;

mod meridian;

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
    let mut p = Parser {
        file,
        env,
        overlay: BTreeMap::new(),
        check,
        ignored: Vec::new(),
        unset_env: Vec::new(),
        runtime_env: None,
        env_bound: Vec::new(),
    };
    p.config(&doc)
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
    let mut p = Parser {
        file: source,
        env,
        overlay: BTreeMap::new(),
        check: false,
        ignored: Vec::new(),
        unset_env: Vec::new(),
        runtime_env: Some(allowed_env),
        env_bound: Vec::new(),
    };
    let defaults = Timeouts {
        timeout: DEFAULT_TIMEOUT,
        stream_timeout: DEFAULT_TIMEOUT,
        request_timeout: None,
        router_timeout: false,
    };
    let deployment = p.deployment(entry, "model", &defaults)?;
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
            source: None,
            node: NodeSettings::default(),
            master_key: None,
            salt_key: None,
            deployments: vec![
                mock("mock-chat", "chat", Mode::Chat),
                mock("mock-embedding", "embedding", Mode::Embedding),
            ],
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            spend_log_retention: crate::spendlog::DEFAULT_RETENTION,
            default_enforcement: Default::default(),
            strict_wait: DEFAULT_STRICT_WAIT,
            model_env_allowlist: Default::default(),
            http: crate::listener::HttpLimits::default(),
            disable: Disabled::default(),
            router: Default::default(),
            health_checks: Default::default(),
            ignored: Vec::new(),
            unset_env: Vec::new(),
        };
        config.apply_env(env);
        config
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

/// An `os.environ/` reference left in place by check mode.
fn is_unresolved(v: &str) -> bool {
    v.starts_with("os.environ/")
}

fn is_truthy(v: &str) -> bool {
    matches!(
        v.trim().to_ascii_lowercase().as_str(),
        "1" | "true" | "yes" | "on"
    )
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

impl Parser<'_> {
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
        let mut config = Config {
            source: None,
            node: NodeSettings::default(),
            master_key: None,
            salt_key: None,
            deployments: Vec::new(),
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            spend_log_retention: crate::spendlog::DEFAULT_RETENTION,
            default_enforcement: Default::default(),
            strict_wait: DEFAULT_STRICT_WAIT,
            model_env_allowlist: Default::default(),
            http: crate::listener::HttpLimits::default(),
            disable: Disabled::default(),
            router: Default::default(),
            health_checks: Default::default(),
            ignored: Vec::new(),
            unset_env: Vec::new(),
        };
        let mut defaults = Timeouts {
            timeout: DEFAULT_TIMEOUT,
            stream_timeout: DEFAULT_TIMEOUT,
            request_timeout: None,
            router_timeout: false,
        };
        // Settings first: deployment defaults depend on them.
        for (key, value) in top {
            match key.as_str() {
                "general_settings" => self.general_settings(value, &mut config)?,
                "router_settings" => {
                    self.router_settings(value, &mut defaults, &mut config.router)?
                }
                "litellm_settings" => {
                    self.litellm_settings(value, &mut defaults, &mut config.router)?
                }
                "meridian" => self.meridian(value, &mut config)?,
                "model_list" | "environment_variables" => {}
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

    fn mapping<'v>(&self, value: &'v Value, path: &str) -> Result<&'v Map<String, Value>> {
        value
            .as_object()
            .ok_or_else(|| self.err(path, format!("a mapping, found {}", kind(value))))
    }

    /// A string, with `os.environ/VAR` resolved. `Ok(None)` if absent, null, or
    /// (in check mode) an unset variable.
    fn string(&mut self, value: Option<&Value>, path: &str) -> Result<Option<String>> {
        let raw = match value {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::String(s)) => s,
            Some(other) => {
                return Err(self.err(path, format!("a string, found {} (quote it)", kind(other))));
            }
        };
        let Some(var) = raw.strip_prefix("os.environ/") else {
            return Ok(Some(raw.clone()));
        };
        if let Some(allowed) = self.runtime_env {
            let field = path.rsplit('.').next().unwrap_or(path);
            if !CREDENTIAL_PARAMS.contains(&field) {
                return Err(self.err(
                    path,
                    format!(
                        "a literal value: in a model added at run time, os.environ/ is accepted only in credential fields ({})",
                        CREDENTIAL_PARAMS.join(", ")
                    ),
                ));
            }
            let Some(bound) = allowed.get(var) else {
                return Err(self.err(
                    path,
                    format!("a variable listed in meridian.model_env_allowlist; `{var}` is not"),
                ));
            };
            self.env_bound.push((var.to_owned(), bound.clone()));
        }
        if let Some(v) = self.overlay.get(var).cloned().or_else(|| self.env.var(var)) {
            return Ok(Some(v));
        }
        if self.check {
            self.unset_env.push(Ignored {
                path: path.to_owned(),
                reason: format!(
                    "environment variable {var} is not set here; `serve` fails unless it is"
                ),
            });
            // Keep the reference itself, so required fields stay present and
            // the rest of the file is still checked.
            return Ok(Some(raw.clone()));
        }
        Err(self.err(
            path,
            format!("environment variable {var} to be set (referenced as os.environ/{var})"),
        ))
    }

    fn required_string(&mut self, value: Option<&Value>, path: &str) -> Result<String> {
        match self.string(value, path)? {
            Some(s) if !s.trim().is_empty() => Ok(s),
            _ => Err(self.err(path, "a non-empty string")),
        }
    }

    /// A number, also accepted as a numeric string (what `os.environ/` yields).
    fn number(&mut self, value: Option<&Value>, path: &str) -> Result<Option<f64>> {
        let n = match value {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::Number(n)) => n.as_f64(),
            Some(Value::String(_)) => match self.string(value, path)? {
                Some(s) if is_unresolved(&s) => return Ok(None),
                None => return Ok(None),
                Some(s) => s.trim().parse::<f64>().ok(),
            },
            Some(_) => None,
        };
        match n {
            Some(n) if n.is_finite() && n >= 0.0 => Ok(Some(n)),
            _ => Err(self.err(path, "a non-negative number")),
        }
    }

    fn integer(&mut self, value: Option<&Value>, path: &str) -> Result<Option<u64>> {
        match self.number(value, path)? {
            None => Ok(None),
            Some(n) if n.fract() == 0.0 && (0.0..=u64::MAX as f64).contains(&n) => {
                Ok(Some(n as u64))
            }
            Some(_) => Err(self.err(path, "a whole number, not negative")),
        }
    }

    fn seconds(&mut self, value: Option<&Value>, path: &str) -> Result<Option<Duration>> {
        match self.number(value, path)? {
            None => Ok(None),
            Some(s) if s > 0.0 && s < 1e9 => Ok(Some(Duration::from_secs_f64(s))),
            Some(_) => Err(self.err(path, "a positive number of seconds")),
        }
    }

    fn boolean(&mut self, value: Option<&Value>, path: &str) -> Result<Option<bool>> {
        match value {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(Value::String(_)) => match self.string(value, path)? {
                Some(s) if is_unresolved(&s) => Ok(None),
                None => Ok(None),
                Some(s) => Ok(Some(is_truthy(&s))),
            },
            Some(other) => Err(self.err(path, format!("true or false, found {}", kind(other)))),
        }
    }

    fn environment_variables(&mut self, value: &Value) -> Result<()> {
        let map = self.mapping(value, "environment_variables")?.clone();
        for (name, v) in &map {
            let path = format!("environment_variables.{name}");
            if let Some(s) = self.string(Some(v), &path)? {
                self.overlay.insert(name.clone(), s);
            }
        }
        Ok(())
    }

    fn general_settings(&mut self, value: &Value, config: &mut Config) -> Result<()> {
        let map = self.mapping(value, "general_settings")?.clone();
        for (key, v) in &map {
            let path = format!("general_settings.{key}");
            match key.as_str() {
                "master_key" => config.master_key = self.string(Some(v), &path)?.map(Secret::new),
                "background_health_checks" => {
                    config.health_checks.enabled = self.boolean(Some(v), &path)?.unwrap_or(false)
                }
                "health_check_interval" => {
                    config.health_checks.interval = self
                        .seconds(Some(v), &path)?
                        .unwrap_or(config.health_checks.interval)
                }
                "max_request_size_mb" => {
                    if let Some(mb) = self.number(Some(v), &path)? {
                        config.max_request_bytes = (mb * 1024.0 * 1024.0) as usize;
                    }
                }
                "maximum_spend_logs_retention_period" => {
                    if let Some(text) = self.string(Some(v), &path)? {
                        config.spend_log_retention = match text.parse() {
                            Ok(meridian_replication::crdt::PeriodSpec::Millis(ms)) => {
                                Duration::from_millis(ms)
                            }
                            _ => {
                                return Err(self.err(&path, "a period such as 7d, 12h or 30m"));
                            }
                        };
                    }
                }
                k if k.starts_with("database")
                    || k == "store_model_in_db"
                    || k == "allow_requests_on_db_unavailable" =>
                {
                    self.ignore(
                        path,
                        "Meridian keeps metadata on its own nodes; no external database is used",
                    )
                }
                k if k.contains("redis") => self.ignore(
                    path,
                    "Meridian shares state between nodes itself; no Redis is used",
                ),
                _ => self.ignore(path, NOT_YET),
            }
        }
        Ok(())
    }

    fn router_settings(
        &mut self,
        value: &Value,
        defaults: &mut Timeouts,
        router: &mut crate::router::RouterSettings,
    ) -> Result<()> {
        let map = self.mapping(value, "router_settings")?.clone();
        for (key, v) in &map {
            let path = format!("router_settings.{key}");
            if self.router_key(key, v, &path, router)? {
                continue;
            }
            match key.as_str() {
                "timeout" => {
                    if let Some(t) = self.seconds(Some(v), &path)? {
                        defaults.timeout = t;
                        defaults.router_timeout = true;
                    }
                }
                "stream_timeout" => {
                    if let Some(t) = self.seconds(Some(v), &path)? {
                        defaults.stream_timeout = t;
                    }
                }
                k if k.starts_with("redis") => self.ignore(
                    path,
                    "Meridian shares limits between nodes itself and keeps cooldowns per node; no Redis is used",
                ),
                _ => self.ignore(path, NOT_YET),
            }
        }
        Ok(())
    }

    fn litellm_settings(
        &mut self,
        value: &Value,
        defaults: &mut Timeouts,
        router: &mut crate::router::RouterSettings,
    ) -> Result<()> {
        let map = self.mapping(value, "litellm_settings")?.clone();
        for (key, v) in &map {
            let path = format!("litellm_settings.{key}");
            // LiteLLM reads retries and fallbacks from either section.
            if matches!(
                key.as_str(),
                "num_retries"
                    | "fallbacks"
                    | "context_window_fallbacks"
                    | "content_policy_fallbacks"
                    | "default_fallbacks"
            ) && self.router_key(key, v, &path, router)?
            {
                continue;
            }
            match key.as_str() {
                "request_timeout" => {
                    if let Some(t) = self.seconds(Some(v), &path)? {
                        defaults.request_timeout = Some(t);
                    }
                }
                _ => self.ignore(path, NOT_YET),
            }
        }
        Ok(())
    }

    fn model_list(&mut self, value: &Value, defaults: &Timeouts) -> Result<Vec<Deployment>> {
        let list = value.as_array().ok_or_else(|| {
            self.err(
                "model_list",
                format!("a list of models, found {}", kind(value)),
            )
        })?;
        let mut out: Vec<Deployment> = Vec::new();
        let mut ids = BTreeSet::new();
        for (i, entry) in list.iter().enumerate() {
            let path = format!("model_list[{i}]");
            if let Some(d) = self.deployment(entry, &path, defaults)? {
                if !ids.insert(d.id.clone()) {
                    return Err(self.err(
                        &format!("{path}.model_info.id"),
                        format!("a unique id; `{}` is used twice", d.id),
                    ));
                }
                out.push(d);
            }
        }
        Ok(out)
    }

    fn deployment(
        &mut self,
        entry: &Value,
        path: &str,
        defaults: &Timeouts,
    ) -> Result<Option<Deployment>> {
        let entry = self.mapping(entry, path)?.clone();
        let model_group =
            self.required_string(entry.get("model_name"), &format!("{path}.model_name"))?;
        let params_path = format!("{path}.litellm_params");
        let params = match entry.get("litellm_params") {
            Some(v) => self.mapping(v, &params_path)?.clone(),
            None => return Err(self.err(&params_path, "a mapping with at least `model`")),
        };
        for key in entry.keys() {
            if !matches!(key.as_str(), "model_name" | "litellm_params" | "model_info") {
                self.ignore(
                    format!("{path}.{key}"),
                    "unknown key in a model_list entry; ignored",
                );
            }
        }
        let model = self.required_string(params.get("model"), &format!("{params_path}.model"))?;
        let (prefix, upstream_model) = match model.split_once('/') {
            Some((p, m)) => (p.to_owned(), m.to_owned()),
            None if model.starts_with("claude") => ("anthropic".to_owned(), model.clone()),
            None => ("openai".to_owned(), model.clone()),
        };
        let Some(spec) = provider_spec(&prefix) else {
            self.ignore(
                format!("{params_path}.model"),
                format!("provider `{prefix}` is not supported yet; this deployment of `{model_group}` is skipped"),
            );
            return Ok(None);
        };

        let mut api_base = None;
        let mut api_key = None;
        let mut api_version = None;
        let mut timeout = defaults.timeout();
        let mut stream_timeout = defaults.stream_timeout;
        let (mut rpm, mut tpm, mut weight, mut order) = (None, None, None, None);
        let (mut input_cost, mut output_cost) = (None, None);
        let mut tags = Vec::new();
        let (mut region_name, mut implied_region) = (None, None);
        let (mut cooldown_time, mut allowed_fails) = (None, None);
        let mut health = super::DeploymentHealth::default();
        for (key, v) in &params {
            let p = format!("{params_path}.{key}");
            match key.as_str() {
                "model" => {}
                "api_base" => api_base = self.string(Some(v), &p)?,
                "api_key" => api_key = self.string(Some(v), &p)?.map(Secret::new),
                "api_version" => api_version = self.string(Some(v), &p)?,
                "timeout" => timeout = self.seconds(Some(v), &p)?.unwrap_or(timeout),
                "stream_timeout" => {
                    stream_timeout = self.seconds(Some(v), &p)?.unwrap_or(stream_timeout)
                }
                "rpm" => rpm = self.integer(Some(v), &p)?,
                "tpm" => tpm = self.integer(Some(v), &p)?,
                "weight" => weight = self.number(Some(v), &p)?,
                // `priority` is accepted as another name for `order`.
                "order" | "priority" => {
                    order = match self.integer(Some(v), &p)? {
                        None => None,
                        Some(n) => Some(
                            u32::try_from(n).map_err(|_| self.err(&p, "a small whole number"))?,
                        ),
                    }
                }
                "input_cost_per_token" => input_cost = self.number(Some(v), &p)?,
                "output_cost_per_token" => output_cost = self.number(Some(v), &p)?,
                "region_name" => region_name = self.string(Some(v), &p)?,
                // A provider's own region names the deployment's region
                // unless `region_name` does.
                "aws_region_name" | "vertex_location" => {
                    implied_region = self.string(Some(v), &p)?
                }
                "cooldown_time" => cooldown_time = self.wait(v, &p)?,
                "tags" => tags = self.string_list(v, &p)?,
                _ => self.ignore(p, NOT_YET),
            }
        }

        let (mut mode, mut id, mut base_model) = (None, None, None);
        if let Some(info) = entry.get("model_info") {
            let info_path = format!("{path}.model_info");
            let info = self.mapping(info, &info_path)?.clone();
            for (key, v) in &info {
                let p = format!("{info_path}.{key}");
                match key.as_str() {
                    "id" => id = Some(self.required_string(Some(v), &p)?),
                    "base_model" => base_model = self.string(Some(v), &p)?,
                    "cooldown_time" => cooldown_time = self.wait(v, &p)?.or(cooldown_time),
                    "allowed_fails" => allowed_fails = self.count(v, &p)?,
                    "health_check_model" => health.model = self.string(Some(v), &p)?,
                    "health_check_timeout" => health.timeout = self.seconds(Some(v), &p)?,
                    "disable_background_health_check" => {
                        health.disabled = self.boolean(Some(v), &p)?.unwrap_or(false)
                    }
                    "mode" => {
                        let m = self.required_string(Some(v), &p)?;
                        mode = Some(match m.as_str() {
                            "chat" => Mode::Chat,
                            "completion" => Mode::Completion,
                            "embedding" => Mode::Embedding,
                            other => {
                                self.ignore(p, format!("mode `{other}` is not served yet; this deployment of `{model_group}` is skipped"));
                                return Ok(None);
                            }
                        });
                    }
                    _ => self.ignore(p, NOT_YET),
                }
            }
        }

        // The provider's usual variable (OPENAI_API_KEY, ...) is a default of
        // the operator's config file, never of a model added at run time.
        let implicit_env = self.runtime_env.is_none();
        let api_key = api_key.or_else(|| {
            spec.key_env
                .filter(|_| implicit_env)
                .and_then(|v| self.env.var(v))
                .map(Secret::new)
        });
        // An allowed variable goes only where the operator said it may.
        for (var, bound) in std::mem::take(&mut self.env_bound) {
            let ok = match (&bound, &api_base) {
                (None, None) => true,
                (Some(prefix), Some(base)) => base.starts_with(prefix.as_str()),
                (Some(prefix), None) => spec
                    .default_base
                    .is_some_and(|d| d.starts_with(prefix.as_str())),
                (None, Some(_)) => false,
            };
            if !ok {
                let to = bound.as_deref().map_or_else(
                    || "the provider's own upstream (no api_base)".to_owned(),
                    |p| format!("an api_base starting {p}"),
                );
                return Err(self.err(
                    &format!("{params_path}.api_base"),
                    format!("{to}: meridian.model_env_allowlist lets `{var}` be sent there only"),
                ));
            }
        }
        let api_base = match (api_base, spec.default_base) {
            (Some(b), _) => b,
            (None, Some(b)) => b.to_owned(),
            (None, None) => match spec.kind {
                ProviderKind::Azure => implicit_env
                    .then(|| self.env.var("AZURE_API_BASE"))
                    .flatten()
                    .ok_or_else(|| {
                        self.err(
                            &format!("{params_path}.api_base"),
                            "the Azure resource URL, e.g. https://NAME.openai.azure.com",
                        )
                    })?,
                _ => {
                    return Err(self.err(
                        &format!("{params_path}.api_base"),
                        format!("the server URL for provider `{prefix}`"),
                    ));
                }
            },
        };
        let mut api_base = api_base.trim_end_matches('/').to_owned();
        if spec.append_v1 && !api_base.ends_with("/v1") {
            api_base.push_str("/v1");
        }
        let url_ok = api_base.starts_with("http://") || api_base.starts_with("https://");
        if !(url_ok || spec.kind == ProviderKind::Mock || is_unresolved(&api_base)) {
            return Err(self.err(
                &format!("{params_path}.api_base"),
                format!("an http:// or https:// URL, found `{api_base}`"),
            ));
        }
        if spec.kind == ProviderKind::Azure && api_version.is_none() {
            api_version = Some(
                implicit_env
                    .then(|| self.env.var("AZURE_API_VERSION"))
                    .flatten()
                    .unwrap_or_else(|| AZURE_DEFAULT_API_VERSION.to_owned()),
            );
        }

        // The built-in mock models are priced as `mock` whatever their name.
        let table_price = match spec.kind {
            ProviderKind::Mock => pricing::lookup("mock"),
            _ => pricing::lookup(base_model.as_deref().unwrap_or(&upstream_model)),
        };
        let price = match (input_cost, output_cost) {
            (None, None) => table_price,
            (i, o) => {
                let fallback = table_price;
                let pick = |set: Option<f64>, table: Option<u64>| match set {
                    Some(usd) => pricing::usd_to_pico(usd),
                    None => table.or(Some(0)),
                };
                match (
                    pick(i, fallback.map(|p| p.input)),
                    pick(o, fallback.map(|p| p.output)),
                ) {
                    (Some(input), Some(output)) => Some(Price {
                        input,
                        output,
                        cache_read: None,
                        cache_write: None,
                    }),
                    _ => {
                        return Err(self.err(
                            &params_path,
                            "input_cost_per_token and output_cost_per_token below $1000 per token",
                        ));
                    }
                }
            }
        };
        let mode = mode.unwrap_or(if spec.completion_only {
            Mode::Completion
        } else if upstream_model.contains("embed") {
            Mode::Embedding
        } else {
            Mode::Chat
        });
        let id = id.unwrap_or_else(|| {
            let canonical = serde_json::to_string(&(&model_group, &params)).unwrap_or_default();
            hex::encode(&Sha256::digest(canonical.as_bytes())[..16])
        });
        Ok(Some(Deployment {
            id,
            model_group,
            provider: spec.kind,
            provider_name: prefix,
            upstream_model,
            api_base,
            api_key,
            api_version,
            timeout,
            stream_timeout,
            rpm,
            tpm,
            weight,
            order,
            tags,
            region_name: region_name.or(implied_region),
            cooldown_time,
            allowed_fails,
            health,
            mode,
            price,
        }))
    }

    /// A whole number in `[min, max]`.
    fn bounded(&mut self, value: &Value, path: &str, min: u64, max: u64) -> Result<u64> {
        match self.integer(Some(value), path)? {
            Some(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(self.err(path, format!("a whole number from {min} to {max}"))),
        }
    }

    fn string_list(&mut self, value: &Value, path: &str) -> Result<Vec<String>> {
        let items = value
            .as_array()
            .ok_or_else(|| self.err(path, format!("a list of strings, found {}", kind(value))))?;
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            if let Some(s) = self.string(Some(item), &format!("{path}[{i}]"))? {
                out.push(s);
            }
        }
        Ok(out)
    }
}

const NOT_YET: &str = "not supported by Meridian yet; ignored";
/// How long a request may wait for a `strict` limit's rights by default:
/// a few cross-region round trips and a Raft write.
const DEFAULT_STRICT_WAIT: Duration = Duration::from_millis(500);

const AZURE_DEFAULT_API_VERSION: &str = "2024-10-21";

/// Deployment timeout defaults. `router_settings.timeout` wins over
/// `litellm_settings.request_timeout`, whatever their order in the file, as in
/// LiteLLM's router.
struct Timeouts {
    timeout: Duration,
    stream_timeout: Duration,
    request_timeout: Option<Duration>,
    router_timeout: bool,
}

impl Timeouts {
    fn timeout(&self) -> Duration {
        if self.router_timeout {
            self.timeout
        } else {
            self.request_timeout.unwrap_or(self.timeout)
        }
    }
}

struct ProviderSpec {
    kind: ProviderKind,
    default_base: Option<&'static str>,
    key_env: Option<&'static str>,
    /// Ollama's OpenAI-compatible API lives under `/v1` of its server URL.
    append_v1: bool,
    completion_only: bool,
}

/// Providers by their LiteLLM prefix. OpenAI-compatible hosts are the OpenAI
/// adapter with another base URL.
fn provider_spec(prefix: &str) -> Option<ProviderSpec> {
    let openai = |base: Option<&'static str>, key: Option<&'static str>| ProviderSpec {
        kind: ProviderKind::OpenAi,
        default_base: base,
        key_env: key,
        append_v1: false,
        completion_only: false,
    };
    Some(match prefix {
        "openai" => openai(Some("https://api.openai.com/v1"), Some("OPENAI_API_KEY")),
        "text-completion-openai" => ProviderSpec {
            completion_only: true,
            ..openai(Some("https://api.openai.com/v1"), Some("OPENAI_API_KEY"))
        },
        "hosted_vllm" | "openai_like" | "lm_studio" | "llamafile" => openai(None, None),
        "ollama" | "ollama_chat" => ProviderSpec {
            append_v1: true,
            ..openai(Some("http://localhost:11434"), None)
        },
        "groq" => openai(Some("https://api.groq.com/openai/v1"), Some("GROQ_API_KEY")),
        "together_ai" => openai(
            Some("https://api.together.xyz/v1"),
            Some("TOGETHERAI_API_KEY"),
        ),
        "deepseek" => openai(
            Some("https://api.deepseek.com/v1"),
            Some("DEEPSEEK_API_KEY"),
        ),
        "mistral" => openai(Some("https://api.mistral.ai/v1"), Some("MISTRAL_API_KEY")),
        "fireworks_ai" => openai(
            Some("https://api.fireworks.ai/inference/v1"),
            Some("FIREWORKS_AI_API_KEY"),
        ),
        "openrouter" => openai(
            Some("https://openrouter.ai/api/v1"),
            Some("OPENROUTER_API_KEY"),
        ),
        "xai" => openai(Some("https://api.x.ai/v1"), Some("XAI_API_KEY")),
        "deepinfra" => openai(
            Some("https://api.deepinfra.com/v1/openai"),
            Some("DEEPINFRA_API_KEY"),
        ),
        "perplexity" => openai(
            Some("https://api.perplexity.ai"),
            Some("PERPLEXITYAI_API_KEY"),
        ),
        "azure" => ProviderSpec {
            kind: ProviderKind::Azure,
            default_base: None,
            key_env: Some("AZURE_API_KEY"),
            append_v1: false,
            completion_only: false,
        },
        "anthropic" => ProviderSpec {
            kind: ProviderKind::Anthropic,
            default_base: Some("https://api.anthropic.com"),
            key_env: Some("ANTHROPIC_API_KEY"),
            append_v1: false,
            completion_only: false,
        },
        "mock" => ProviderSpec {
            kind: ProviderKind::Mock,
            default_base: Some("mock://"),
            key_env: None,
            append_v1: false,
            completion_only: false,
        },
        _ => return None,
    })
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn parse(text: &str, e: &[(&str, &str)]) -> Result<Config> {
        parse_str(text, "config.yaml", &env(e), false)
    }

    #[test]
    fn model_list_with_env_refs_defaults_and_ignored_keys() {
        let text = r#"
model_list:
  - model_name: gpt-4o
    litellm_params:
      model: openai/gpt-4o
      api_key: os.environ/OPENAI_KEY
      rpm: "60"
      timeout: 30
      organization: org-1
    model_info:
      id: dep-1
  - model_name: claude
    litellm_params:
      model: anthropic/claude-3-5-sonnet-20241022
  - model_name: azure-gpt
    litellm_params:
      model: azure/my-deployment
      api_base: https://res.openai.azure.com/
      api_version: "2024-06-01"
    model_info:
      base_model: gpt-4o-mini
  - model_name: llama
    litellm_params:
      model: ollama/llama3
  - model_name: titan
    litellm_params:
      model: bedrock/amazon.titan
router_settings:
  routing_strategy: simple-shuffle
  redis_host: localhost
general_settings:
  master_key: sk-1234
  database_url: postgres://x
"#;
        let c = parse(
            text,
            &[("OPENAI_KEY", "sk-openai"), ("ANTHROPIC_API_KEY", "sk-ant")],
        )
        .unwrap();
        assert_eq!(c.master_key.as_ref().unwrap().expose(), "sk-1234");
        assert_eq!(c.deployments.len(), 4);
        let d = &c.deployments[0];
        assert_eq!(
            (d.id.as_str(), d.provider, d.upstream_model.as_str()),
            ("dep-1", ProviderKind::OpenAi, "gpt-4o")
        );
        assert_eq!(d.api_key.as_ref().unwrap().expose(), "sk-openai");
        assert_eq!((d.rpm, d.timeout), (Some(60), Duration::from_secs(30)));
        assert_eq!(
            c.deployments[1].api_key.as_ref().unwrap().expose(),
            "sk-ant"
        );
        assert_eq!(c.deployments[1].api_base, "https://api.anthropic.com");
        let az = &c.deployments[2];
        assert_eq!(
            (az.api_base.as_str(), az.api_version.as_deref()),
            ("https://res.openai.azure.com", Some("2024-06-01"))
        );
        assert_eq!(az.price, pricing::lookup("gpt-4o-mini"));
        assert_eq!(c.deployments[3].api_base, "http://localhost:11434/v1");
        let paths: Vec<&str> = c.ignored.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "router_settings.redis_host",
                "general_settings.database_url",
                "model_list[0].litellm_params.organization",
                "model_list[4].litellm_params.model",
            ]
        );
    }

    #[test]
    fn router_settings_and_deployment_routing_keys_are_parsed() {
        use crate::router::settings::{ErrorClass, Strategy};
        let text = r#"
model_list:
  - model_name: gpt
    litellm_params:
      model: openai/gpt-4o
      priority: 2
      aws_region_name: eu-west-1
      cooldown_time: 12
    model_info:
      allowed_fails: 7
      health_check_model: gpt-4o-mini
      health_check_timeout: 3
      disable_background_health_check: true
router_settings:
  routing_strategy: latency-based-routing
  routing_strategy_args: {ttl: 60, lowest_latency_buffer: 0.3}
  num_retries: 1
  retry_after: 0
  allowed_fails: 2
  cooldown_time: 9
  retry_policy: {RateLimitErrorRetries: 4}
  allowed_fails_policy: {TimeoutErrorAllowedFails: 5}
  fallbacks: [{gpt: [claude]}, {"*": [small]}]
  context_window_fallbacks: [{gpt: [gpt-long]}]
  max_fallbacks: 2
  enable_tag_filtering: true
  enable_pre_call_checks: true
litellm_settings:
  content_policy_fallbacks: [{gpt: [lenient]}]
general_settings:
  background_health_checks: true
  health_check_interval: 30
"#;
        let c = parse(text, &[]).unwrap();
        assert!(c.ignored.is_empty(), "{:?}", c.ignored);
        let r = &c.router;
        assert_eq!(r.strategy, Strategy::LatencyBased);
        assert_eq!(
            (r.latency.ttl, r.latency.buffer),
            (Duration::from_secs(60), 0.3)
        );
        assert_eq!(
            (r.num_retries, r.retry_after, r.allowed_fails),
            (1, Duration::ZERO, 2)
        );
        assert_eq!(r.cooldown_time, Duration::from_secs(9));
        assert_eq!(r.retries_for(ErrorClass::RateLimit), 4);
        assert_eq!(r.allowed_fails_for(ErrorClass::Timeout, None), 5);
        assert_eq!(
            r.fallbacks.after("gpt", ErrorClass::InternalServer),
            ["claude"]
        );
        assert_eq!(
            r.fallbacks.after("other", ErrorClass::InternalServer),
            ["small"]
        );
        assert_eq!(
            r.fallbacks.after("gpt", ErrorClass::ContextWindowExceeded),
            ["gpt-long"]
        );
        assert_eq!(
            r.fallbacks.after("gpt", ErrorClass::ContentPolicyViolation),
            ["lenient"]
        );
        assert_eq!(r.max_fallbacks, 2);
        assert!(r.enable_tag_filtering && r.tag_filtering_match_any);
        assert!(c.health_checks.enabled);
        assert_eq!(c.health_checks.interval, Duration::from_secs(30));
        let d = &c.deployments[0];
        assert_eq!(
            (d.order, d.region_name.as_deref()),
            (Some(2), Some("eu-west-1"))
        );
        assert_eq!(
            (d.cooldown_time, d.allowed_fails),
            (Some(Duration::from_secs(12)), Some(7))
        );
        assert_eq!(d.health.model.as_deref(), Some("gpt-4o-mini"));
        assert_eq!(d.health.timeout, Some(Duration::from_secs(3)));
        assert!(d.health.disabled);

        let bad = |yaml: &str| parse(yaml, &[]).unwrap_err().to_string();
        assert!(
            bad("router_settings:\n  routing_strategy: fastest\n")
                .contains("one of simple-shuffle")
        );
        assert!(
            bad("router_settings:\n  retry_policy: {Oops: 1}\n").contains("RateLimitErrorRetries")
        );
        assert!(bad("router_settings:\n  fallbacks: 3\n").contains("router_settings.fallbacks"));
        assert!(bad("router_settings:\n  num_retries: -1\n").contains("num_retries"));
    }

    #[test]
    fn errors_name_file_path_and_expectation() {
        let e = parse("model_list:\n  - model_name: x\n    litellm_params:\n      model: openai/x\n      rpm: lots\n", &[])
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "config.yaml: `model_list[0].litellm_params.rpm`: a non-negative number"
        );
        let e = parse("model_list:\n  - model_name: x\n    litellm_params:\n      model: openai/x\n      api_key: os.environ/NOPE\n", &[])
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("`model_list[0].litellm_params.api_key`: environment variable NOPE")
        );
        let e = parse("meridian:\n  regoin: eu\n", &[]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("config.yaml: `meridian.regoin`: one of the keys")
        );
        let e = parse("model_list: {}\n", &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "config.yaml: `model_list`: a list of models, found a mapping"
        );
        assert!(
            parse("model_list: [\n", &[])
                .unwrap_err()
                .to_string()
                .contains("valid YAML")
        );
    }

    #[test]
    fn check_mode_reports_unset_variables() {
        let text = "model_list:\n  - model_name: x\n    litellm_params:\n      model: openai/x\n      api_key: os.environ/NOPE\n";
        let c = parse_str(text, "c.yaml", &env(&[]), true).unwrap();
        assert!(c.ignored.is_empty());
        assert_eq!(c.unset_env[0].path, "model_list[0].litellm_params.api_key");
        assert!(c.unset_env[0].reason.contains("NOPE is not set"));
    }

    #[test]
    fn a_production_litellm_config_loads_and_reports_what_it_ignores() {
        let text = include_str!("../../../fixtures/litellm/production_config.yaml");
        let c = parse_str(text, "production_config.yaml", &env(&[]), true).unwrap();
        let groups: BTreeSet<&str> = c
            .deployments
            .iter()
            .map(|d| d.model_group.as_str())
            .collect();
        assert_eq!(
            groups.into_iter().collect::<Vec<_>>(),
            vec![
                "claude-sonnet",
                "gpt-4o",
                "gpt-4o-mini",
                "llama-3.3-70b",
                "qwen-local",
                "text-embedding-3-small"
            ]
        );
        let reason = |path: &str| {
            c.ignored
                .iter()
                .find(|i| i.path == path)
                .map(|i| i.reason.clone())
        };
        assert!(
            reason("model_list[4].litellm_params.model")
                .unwrap()
                .contains("`bedrock` is not supported")
        );
        assert!(
            reason("model_list[8].model_info.mode")
                .unwrap()
                .contains("image_generation")
        );
        assert!(
            reason("router_settings.redis_host")
                .unwrap()
                .contains("no Redis")
        );
        assert!(
            reason("general_settings.database_url")
                .unwrap()
                .contains("no external database")
        );
        assert!(reason("litellm_settings.callbacks").is_some());
        assert_eq!(c.max_request_bytes, 16 * 1024 * 1024);
        assert_eq!(c.unset_env.len(), 8, "{:#?}", c.unset_env);
        let local = c
            .deployments
            .iter()
            .find(|d| d.model_group == "qwen-local")
            .unwrap();
        assert_eq!(local.price.unwrap().input, 100_000);
        assert_eq!(
            local.timeout,
            Duration::from_secs(120),
            "router_settings.timeout is the default"
        );
    }

    #[test]
    fn meridian_section_and_env_overrides() {
        let text = "meridian:\n  node_id: eu-1\n  region: eu-west\n  host: 0.0.0.0\n  port: 8080\n  data_dir: /var/lib/meridian\ngeneral_settings:\n  master_key: from-file\nenvironment_variables:\n  X: y\n";
        let c = parse(
            text,
            &[
                ("LITELLM_MASTER_KEY", "from-env"),
                ("DISABLE_ADMIN_ENDPOINTS", "True"),
            ],
        )
        .unwrap();
        assert_eq!(c.node.node_id, "eu-1");
        assert_eq!(c.node.listen, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(c.master_key.unwrap().expose(), "from-env");
        assert!(c.disable.admin && !c.disable.llm_api);
    }

    #[test]
    fn ids_are_stable_hashes_and_must_be_unique() {
        let one = "model_list:\n  - model_name: a\n    litellm_params:\n      model: mock/chat\n";
        let a = parse(one, &[]).unwrap();
        let b = parse(one, &[]).unwrap();
        assert_eq!(a.deployments[0].id, b.deployments[0].id);
        assert_eq!(a.deployments[0].id.len(), 32);
        let twice = "model_list:\n  - model_name: a\n    litellm_params: {model: mock/chat}\n    model_info: {id: x}\n  - model_name: b\n    litellm_params: {model: mock/chat}\n    model_info: {id: x}\n";
        assert!(
            parse(twice, &[])
                .unwrap_err()
                .to_string()
                .contains("`model_list[1].model_info.id`: a unique id")
        );
    }
}
