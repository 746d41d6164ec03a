//! The `meridian:` section: Meridian's own settings. Every key is known;
//! anything else is an error naming the keys there are.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use super::Parser;
use crate::config::{Config, Peer};
use crate::error::Result;
use crate::secret::Secret;
const MERIDIAN_KEYS: &str = "node_id, region, host, port, data_dir, raft_id, cluster_listen, advertise_url, cluster_secret, cluster_tls_ca, cluster_tls_cert, cluster_tls_key, insecure_cluster, tls_cert, tls_key, peers, raft_snapshot_every, remote_regions, gossip_interval_ms, inject_region_delay_ms, inject_partition_file, enforcement, strict_wait_ms, shutdown_drain_seconds, model_env_allowlist, max_connections, max_connections_per_ip, max_header_bytes, header_read_timeout_ms, body_read_timeout_ms, idle_timeout_ms, disable_admin_endpoints, disable_llm_api_endpoints, disable_admin_ui, disable_metrics, metrics_max_keys";

impl Parser<'_> {
    /// Meridian's own section: every key is known, anything else is an error.
    pub(super) fn meridian(&mut self, value: &Value, config: &mut Config) -> Result<()> {
        let map = self.mapping(value, "meridian")?;
        let mut host: Option<IpAddr> = None;
        let mut port: Option<u16> = None;
        for (key, v) in &map {
            let path = format!("meridian.{key}");
            match key.as_str() {
                "node_id" => config.node.node_id = self.required_string(Some(v), &path)?,
                "region" => config.node.region = self.required_string(Some(v), &path)?,
                "data_dir" => {
                    config.node.data_dir = PathBuf::from(self.required_string(Some(v), &path)?)
                }
                "host" => {
                    let s = self.required_string(Some(v), &path)?;
                    host = Some(
                        s.parse()
                            .map_err(|_| self.err(&path, "an IP address such as 0.0.0.0"))?,
                    );
                }
                "port" => {
                    let n = self.integer(Some(v), &path)?;
                    port = Some(
                        n.and_then(|n| u16::try_from(n).ok())
                            .ok_or_else(|| self.err(&path, "a port number (0-65535)"))?,
                    );
                }
                "disable_admin_endpoints" => {
                    config.disable.admin = self.boolean(Some(v), &path)?.unwrap_or(false)
                }
                "disable_llm_api_endpoints" => {
                    config.disable.llm_api = self.boolean(Some(v), &path)?.unwrap_or(false)
                }
                "disable_admin_ui" => {
                    config.disable.ui = self.boolean(Some(v), &path)?.unwrap_or(false)
                }
                "disable_metrics" => {
                    config.metrics.on = !self.boolean(Some(v), &path)?.unwrap_or(false)
                }
                "metrics_max_keys" => {
                    config.metrics.max_keys = match self.integer(Some(v), &path)? {
                        Some(n) if n <= 100_000 => n as usize,
                        _ => return Err(self.err(&path, "a number of keys up to 100000")),
                    }
                }
                "raft_id" => {
                    config.node.cluster.raft_id = match self.integer(Some(v), &path)? {
                        Some(n) if n > 0 => n,
                        _ => {
                            return Err(
                                self.err(&path, "a positive whole number, unique in the region")
                            );
                        }
                    }
                }
                "cluster_listen" => {
                    let s = self.required_string(Some(v), &path)?;
                    config.node.cluster.listen = Some(
                        s.parse()
                            .map_err(|_| self.err(&path, "an address such as 0.0.0.0:7000"))?,
                    );
                }
                "advertise_url" => {
                    let url = self.required_string(Some(v), &path)?;
                    if !(url.starts_with("http://") || url.starts_with("https://")) {
                        return Err(
                            self.err(&path, format!("an http:// or https:// URL, found `{url}`"))
                        );
                    }
                    config.node.cluster.advertise_url = Some(url.trim_end_matches('/').to_owned());
                }
                "cluster_tls_ca" | "cluster_tls_cert" | "cluster_tls_key" => {
                    let file = PathBuf::from(self.required_string(Some(v), &path)?);
                    let tls = config.node.cluster.tls.get_or_insert_with(Default::default);
                    match key.as_str() {
                        "cluster_tls_ca" => tls.ca = file,
                        "cluster_tls_cert" => tls.cert = file,
                        _ => tls.key = file,
                    }
                }
                "insecure_cluster" => {
                    config.node.cluster.insecure = self.boolean(Some(v), &path)?.unwrap_or(false)
                }
                "tls_cert" | "tls_key" => {
                    let file = PathBuf::from(self.required_string(Some(v), &path)?);
                    let tls = config.node.public_tls.get_or_insert_with(Default::default);
                    if key == "tls_cert" {
                        tls.cert = file;
                    } else {
                        tls.key = file;
                    }
                }
                "cluster_secret" => {
                    config.node.cluster.secret = self.string(Some(v), &path)?.map(Secret::new)
                }
                "peers" => config.node.cluster.peers = self.peers(v, &path)?,
                "remote_regions" => {
                    config.node.cluster.remote_regions = self.remote_regions(v, &path)?
                }
                "gossip_interval_ms" => {
                    config.node.cluster.gossip_interval = match self.integer(Some(v), &path)? {
                        Some(n) if (1..=60_000).contains(&n) => Duration::from_millis(n),
                        _ => return Err(self.err(&path, "milliseconds between 1 and 60000")),
                    }
                }
                "inject_region_delay_ms" => {
                    config.node.cluster.inject_region_delay = match self.integer(Some(v), &path)? {
                        Some(n) if n <= 10_000 => Duration::from_millis(n),
                        _ => {
                            return Err(
                                self.err(&path, "milliseconds up to 10000 (tests and demos only)")
                            );
                        }
                    }
                }
                "inject_partition_file" => {
                    config.node.cluster.inject_partition_file =
                        Some(self.required_string(Some(v), &path)?.into())
                }
                "enforcement" => {
                    config.default_enforcement = match self
                        .required_string(Some(v), &path)?
                        .as_str()
                    {
                        "available" => meridian_consensus::metadata::Enforcement::Available,
                        "strict" => meridian_consensus::metadata::Enforcement::Strict,
                        other => {
                            return Err(self
                                .err(&path, format!("`available` or `strict`, found `{other}`")));
                        }
                    }
                }
                "strict_wait_ms" => {
                    config.strict_wait = match self.integer(Some(v), &path)? {
                        Some(n) if (1..=60_000).contains(&n) => Duration::from_millis(n),
                        _ => return Err(self.err(&path, "milliseconds between 1 and 60000")),
                    }
                }
                "shutdown_drain_seconds" => {
                    config.shutdown_drain = Duration::from_secs(self.bounded(v, &path, 0, 3_600)?)
                }
                "max_connections" => {
                    config.http.max_connections = self.bounded(v, &path, 1, 1_000_000)? as usize
                }
                "max_connections_per_ip" => {
                    config.http.max_connections_per_ip =
                        self.bounded(v, &path, 0, 1_000_000)? as usize
                }
                "max_header_bytes" => {
                    config.http.max_header_bytes =
                        self.bounded(v, &path, 8192, 16 * 1024 * 1024)? as usize
                }
                "header_read_timeout_ms" => {
                    config.http.header_read_timeout =
                        Duration::from_millis(self.bounded(v, &path, 100, 3_600_000)?)
                }
                "idle_timeout_ms" => {
                    config.http.idle_timeout =
                        Duration::from_millis(self.bounded(v, &path, 100, 86_400_000)?)
                }
                "body_read_timeout_ms" => {
                    config.http.body_read_timeout =
                        Duration::from_millis(self.bounded(v, &path, 100, 3_600_000)?)
                }
                "model_env_allowlist" => {
                    config.model_env_allowlist = self.env_allowlist(v, &path)?
                }
                "raft_snapshot_every" => {
                    config.node.cluster.snapshot_every = match self.integer(Some(v), &path)? {
                        Some(n) if n >= 2 => n,
                        _ => {
                            return Err(
                                self.err(&path, "a whole number of log entries, at least 2")
                            );
                        }
                    }
                }
                _ => {
                    return Err(self.err(
                        &path,
                        format!("one of the keys of the `meridian` section ({MERIDIAN_KEYS}); `{key}` is not one"),
                    ));
                }
            }
        }
        for name in [&config.node.node_id, &config.node.region] {
            if !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(self.err(
                    "meridian",
                    format!(
                        "node_id and region made of letters, digits, '-' and '_'; got `{name}`"
                    ),
                ));
            }
        }
        config.node.listen = SocketAddr::new(
            host.unwrap_or(config.node.listen.ip()),
            port.unwrap_or(config.node.listen.port()),
        );
        let cluster = &config.node.cluster;
        if cluster.remote_regions.contains_key(&config.node.region) {
            return Err(self.err(
                "meridian.remote_regions",
                format!(
                    "other regions only; `{}` is this node's own",
                    config.node.region
                ),
            ));
        }
        if !cluster.remote_regions.is_empty() && cluster.listen.is_none() {
            return Err(self.err(
                "meridian.cluster_listen",
                "an address for other regions to reach this node",
            ));
        }
        if !cluster.peers.is_empty() {
            if !cluster.peers.iter().any(|p| p.raft_id == cluster.raft_id) {
                return Err(self.err(
                    "meridian.peers",
                    format!(
                        "a list that includes this node (raft_id {})",
                        cluster.raft_id
                    ),
                ));
            }
            if cluster.listen.is_none() {
                return Err(self.err(
                    "meridian.cluster_listen",
                    "an address for peers to reach this node",
                ));
            }
        }
        Ok(())
    }

    /// `remote_regions: {eu-west: ["10.1.0.5:7000", ...], ...}`
    fn remote_regions(
        &mut self,
        value: &Value,
        path: &str,
    ) -> Result<std::collections::BTreeMap<String, Vec<String>>> {
        let map = self.mapping(value, path)?;
        let mut out = std::collections::BTreeMap::new();
        for (region, addrs) in &map {
            let p = format!("{path}.{region}");
            let list = addrs
                .as_array()
                .ok_or_else(|| self.err(&p, "a list of host:port addresses"))?;
            let mut parsed = Vec::new();
            for (i, a) in list.iter().enumerate() {
                let a = self.required_string(Some(a), &format!("{p}[{i}]"))?;
                if !a.contains(':') {
                    return Err(self.err(&format!("{p}[{i}]"), format!("host:port, found `{a}`")));
                }
                parsed.push(a);
            }
            out.insert(region.clone(), parsed);
        }
        Ok(out)
    }

    /// `peers: [{raft_id, cluster_addr, api_url}, ...]`
    fn peers(&mut self, value: &Value, path: &str) -> Result<Vec<Peer>> {
        let items = self.list(value, path, "peers")?;
        let mut peers: Vec<Peer> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let p = format!("{path}[{i}]");
            let map = self.mapping(item, &p)?;
            for key in map.keys() {
                if !matches!(key.as_str(), "raft_id" | "cluster_addr" | "api_url") {
                    return Err(self.err(
                        &format!("{p}.{key}"),
                        "one of raft_id, cluster_addr, api_url",
                    ));
                }
            }
            let raft_id = match self.integer(map.get("raft_id"), &format!("{p}.raft_id"))? {
                Some(n) if n > 0 => n,
                _ => return Err(self.err(&format!("{p}.raft_id"), "a positive whole number")),
            };
            if peers.iter().any(|q| q.raft_id == raft_id) {
                return Err(self.err(
                    &format!("{p}.raft_id"),
                    format!("a unique id; {raft_id} is used twice"),
                ));
            }
            let cluster_addr =
                self.required_string(map.get("cluster_addr"), &format!("{p}.cluster_addr"))?;
            let api_url = self.required_string(map.get("api_url"), &format!("{p}.api_url"))?;
            peers.push(Peer {
                raft_id,
                cluster_addr,
                api_url: api_url.trim_end_matches('/').to_owned(),
            });
        }
        Ok(peers)
    }

    /// `model_env_allowlist: [VAR, ...]` (each for the provider's own
    /// upstream only) or `{VAR: "https://allowed.prefix", VAR2: null, ...}`.
    fn env_allowlist(&mut self, v: &Value, path: &str) -> Result<crate::config::EnvAllowlist> {
        let entries: Vec<(String, Option<String>)> = match v {
            Value::Object(map) => map
                .iter()
                .map(|(name, to)| match to {
                    Value::Null => Ok((name.clone(), None)),
                    Value::String(u) if u.starts_with("https://") || u.starts_with("http://") => {
                        Ok((name.clone(), Some(u.to_owned())))
                    }
                    _ => Err(self.err(
                        &format!("{path}.{name}"),
                        "the URL prefix its value may be sent to, such as https://api.openai.com",
                    )),
                })
                .collect::<Result<_>>()?,
            _ => self
                .string_list(v, path)?
                .into_iter()
                .map(|n| (n, None))
                .collect(),
        };
        for (name, _) in &entries {
            let ok =
                !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !ok {
                return Err(self.err(
                    path,
                    format!(
                        "environment variable names (letters, digits, '_'); `{name}` is not one"
                    ),
                ));
            }
        }
        Ok(entries.into_iter().collect())
    }
}
