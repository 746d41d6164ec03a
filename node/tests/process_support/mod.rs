//! Shared by the tests that run real `meridian` processes over loopback.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};

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
