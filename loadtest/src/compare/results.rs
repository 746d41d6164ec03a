//! What a comparison measured: each row's figures, those related to
//! `direct`, and the routing costs; the data both reports are drawn from.

use serde::{Deserialize, Serialize};

use super::RowKind;
use crate::procfs::Machine;
use crate::{Error, RunResult, Summary};

/// The settings every row shared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub rate: f64,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub concurrency: usize,
    pub throughput_duration_s: f64,
    pub throughput_warmup_s: f64,
    pub stream_fraction: f64,
    pub max_tokens: u32,
    pub upstream_latency_ms: u64,
    /// The sequential phase's gap, when it ran (absent in older reports).
    #[serde(default)]
    pub sequential_gap_ms: Option<u64>,
}

/// Latency differences at the usual percentiles, microseconds (negative
/// when the row was faster: noise, at these sizes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overhead {
    pub p50_us: i64,
    pub p90_us: i64,
    pub p99_us: i64,
    pub p999_us: i64,
}

impl Overhead {
    /// `row − direct` at each percentile.
    pub fn between(row: &Summary, direct: &Summary) -> Self {
        let d = |a: u64, b: u64| {
            i64::try_from(a)
                .unwrap_or(i64::MAX)
                .saturating_sub(i64::try_from(b).unwrap_or(i64::MAX))
        };
        Self {
            p50_us: d(row.p50_us, direct.p50_us),
            p90_us: d(row.p90_us, direct.p90_us),
            p99_us: d(row.p99_us, direct.p99_us),
            p999_us: d(row.p999_us, direct.p999_us),
        }
    }
}

/// `row / direct`, when both are positive numbers.
pub fn ratio(row: f64, direct: f64) -> Option<f64> {
    (row.is_finite() && direct.is_finite() && direct > 0.0 && row >= 0.0).then(|| row / direct)
}

/// CPU seconds per 1,000 requests, from clock ticks.
pub fn cpu_s_per_1k(ticks: u64, ticks_per_s: u64, requests: u64) -> Option<f64> {
    (requests > 0 && ticks_per_s > 0)
        .then(|| ticks as f64 / ticks_per_s as f64 / requests as f64 * 1000.0)
}

/// One row's measurements.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RowResult {
    pub row: RowKind,
    pub description: String,
    /// Processes the CPU and memory figures are summed over.
    pub processes: usize,
    /// Whose CPU and memory those are: the gateway's, or for `direct` the
    /// fake upstream's.
    pub measured: String,
    /// The key load was sent with.
    pub key: String,
    /// The open-loop phase.
    pub fixed_rate: RunResult,
    /// The closed-loop phase.
    pub max_throughput: RunResult,
    /// The sequential phase (one client, a gap after each answer), when
    /// asked for.
    #[serde(default)]
    pub sequential: Option<RunResult>,
    /// `sequential` latency minus `direct`'s, when both ran.
    #[serde(default)]
    pub sequential_overhead: Option<Overhead>,
    /// CPU seconds per 1,000 requests of the measured processes during the
    /// sequential phase.
    #[serde(default)]
    pub cpu_s_per_1k_sequential: Option<f64>,
    /// `fixed_rate` latency minus `direct`'s, when `direct` ran.
    pub overhead: Option<Overhead>,
    /// `fixed_rate` time to first byte of streams minus `direct`'s, when
    /// both streamed (`--stream-fraction`).
    #[serde(default)]
    pub ttfb_overhead: Option<Overhead>,
    /// `max_throughput` throughput over `direct`'s, when `direct` ran.
    pub throughput_ratio: Option<f64>,
    /// CPU seconds per 1,000 requests of the measured processes during the
    /// open-loop phase (warm-up included, divided by every request sent).
    pub cpu_s_per_1k: Option<f64>,
    /// The same during the closed-loop phase.
    pub cpu_s_per_1k_max: Option<f64>,
    /// The fake upstream's and the load generator's own, during the
    /// open-loop phase: what else the machine's cores were doing.
    pub upstream_cpu_s_per_1k: Option<f64>,
    pub generator_cpu_s_per_1k: Option<f64>,
    /// CPU the measured processes used while ready and idle, over
    /// [`IDLE_WINDOW`], in percent of one core: background work (Raft
    /// heartbeats, gossip, timers) that the per-request figures include.
    pub idle_cpu_percent: Option<f64>,
    /// VmRSS summed over the processes, KiB: ready and idle, then after both
    /// phases.
    pub rss_idle_kib: u64,
    pub rss_after_kib: u64,
}

