//! A real three-node region over loopback: `meridian` processes, killed with
//! SIGKILL and restarted from their data directories.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod process_support;

use std::process::Command;
use std::time::Duration;

use process_support::{BIN, MASTER, PortTaken, Proc as Node, free_port, log_tail, spawn};

use tokio::time::Instant;

use serde_json::{Value, json};

struct Region {
    _dir: tempfile::TempDir,
    nodes: Vec<Node>,
    http: reqwest::Client,
}

impl Region {
    async fn start(size: u64, snapshot_every: u64) -> Region {
        process_support::with_fresh_ports(|| Self::try_start(size, snapshot_every)).await
    }

    async fn try_start(size: u64, snapshot_every: u64) -> Result<Region, PortTaken> {
        meridian_node::upstream::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let mut nodes: Vec<Node> = (1..=size)
            .map(|raft_id| Node {
                region: "test",
                raft_id,
                api_port: free_port(),
                cluster_port: free_port(),
                config: dir.path().join(format!("n{raft_id}.yaml")),
                child: None,
            })
            .collect();
        let peers: String = nodes
            .iter()
            .map(|n| {
                format!(
                    "    - {{raft_id: {}, cluster_addr: \"127.0.0.1:{}\", api_url: \"{}\"}}\n",
                    n.raft_id,
                    n.cluster_port,
                    n.url()
                )
            })
            .collect();
        for n in &nodes {
            let yaml = format!(
                "model_list:\n  - model_name: gpt\n    litellm_params: {{model: mock/chat}}\nmeridian:\n  node_id: n{id}\n  region: test\n  port: {port}\n  data_dir: {data}\n  raft_id: {id}\n  cluster_listen: 127.0.0.1:{cport}\n  raft_snapshot_every: {snapshot_every}\n  peers:\n{peers}",
                id = n.raft_id,
                port = n.api_port,
                data = dir.path().join(format!("data{}", n.raft_id)).display(),
                cport = n.cluster_port,
            );
            std::fs::write(&n.config, yaml).unwrap();
        }
        let mut region = Region {
            _dir: dir,
            nodes: Vec::new(),
            http: reqwest::Client::new(),
        };
        for n in &mut nodes {
            n.child = Some(spawn(&n.config));
        }
        region.nodes = nodes;
        for i in 0..region.nodes.len() {
            region.wait_up(i).await?;
        }
        Ok(region)
    }

    /// Writes a config for one more node that lists the region's members and
    /// itself (so it never bootstraps a region of its own), and starts it.
    async fn start_joiner(&mut self, raft_id: u64) -> usize {
        let node = Node {
            region: "test",
            raft_id,
            api_port: free_port(),
            cluster_port: free_port(),
            config: self._dir.path().join(format!("n{raft_id}.yaml")),
            child: None,
        };
        let mut peers: String = self
            .nodes
            .iter()
            .map(|n| {
                format!(
                    "    - {{raft_id: {}, cluster_addr: \"127.0.0.1:{}\", api_url: \"{}\"}}\n",
                    n.raft_id,
                    n.cluster_port,
                    n.url()
                )
            })
            .collect();
        peers += &format!(
            "    - {{raft_id: {raft_id}, cluster_addr: \"127.0.0.1:{}\", api_url: \"{}\"}}\n",
            node.cluster_port,
            node.url()
        );
        let yaml = format!(
            "model_list:\n  - model_name: gpt\n    litellm_params: {{model: mock/chat}}\nmeridian:\n  node_id: n{raft_id}\n  region: test\n  port: {}\n  data_dir: {}\n  raft_id: {raft_id}\n  cluster_listen: 127.0.0.1:{}\n  peers:\n{peers}",
            node.api_port,
            self._dir.path().join(format!("data{raft_id}")).display(),
            node.cluster_port,
        );
        std::fs::write(&node.config, yaml).unwrap();
        self.nodes.push(node);
        let i = self.nodes.len() - 1;
        self.restart(i).await;
        i
    }

