//! A region of real `meridian` processes whose links are mutual TLS only (no
//! cluster secret): it forms and serves; a node's certificate and the CA
//! itself are rotated while admin writes keep succeeding (SIGHUP reloads,
//! new connections present the new certificate); a node refuses to start
//! with another node's certificate, or reachable by peers with no way to
//! authenticate them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod process_support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use meridian_link::NodeIdentity;
use meridian_link::certs::{self, PemPair};
use process_support::{BIN, MASTER, free_port};
use serde_json::{Value, json};

struct Tls {
    dir: PathBuf,
    ca: PemPair,
}

impl Tls {
    fn new(dir: &Path) -> Tls {
        let ca = certs::generate_ca("test CA one", 30).unwrap();
        std::fs::write(dir.join("ca.pem"), &ca.cert_pem).unwrap();
        Tls {
            dir: dir.to_path_buf(),
            ca,
        }
    }

    /// Writes node `n`'s certificate (signed by `ca`) and key; returns the
    /// certificate's DER.
    fn issue(&self, ca: &PemPair, region: &str, n: u64) -> Vec<u8> {
        let id = NodeIdentity::new(region, n).unwrap();
        let pair = certs::issue_node_cert(&ca.cert_pem, &ca.key_pem, &id, &[], 30).unwrap();
        let (cert, key) = self.files(n);
        std::fs::write(cert, &pair.cert_pem).unwrap();
        certs::write_private(&key, &pair.key_pem).unwrap();
        der(&pair.cert_pem)
    }

    fn files(&self, n: u64) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("n{n}.pem")),
            self.dir.join(format!("n{n}.key")),
        )
    }
}

fn der(pem: &str) -> Vec<u8> {
    use base64::Engine as _;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap()
}

