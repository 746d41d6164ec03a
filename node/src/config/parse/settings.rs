//! `environment_variables`, `general_settings`, `litellm_settings` and the
//! non-routing keys of `router_settings`.

use std::time::Duration;

use serde_json::Value;

use super::scalars::kind;
use super::{NOT_YET, Parser};
use crate::config::{Config, DEFAULT_TIMEOUT};
use crate::error::Result;
use crate::secret::Secret;

impl Parser<'_> {
    pub(super) fn environment_variables(&mut self, value: &Value) -> Result<()> {
        let map = self.mapping(value, "environment_variables")?;
        for (name, v) in &map {
            let path = format!("environment_variables.{name}");
            // LiteLLM exports every value with Python's `str()`: unquoted
            // numbers and booleans are variables like any other.
            let value = match v {
                Value::Number(n) => Some(n.to_string()),
                Value::Bool(b) => Some(if *b { "True" } else { "False" }.to_owned()),
                Value::Array(_) | Value::Object(_) => {
                    self.ignore(
                        path,
                        format!("{} is not an environment value; not exported", kind(v)),
                    );
                    continue;
                }
                Value::Null | Value::String(_) => self.string(Some(v), &path)?,
            };
            if let Some(value) = value {
                self.overlay.insert(name.clone(), value);
            }
        }
        Ok(())
    }

    pub(super) fn general_settings(&mut self, value: &Value, config: &mut Config) -> Result<()> {
        let map = self.mapping(value, "general_settings")?;
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

    pub(super) fn router_settings(
        &mut self,
        value: &Value,
        defaults: &mut Timeouts,
        router: &mut crate::router::RouterSettings,
    ) -> Result<()> {
        let map = self.mapping(value, "router_settings")?;
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

    pub(super) fn litellm_settings(
        &mut self,
        value: &Value,
        defaults: &mut Timeouts,
        config: &mut crate::config::Config,
    ) -> Result<()> {
        let router = &mut config.router;
        let map = self.mapping(value, "litellm_settings")?;
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
                "require_auth_for_metrics_endpoint" => {
                    config.metrics.require_auth = self.boolean(Some(v), &path)?.unwrap_or(true)
                }
                // Meridian's metrics are always on; LiteLLM needs the
                // `prometheus` callback for them.
                "callbacks" | "success_callback" | "failure_callback" if is_only_prometheus(v) => {}
                _ => self.ignore(path, NOT_YET),
            }
        }
        Ok(())
    }
}

/// Deployment timeout defaults. `router_settings.timeout` wins over
/// `litellm_settings.request_timeout`, whatever their order in the file, as in
/// LiteLLM's router.
pub(super) struct Timeouts {
    pub(super) timeout: Duration,
    pub(super) stream_timeout: Duration,
    pub(super) request_timeout: Option<Duration>,
    pub(super) router_timeout: bool,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            timeout: DEFAULT_TIMEOUT,
            stream_timeout: DEFAULT_TIMEOUT,
            request_timeout: None,
            router_timeout: false,
        }
    }
}

impl Timeouts {
    pub(super) fn timeout(&self) -> Duration {
        if self.router_timeout {
            self.timeout
        } else {
            self.request_timeout.unwrap_or(self.timeout)
        }
    }
}

/// Whether a callback list names nothing but `prometheus` (which Meridian
/// does without being asked).
fn is_only_prometheus(v: &Value) -> bool {
    match v {
        Value::Array(items) => items.iter().all(|i| i.as_str() == Some("prometheus")),
        Value::String(s) => s == "prometheus",
        _ => false,
    }
}
