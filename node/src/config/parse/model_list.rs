//! `model_list`: each entry into a [`Deployment`], or skipped with a reason.

use std::collections::BTreeMap;

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::providers::{AZURE_DEFAULT_API_VERSION, provider_spec};
use super::scalars::is_unresolved;
use super::settings::Timeouts;
use super::{NOT_YET, Parser};
use crate::config::{Deployment, DeploymentHealth, Mode, ProviderKind};
use crate::error::Result;
use crate::pricing::{self, Price};
use crate::secret::Secret;

impl Parser<'_> {
    pub(super) fn model_list(
        &mut self,
        value: &Value,
        defaults: &Timeouts,
    ) -> Result<Vec<Deployment>> {
        let list = self.list(value, "model_list", "models")?;
        let mut out: Vec<Deployment> = Vec::new();
        // Each id, with the entry it came from.
        let mut ids: BTreeMap<String, usize> = BTreeMap::new();
        for (i, entry) in list.iter().enumerate() {
            let path = format!("model_list[{i}]");
            let Some(mut d) = self.deployment(entry, &path, defaults)? else {
                continue;
            };
            if let Some(&first) = ids.get(&d.id) {
                let own_id = entry
                    .get("model_info")
                    .and_then(|info| info.get("id"))
                    .is_some_and(|id| !id.is_null());
                if own_id {
                    // Named by the entry, not echoed: it may come from the environment.
                    return Err(self.err(
                        &format!("{path}.model_info.id"),
                        format!("a unique id; model_list[{first}] has the same one"),
                    ));
                }
                // The same entry written again: LiteLLM serves both, so each
                // copy gets the hash with its place among the copies.
                let mut n = 2;
                while ids.contains_key(&format!("{}-{n}", d.id)) {
                    n += 1;
                }
                d.id = format!("{}-{n}", d.id);
            }
            ids.insert(d.id.clone(), i);
            out.push(d);
        }
        Ok(out)
    }

    pub(super) fn deployment(
        &mut self,
        entry: &Value,
        path: &str,
        defaults: &Timeouts,
    ) -> Result<Option<Deployment>> {
        let entry = self.mapping(entry, path)?;
        let model_group =
            self.required_string(entry.get("model_name"), &format!("{path}.model_name"))?;
        let params_path = format!("{path}.litellm_params");
        let params = match entry.get("litellm_params") {
            Some(v) => self.mapping(v, &params_path)?,
            None => return Err(self.err(&params_path, "a mapping with at least `model`")),
        };
        for key in entry.keys() {
            if !matches!(
                key.as_str(),
                "model_name" | "litellm_params" | "model_info" | "rpm" | "tpm"
            ) {
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
        let mut health = DeploymentHealth::default();
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

        // Written beside `model_name`, as LiteLLM's router docs do: its rpm/tpm
        // checks read these before `litellm_params`, and so does Meridian.
        for (key, set) in [("rpm", &mut rpm), ("tpm", &mut tpm)] {
            let p = format!("{path}.{key}");
            let Some(own) = self.integer(entry.get(key), &p)? else {
                continue;
            };
            if set.is_some_and(|params| params != own) {
                self.ignore(
                    format!("{params_path}.{key}"),
                    format!("`{p}` is set too, and wins (as in LiteLLM's rpm/tpm checks)"),
                );
            }
            *set = Some(own);
        }

        let (mut mode, mut id, mut base_model) = (None, None, None);
        if let Some(info) = entry.get("model_info") {
            let info_path = format!("{path}.model_info");
            let info = self.mapping(info, &info_path)?;
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
}