struct Node {
    api: u16,
    cluster: u16,
    config: PathBuf,
    child: Option<Child>,
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn config(dir: &Path, tls: &Tls, nodes: &[Node], n: usize, extra: &str) -> String {
    let peers: String = nodes
        .iter()
        .enumerate()
        .map(|(i, p)| {
            format!(
                "    - {{raft_id: {}, cluster_addr: \"127.0.0.1:{}\", api_url: \"http://127.0.0.1:{}\"}}\n",
                i + 1,
                p.cluster,
                p.api
            )
        })
        .collect();
    let (cert, key) = tls.files(n as u64 + 1);
    format!(
        "model_list:\n  - model_name: gpt\n    litellm_params: {{model: mock/chat}}\nmeridian:\n  node_id: n{id}\n  region: test\n  port: {port}\n  data_dir: {data}\n  raft_id: {id}\n  cluster_listen: 127.0.0.1:{cport}\n  cluster_tls_ca: {ca}\n  cluster_tls_cert: {cert}\n  cluster_tls_key: {key}\n{extra}  peers:\n{peers}",
        id = n + 1,
        port = nodes[n].api,
        data = dir.join(format!("data{}", n + 1)).display(),
        cport = nodes[n].cluster,
        ca = tls.dir.join("ca.pem").display(),
        cert = cert.display(),
        key = key.display(),
    )
}

fn spawn(config: &Path, log: &Path) -> Child {
    let log = std::fs::File::create(log).unwrap();
    Command::new(BIN)
        .args(["serve", "--config", config.to_str().unwrap()])
        .env("MERIDIAN_MASTER_KEY", MASTER)
        .env_remove("MERIDIAN_CLUSTER_SECRET")
        .env("RUST_LOG", "info")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

async fn call(http: &reqwest::Client, port: u16, path: &str, body: Option<Value>) -> (u16, Value) {
    process_support::call(
        http,
        &format!("http://127.0.0.1:{port}"),
        if body.is_some() { "POST" } else { "GET" },
        path,
        MASTER,
        body,
    )
    .await
}

/// The certificate a node's cluster port presents to a new connection.
async fn presented(tls_dir: &Path, client: u64, port: u16) -> Vec<u8> {
    let (cert, key) = (
        tls_dir.join(format!("n{client}.pem")),
        tls_dir.join(format!("n{client}.key")),
    );
    let tls = meridian_link::ClusterTls::load(tls_dir.join("ca.pem"), cert, key).unwrap();
    let stream = tls.connect(&format!("127.0.0.1:{port}")).await.unwrap();
    stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test]
async fn a_tls_region_rotates_its_certificates_and_its_ca_without_downtime() {
    meridian_node::upstream::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let tls = Tls::new(dir.path());
    let mut nodes: Vec<Node> = (0..2)
        .map(|i| Node {
            api: free_port(),
            cluster: free_port(),
            config: dir.path().join(format!("n{}.yaml", i + 1)),
            child: None,
        })
        .collect();
    for n in 0..2 {
        tls.issue(&tls.ca, "test", n as u64 + 1);
        std::fs::write(&nodes[n].config, config(dir.path(), &tls, &nodes, n, "")).unwrap();
    }
    for (n, node) in nodes.iter_mut().enumerate() {
        node.child = Some(spawn(
            &node.config,
            &dir.path().join(format!("n{}.log", n + 1)),
        ));
    }
    let http = reqwest::Client::new();
    // Both up, one leader, over TLS only.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (code, status) = call(&http, nodes[1].api, "/cluster/status", None).await;
        if code == 200
            && status["leader"].is_u64()
            && status["members"].as_array().unwrap().len() == 2
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no leader: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Writes through the follower side run throughout the rotations.
    let writer = {
        let http = http.clone();
        let ports = [nodes[0].api, nodes[1].api];
        tokio::spawn(async move {
            let mut failures = Vec::new();
            for i in 0..60u32 {
                let port = ports[i as usize % 2];
                let (code, body) = call(
                    &http,
                    port,
                    "/key/generate",
                    Some(json!({ "key_alias": format!("k{i}") })),
                )
                .await;
                if code != 200 {
                    failures.push(format!("write {i} on {port}: {code} {body}"));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            failures
        })
    };

    // 1. Node 2 gets a new certificate from the same CA, and a SIGHUP.
    let before = presented(dir.path(), 1, nodes[1].cluster).await;
    let renewed = tls.issue(&tls.ca, "test", 2);
    hup(&nodes[1]);
    let after = wait_for(dir.path(), 1, nodes[1].cluster, &renewed).await;
    assert_ne!(before, after);

    // 2. A new CA: first trusted beside the old one everywhere, then node 2
    // moves to a certificate of the new CA.
    let ca2 = certs::generate_ca("test CA two", 30).unwrap();
    std::fs::write(
        dir.path().join("ca.pem"),
        format!("{}{}", tls.ca.cert_pem, ca2.cert_pem),
    )
    .unwrap();
    hup(&nodes[0]);
    hup(&nodes[1]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let from_ca2 = tls.issue(&ca2, "test", 2);
    hup(&nodes[1]);
    wait_for(dir.path(), 1, nodes[1].cluster, &from_ca2).await;

    let failures = writer.await.unwrap();
    assert!(
        failures.is_empty(),
        "writes failed during rotation: {failures:#?}"
    );
    // Both nodes applied every write.
    for node in &nodes {
        let (_, list) = call(
            &http,
            node.api,
            "/key/list?size=100&consistency=linearizable",
            None,
        )
        .await;
        assert_eq!(list["total_count"], 60, "{list}");
    }
    let log = std::fs::read_to_string(dir.path().join("n2.log")).unwrap();
    assert!(log.contains("TLS material reloaded"), "{log}");
}

fn hup(node: &Node) {
    let pid = node.child.as_ref().unwrap().id();
    let status = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Waits until the node's cluster port presents `want` to new connections.
async fn wait_for(tls_dir: &Path, client: u64, port: u16, want: &[u8]) -> Vec<u8> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = presented(tls_dir, client, port).await;
        if got == want {
            return got;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new certificate was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn a_node_refuses_another_nodes_certificate_and_unauthenticated_peers() {
    let dir = tempfile::tempdir().unwrap();
    let tls = Tls::new(dir.path());
    let nodes: Vec<Node> = (0..1)
        .map(|i| Node {
            api: free_port(),
            cluster: free_port(),
            config: dir.path().join(format!("n{}.yaml", i + 1)),
            child: None,
        })
        .collect();
    // The certificate of node 1 of another region.
    let other = NodeIdentity::new("elsewhere", 1).unwrap();
    let pair = certs::issue_node_cert(&tls.ca.cert_pem, &tls.ca.key_pem, &other, &[], 30).unwrap();
    let (cert, key) = tls.files(1);
    std::fs::write(&cert, &pair.cert_pem).unwrap();
    certs::write_private(&key, &pair.key_pem).unwrap();
    std::fs::write(&nodes[0].config, config(dir.path(), &tls, &nodes, 0, "")).unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config", nodes[0].config.to_str().unwrap()])
        .env("MERIDIAN_MASTER_KEY", MASTER)
        .env_remove("MERIDIAN_CLUSTER_SECRET")
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("node 1 of region elsewhere") && err.contains("node 1 of region test"),
        "{err}"
    );

    // cluster_listen with neither TLS nor a secret.
    let plain = dir.path().join("plain.yaml");
    std::fs::write(
        &plain,
        format!(
            "meridian:\n  region: test\n  cluster_listen: 127.0.0.1:{}\n",
            free_port()
        ),
    )
    .unwrap();
    for (env, ok) in [(None, false), (Some("a-cluster-secret-0123"), true)] {
        let mut cmd = Command::new(BIN);
        cmd.args(["config", "check", plain.to_str().unwrap()])
            .env_remove("MERIDIAN_CLUSTER_SECRET");
        if let Some(secret) = env {
            cmd.env("MERIDIAN_CLUSTER_SECRET", secret);
        }
        let out = cmd.output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.success(), ok, "{text}");
        if !ok {
            assert!(
                text.contains("cluster_listen") && text.contains("insecure_cluster"),
                "{text}"
            );
        }
    }
    std::fs::write(
        &plain,
        format!(
            "meridian:\n  region: test\n  cluster_listen: 127.0.0.1:{}\n  insecure_cluster: true\n",
            free_port()
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["config", "check", plain.to_str().unwrap()])
        .env_remove("MERIDIAN_CLUSTER_SECRET")
        .output()
        .unwrap();
    assert!(out.status.success(), "insecure_cluster says so on purpose");
}

#[tokio::test]
async fn the_public_listener_serves_https_with_its_own_certificate() {
    meridian_node::upstream::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let ca = certs::generate_ca("public CA", 30).unwrap();
    let server =
        certs::issue_server_cert(&ca.cert_pem, &ca.key_pem, &["127.0.0.1".into()], 30).unwrap();
    std::fs::write(dir.path().join("server.pem"), &server.cert_pem).unwrap();
    certs::write_private(&dir.path().join("server.key"), &server.key_pem).unwrap();
    let extra = format!(
        "meridian:\n  tls_cert: {}\n  tls_key: {}\n",
        dir.path().join("server.pem").display(),
        dir.path().join("server.key").display()
    );
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, format!("{}{extra}", process_support::MOCK_MODELS)).unwrap();
    let port = free_port();
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--config",
            config.to_str().unwrap(),
            "--port",
            &port.to_string(),
        ])
        .args(["--data-dir", dir.path().join("data").to_str().unwrap()])
        .env("MERIDIAN_MASTER_KEY", MASTER)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca.cert_pem.as_bytes()).unwrap()])
        .build()
        .unwrap();
    let url = format!("https://127.0.0.1:{port}");
    let mut answered = None;
    for _ in 0..100 {
        if let Ok(r) = client.get(format!("{url}/health/liveliness")).send().await {
            answered = Some(r.status().as_u16());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(answered, Some(200));
    let chat = client
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(MASTER)
        .header("content-type", "application/json")
        .body(r#"{"model":"gpt","messages":[{"role":"user","content":"hi"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(chat.status(), 200);
    // Plain HTTP on the same port gets no answer.
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/health/liveliness"))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
    let _ = child.kill();
    let _ = child.wait();
}
