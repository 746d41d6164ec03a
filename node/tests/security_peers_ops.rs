//! The two-region cluster an operator starts with `ops/local-cluster.sh`
//! (mutual TLS by default), run from a private copy of the script so its
//! state directory is the test's own: metadata crosses between the regions
//! over the TLS links, and a client without a certificate is refused on
//! every node's inter-node port. The nodes are stopped with the script's own
//! `down` when the test ends, however it ends.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod process_support;
mod security_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use process_support::{BIN, MASTER};
use security_support::peers;
use serde_json::{Value, json};
use tokio::time::{Instant, sleep};

/// A copy of `ops/local-cluster.sh` in a temporary tree; `down` on drop.
struct Script {
    root: tempfile::TempDir,
}

impl Script {
    fn new() -> Script {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("ops")).unwrap();
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        std::fs::copy(
            repo.join("ops/local-cluster.sh"),
            root.path().join("ops/local-cluster.sh"),
        )
        .unwrap();
        Script { root }
    }

    fn state(&self) -> PathBuf {
        self.root.path().join("ops/.local-cluster")
    }

    /// Runs the script with `args`, killed if it takes longer than
    /// `within`; whether it succeeded, and what it printed.
    fn run(&self, args: &[&str], within: Duration) -> (bool, String) {
        let out = self.root.path().join("script.out");
        let file = std::fs::File::create(&out).unwrap();
        let mut child = Command::new("bash")
            .arg(self.root.path().join("ops/local-cluster.sh"))
            .args(args)
            .env("MERIDIAN_BIN", BIN)
            .env("MERIDIAN_MASTER_KEY", MASTER)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        let deadline = std::time::Duration::from_millis(100);
        let mut waited = Duration::ZERO;
        let ok = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status.success();
            }
            if waited > within {
                let _ = child.kill();
                let _ = child.wait();
                break false;
            }
            std::thread::sleep(deadline);
            waited += deadline;
        };
        (ok, std::fs::read_to_string(out).unwrap_or_default())
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        // `down` stops only the processes `up` recorded, SIGKILL after 10 s.
        let (ok, out) = self.run(&["down"], Duration::from_secs(30));
        if !ok {
            eprintln!("local-cluster.sh down failed: {out}");
        }
    }
}

/// A node as `cluster.json` and its config describe it.
struct Node {
    region: String,
    url: String,
    cluster_addr: String,
}

fn nodes(state: &Path) -> Vec<Node> {
    let text = std::fs::read_to_string(state.join("cluster.json")).unwrap();
    let cluster: Value = serde_json::from_str(&text).unwrap();
    cluster["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            let id = n["id"].as_str().unwrap();
            let config = std::fs::read_to_string(state.join(id).join("config.yaml")).unwrap();
            let cluster_addr = config
                .lines()
                .find_map(|l| l.trim().strip_prefix("cluster_listen:"))
                .unwrap()
                .trim()
                .to_owned();
            Node {
                region: n["region"].as_str().unwrap().to_owned(),
                url: n["url"].as_str().unwrap().to_owned(),
                cluster_addr,
            }
        })
        .collect()
}

/// Waits until `key` is served a chat completion on `node` (at most 30 s).
async fn served_with(http: &reqwest::Client, node: &Node, key: &str) -> Duration {
    let start = Instant::now();
    let body = json!({"model": "mock-chat", "messages": [{"role": "user", "content": "hi"}]});
    loop {
        let (status, reply) = process_support::call(
            http,
            &node.url,
            "POST",
            "/v1/chat/completions",
            key,
            Some(body.clone()),
        )
        .await;
        if status == 200 {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{}: {status} {reply}",
            node.region
        );
        sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scripted_two_region_cluster_syncs_over_tls_and_refuses_bare_clients() {
    meridian_node::upstream::install_crypto_provider();
    let script = Script::new();
    let up = [
        "up",
        "--regions",
        "us-east,eu-west",
        "--nodes-per-region",
        "1",
    ];
    let (ok, out) = script.run(&up, Duration::from_secs(120));
    assert!(ok, "local-cluster.sh up: {out}");
    let state = script.state();
    let nodes = nodes(&state);
    assert_eq!(nodes.len(), 2);
    let tls = state.join("tls");
    let ca = std::fs::read_to_string(tls.join("ca.pem")).unwrap();
    for node in &nodes {
        let config = std::fs::read_to_string(state.join(format!("{}-1/config.yaml", node.region)));
        assert!(
            config.unwrap().contains("cluster_tls_cert"),
            "TLS by default"
        );
    }

    // Metadata crosses in both directions over the TLS links.
    let http = reqwest::Client::new();
    for (from, to) in [(0, 1), (1, 0)] {
        let (status, made) = process_support::call(
            &http,
            &nodes[from].url,
            "POST",
            "/key/generate",
            MASTER,
            Some(json!({})),
        )
        .await;
        assert_eq!(status, 200, "{made}");
        let key = made["key"].as_str().unwrap();
        let took = served_with(&http, &nodes[to], key).await;
        eprintln!(
            "a key made in {} served in {} after {took:?}",
            nodes[from].region, nodes[to].region
        );
    }

    // Every inter-node port: a bare TLS client and a plain-text one are
    // refused; the script's own node certificate gets through.
    let bare = peers::client_config(&ca, None);
    for node in &nodes {
        let pair = meridian_link::certs::PemPair {
            cert_pem: std::fs::read_to_string(tls.join(format!("node-{}-1.pem", node.region)))
                .unwrap(),
            key_pem: std::fs::read_to_string(tls.join(format!("node-{}-1.key", node.region)))
                .unwrap(),
        };
        let control =
            peers::probe(&node.cluster_addr, peers::client_config(&ca, Some(&pair))).await;
        assert!(control.admitted(), "{}: {control:?}", node.region);
        let probe = peers::probe(&node.cluster_addr, bare.clone()).await;
        eprintln!(
            "{} {}: no certificate: {probe:?}",
            node.region, node.cluster_addr
        );
        assert!(!probe.admitted(), "{probe:?}");
        let plain = peers::probe_plaintext(&node.cluster_addr).await;
        eprintln!("{}: h2c: {plain:?}", node.region);
        assert!(plain.is_err() || plain.as_ref().is_ok_and(|b| b.len() < 9 || b[3] != 4));
    }
    let (ok, status) = script.run(&["status"], Duration::from_secs(30));
    assert!(ok, "{status}");
    assert!(
        !status.contains("stopped") && !status.contains("unreachable"),
        "{status}"
    );
}
