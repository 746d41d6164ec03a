//! The `portkey` row: the Portkey OSS gateway (npm `@portkey-ai/gateway`,
//! pure JavaScript on node), installed with npm into a cache directory the
//! first time, run offline in front of the fake upstream. It keeps no keys:
//! each request names its provider and where that provider is in headers
//! (`x-portkey-provider`, `x-portkey-custom-host`), and its key is passed on
//! to the upstream as it is.
//!
//! Its server listens on every interface and has no option for the address,
//! so node is started with a small preload ([`LOOPBACK_SHIM`]) that makes a
//! listen on a bare port a listen on 127.0.0.1; the row then checks that
//! nothing of its process listens anywhere else.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tokio::time::Instant;

use super::child::{Group, Proc, find_program, free_port};
use super::gateway::{POLL, Ready, Start};
use crate::Error;

/// The package and the version installed: pinned, so runs compare.
pub(crate) const PACKAGE: &str = "@portkey-ai/gateway";
pub(crate) const VERSION: &str = "1.15.2";

/// Sent by node with `--require` before Portkey's code: a listen on a bare
/// port (Portkey's `serve({port})` ends in `listen(port, undefined, cb)`)
/// gets the host 127.0.0.1, so the row is reachable from this machine only.
pub(crate) const LOOPBACK_SHIM: &str = r"'use strict';
// Written by meridian-loadtest compare: Portkey listens on every interface
// and has no option for the address; this keeps it on loopback.
const net = require('net');
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (typeof args[0] === 'number' && typeof args[1] !== 'string') {
    if (args.length > 1 && args[1] == null) {
      args[1] = '127.0.0.1';
    } else {
      args.splice(1, 0, '127.0.0.1');
    }
  }
  return listen.apply(this, args);
};
";

/// Where npm puts the gateway's server under an install directory.
pub(crate) fn entry(dir: &Path) -> PathBuf {
    dir.join("node_modules")
        .join(PACKAGE)
        .join("build")
        .join("start-server.js")
}

/// The version of the package installed in `dir`, if there is one.
pub(crate) fn installed_version(dir: &Path) -> Option<String> {
    let manifest = dir.join("node_modules").join(PACKAGE).join("package.json");
    let text = std::fs::read(manifest).ok()?;
    let value: serde_json::Value = serde_json::from_slice(&text).ok()?;
    value["version"].as_str().map(str::to_owned)
}

/// Whether the pinned version is ready to run in `dir`.
fn installed(dir: &Path) -> bool {
    installed_version(dir).as_deref() == Some(VERSION) && entry(dir).is_file()
}

/// Why the row cannot run here before anything is installed: no install
/// directory, no node, or no npm to install with. `path_var` is a `PATH`.
pub(crate) fn missing(dir: Option<&Path>, path_var: Option<&OsStr>) -> Option<String> {
    let Some(dir) = dir else {
        return Some("no install directory given (--portkey-dir)".into());
    };
    if find_program("node", path_var).is_none() {
        return Some("node not found on PATH (apt-get install nodejs npm)".into());
    }
    if !installed(dir) && find_program("npm", path_var).is_none() {
        return Some(format!(
            "{PACKAGE} {VERSION} is not in {} and npm is not on PATH to install it",
            dir.display()
        ));
    }
    None
}

/// The pinned version in `dir`, installed with npm if it is not there yet;
/// the error, the reason the row is not run, carries npm's last lines. npm
/// is stopped if it takes longer than `timeout`.
pub(crate) async fn ensure_installed(
    dir: &Path,
    timeout: Duration,
    say: &impl Fn(String),
) -> Result<(), String> {
    if installed(dir) {
        return Ok(());
    }
    say(format!(
        "   installing {PACKAGE}@{VERSION} into {} (npm)",
        dir.display()
    ));
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let mut command = Command::new("npm");
    command
        .args(["install", "--no-audit", "--no-fund", "--no-update-notifier"])
        // Its one install script runs `patch-package`, for patches the
        // published package does not ship: nothing to run.
        .arg("--ignore-scripts")
        .arg("--prefix")
        .arg(dir)
        .arg(format!("{PACKAGE}@{VERSION}"));
    let mut group = Group::default();
    let log = dir.join("install.log");
    let proc = Proc::spawn("npm install", command, &log).map_err(|e| e.to_string())?;
    group.procs.push(proc);
    let deadline = Instant::now() + timeout;
    let outcome = loop {
        let Some(proc) = group.procs.first_mut() else {
            break Err("npm install vanished".to_owned());
        };
        match proc.exited() {
            Some(status) if installed(dir) => break Ok(status),
            Some(status) => break Err(proc.failure(&format!("failed ({status})"))),
            None if Instant::now() > deadline => {
                break Err(proc.failure(&format!("took longer than {timeout:?}")));
            }
            None => tokio::time::sleep(POLL).await,
        }
    };
    group.stop();
    outcome.map(|_| ())
}