/// A row that did not run, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NotRun {
    pub row: RowKind,
    pub reason: String,
}

/// A comparison's result: the report's data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// When it started, UTC.
    pub date: String,
    pub command: String,
    pub machine: Machine,
    pub clock_ticks_per_s: u64,
    /// Which gateway binaries, and built how.
    pub builds: Vec<String>,
    pub settings: Settings,
    pub rows: Vec<RowResult>,
    /// Rows not run by choice or for a missing install.
    pub skipped: Vec<NotRun>,
    /// Rows that were started and failed.
    pub failed: Vec<NotRun>,
    /// How to read the figures.
    pub notes: Vec<String>,
    /// What choosing a deployment costs, measured in the `meridian` binary
    /// (the `router_cost` example beside it); empty without Meridian
    /// rows.
    #[serde(default)]
    pub routing: Vec<RouterCost>,
}

/// Nanoseconds one routing decision takes, by strategy and group size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouterCost {
    pub strategy: String,
    pub deployments: usize,
    pub ns_per_choice: f64,
}

/// The routing benchmark built beside `meridian_bin` (cargo puts examples
/// in `examples/` next to the binaries).
pub(super) fn router_cost_bin(meridian_bin: &std::path::Path) -> std::path::PathBuf {
    meridian_bin
        .parent()
        .unwrap_or_else(|| std::path::Path::new("."))
        .join("examples")
        .join("router_cost")
}

/// Runs the `router_cost` example with `--json` (one thread, in memory).
pub(super) fn router_costs(meridian_bin: &std::path::Path) -> Result<Vec<RouterCost>, Error> {
    let bin = router_cost_bin(meridian_bin);
    let out = std::process::Command::new(&bin)
        .arg("--json")
        .output()
        .map_err(|e| {
            Error::InvalidOption(format!(
                "{}: {e} (build it with `cargo build -p meridian-node --example router_cost`)",
                bin.display()
            ))
        })?;
    if !out.status.success() {
        return Err(Error::InvalidOption(format!(
            "{} failed: {}",
            bin.display(),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

impl Comparison {
    /// Every run, for the plots and the runs table: open-loop runs first.
    pub fn runs(&self) -> Vec<RunResult> {
        let fixed = self.rows.iter().map(|r| r.fixed_rate.clone());
        let sequential = self.rows.iter().filter_map(|r| r.sequential.clone());
        let max = self.rows.iter().map(|r| r.max_throughput.clone());
        fixed.chain(sequential).chain(max).collect()
    }

    pub fn write_json(&self, path: &std::path::Path) -> Result<(), Error> {
        let mut text = serde_json::to_string_pretty(self)?;
        text.push('\n');
        std::fs::write(path, text)?;
        Ok(())
    }

    /// Fills each row's overhead and throughput ratio from the `direct` row.
    pub(super) fn relate_to_direct(&mut self) {
        let Some(direct) = self.rows.iter().find(|r| r.row == RowKind::Direct) else {
            return;
        };
        let latency = direct.fixed_rate.latency;
        let ttfb = Some(direct.fixed_rate.ttfb).filter(|t| t.count > 0);
        let sequential = direct.sequential.as_ref().map(|s| s.latency);
        let throughput = direct.max_throughput.throughput_rps;
        for row in &mut self.rows {
            row.overhead = Some(Overhead::between(&row.fixed_rate.latency, &latency));
            row.ttfb_overhead = Some(row.fixed_rate.ttfb)
                .filter(|t| t.count > 0)
                .zip(ttfb.as_ref())
                .map(|(r, d)| Overhead::between(&r, d));
            row.sequential_overhead = row
                .sequential
                .as_ref()
                .zip(sequential.as_ref())
                .map(|(r, d)| Overhead::between(&r.latency, d));
            row.throughput_ratio = ratio(row.max_throughput.throughput_rps, throughput);
        }
    }
}
