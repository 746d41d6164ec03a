//! The `meridian` binary as a user runs it: `config check`, and `serve` on the
//! embedded default (generated master key, printed once with a curl line, kept
//! across restarts).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_meridian");

fn fixture(path: &str) -> String {
    format!("{}/../fixtures/{path}", env!("CARGO_MANIFEST_DIR"))
}

fn meridian() -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_remove("MERIDIAN_MASTER_KEY")
        .env_remove("LITELLM_MASTER_KEY")
        .env("RUST_LOG", "warn");
    cmd
}

#[test]
fn config_check_lists_what_a_production_litellm_config_leaves_out() {
    let out = meridian()
        .args([
            "config",
            "check",
            &fixture("litellm/production_config.yaml"),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("valid — 7 deployments in 6 model groups"),
        "{stdout}"
    );
    assert!(
        stdout.contains("18 keys are accepted but ignored:"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "  model_list[4].litellm_params.model: provider `bedrock` is not supported yet"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("  router_settings.redis_host: "),
        "{stdout}"
    );
    assert!(
        stdout.contains("8 environment variables are not set here:"),
        "{stdout}"
    );
}

#[test]
fn config_errors_name_the_file_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(&file, "meridian:\n  node_id: n1\n  regoin: eu-west\n").unwrap();
    let out = meridian()
        .args(["config", "check", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(&format!(
            "invalid: {}: `meridian.regoin`: one of the keys",
            file.display()
        )),
        "{stderr}"
    );
    let out = meridian()
        .args(["serve", "--config", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("`meridian.regoin`"));
}

/// Kills the server when the test ends, passed or not.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `serve` and reads its banner: (server, base URL, key line, curl line).
fn start(data_dir: &std::path::Path) -> (Running, String, String, String) {
    let mut child = meridian()
        .args([
            "serve",
            "--port",
            "0",
            "--data-dir",
            data_dir.to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let child = Running(child);
    let mut lines = BufReader::new(stdout).lines();
    let (mut base, mut key_line) = (String::new(), String::new());
    loop {
        let line = lines.next().expect("banner ends with a curl line").unwrap();
        if let Some(url) = line.trim().strip_prefix("listening on ") {
            base = url.to_owned();
        }
        if line.contains("master key") {
            key_line = line.clone();
        }
        if line.trim_start().starts_with("curl ") {
            return (child, base, key_line, line);
        }
    }
}

#[tokio::test]
async fn the_embedded_default_generates_prints_and_keeps_its_master_key() {
    let dir = tempfile::tempdir().unwrap();
    meridian_node::upstream::install_crypto_provider();
    let (server, base, key_line, curl) = start(&dir.path().join("data"));
    let key = key_line.rsplit(": ").next().unwrap().to_owned();
    assert!(key_line.contains("generated now"), "{key_line}");
    assert!(key.starts_with("sk-"), "{key_line}");
    assert!(
        curl.contains(&format!("{base}/v1/chat/completions")) && curl.contains(&key),
        "{curl}"
    );

    let reply = reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body(r#"{"model":"mock-chat","messages":[{"role":"user","content":"Hello"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
    assert_eq!(reply.headers()["x-meridian-region"], "local");
    drop(server);

    // Restarted, it keeps the key and never prints it again (logs are kept).
    let (_again, base, key_line, curl) = start(&dir.path().join("data"));
    assert!(
        key_line.contains("kept in") && !key_line.contains("generated"),
        "{key_line}"
    );
    assert!(
        !key_line.contains(&key) && !curl.contains(&key),
        "{key_line} {curl}"
    );
    let reply = reqwest::Client::new()
        .get(format!("{base}/key/list"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200, "the kept key still works");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.path().join("data")), 0o700);
        assert_eq!(mode(&dir.path().join("data/master_key")), 0o600);
    }
}

/// Without `RUST_LOG`, the console is for people: the banner, Meridian's
/// own lines, and no dependency's internals (openraft dumps its state at
/// INFO).
#[test]
fn the_default_console_shows_meridian_not_its_dependencies() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = meridian()
        .env_remove("RUST_LOG")
        .args(["serve", "--port", "0", "--data-dir"])
        .arg(dir.path().join("data"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut seen = Vec::new();
    while let Some(Ok(line)) = lines.next() {
        let done = line.trim_start().starts_with("curl ");
        seen.push(line);
        if done {
            break;
        }
    }
    // Let the region finish starting, then stop it gracefully: its last
    // log lines are Meridian's own, at INFO.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let pid = rustix::process::Pid::from_child(&child);
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    seen.extend(lines.map_while(Result::ok));
    child.wait().unwrap();
    let text = seen.join("\n");
    assert!(text.contains("listening on"), "{text}");
    assert!(text.contains(" INFO meridian"), "{text}");
    assert!(!text.contains("openraft"), "{text}");
}

/// A data directory whose store files were damaged (truncated, or
/// overwritten with garbage) stops `serve` with a clear error naming the
/// directory: no panic, no half-started node.
#[test]
fn a_damaged_data_dir_stops_the_node_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    drop(start(&data));
    for (how, damage) in [
        ("truncated", (|_: &[u8]| Vec::new()) as fn(&[u8]) -> Vec<u8>),
        ("garbage", |bytes: &[u8]| {
            bytes.iter().map(|b| b ^ 0x5a).collect()
        }),
    ] {
        let copy = dir.path().join(how);
        copy_dir(&data, &copy);
        let mut damaged = 0;
        for entry in walk(&copy) {
            let name = entry.file_name().unwrap().to_string_lossy().into_owned();
            if name.starts_with("MANIFEST") || name == "CURRENT" || name.ends_with(".sst") {
                let bytes = std::fs::read(&entry).unwrap();
                std::fs::write(&entry, damage(&bytes)).unwrap();
                damaged += 1;
            }
        }
        assert!(damaged > 0, "no store files under {}", copy.display());
        let mut child = meridian()
            .args(["serve", "--port", "0", "--data-dir", copy.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Up to 30 s (600 waits of 50 ms) to stop.
        let mut waits = 0;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            waits += 1;
            assert!(
                waits < 600,
                "{how}: the node kept running on a damaged store"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert!(!status.success(), "{how}: {stderr}");
        assert!(!stderr.contains("panicked"), "{how}: {stderr}");
        assert!(
            stderr.contains(copy.to_str().unwrap()) || stderr.contains("storage"),
            "{how}: the error names neither the directory nor the store: {stderr}"
        );
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}