    async fn wait_up(&mut self, i: usize) -> Result<(), PortTaken> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self
                .http
                .get(format!("{}/health/liveliness", self.nodes[i].url()))
                .send()
                .await
                .is_ok()
            {
                return Ok(());
            }
            self.nodes[i].still_running()?;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "node {} did not come up\n{}",
            self.nodes[i].raft_id,
            log_tail(&self.nodes[i].config)
        );
    }

    fn kill(&mut self, i: usize) {
        let mut child = self.nodes[i].child.take().expect("running");
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }

    async fn restart(&mut self, i: usize) {
        self.nodes[i].child = Some(spawn(&self.nodes[i].config));
        self.wait_up(i)
            .await
            .expect("a restarted node's ports were taken");
    }

    async fn call(
        &self,
        i: usize,
        method: &str,
        path: &str,
        key: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        process_support::call(&self.http, &self.nodes[i].url(), method, path, key, body).await
    }

    async fn status(&self, i: usize) -> Value {
        self.call(i, "GET", "/cluster/status", MASTER, None).await.1
    }

    /// Index of the leader, as the live nodes report it.
    async fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            for (i, n) in self.nodes.iter().enumerate() {
                if n.child.is_some() && self.status(i).await["state"] == "leader" {
                    return i;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no leader within 15 s");
    }

    async fn new_key(&self, i: usize) -> String {
        let (status, body) = self
            .call(i, "POST", "/key/generate", MASTER, Some(json!({})))
            .await;
        assert_eq!(status, 200, "{body}");
        body["key"].as_str().unwrap().to_owned()
    }

    async fn chat(&self, i: usize, key: &str) -> u16 {
        let body = json!({ "model": "gpt", "messages": [{ "role": "user", "content": "hi" }] });
        self.call(i, "POST", "/v1/chat/completions", key, Some(body))
            .await
            .0
    }

    /// Waits until `key` authenticates on node `i`; returns how long it took.
    async fn until_accepted(&self, i: usize, key: &str, within: Duration) -> Duration {
        let start = Instant::now();
        while start.elapsed() < within {
            if self.chat(i, key).await == 200 {
                return start.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "key not accepted on node {} within {within:?}",
            self.nodes[i].raft_id
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_made_on_a_follower_work_everywhere_and_survive_a_leader_kill() {
    let mut r = Region::start(3, 5000).await;
    let leader = r.leader().await;
    let follower = (leader + 1) % 3;

    // Created through a follower (forwarded to the leader), usable everywhere
    // within a second.
    let key = r.new_key(follower).await;
    for i in 0..3 {
        // Fails unless accepted within the second.
        r.until_accepted(i, &key, Duration::from_secs(1)).await;
    }

    // Admin errors over the cluster too.
    assert_eq!(
        r.call(
            follower,
            "POST",
            "/key/generate",
            "sk-wrong",
            Some(json!({}))
        )
        .await
        .0,
        401
    );
    assert_eq!(
        r.call(follower, "POST", "/key/generate", &key, Some(json!({})))
            .await
            .0,
        403
    );
    let (status, body) = r
        .call(
            follower,
            "POST",
            "/key/generate",
            MASTER,
            Some(json!({ "tpm_limit": -1 })),
        )
        .await;
    assert_eq!(
        (status, body["error"]["param"].as_str()),
        (400, Some("tpm_limit")),
        "{body}"
    );

    let mut acked = vec![key];
    for i in 0..4 {
        acked.push(r.new_key(i % 3).await);
    }

    // SIGKILL the leader: a new one is elected and writes resume.
    r.kill(leader);
    let killed_at = Instant::now();
    let survivor = (leader + 1) % 3;
    let resumed = loop {
        let (status, body) = r
            .call(survivor, "POST", "/key/generate", MASTER, Some(json!({})))
            .await;
        if status == 200 {
            break body["key"].as_str().unwrap().to_owned();
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(10),
            "writes did not resume: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let pause = killed_at.elapsed();
    assert!(
        pause < Duration::from_secs(10),
        "admin writes paused {pause:?}"
    );
    acked.push(resumed);
    // No acknowledged write is lost.
    for i in (0..3).filter(|i| *i != leader) {
        for k in &acked {
            r.until_accepted(i, k, Duration::from_secs(2)).await;
        }
    }

    // The killed node comes back from its data directory and catches up.
    r.restart(leader).await;
    for k in &acked {
        r.until_accepted(leader, k, Duration::from_secs(5)).await;
    }
    eprintln!("writes resumed {pause:?} after the leader was killed");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_node_catches_up_through_a_snapshot() {
    let mut r = Region::start(3, 5).await;
    let leader = r.leader().await;
    let behind = (leader + 2) % 3;
    r.kill(behind);
    let last_seen = r.status(leader).await["last_log_index"]
        .as_u64()
        .unwrap_or(0);

    let mut keys = Vec::new();
    for _ in 0..30 {
        keys.push(r.new_key(leader).await);
    }
    // The leader has snapshotted and purged past what the stopped node has.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let purged = r.status(leader).await["purged_index"].as_u64();
        if purged.is_some_and(|p| p > last_seen) {
            break;
        }
        assert!(Instant::now() < deadline, "the leader never purged its log");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    r.restart(behind).await;
    for k in &keys {
        r.until_accepted(behind, k, Duration::from_secs(10)).await;
    }
    let status = r.status(behind).await;
    assert!(
        status["snapshot_index"]
            .as_u64()
            .is_some_and(|s| s > last_seen),
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn nodes_are_added_and_removed_with_the_cli() {
    let mut r = Region::start(3, 5000).await;
    r.leader().await;
    let key = r.new_key(0).await;
    let joiner = r.start_joiner(4).await;
    // Through a follower or the leader alike: the CLI talks to any node.
    let cli = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(args)
            .env("MERIDIAN_MASTER_KEY", MASTER)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let url = r.nodes[1].url();
    let (ok, out) = cli(&[
        "cluster",
        "add-node",
        "--url",
        &url,
        "--raft-id",
        "4",
        "--cluster-addr",
        &format!("127.0.0.1:{}", r.nodes[joiner].cluster_port),
        "--api-url",
        &r.nodes[joiner].url(),
    ]);
    assert!(ok, "{out}");
    let status = r.status(joiner).await;
    let voters = status["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["voter"] == true)
        .count();
    assert_eq!(voters, 4, "{status}");
    r.until_accepted(joiner, &key, Duration::from_secs(5)).await;

    let (ok, out) = cli(&[
        "cluster",
        "remove-node",
        "--url",
        &r.nodes[0].url(),
        "--raft-id",
        "4",
    ]);
    assert!(ok, "{out}");
    let (ok, out) = cli(&["cluster", "status", "--url", &r.nodes[2].url()]);
    assert!(ok, "{out}");
    let status: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["members"].as_array().unwrap().len(), 3, "{status}");
}
