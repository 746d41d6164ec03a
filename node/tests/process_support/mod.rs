//! Shared by the tests that run real `meridian` processes over loopback.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_meridian");
pub const MASTER: &str = "sk-cluster-test-master";
pub const SECRET: &str = "cluster-test-secret";

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts `meridian serve` with the test master key and cluster secret.
pub fn spawn(config: &Path) -> Child {
    Command::new(BIN)
        .args(["serve", "--config", config.to_str().unwrap()])
        .env("MERIDIAN_MASTER_KEY", MASTER)
        .env("MERIDIAN_CLUSTER_SECRET", SECRET)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
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
