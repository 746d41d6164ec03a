//! The report's words around the figures: which builds ran, and how to
//! read what they measured.

use super::gateway;
use super::options::{CompareOptions, IDLE_WINDOW};
use super::results::Comparison;
use super::{RowKind, nginx, portkey};

/// `--version` of each gateway binary, and how it was built.
pub(super) fn builds(opts: &CompareOptions) -> Vec<String> {
    let mut out = Vec::new();
    if opts.rows.iter().any(|r| r.is_meridian())
        && let Some(bin) = &opts.meridian_bin
    {
        let version = std::process::Command::new(bin)
            .arg("--version")
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        out.push(format!(
            "Meridian: {} ({}), the dev-profile build (`cargo build`: dependencies \
             at opt-level 2, the request path's crates at 3, the rest of Meridian's at 1, \
             RocksDB's C++ at -O1)",
            bin.display(),
            if version.is_empty() {
                "version unknown"
            } else {
                &version
            },
        ));
    }
    if opts.rows.contains(&RowKind::Litellm)
        && let Some(venv) = &opts.litellm_venv
    {
        let version = std::process::Command::new(venv.join("bin").join("python"))
            .args([
                "-c",
                "import importlib.metadata as m; print(m.version('litellm'))",
            ])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
        if let Some(version) = version {
            out.push(format!(
                "LiteLLM {version}: `litellm --config FILE --num_workers {}` (uvicorn) from {}",
                opts.litellm_workers,
                venv.display()
            ));
        }
    }
    let path = std::env::var_os("PATH");
    if opts.rows.contains(&RowKind::Nginx)
        && let Ok(bin) = nginx::locate(opts.nginx_bin.as_deref(), path.as_deref())
        && let Some(version) = nginx::version(&bin)
    {
        out.push(format!(
            "{version} ({}): one worker, generated configuration",
            bin.display()
        ));
    }
    if opts.rows.contains(&RowKind::Portkey)
        && let Some(dir) = &opts.portkey_dir
        && let Some(version) = portkey::installed_version(dir)
    {
        let node = super::child::find_program("node", path.as_deref())
            .and_then(|n| portkey::node_version(&n))
            .unwrap_or_else(|| "version unknown".into());
        out.push(format!(
            "Portkey gateway {version} ({} from npm, in {}) on node {node}, --headless",
            portkey::PACKAGE,
            dir.display()
        ));
    }
    out.push("meridian-loadtest (load generator and fake upstream): the dev-profile build".into());
    out
}

/// How to read the figures, as they apply to this comparison.
pub(super) fn notes(c: &Comparison) -> Vec<String> {
    let s = &c.settings;
    let mut notes = vec![
        format!(
            "Latency: open loop at {} requests/s for {} s after {} s of warm-up, each \
             latency counted from the request's intended send time. Overhead = the row's \
             latency minus direct's at the same percentile (a negative value is noise).",
            s.rate, s.duration_s, s.warmup_s
        ),
        format!(
            "Max throughput: closed loop with {} requests always in flight for {} s (after \
             {} s of warm-up): the rate the whole stack sustains on this machine, where the \
             load generator, the fake upstream and the gateway share the same {} cores. \
             ×direct = the row's rate over direct's.",
            s.concurrency, s.throughput_duration_s, s.throughput_warmup_s, c.machine.cores
        ),
        format!(
            "CPU: utime + stime of the row's processes (and any children they reaped) from \
             /proc/PID/stat, at {} ticks/s, across each phase including its warm-up, per \
             1,000 requests sent in it. Gateway rows count the gateway processes only; \
             direct's figure is the fake upstream's own.",
            c.clock_ticks_per_s
        ),
        format!(
            "Idle CPU: the same processes' CPU over {} s while ready and unloaded, in percent \
             of one core (background work the per-request figures include). RSS: VmRSS from \
             /proc/PID/status summed over the row's processes: idle once ready (key made, \
             one test call through every node), and after every phase.",
            IDLE_WINDOW.as_secs()
        ),
    ];
    if c.rows.iter().any(|r| r.row.is_meridian()) {
        notes.push(format!(
            "Meridian rows: authentication, rate limits, budgets and spend accounting on: \
             every request carries a virtual key made through /key/generate ({}); the \
             gateways log at their default level (one info line per request, to a file; \
             RUST_LOG in compare's environment reaches them).",
            gateway::KEY_LIMITS
        ));
    }
    if let Some(gap) = s.sequential_gap_ms {
        notes.push(format!(
            "Sequential: one client, each request sent {gap} ms after the previous answer, \
             for {} s after {} s of warm-up; latency from each request's send, overhead \
             = the row's minus direct's. Nothing is queued anywhere: this is the path's \
             own latency at low load.",
            s.duration_s, s.warmup_s
        ));
    }
    if c.rows.iter().any(|r| r.row == RowKind::Nginx) {
        notes.push(
            "nginx: a minimal pass-through proxy (one worker process under its master, \
             HTTP/1.1 keep-alive pool to the upstream, no access log, no buffering, no \
             key checked): the floor any gateway pays on this machine for the second \
             HTTP exchange. Its CPU is the master's and the worker's."
                .into(),
        );
    }
    if c.rows.iter().any(|r| r.row == RowKind::Portkey) {
        notes.push(
            "Portkey: its open-source gateway on node, offline and --headless, one \
             process; each request names its provider and the fake upstream in \
             x-portkey-provider and x-portkey-custom-host headers and passes its key on. \
             It keeps no keys, budgets or spend, so its row is a lower bound of a gateway \
             that does."
                .into(),
        );
    }
    if c.rows.iter().any(|r| r.row == RowKind::Litellm) {
        notes.push(
            "LiteLLM runs without a database, so it has no virtual keys, budgets or spend \
             logs and is loaded with its master key: its row is a lower bound of LiteLLM's \
             cost. Its database layer (Prisma) needs engine binaries downloaded at first \
             use, which cannot be fetched on this machine."
                .into(),
        );
    }
    notes
}
