//! The `nginx` row: nginx as a minimal pass-through proxy in front of the
//! fake upstream — one worker, a keep-alive pool to the upstream, no access
//! log, no buffering — the floor any gateway pays on this machine for a
//! second HTTP exchange per call. Its configuration is generated into the
//! row's own directory (pid, logs and temporary files there too), it runs in
//! the foreground so that it is one of the comparison's children, and it is
//! stopped with the row.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::child::{find_program, free_port};
use super::gateway::{Ready, Start};
use crate::Error;

/// Where Debian puts nginx: in `sbin`, which is not on every user's PATH.
const SBIN: [&str; 2] = ["/usr/sbin/nginx", "/usr/local/sbin/nginx"];

/// Idle keep-alive connections the worker keeps to the upstream: above
/// anything the closed loop (32 in flight) or an open loop's burst holds at
/// once, so load never waits on new upstream connections.
const UPSTREAM_KEEPALIVE: u32 = 256;

/// Requests per connection before nginx closes it (its default is 1,000):
/// high, so neither side reconnects during a run — reconnecting is not part
/// of the floor being measured.
const KEEPALIVE_REQUESTS: u32 = 1_000_000;

/// The nginx to start: `explicit` if given (and a file), else `nginx` on
/// `path_var` (a `PATH` value), else Debian's `/usr/sbin/nginx`. The error
/// is the reason the row is not run.
pub(crate) fn locate(explicit: Option<&Path>, path_var: Option<&OsStr>) -> Result<PathBuf, String> {
    if let Some(bin) = explicit {
        return if bin.is_file() {
            Ok(bin.to_owned())
        } else {
            Err(format!("no nginx at {}", bin.display()))
        };
    }
    find_program("nginx", path_var)
        .or_else(|| SBIN.iter().map(PathBuf::from).find(|p| p.is_file()))
        .ok_or_else(|| {
            format!(
                "nginx not found on PATH or at {} (apt-get install nginx; or --nginx-bin)",
                SBIN.join(", ")
            )
        })
}

/// The whole configuration: `dir` holds everything nginx writes, it
/// listens on 127.0.0.1:`listen_port` and proxies every path to the fake
/// upstream on `upstream_port`.
pub(crate) fn config(dir: &Path, listen_port: u16, upstream_port: u16) -> String {
    let dir = dir.display();
    format!(
        "# Written by meridian-loadtest compare: a minimal pass-through proxy.
# In the foreground, so the comparison owns it and stops it.
daemon off;
master_process on;
worker_processes 1;
pid {dir}/nginx.pid;
# To the comparison's log of this process, read back into its errors.
error_log stderr warn;

events {{
    worker_connections 4096;
}}

http {{
    access_log off;
    keepalive_requests {KEEPALIVE_REQUESTS};
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;

    upstream fake_upstream {{
        server 127.0.0.1:{upstream_port};
        keepalive {UPSTREAM_KEEPALIVE};
        keepalive_requests {KEEPALIVE_REQUESTS};
    }}

    server {{
        listen 127.0.0.1:{listen_port};
        location / {{
            proxy_pass http://fake_upstream;
            # Keep-alive to the upstream needs HTTP/1.1 and no
            # `Connection: close` passed on.
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            # Streamed answers pass through as they come, as a gateway's do.
            proxy_buffering off;
        }}
    }}
}}
"
    )
}

impl Start<'_> {
    /// nginx from `bin` with [`config`], ready once a chat completion comes
    /// back through it. The fake upstream checks no key; `key` is sent as
    /// it would be to `direct`.
    pub(crate) async fn nginx(&self, bin: &Path, key: &str) -> Result<Ready, Error> {
        let port = free_port()?;
        let conf = self.dir.join("nginx.conf");
        std::fs::write(&conf, config(&self.dir, port, self.upstream_port))?;
        let mut command = Command::new(bin);
        command
            .arg("-p")
            .arg(&self.dir)
            // Errors before the configuration is read go to stderr too, not
            // to the compiled-in log path (often not writable).
            .args(["-e", "stderr"])
            .arg("-c")
            .arg(&conf);
        self.start_proxy("nginx", command, port, key, &[]).await
    }
}

/// `nginx -v` (it answers on stderr), for the report.
pub(crate) fn version(bin: &Path) -> Option<String> {
    let out = Command::new(bin).arg("-v").output().ok()?;
    let text = String::from_utf8_lossy(&out.stderr);
    let text = text.trim();
    (out.status.success() && !text.is_empty()).then(|| text.to_owned())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn the_config_proxies_to_the_upstream_with_keep_alive() {
        let text = config(Path::new("/w/nginx"), 4100, 4200);
        for line in [
            "daemon off;",
            "master_process on;",
            "worker_processes 1;",
            "pid /w/nginx/nginx.pid;",
            "error_log stderr warn;",
            "client_body_temp_path /w/nginx/client_body;",
            "proxy_temp_path /w/nginx/proxy;",
            "server 127.0.0.1:4200;",
            "keepalive 256;",
            "listen 127.0.0.1:4100;",
            "proxy_pass http://fake_upstream;",
            "proxy_http_version 1.1;",
            "proxy_set_header Connection \"\";",
            "access_log off;",
        ] {
            assert!(
                text.lines().any(|l| l.trim() == line),
                "{line:?} missing from:\n{text}"
            );
        }
        // Every temporary path nginx would otherwise take from its build is
        // in the row's directory.
        for kind in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"] {
            assert!(
                text.contains(&format!("{kind}_temp_path /w/nginx/{kind};")),
                "{kind}"
            );
        }
        // Braces balance: a cut template would not start.
        assert_eq!(text.matches('{').count(), text.matches('}').count());
        // It listens on loopback only.
        assert_eq!(text.matches("listen ").count(), 1);
    }

    #[test]
    fn nginx_is_found_where_asked_or_said_missing() {
        let dir = std::env::temp_dir().join(format!("meridian-nginx-find-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fake = dir.join("nginx");
        std::fs::write(&fake, "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();

        assert_eq!(locate(Some(&fake), None).unwrap(), fake);
        let missing = locate(Some(&dir.join("none")), None).unwrap_err();
        assert!(missing.starts_with("no nginx at "), "{missing}");
        assert_eq!(locate(None, Some(dir.as_os_str())).unwrap(), fake);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
