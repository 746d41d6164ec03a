//! Shared by the tests that run real `meridian` processes over loopback.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_meridian");
pub const MASTER: &str = "sk-cluster-test-master";
pub const SECRET: &str = "cluster-test-secret";

/// A free port below the kernel's ephemeral range (32768 and up on
/// Linux): a port the kernel handed out would be free again once released,
/// and any test's outgoing connection could take it before the process we
/// start binds it — a node that cannot bind never becomes ready.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    loop {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        h.write_u32(std::process::id());
        let port = 20_000 + (h.finish() % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// One `meridian` process of a test world; killed when dropped.
pub struct Proc {
    pub region: &'static str,
    pub raft_id: u64,
    pub api_port: u16,
    pub cluster_port: u16,
    pub config: std::path::PathBuf,
    pub child: Option<Child>,
}

impl Proc {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.api_port)
    }

    /// `Err(PortTaken)` if the process has stopped because a port it was
    /// given was taken; a panic with its log if it stopped otherwise.
    pub fn still_running(&mut self) -> Result<(), PortTaken> {
        let Some(child) = self.child.as_mut() else {
            return Ok(());
        };
        match child.try_wait() {
            Ok(None) | Err(_) => Ok(()),
            Ok(Some(_)) if lost_a_port(&self.config) => Err(PortTaken),
            Ok(Some(status)) => panic!(
                "node {} of {} exited ({status}) while starting\n{}",
                self.raft_id,
                self.region,
                log_tail(&self.config)
            ),
        }
    }
}

/// A node could not bind a port it was given (see [`Proc::still_running`]).
#[derive(Debug)]
pub struct PortTaken;

/// Runs `start` (a world on fresh ports) until no node of it lost a port,
/// at most three times.
pub async fn with_fresh_ports<W, F>(mut start: impl FnMut() -> F) -> W
where
    F: std::future::Future<Output = Result<W, PortTaken>>,
{
    for attempt in 1..=3 {
        match start().await {
            Ok(world) => return world,
            Err(PortTaken) => {
                eprintln!(
                    "a port was taken while the world started (attempt {attempt}); again on other ports"
                );
            }
        }
    }
    panic!("three attempts to start the world each lost a port");
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts `meridian serve` with the test master key and cluster secret. Its
/// output is appended to [`log_path`] (kept, restarts included), so a node
/// that could not start — a port taken between choosing and binding it —
/// says why instead of looking like a slow one.
pub fn spawn(config: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path(config))
        .unwrap();
    Command::new(BIN)
        .args(["serve", "--config", config.to_str().unwrap()])
        .env("MERIDIAN_MASTER_KEY", MASTER)
        .env("MERIDIAN_CLUSTER_SECRET", SECRET)
        .env("RUST_LOG", "warn")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// Where [`spawn`] writes the output of the node configured by `config`.
pub fn log_path(config: &Path) -> std::path::PathBuf {
    config.with_extension("log")
}

/// The last lines of that output, for a failure message.
pub fn log_tail(config: &Path) -> String {
    let text = std::fs::read_to_string(log_path(config)).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(30)..].join("\n");
    format!("--- {} ---\n{tail}", log_path(config).display())
}

/// One HTTP call to a node; `(0, Null)` when it cannot be reached.
pub async fn call(
    http: &reqwest::Client,
    base: &str,
    method: &str,
    path: &str,
    key: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let url = format!("{base}{path}");
    let mut req = if method == "GET" {
        http.get(url)
    } else {
        http.post(url)
    };
    req = req.bearer_auth(key).timeout(Duration::from_secs(15));
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    match req.send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            let text = r.text().await.unwrap_or_default();
            (status, serde_json::from_str(&text).unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null),
    }
}

