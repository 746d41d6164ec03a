//! Starting the systems a comparison loads — the fake upstream, Meridian as
//! one node, one region of three and two regions of one, the LiteLLM proxy —
//! and getting each to the point where load can start: every process
//! answering, a virtual key made and known on every node, one real call
//! through every node answered.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use super::calls::{Http, call};
use super::child::{Group, Proc, WorkDir, free_port};
use crate::Error;

/// The gateways' master key (the configs name it; nothing here is secret).
pub(crate) const MASTER_KEY: &str = "sk-master-compare-0001";
/// The model group every row serves.
pub(crate) const MODEL: &str = "bench";
/// What the virtual key allows: far above anything a run on one machine
/// can send, so limits are checked on every request but never refuse one.
pub(crate) const KEY_LIMITS: &str =
    r#"{"max_budget": 1000000, "rpm_limit": 100000000, "tpm_limit": 10000000000}"#;

/// How often readiness is polled.
pub(crate) const POLL: Duration = Duration::from_millis(100);

/// The fake upstream as its own process (`meridian-loadtest upstream`), so
/// that its CPU is not the load generator's and can be measured apart.
pub(crate) struct Upstream {
    pub(crate) group: Group,
    pub(crate) port: u16,
}

impl Upstream {
    pub(crate) async fn start(
        bin: &Path,
        work: &WorkDir,
        latency: Duration,
        timeout: Duration,
    ) -> Result<Self, Error> {
        let port = free_port()?;
        let mut command = Command::new(bin);
        command.args([
            "upstream",
            "--port",
            &port.to_string(),
            "--latency-ms",
            &latency.as_millis().to_string(),
        ]);
        let mut group = Group::default();
        group.procs.push(Proc::spawn(
            "fake upstream",
            command,
            &work.path().join("upstream.log"),
        )?);
        let deadline = Instant::now() + timeout;
        loop {
            group.check_alive("fake upstream")?;
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Ok(Self { group, port });
            }
            if Instant::now() > deadline {
                let reason = group
                    .procs
                    .first()
                    .map_or_else(String::new, |p| p.failure("is not listening"));
                return Err(Error::Gateway {
                    row: "fake upstream".into(),
                    reason,
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// The model list and master key every gateway gets, LiteLLM's format.
pub(crate) fn base_config(upstream_port: u16) -> String {
    format!(
        "model_list:
  - model_name: {MODEL}
    litellm_params:
      model: openai/{MODEL}
      api_base: http://127.0.0.1:{upstream_port}/v1
      api_key: sk-x
      input_cost_per_token: 0.000001
      output_cost_per_token: 0.000002
general_settings:
  master_key: {MASTER_KEY}
"
    )
}

/// One Meridian node of a cluster row.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NodeSpec {
    pub(crate) region: String,
    pub(crate) raft_id: u64,
    pub(crate) api_port: u16,
    pub(crate) cluster_port: u16,
}

impl NodeSpec {
    pub(crate) fn name(&self) -> String {
        format!("{}-{}", self.region, self.raft_id)
    }
}

/// `regions` × `per_region` nodes on fresh ports, raft ids from 1 in each.
pub(crate) fn plan(regions: &[&str], per_region: u64) -> Result<Vec<NodeSpec>, Error> {
    let mut nodes = Vec::new();
    for region in regions {
        for raft_id in 1..=per_region {
            nodes.push(NodeSpec {
                region: (*region).to_owned(),
                raft_id,
                api_port: free_port()?,
                cluster_port: free_port()?,
            });
        }
    }
    Ok(nodes)
}

/// The `meridian:` section of node `me` of `nodes`: its region's nodes as
/// Raft peers, every other region's as `remote_regions`, and mutual TLS
/// with the certificates in `tls` (as `ops/local-cluster.sh` writes them).
pub(crate) fn cluster_section(
    nodes: &[NodeSpec],
    me: &NodeSpec,
    secret: &str,
    tls: &Path,
) -> String {
    let mut s = format!(
        "meridian:
  node_id: {name}
  region: {region}
  raft_id: {raft_id}
  cluster_listen: 127.0.0.1:{cluster}
  cluster_secret: {secret}
  cluster_tls_ca: {dir}/ca.pem
  cluster_tls_cert: {dir}/node-{name}.pem
  cluster_tls_key: {dir}/node-{name}.key
  peers:
",
        name = me.name(),
        region = me.region,
        raft_id = me.raft_id,
        cluster = me.cluster_port,
        dir = tls.display(),
    );
    for peer in nodes.iter().filter(|n| n.region == me.region) {
        s.push_str(&format!(
            "    - {{raft_id: {}, cluster_addr: \"127.0.0.1:{}\", api_url: \"http://127.0.0.1:{}\"}}\n",
            peer.raft_id, peer.cluster_port, peer.api_port
        ));
    }
    let mut others: Vec<&str> = nodes
        .iter()
        .map(|n| n.region.as_str())
        .filter(|r| *r != me.region)
        .collect();
    others.dedup();
    if !others.is_empty() {
        s.push_str("  remote_regions:\n");
        for region in others {
            let addrs: Vec<String> = nodes
                .iter()
                .filter(|n| n.region == region)
                .map(|n| format!("\"127.0.0.1:{}\"", n.cluster_port))
                .collect();
            s.push_str(&format!("    {region}: [{}]\n", addrs.join(", ")));
        }
    }
    s
}

/// A row's processes, ready for load.
pub(crate) struct Ready {
    pub(crate) group: Group,
    /// The API base URLs load is spread over.
    pub(crate) urls: Vec<String>,
    /// The key load is sent with.
    pub(crate) key: String,
}

/// What starting a row needs.
pub(crate) struct Start<'a> {
    pub(crate) row: &'a str,
    pub(crate) dir: PathBuf,
    pub(crate) upstream_port: u16,
    pub(crate) timeout: Duration,
    pub(crate) http: &'a Http,
}

impl Start<'_> {
    pub(crate) fn error(&self, reason: String) -> Error {
        Error::Gateway {
            row: self.row.to_owned(),
            reason,
        }
    }

    /// Runs `meridian cert ARGS`.
    fn cert(&self, bin: &Path, args: &[&str]) -> Result<(), Error> {
        let out = Command::new(bin).arg("cert").args(args).output()?;
        if out.status.success() {
            Ok(())
        } else {
            Err(self.error(format!(
                "meridian cert {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    }

    /// Meridian: one node (`nodes` empty: no `meridian:` section at all), or
    /// the nodes of `nodes`, then a virtual key known on every node.
    /// `extra` is appended to a single node's config (Meridian's own
    /// settings for a row).
    pub(crate) async fn meridian(
        &self,
        bin: &Path,
        nodes: &[NodeSpec],
        extra: &str,
    ) -> Result<Ready, Error> {
        let single = [NodeSpec {
            region: "local".into(),
            raft_id: 1,
            api_port: free_port()?,
            cluster_port: 0,
        }];
        let (specs, clustered) = if nodes.is_empty() {
            (&single[..], false)
        } else {
            (nodes, true)
        };
        // Not a secret worth guarding: every node is on this machine and
        // gone when the row ends; it only has to match between them.
        let secret = format!("compare-{}-{}", std::process::id(), self.upstream_port);
        // Inter-node links are mutual TLS, as in production: a CA and a
        // certificate per node, made with the gateway's own `cert` command.
        let tls = self.dir.join("tls");
        if clustered {
            self.cert(bin, &["init-ca", "--dir", &tls.display().to_string()])?;
            for spec in specs {
                let (region, id) = (spec.region.clone(), spec.raft_id.to_string());
                let dir = tls.display().to_string();
                self.cert(
                    bin,
                    &[
                        "issue", "--ca-dir", &dir, "--region", &region, "--node", &id,
                    ],
                )?;
            }
        }
        let mut group = Group::default();
        let mut urls = Vec::new();
        for spec in specs {
            let name = spec.name();
            let mut config = base_config(self.upstream_port);
            if clustered {
                config.push_str(&cluster_section(specs, spec, &secret, &tls));
            } else {
                config.push_str(extra);
            }
            let config_path = self.dir.join(format!("{name}.yaml"));
            std::fs::write(&config_path, config)?;
            let data = self.dir.join(format!("{name}-data"));
            let mut command = Command::new(bin);
            command
                .arg("serve")
                .arg("--config")
                .arg(&config_path)
                .arg("--data-dir")
                .arg(&data)
                .arg("--port")
                .arg(spec.api_port.to_string())
                // The configs name both: nothing from this environment.
                .env_remove("MERIDIAN_MASTER_KEY")
                .env_remove("LITELLM_MASTER_KEY")
                .env_remove("MERIDIAN_CLUSTER_SECRET");
            group.procs.push(Proc::spawn(
                &format!("meridian {name}"),
                command,
                &self.dir.join(format!("{name}.log")),
            )?);
            urls.push(format!("http://127.0.0.1:{}", spec.api_port));
        }
        let deadline = Instant::now() + self.timeout;
        for (i, url) in urls.iter().enumerate() {
            self.wait_live(&mut group, i, url, deadline).await?;
        }
        let key = self.make_key(&mut group, &urls, deadline).await?;
        for (i, url) in urls.iter().enumerate() {
            self.wait_authenticated(&mut group, i, url, &key, deadline)
                .await?;
        }
        Ok(Ready { group, urls, key })
    }

    /// The LiteLLM proxy from `venv`, no database: its master key is the
    /// only key it has.
    pub(crate) async fn litellm(&self, venv: &Path, workers: usize) -> Result<Ready, Error> {
        let port = free_port()?;
        let config_path = self.dir.join("litellm.yaml");
        std::fs::write(&config_path, base_config(self.upstream_port))?;
        let mut command = Command::new(venv.join("bin").join("litellm"));
        command
            .arg("--config")
            .arg(&config_path)
            .arg("--host")
            .arg("127.0.0.1")
            .arg("--port")
            .arg(port.to_string())
            .arg("--num_workers")
            .arg(workers.to_string())
            // The price map bundled with the package: fetching the newest
            // one would wait on a host this machine cannot reach.
            .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
            .env("LITELLM_TELEMETRY", "False")
            .env_remove("DATABASE_URL")
            .env_remove("LITELLM_MASTER_KEY")
            .current_dir(&self.dir);
        let mut group = Group::default();
        group.procs.push(Proc::spawn(
            "litellm",
            command,
            &self.dir.join("litellm.log"),
        )?);
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + self.timeout;
        self.wait_live(&mut group, 0, &url, deadline).await?;
        self.wait_authenticated(&mut group, 0, &url, MASTER_KEY, deadline)
            .await?;
        Ok(Ready {
            group,
            urls: vec![url],
            key: MASTER_KEY.into(),
        })
    }

    /// Until `/health/liveliness` answers 200 (an error if the process
    /// exits or the deadline passes).
    async fn wait_live(
        &self,
        group: &mut Group,
        i: usize,
        url: &str,
        deadline: Instant,
    ) -> Result<(), Error> {
        let probe = format!("{url}/health/liveliness");
        self.poll(
            group,
            i,
            deadline,
            "did not answer /health/liveliness",
            || {
                let probe = probe.clone();
                async move {
                    call(self.http, http::Method::GET, &probe, None, None)
                        .await
                        .is_some_and(|(status, _)| status == 200)
                }
            },
        )
        .await
    }

    /// Until `key` lists the models on this node, then one chat completion
    /// through it: the path load takes, end to end.
    async fn wait_authenticated(
        &self,
        group: &mut Group,
        i: usize,
        url: &str,
        key: &str,
        deadline: Instant,
    ) -> Result<(), Error> {
        let models = format!("{url}/v1/models");
        self.poll(group, i, deadline, "did not accept the key", || {
            let models = models.clone();
            async move {
                call(self.http, http::Method::GET, &models, Some(key), None)
                    .await
                    .is_some_and(|(status, _)| status == 200)
            }
        })
        .await?;
        let body = json!({"model": MODEL, "max_tokens": 16,
            "messages": [{"role": "user", "content": "Hello"}]});
        let chat = format!("{url}/v1/chat/completions");
        match call(self.http, http::Method::POST, &chat, Some(key), Some(&body)).await {
            Some((200, _)) => Ok(()),
            other => {
                let seen = other.map_or("no answer".into(), |(s, b)| format!("{s} {b}"));
                Err(self.error(proc_failure(
                    group,
                    i,
                    &format!("answered a test chat completion with {seen}"),
                )))
            }
        }
    }

    /// A virtual key through `/key/generate` on the first node, retried
    /// while the region elects its leader.
    async fn make_key(
        &self,
        group: &mut Group,
        urls: &[String],
        deadline: Instant,
    ) -> Result<String, Error> {
        let url = format!("{}/key/generate", urls.first().map_or("", String::as_str));
        let body: Value = serde_json::from_str(KEY_LIMITS)?;
        loop {
            group.check_alive(self.row)?;
            let last = match call(
                self.http,
                http::Method::POST,
                &url,
                Some(MASTER_KEY),
                Some(&body),
            )
            .await
            {
                Some((200, reply)) => {
                    return match reply["key"].as_str() {
                        Some(key) => Ok(key.to_owned()),
                        None => Err(self.error(format!("/key/generate returned no key: {reply}"))),
                    };
                }
                Some((status, reply)) => format!("{status} {reply}"),
                None => "no answer".into(),
            };
            if Instant::now() > deadline {
                return Err(self.error(proc_failure(
                    group,
                    0,
                    &format!("did not make a key (last answer: {last})"),
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Polls `ready` until it holds; an error naming process `i` when the
    /// row has a process that exited or the deadline passes.
    pub(crate) async fn poll<F, Fut>(
        &self,
        group: &mut Group,
        i: usize,
        deadline: Instant,
        what: &str,
        mut ready: F,
    ) -> Result<(), Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        loop {
            group.check_alive(self.row)?;
            if ready().await {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(self.error(proc_failure(
                    group,
                    i,
                    &format!("{what} within {:?}", self.timeout),
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

pub(crate) fn proc_failure(group: &Group, i: usize, what: &str) -> String {
    group
        .procs
        .get(i)
        .map_or_else(|| what.to_owned(), |p| p.failure(what))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn node(region: &str, raft_id: u64, api_port: u16, cluster_port: u16) -> NodeSpec {
        NodeSpec {
            region: region.into(),
            raft_id,
            api_port,
            cluster_port,
        }
    }

    #[test]
    fn a_region_names_its_peers_and_the_other_regions() {
        let nodes = [
            node("us-east", 1, 4001, 5001),
            node("us-east", 2, 4002, 5002),
            node("eu-west", 1, 4003, 5003),
        ];
        let tls = Path::new("/t");
        let section = cluster_section(&nodes, &nodes[1], "s3cret", tls);
        assert!(section.contains("node_id: us-east-2\n"), "{section}");
        assert!(section.contains("raft_id: 2\n"), "{section}");
        assert!(
            section.contains("cluster_listen: 127.0.0.1:5002\n"),
            "{section}"
        );
        assert!(section.contains("cluster_secret: s3cret\n"), "{section}");
        assert!(
            section.contains("cluster_tls_cert: /t/node-us-east-2.pem\n"),
            "{section}"
        );
        assert!(section.contains(
            "    - {raft_id: 1, cluster_addr: \"127.0.0.1:5001\", api_url: \"http://127.0.0.1:4001\"}\n"
        ));
        assert_eq!(section.matches("raft_id: ").count(), 3, "{section}");
        assert!(section.ends_with("  remote_regions:\n    eu-west: [\"127.0.0.1:5003\"]\n"));

        let alone = cluster_section(&nodes[..2], &nodes[0], "s", tls);
        assert!(!alone.contains("remote_regions"), "{alone}");
    }

    #[test]
    fn the_base_config_points_at_the_upstream() {
        let config = base_config(9123);
        assert!(config.contains("api_base: http://127.0.0.1:9123/v1\n"));
        assert!(config.contains("master_key: sk-master-compare-0001\n"));
        let limits: Value = serde_json::from_str(KEY_LIMITS).unwrap();
        assert_eq!(limits["max_budget"], 1_000_000);
    }
}