/// The headers that send a request through Portkey to the fake upstream
/// on `upstream_port`, as an OpenAI-compatible provider there.
pub(crate) fn headers(upstream_port: u16) -> Vec<(String, String)> {
    vec![
        ("x-portkey-provider".into(), "openai".into()),
        (
            "x-portkey-custom-host".into(),
            format!("http://127.0.0.1:{upstream_port}/v1"),
        ),
    ]
}

/// Ports listening on an address other than loopback in the text of
/// `/proc/net/tcp` or `/proc/net/tcp6` (hexadecimal `ADDR:PORT` in the
/// second column, state `0A` for listening).
pub(crate) fn listening_beyond_loopback(table: &str, port: u16) -> bool {
    let port = format!("{port:04X}");
    table.lines().skip(1).any(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(state)) = (cols.get(1), cols.get(3)) else {
            return false;
        };
        let Some((addr, p)) = local.rsplit_once(':') else {
            return false;
        };
        // 127.0.0.1 is stored little-endian in IPv4's table; ::1 as its
        // four 32-bit words.
        let loopback = addr == "0100007F" || addr == "00000000000000000000000001000000";
        *state == "0A" && p == port && !loopback
    })
}

impl Start<'_> {
    /// Portkey from `dir` on `node`, ready once a chat completion comes back
    /// through it to the fake upstream. `key` goes to the upstream as is.
    pub(crate) async fn portkey(&self, node: &Path, dir: &Path, key: &str) -> Result<Ready, Error> {
        let port = free_port()?;
        let shim = self.dir.join("loopback.cjs");
        std::fs::write(&shim, LOOPBACK_SHIM)?;
        let mut command = Command::new(node);
        command
            .arg("--require")
            .arg(&shim)
            .arg(entry(dir))
            .arg(format!("--port={port}"))
            // No web console and its in-memory log of every request.
            .arg("--headless")
            // Custom hosts on loopback are allowed only when trusted.
            .env("TRUSTED_CUSTOM_HOSTS", "127.0.0.1")
            // Nothing from this environment between it and the upstream.
            .env_remove("HTTP_PROXY")
            .env_remove("HTTPS_PROXY")
            .env_remove("http_proxy")
            .env_remove("https_proxy")
            .env_remove("NODE_OPTIONS")
            .current_dir(&self.dir);
        let ready = self
            .start_proxy("portkey", command, port, key, &headers(self.upstream_port))
            .await?;
        for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
            let text = std::fs::read_to_string(table).unwrap_or_default();
            if listening_beyond_loopback(&text, port) {
                return Err(self.error(format!(
                    "listens on port {port} beyond loopback ({table}); stopped"
                )));
            }
        }
        Ok(ready)
    }
}

/// `node --version`, for the report.
pub(crate) fn node_version(node: &Path) -> Option<String> {
    let out = Command::new(node).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !text.is_empty()).then_some(text)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn requests_are_routed_to_the_upstream_by_header() {
        assert_eq!(
            headers(4321),
            [
                ("x-portkey-provider".to_owned(), "openai".to_owned()),
                (
                    "x-portkey-custom-host".to_owned(),
                    "http://127.0.0.1:4321/v1".to_owned()
                ),
            ]
        );
        assert!(entry(Path::new("/c")).ends_with("@portkey-ai/gateway/build/start-server.js"));
    }

    #[test]
    fn only_loopback_listeners_pass() {
        let header = "  sl  local_address rem_address   st tx_queue rx_queue\n";
        // 127.0.0.1:8080 listening, 0.0.0.0:8081 listening, 0.0.0.0:8082 a
        // connection (state 01), not a listener.
        let v4 = format!(
            "{header}   0: 0100007F:1F90 00000000:0000 0A 0\n   1: 00000000:1F91 00000000:0000 0A 0\n   2: 00000000:1F92 0100007F:9000 01 0\n"
        );
        assert!(!listening_beyond_loopback(&v4, 8080));
        assert!(listening_beyond_loopback(&v4, 8081));
        assert!(!listening_beyond_loopback(&v4, 8082));
        let v6 = format!(
            "{header}   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 0\n   1: 00000000000000000000000000000000:1F93 00000000000000000000000000000000:0000 0A 0\n"
        );
        assert!(!listening_beyond_loopback(&v6, 8080));
        assert!(listening_beyond_loopback(&v6, 8083));
        assert!(!listening_beyond_loopback("", 8080));
    }

    #[test]
    fn missing_tools_and_directories_are_reasons() {
        assert!(missing(None, None).unwrap().contains("--portkey-dir"));
        let empty = std::env::temp_dir();
        // No PATH at all: no node.
        let reason = missing(Some(&empty), None).unwrap();
        assert!(reason.starts_with("node not found"), "{reason}");
        assert_eq!(installed_version(Path::new("/nonexistent")), None);
    }
}