/// The port a node started with `--port 0` announces in its banner
/// (`listening on http://HOST:PORT`); an error at once if it exits first.
async fn announced_port(log: &Path, child: &mut Child) -> Result<u16, String> {
    for _ in 0..600 {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let port = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("listening on "))
            .and_then(|url| url.rsplit(':').next())
            .and_then(|p| p.trim_end_matches('/').parse().ok());
        if let Some(port) = port {
            return Ok(port);
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("it exited: {status}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err("no `listening on` line within 30 s".to_owned())
}

/// Whether the node configured by `config` stopped because a port it was
/// given was taken: the one race left with fixed ports (see [`free_port`]),
/// answered by starting the world again on other ports.
pub fn lost_a_port(config: &Path) -> bool {
    std::fs::read_to_string(log_path(config))
        .unwrap_or_default()
        .contains("Address already in use")
}

/// The mock models every single-process test world serves.
pub const MOCK_MODELS: &str =
    "model_list:\n  - model_name: gpt\n    litellm_params: {model: mock/chat}\n";

/// One `meridian serve` process on ephemeral ports, with the test master key,
/// a private data directory and its log captured to a file; killed (and its
/// files removed) when dropped.
pub struct Server {
    pub base: String,
    pub master: String,
    pub http: reqwest::Client,
    pub dir: tempfile::TempDir,
    pub port: u16,
    env: Vec<(String, String)>,
    child: Child,
}

/// `meridian serve` on `dir`'s config.yaml and data directory, its output
/// appended to `dir`/node.log.
fn spawn_server(dir: &Path, port: u16, env: &[(String, String)]) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("node.log"))
        .unwrap();
    Command::new(BIN)
        .args([
            "serve",
            "--config",
            dir.join("config.yaml").to_str().unwrap(),
            "--port",
            &port.to_string(),
        ])
        .args(["--data-dir", dir.join("data").to_str().unwrap()])
        .env("MERIDIAN_MASTER_KEY", MASTER)
        .env("RUST_LOG", "info")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Starts a node whose config is the mock models plus `extra` (more
    /// top-level YAML, e.g. a `meridian:` section), and waits until it
    /// answers.
    pub async fn start(extra: &str) -> Server {
        Self::start_with(extra, &[]).await
    }

    /// As [`Server::start`], with more environment variables.
    pub async fn start_with(extra: &str, env: &[(&str, &str)]) -> Server {
        Self::start_yaml(&format!("{MOCK_MODELS}{extra}\n"), env).await
    }

    /// A node whose whole config is `yaml`.
    pub async fn start_yaml(yaml: &str, env: &[(&str, &str)]) -> Server {
        meridian_node::upstream::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.yaml"), yaml).unwrap();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        // Port 0: the process binds a port the kernel chooses and says which
        // in its banner; nothing can take it between choosing and binding.
        let mut child = spawn_server(dir.path(), 0, &env);
        let port = match announced_port(&dir.path().join("node.log"), &mut child).await {
            Ok(port) => port,
            Err(why) => {
                let log = std::fs::read_to_string(dir.path().join("node.log")).unwrap_or_default();
                let _ = child.kill();
                panic!("the node did not start ({why}):\n{log}");
            }
        };
        let s = Server {
            base: format!("http://127.0.0.1:{port}"),
            master: MASTER.to_owned(),
            http: reqwest::Client::new(),
            dir,
            port,
            env,
            child,
        };
        s.wait_ready().await;
        s
    }

    async fn wait_ready(&self) {
        for _ in 0..300 {
            if self
                .http
                .get(format!("{}/health/liveliness", self.base))
                .send()
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the node did not start: {}", self.log());
    }

    /// Sends SIGTERM and waits (up to `within`) for the process to exit;
    /// `None` if it did not.
    pub async fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let pid = rustix::process::Pid::from_child(&self.child);
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// Starts the node again on the same config, port and data directory
    /// (after it stopped), and waits until it answers.
    pub async fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn_server(self.dir.path(), self.port, &self.env);
        self.wait_ready().await;
    }

    /// Everything the process printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("node.log")).unwrap_or_default()
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        key: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        call(&self.http, &self.base, method, path, key, body).await
    }

    /// An admin call with the master key that must succeed.
    pub async fn admin(&self, path: &str, body: Value) -> Value {
        let (status, reply) = self
            .call("POST", path, &self.master, Some(body.clone()))
            .await;
        assert_eq!(status, 200, "{path} {body}: {reply}");
        reply
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}
