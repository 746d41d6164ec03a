//! `router_settings` (and the router keys LiteLLM also reads from
//! `litellm_settings`): strategy, retries, cooldowns, fallbacks, tags.

use serde_json::Value;

use super::Parser;
use super::scalars::kind;
use crate::error::Result;
use std::collections::BTreeMap;

use crate::error::Error;
use crate::router::settings::{ErrorClass, MAX_BACKOFF, RouterSettings, Strategy};

impl Parser<'_> {
    /// Applies one router key. `Ok(false)`: not a router key.
    pub(super) fn router_key(
        &mut self,
        key: &str,
        v: &Value,
        path: &str,
        s: &mut RouterSettings,
    ) -> Result<bool> {
        match key {
            "routing_strategy" => {
                let name = self.required_string(Some(v), path)?;
                s.strategy = Strategy::parse(&name).ok_or_else(|| {
                    let accepted = Strategy::accepted();
                    self.err(path, format!("one of {accepted}, found `{name}`"))
                })?;
            }
            "routing_strategy_args" => {
                let map = self.mapping(v, path)?;
                for (k, v) in &map {
                    let p = format!("{path}.{k}");
                    match k.as_str() {
                        "ttl" => {
                            s.latency.ttl = self.seconds(Some(v), &p)?.unwrap_or(s.latency.ttl)
                        }
                        "lowest_latency_buffer" => {
                            s.latency.buffer = self.number(Some(v), &p)?.unwrap_or(0.0)
                        }
                        _ => self.ignore(p, super::NOT_YET),
                    }
                }
            }
            "num_retries" => s.num_retries = self.count(v, path)?.unwrap_or(s.num_retries),
            "retry_after" => s.retry_after = self.wait(v, path)?.unwrap_or(s.retry_after),
            "allowed_fails" => s.allowed_fails = self.count(v, path)?.unwrap_or(s.allowed_fails),
            "cooldown_time" => s.cooldown_time = self.wait(v, path)?.unwrap_or(s.cooldown_time),
            "disable_cooldowns" => {
                s.disable_cooldowns = self.boolean(Some(v), path)?.unwrap_or(false)
            }
            "retry_policy" => match v {
                Value::Array(entries) => self.retry_policy_list(entries, path, s)?,
                _ => self.per_class(v, path, "Retries", &mut s.retry_policy)?,
            },
            "allowed_fails_policy" => {
                self.per_class(v, path, "AllowedFails", &mut s.allowed_fails_policy)?
            }
            "fallbacks" => {
                let mut general = self.fallback_map(v, path)?;
                if let Some(any) = general.remove("*") {
                    s.fallbacks.default = any;
                }
                s.fallbacks.general = general;
            }
            "context_window_fallbacks" => {
                s.fallbacks.context_window = self.fallback_map(v, path)?
            }
            "content_policy_fallbacks" => {
                s.fallbacks.content_policy = self.fallback_map(v, path)?
            }
            "default_fallbacks" => s.fallbacks.default = self.string_list(v, path)?,
            "max_fallbacks" => s.max_fallbacks = self.count(v, path)?.unwrap_or(s.max_fallbacks),
            "enable_tag_filtering" => {
                s.enable_tag_filtering = self.boolean(Some(v), path)?.unwrap_or(false)
            }
            "tag_filtering_match_any" => {
                s.tag_filtering_match_any = self.boolean(Some(v), path)?.unwrap_or(true)
            }
            // `order` and regions always apply in Meridian; LiteLLM needs
            // this switch for them.
            "enable_pre_call_checks" => {
                self.boolean(Some(v), path)?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The list form operators' HA guides write, one entry an upstream status:
    /// `[{status_code: 429, retry_after: 60, num_retries: 5}, ...]`. A count
    /// becomes the retries of the status's failure class (Meridian counts per
    /// class, as LiteLLM's own mapping form does); a delay per status has no
    /// equivalent, so it is reported, never silently dropped.
    fn retry_policy_list(
        &mut self,
        entries: &[Value],
        path: &str,
        s: &mut RouterSettings,
    ) -> Result<()> {
        // The entry that set each class's count, to report a second one.
        let mut set_by: BTreeMap<ErrorClass, String> = BTreeMap::new();
        for (i, entry) in entries.iter().enumerate() {
            let p = format!("{path}[{i}]");
            let entry = self.mapping(entry, &p)?;
            let code_path = format!("{p}.status_code");
            let class = match self.integer(entry.get("status_code"), &code_path)? {
                Some(status @ 400..=599) => status_class(status as u16),
                _ => {
                    return Err(self.err(&code_path, "an upstream error status, 400 to 599"));
                }
            };
            for (key, v) in &entry {
                let kp = format!("{p}.{key}");
                match key.as_str() {
                    "status_code" => {}
                    "num_retries" => {
                        let Some(n) = self.count(v, &kp)? else {
                            continue;
                        };
                        match set_by.get(&class) {
                            Some(first) if s.retry_policy.get(class) != Some(n) => self.ignore(
                                kp,
                                format!(
                                    "{first} already sets the retries of its class ({}); Meridian counts retries per class, not per status",
                                    class.name()
                                ),
                            ),
                            _ => {
                                s.retry_policy.set(class, n);
                                set_by.entry(class).or_insert(kp);
                            }
                        }
                    }
                    "retry_after" => {
                        self.wait(v, &kp)?;
                        self.ignore(
                            kp,
                            format!(
                                "a delay per status is not supported: every retry waits router_settings.retry_after, and a 429 with no other deployment ready waits the provider's retry-after or backs off exponentially, at most {} s",
                                MAX_BACKOFF.as_secs()
                            ),
                        );
                    }
                    _ => self.ignore(kp, super::NOT_YET),
                }
            }
        }
        Ok(())
    }

    /// `{RateLimitErrorRetries: 2, ...}` into counts per class.
    fn per_class(
        &mut self,
        v: &Value,
        path: &str,
        suffix: &str,
        out: &mut crate::router::settings::PerClass,
    ) -> Result<()> {
        let map = self.mapping(v, path)?;
        for (k, v) in &map {
            let p = format!("{path}.{k}");
            let class = ErrorClass::ALL
                .into_iter()
                .find(|c| k.strip_suffix(suffix) == Some(c.name()));
            let Some(class) = class else {
                let known: Vec<String> = ErrorClass::ALL
                    .iter()
                    .map(|c| format!("{}{suffix}", c.name()))
                    .collect();
                return Err(self.err(&p, format!("one of {}", known.join(", "))));
            };
            if let Some(n) = self.count(v, &p)? {
                out.set(class, n);
            }
        }
        Ok(())
    }

    /// LiteLLM's `[{"gpt-4": ["gpt-4o", "claude"]}, ...]` (a plain mapping
    /// is accepted too).
    fn fallback_map(
        &mut self,
        v: &Value,
        path: &str,
    ) -> Result<std::collections::BTreeMap<String, Vec<String>>> {
        let mut out = std::collections::BTreeMap::new();
        let entries: Vec<(String, Value)> = match v {
            Value::Null => Vec::new(),
            Value::Array(items) => {
                let mut entries = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    let p = format!("{path}[{i}]");
                    let map = self.mapping(item, &p).map_err(|_| {
                        self.err(
                            &p,
                            format!(
                                "a mapping of a model group to its fallback groups, found {}",
                                kind(item)
                            ),
                        )
                    })?;
                    entries.extend(map);
                }
                entries
            }
            Value::Object(map) => map.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            other => {
                return Err(self.err(
                    path,
                    format!(
                        "a list like [{{\"gpt-4\": [\"gpt-4o\"]}}], found {}",
                        kind(other)
                    ),
                ));
            }
        };
        for (group, targets) in entries {
            let p = format!("{path}.{group}");
            let targets = match &targets {
                Value::String(s) => vec![s.clone()],
                other => self.string_list(other, &p)?,
            };
            out.entry(group).or_insert_with(Vec::new).extend(targets);
        }
        Ok(out)
    }
}

/// A request's own `fallbacks` (LiteLLM accepts a list of group names, or of
/// `{"model": ...}` objects), taken out of the body before it is forwarded.
pub fn request_fallbacks(
    extra: &mut serde_json::Map<String, Value>,
) -> crate::error::Result<Option<Vec<String>>> {
    let Some(v) = extra.remove("fallbacks") else {
        return Ok(None);
    };
    let bad = || {
        crate::error::Error::invalid(
            "`fallbacks` must be a list of model names (or of objects with a `model`)",
            Some("fallbacks"),
        )
    };
    let items = match v {
        Value::Null => return Ok(None),
        Value::Array(items) => items,
        _ => return Err(bad()),
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let name = match item {
            Value::String(s) => s,
            Value::Object(mut o) => match o.remove("model") {
                Some(Value::String(s)) => s,
                _ => return Err(bad()),
            },
            _ => return Err(bad()),
        };
        if name.is_empty() || name.len() > 256 {
            return Err(bad());
        }
        out.push(name);
    }
    Ok(Some(out))
}

/// The failure class of an upstream error status, as the router classes a
/// failed call with that status and no further detail.
fn status_class(status: u16) -> ErrorClass {
    let failure = Error::UpstreamStatus {
        status,
        message: String::new(),
        kind: None,
        code: None,
        retry_after: None,
        rejection: None,
    };
    ErrorClass::of(&failure).unwrap_or(ErrorClass::InternalServer)
}
