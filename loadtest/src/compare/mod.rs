//! `meridian-loadtest compare`: the same load, on the same machine, in one
//! run, against the fake upstream alone and against the systems in front of
//! it, side by side.
//!
//! Rows, in order (each started fresh, with its own data directories, and
//! stopped before the next starts; the fake upstream is one process shared
//! by all):
//! - `direct`: the fake upstream alone — the baseline;
//! - `meridian-1`: one Meridian node;
//! - `meridian-region`: a region of three Meridian nodes, load spread over them;
//! - `meridian-2regions`: two regions of one node each, load spread over both;
//! - `litellm`: the LiteLLM proxy (with `--litellm`), without a database.
//!
//! Each row gets the same two phases: an open-loop run at a fixed rate (its
//! latencies, and their *overhead* over `direct` at the same percentile),
//! then a closed-loop run at a fixed concurrency (the throughput the whole
//! stack sustains, and its ratio to `direct`). Around each phase the CPU time
//! of the row's processes is read from `/proc`, and their resident memory
//! before and after load. Meridian rows send every request with a virtual key
//! that has a budget and rate limits, so authentication, admission and spend
//! accounting all run.

mod child;
mod gateway;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use self::child::{Group, WorkDir};
use self::gateway::{NodeSpec, Start, Upstream};
use crate::procfs::{self, Machine};
use crate::result::ms;
use crate::{Error, Load, RunOptions, RunResult, Summary};

/// One system a comparison loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RowKind {
    Direct,
    #[serde(rename = "meridian-1")]
    Meridian1,
    MeridianRegion,
    #[serde(rename = "meridian-2regions")]
    Meridian2Regions,
    Litellm,
}

impl RowKind {
    pub const ALL: [RowKind; 5] = [
        RowKind::Direct,
        RowKind::Meridian1,
        RowKind::MeridianRegion,
        RowKind::Meridian2Regions,
        RowKind::Litellm,
    ];

    pub fn name(self) -> &'static str {
        match self {
            RowKind::Direct => "direct",
            RowKind::Meridian1 => "meridian-1",
            RowKind::MeridianRegion => "meridian-region",
            RowKind::Meridian2Regions => "meridian-2regions",
            RowKind::Litellm => "litellm",
        }
    }

    fn description(self) -> &'static str {
        match self {
            RowKind::Direct => "the fake upstream alone",
            RowKind::Meridian1 => "one Meridian node",
            RowKind::MeridianRegion => "a Meridian region of three nodes, load spread over them",
            RowKind::Meridian2Regions => {
                "two Meridian regions of one node each, load spread over both"
            }
            RowKind::Litellm => "the LiteLLM proxy, no database",
        }
    }

    fn is_meridian(self) -> bool {
        matches!(
            self,
            RowKind::Meridian1 | RowKind::MeridianRegion | RowKind::Meridian2Regions
        )
    }

    /// Parses a comma-separated list (`direct,meridian-1`), in run order,
    /// each once.
    pub fn parse_list(text: &str) -> Result<Vec<RowKind>, Error> {
        let mut rows = Vec::new();
        for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let row: RowKind = name.parse()?;
            if !rows.contains(&row) {
                rows.push(row);
            }
        }
        if rows.is_empty() {
            return Err(Error::InvalidOption("no rows named".into()));
        }
        rows.sort_unstable();
        Ok(rows)
    }
}

impl FromStr for RowKind {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        RowKind::ALL
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| {
                let known: Vec<&str> = RowKind::ALL.iter().map(|r| r.name()).collect();
                Error::InvalidOption(format!("unknown row {s:?} (known: {})", known.join(", ")))
            })
    }
}

/// Everything [`compare`] needs.
#[derive(Debug, Clone)]
pub struct CompareOptions {
    pub rows: Vec<RowKind>,
    /// The `meridian` binary; needed by the Meridian rows only.
    pub meridian_bin: Option<PathBuf>,
    /// A `meridian-loadtest` binary, run as `upstream` for the fake upstream.
    pub upstream_bin: PathBuf,
    /// The virtualenv `ops/litellm.sh` made; `None` skips the LiteLLM row.
    pub litellm_venv: Option<PathBuf>,
    /// LiteLLM's `--num_workers` (its own default is 1).
    pub litellm_workers: usize,
    /// The open-loop phase: requests per second, measured window, warm-up.
    pub rate: f64,
    pub duration: Duration,
    pub warmup: Duration,
    /// The closed-loop phase: requests in flight, measured window (after
    /// [`THROUGHPUT_WARMUP`]).
    pub concurrency: usize,
    pub throughput_duration: Duration,
    pub stream_fraction: f64,
    pub max_tokens: u32,
    /// Added by the fake upstream before every answer.
    pub upstream_latency: Duration,
    /// How long a row may take to be ready for load.
    pub startup_timeout: Duration,
    /// The command line, for the report.
    pub command_line: String,
    /// Progress lines on stderr.
    pub progress: bool,
}

impl Default for CompareOptions {
    fn default() -> Self {
        Self {
            rows: RowKind::ALL.to_vec(),
            meridian_bin: None,
            upstream_bin: PathBuf::from("meridian-loadtest"),
            litellm_venv: None,
            litellm_workers: 1,
            rate: 500.0,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(2),
            concurrency: 32,
            throughput_duration: Duration::from_secs(5),
            stream_fraction: 0.0,
            max_tokens: 64,
            upstream_latency: Duration::ZERO,
            startup_timeout: Duration::from_secs(120),
            command_line: String::new(),
            progress: false,
        }
    }
}

/// Warm-up of the closed-loop phase (connections opened, not measured).
pub const THROUGHPUT_WARMUP: Duration = Duration::from_secs(1);

/// How long a ready row is left idle, its CPU measured, before load.
pub const IDLE_WINDOW: Duration = Duration::from_secs(2);

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
    /// `fixed_rate` latency minus `direct`'s, when `direct` ran.
    pub overhead: Option<Overhead>,
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
    /// (`meridian bench-router`); empty without Meridian rows.
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

/// Runs `meridian bench-router --json` (one thread, in memory).
fn router_costs(bin: &std::path::Path) -> Result<Vec<RouterCost>, Error> {
    let out = std::process::Command::new(bin)
        .args(["bench-router", "--json"])
        .output()?;
    if !out.status.success() {
        return Err(Error::InvalidOption(format!(
            "{} bench-router failed: {}",
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
        let max = self.rows.iter().map(|r| r.max_throughput.clone());
        fixed.chain(max).collect()
    }

    pub fn write_json(&self, path: &std::path::Path) -> Result<(), Error> {
        let mut text = serde_json::to_string_pretty(self)?;
        text.push('\n');
        std::fs::write(path, text)?;
        Ok(())
    }

    /// Fills each row's overhead and throughput ratio from the `direct` row.
    fn relate_to_direct(&mut self) {
        let Some(direct) = self.rows.iter().find(|r| r.row == RowKind::Direct) else {
            return;
        };
        let latency = direct.fixed_rate.latency;
        let throughput = direct.max_throughput.throughput_rps;
        for row in &mut self.rows {
            row.overhead = Some(Overhead::between(&row.fixed_rate.latency, &latency));
            row.throughput_ratio = ratio(row.max_throughput.throughput_rps, throughput);
        }
    }
}

/// Runs every selected row in turn and returns what each measured. A row
/// that fails to start or dies is listed in [`Comparison::failed`] and the
/// others still run; errors outside any row (the fake upstream, the work
/// directory, an option) end the comparison.
pub async fn compare(opts: CompareOptions) -> Result<Comparison, Error> {
    validate(&opts)?;
    let say = |line: String| {
        if opts.progress {
            eprintln!("{line}");
        }
    };
    let work = WorkDir::create()?;
    let clock = procfs::clock_ticks_per_second();
    let mut comparison = Comparison {
        date: now_utc(),
        command: opts.command_line.clone(),
        machine: Machine::read(),
        clock_ticks_per_s: clock,
        builds: builds(&opts),
        settings: Settings {
            rate: opts.rate,
            duration_s: opts.duration.as_secs_f64(),
            warmup_s: opts.warmup.as_secs_f64(),
            concurrency: opts.concurrency,
            throughput_duration_s: opts.throughput_duration.as_secs_f64(),
            throughput_warmup_s: THROUGHPUT_WARMUP.as_secs_f64(),
            stream_fraction: opts.stream_fraction,
            max_tokens: opts.max_tokens,
            upstream_latency_ms: u64::try_from(opts.upstream_latency.as_millis())
                .unwrap_or(u64::MAX),
        },
        rows: Vec::new(),
        skipped: Vec::new(),
        failed: Vec::new(),
        notes: Vec::new(),
        routing: Vec::new(),
    };
    say(format!(
        "== fake upstream ({})",
        opts.upstream_bin.display()
    ));
    let upstream = Upstream::start(
        &opts.upstream_bin,
        &work,
        opts.upstream_latency,
        opts.startup_timeout,
    )
    .await?;
    let http = gateway::http();
    for &row in &opts.rows {
        if let Some(reason) = skip_reason(row, &opts) {
            say(format!("== {}: skipped: {reason}", row.name()));
            comparison.skipped.push(NotRun { row, reason });
            continue;
        }
        say(format!("== {}: {}", row.name(), row.description()));
        let dir = work.subdir(row.name())?;
        let start = Start {
            row: row.name(),
            dir,
            upstream_port: upstream.port,
            timeout: opts.startup_timeout,
            http: &http,
        };
        match run_row(row, &start, &upstream, &opts, clock, &say).await {
            Ok(result) => comparison.rows.push(result),
            Err(e) => {
                say(format!("== {}: failed: {e}", row.name()));
                comparison.failed.push(NotRun {
                    row,
                    reason: e.to_string(),
                });
            }
        }
    }
    comparison.relate_to_direct();
    if opts.rows.iter().any(|r| r.is_meridian())
        && let Some(bin) = &opts.meridian_bin
    {
        say("== routing: what choosing a deployment costs (meridian bench-router)".into());
        match router_costs(bin) {
            Ok(costs) => comparison.routing = costs,
            Err(e) => say(format!("== routing: not measured: {e}")),
        }
    }
    comparison.notes = notes(&comparison);
    Ok(comparison)
}

fn validate(opts: &CompareOptions) -> Result<(), Error> {
    if opts.rows.is_empty() {
        return Err(Error::InvalidOption("no rows to run".into()));
    }
    if opts.rows.iter().any(|r| r.is_meridian()) {
        match &opts.meridian_bin {
            None => {
                return Err(Error::InvalidOption(
                    "the Meridian rows need --meridian-bin (or MERIDIAN_BIN); \
                     or pick rows with --rows"
                        .into(),
                ));
            }
            Some(bin) if !bin.is_file() => {
                return Err(Error::InvalidOption(format!(
                    "no meridian binary at {}",
                    bin.display()
                )));
            }
            Some(_) => {}
        }
    }
    if opts.litellm_workers == 0 {
        return Err(Error::InvalidOption(
            "LiteLLM needs at least one worker".into(),
        ));
    }
    if opts.startup_timeout.is_zero() {
        return Err(Error::InvalidOption(
            "startup timeout must be above zero".into(),
        ));
    }
    // The generator's own checks, once, before anything starts.
    phase_options(
        opts,
        "check",
        vec!["http://127.0.0.1:1".into()],
        None,
        false,
    )
    .validate()?;
    phase_options(opts, "check", vec!["http://127.0.0.1:1".into()], None, true).validate()
}

/// Why `row` will not run, if it will not.
fn skip_reason(row: RowKind, opts: &CompareOptions) -> Option<String> {
    if row != RowKind::Litellm {
        return None;
    }
    let Some(venv) = &opts.litellm_venv else {
        return Some("not asked for (--litellm)".into());
    };
    let bin = venv.join("bin").join("litellm");
    (!bin.is_file()).then(|| {
        format!(
            "no LiteLLM at {} (ops/litellm.sh installs it)",
            bin.display()
        )
    })
}

/// One phase's generator options.
fn phase_options(
    opts: &CompareOptions,
    label: &str,
    urls: Vec<String>,
    key: Option<String>,
    closed: bool,
) -> RunOptions {
    let mut urls = urls.into_iter();
    let url = urls.next().unwrap_or_default();
    let (load, duration, warmup) = if closed {
        (
            Load::Concurrency(opts.concurrency),
            opts.throughput_duration,
            THROUGHPUT_WARMUP,
        )
    } else {
        (Load::Rate(opts.rate), opts.duration, opts.warmup)
    };
    RunOptions {
        url,
        extra_urls: urls.collect(),
        key,
        model: gateway::MODEL.into(),
        load,
        duration,
        warmup,
        stream_fraction: opts.stream_fraction,
        max_tokens: opts.max_tokens,
        label: label.into(),
        progress: false,
        ..RunOptions::default()
    }
}

/// Starts `row`, loads it in both phases, and stops it.
async fn run_row(
    row: RowKind,
    start: &Start<'_>,
    upstream: &Upstream,
    opts: &CompareOptions,
    clock: u64,
    say: &impl Fn(String),
) -> Result<RowResult, Error> {
    // `direct` starts nothing: its processes are the upstream's.
    let (mut group, urls, key, measured, key_note) = match row {
        RowKind::Direct => (
            Group::default(),
            vec![upstream.url()],
            "sk-x".to_owned(),
            upstream.group.pids(),
            "none checked (the fake upstream accepts any)",
        ),
        RowKind::Litellm => {
            let venv = opts
                .litellm_venv
                .as_deref()
                .ok_or_else(|| Error::InvalidOption("no LiteLLM virtualenv".into()))?;
            let ready = start.litellm(venv, opts.litellm_workers).await?;
            let pids = ready.group.pids();
            (ready.group, ready.urls, ready.key, pids, "the master key")
        }
        RowKind::Meridian1 | RowKind::MeridianRegion | RowKind::Meridian2Regions => {
            let bin = opts
                .meridian_bin
                .as_deref()
                .ok_or_else(|| Error::InvalidOption("no meridian binary".into()))?;
            let nodes = match row {
                RowKind::MeridianRegion => gateway::plan(&["us-east"], 3)?,
                RowKind::Meridian2Regions => gateway::plan(&["us-east", "eu-west"], 1)?,
                _ => Vec::<NodeSpec>::new(),
            };
            let ready = start.meridian(bin, &nodes).await?;
            let pids = ready.group.pids();
            (
                ready.group,
                ready.urls,
                ready.key,
                pids,
                "a virtual key with max_budget, rpm_limit and tpm_limit",
            )
        }
    };
    let upstream_pids = upstream.group.pids();
    let self_pid = std::process::id();
    let name = row.name();
    let idle_from = procfs::tree_cpu_ticks(&measured)?;
    let idle_start = tokio::time::Instant::now();
    tokio::time::sleep(IDLE_WINDOW).await;
    let idle_ticks = procfs::tree_cpu_ticks(&measured)?.saturating_sub(idle_from);
    let idle_s = idle_start.elapsed().as_secs_f64();
    let idle_cpu_percent =
        (clock > 0 && idle_s > 0.0).then(|| idle_ticks as f64 / clock as f64 / idle_s * 100.0);
    let rss_idle_kib = procfs::tree_rss_kib(&measured)?;
    say(format!(
        "   ready on {}; RSS {:.1} MiB, idle CPU {}%; open loop at {}/s",
        urls.join(" "),
        rss_idle_kib as f64 / 1024.0,
        opt_f(idle_cpu_percent, 1),
        opts.rate
    ));

    let ticks = || -> Result<(u64, u64, u64), Error> {
        Ok((
            procfs::tree_cpu_ticks(&measured)?,
            procfs::tree_cpu_ticks(&upstream_pids)?,
            procfs::stat(self_pid)?.cpu.own,
        ))
    };
    let before = ticks()?;
    let fixed = crate::run(phase_options(
        opts,
        &format!("{name} @ {}/s", opts.rate),
        urls.clone(),
        Some(key.clone()),
        false,
    ))
    .await?;
    let after_fixed = ticks()?;
    group.check_alive(name)?;
    say(format!(
        "   p50 {} p99 {}, {} failed; closed loop at concurrency {}",
        ms(fixed.latency.p50_us),
        ms(fixed.latency.p99_us),
        fixed.error_count(),
        opts.concurrency
    ));
    let max = crate::run(phase_options(
        opts,
        &format!("{name} max"),
        urls.clone(),
        Some(key),
        true,
    ))
    .await?;
    let after_max = ticks()?;
    group.check_alive(name)?;
    let rss_after_kib = procfs::tree_rss_kib(&measured)?;
    say(format!(
        "   {:.0} req/s, {} failed",
        max.throughput_rps,
        max.error_count()
    ));
    group.stop();

    let per_1k =
        |from: u64, to: u64, requests: u64| cpu_s_per_1k(to.saturating_sub(from), clock, requests);
    Ok(RowResult {
        row,
        description: row.description().into(),
        processes: measured.len(),
        measured: if row == RowKind::Direct {
            "fake upstream".into()
        } else {
            "gateway".into()
        },
        key: key_note.into(),
        cpu_s_per_1k: per_1k(before.0, after_fixed.0, fixed.sent_total),
        cpu_s_per_1k_max: per_1k(after_fixed.0, after_max.0, max.sent_total),
        upstream_cpu_s_per_1k: per_1k(before.1, after_fixed.1, fixed.sent_total),
        generator_cpu_s_per_1k: per_1k(before.2, after_fixed.2, fixed.sent_total),
        fixed_rate: fixed,
        max_throughput: max,
        overhead: None,
        throughput_ratio: None,
        idle_cpu_percent,
        rss_idle_kib,
        rss_after_kib,
    })
}

/// `--version` of each gateway binary, and how it was built.
fn builds(opts: &CompareOptions) -> Vec<String> {
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
             at opt-level 2, Meridian's crates at 1, RocksDB's C++ at -O1)",
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
    out.push("meridian-loadtest (load generator and fake upstream): the dev-profile build".into());
    out
}

/// How to read the figures, as they apply to this comparison.
fn notes(c: &Comparison) -> Vec<String> {
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
             one test call through every node), and after both phases.",
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

/// The current time, UTC, to the minute.
fn now_utc() -> String {
    // The report's date is the one reading of the wall clock; nothing is
    // timed with it.
    #[allow(clippy::disallowed_methods)]
    let now = std::time::SystemTime::now();
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    utc_from_unix(secs)
}

/// `YYYY-MM-DD HH:MM UTC` for seconds since the Unix epoch (Howard
/// Hinnant's days-to-civil algorithm).
pub fn utc_from_unix(secs: u64) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

/// A signed microsecond difference as milliseconds with a sign.
/// Strategies down, group sizes across, as aligned text lines.
/// One strategy's ns per choice for each group size of a [`routing_grid`].
pub type GridRow<'a> = (&'a str, Vec<Option<f64>>);

/// Router costs as a grid: the group sizes (ascending), then each strategy
/// (in measured order) with its ns per choice for each size.
pub fn routing_grid(costs: &[RouterCost]) -> (Vec<usize>, Vec<GridRow<'_>>) {
    let mut sizes: Vec<usize> = costs.iter().map(|c| c.deployments).collect();
    sizes.sort_unstable();
    sizes.dedup();
    let mut rows: Vec<GridRow<'_>> = Vec::new();
    for c in costs {
        if rows.iter().any(|(s, _)| *s == c.strategy) {
            continue;
        }
        let cells = sizes
            .iter()
            .map(|n| {
                costs
                    .iter()
                    .find(|x| x.strategy == c.strategy && x.deployments == *n)
                    .map(|x| x.ns_per_choice)
            })
            .collect();
        rows.push((&c.strategy, cells));
    }
    (sizes, rows)
}

/// Strategies down, group sizes across, as aligned text lines.
pub fn routing_table(costs: &[RouterCost]) -> Vec<String> {
    let (sizes, rows) = routing_grid(costs);
    let header: String = sizes
        .iter()
        .map(|n| format!("{:>16}", format!("{n} deployments")))
        .collect();
    let mut lines = vec![format!("{:<24}{header}", "strategy")];
    for (strategy, cells) in rows {
        let cells: String = cells
            .iter()
            .map(|c| c.map_or_else(|| format!("{:>16}", "–"), |ns| format!("{ns:>16.0}")))
            .collect();
        lines.push(format!("{strategy:<24}{cells}"));
    }
    lines
}

fn signed_ms(us: i64) -> String {
    format!("{:+.2}", us as f64 / 1000.0)
}

fn opt_f(v: Option<f64>, decimals: usize) -> String {
    v.map_or("–".into(), |v| format!("{v:.decimals$}"))
}

/// The tables `compare` prints.
impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.settings;
        writeln!(
            f,
            "meridian-loadtest compare, {} — {} cores ({}), {} MiB",
            self.date, self.machine.cores, self.machine.cpu_model, self.machine.memory_mib
        )?;
        writeln!(f, "command: {}", self.command)?;
        for build in &self.builds {
            writeln!(f, "build: {build}")?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "Latency at {} req/s, open loop, {} s after {} s warm-up (ms); overhead = row − direct",
            s.rate, s.duration_s, s.warmup_s
        )?;
        writeln!(
            f,
            "{:<18} {:>13} {:>8} {:>8} {:>8} {:>8}  {:>8} {:>8} {:>8} {:>8}",
            "row", "ok/sent", "p50", "p90", "p99", "p99.9", "+p50", "+p90", "+p99", "+p99.9"
        )?;
        for r in &self.rows {
            let l = &r.fixed_rate.latency;
            let o = r.overhead.map_or_else(
                || vec!["–".to_owned(); 4],
                |o| {
                    [o.p50_us, o.p90_us, o.p99_us, o.p999_us]
                        .into_iter()
                        .map(signed_ms)
                        .collect()
                },
            );
            writeln!(
                f,
                "{:<18} {:>13} {:>8.2} {:>8.2} {:>8.2} {:>8.2}  {:>8} {:>8} {:>8} {:>8}",
                r.row.name(),
                format!("{}/{}", r.fixed_rate.successes, r.fixed_rate.requests),
                l.p50_us as f64 / 1000.0,
                l.p90_us as f64 / 1000.0,
                l.p99_us as f64 / 1000.0,
                l.p999_us as f64 / 1000.0,
                o[0],
                o[1],
                o[2],
                o[3],
            )?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "Max throughput (closed loop, {} in flight, {} s); CPU s per 1,000 requests \
             (gateways; direct: the fake upstream) at {} req/s and at max; memory",
            s.concurrency, s.throughput_duration_s, s.rate
        )?;
        writeln!(
            f,
            "{:<21} {:>7} {:>7} {:>6} {:>8} {:>7} {:>8} {:>8} {:>9} {:>9} {:>9}",
            "row",
            "req/s",
            "×direct",
            "failed",
            "CPU@rate",
            "CPU@max",
            "idle CPU",
            "upstream",
            "generator",
            "RSS idle",
            "RSS after",
        )?;
        for r in &self.rows {
            let failed = r.fixed_rate.error_count() + r.max_throughput.error_count();
            writeln!(
                f,
                "{:<21} {:>7.0} {:>7} {:>6} {:>8} {:>7} {:>8} {:>8} {:>9} {:>9} {:>9}",
                format!("{} ({})", r.row.name(), r.processes),
                r.max_throughput.throughput_rps,
                opt_f(r.throughput_ratio, 3),
                failed,
                opt_f(r.cpu_s_per_1k, 3),
                opt_f(r.cpu_s_per_1k_max, 3),
                r.idle_cpu_percent
                    .map_or_else(|| "–".into(), |p| format!("{p:.1}%")),
                opt_f(r.upstream_cpu_s_per_1k, 3),
                opt_f(r.generator_cpu_s_per_1k, 3),
                format!("{:.1}M", r.rss_idle_kib as f64 / 1024.0),
                format!("{:.1}M", r.rss_after_kib as f64 / 1024.0),
            )?;
        }
        writeln!(
            f,
            "(row (processes); upstream and generator: the fake upstream's and the load \
             generator's CPU s/1k during the open-loop phase; RSS in MiB)"
        )?;
        for r in &self.rows {
            for run in [&r.fixed_rate, &r.max_throughput] {
                if !run.errors.is_empty() {
                    let list: Vec<String> = run
                        .errors
                        .iter()
                        .map(|(k, v)| format!("{k}: {v}"))
                        .collect();
                    writeln!(f, "errors in {}: {}", run.label, list.join(", "))?;
                }
            }
        }
        if !self.routing.is_empty() {
            writeln!(f)?;
            writeln!(
                f,
                "Choosing a deployment (meridian bench-router: one thread, in memory), ns per choice"
            )?;
            for line in routing_table(&self.routing) {
                writeln!(f, "{line}")?;
            }
        }
        for n in &self.skipped {
            writeln!(f, "skipped {}: {}", n.row.name(), n.reason)?;
        }
        for n in &self.failed {
            writeln!(f, "FAILED {}: {}", n.row.name(), n.reason)?;
        }
        writeln!(f)?;
        for note in &self.notes {
            writeln!(f, "- {note}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn rows_parse_in_run_order() {
        assert_eq!(
            RowKind::parse_list("meridian-1, direct,meridian-1").unwrap(),
            vec![RowKind::Direct, RowKind::Meridian1]
        );
        assert!(RowKind::parse_list("direct,nginx").is_err());
        assert!(RowKind::parse_list(" , ").is_err());
        for row in RowKind::ALL {
            assert_eq!(row.name().parse::<RowKind>().unwrap(), row);
            assert_eq!(
                serde_json::to_value(row).unwrap(),
                serde_json::Value::from(row.name())
            );
        }
    }

    #[test]
    fn router_costs_grid_by_strategy_and_size() {
        let cost = |strategy: &str, deployments, ns| RouterCost {
            strategy: strategy.into(),
            deployments,
            ns_per_choice: ns,
        };
        let costs = [cost("b", 4, 40.0), cost("a", 1, 10.0), cost("b", 1, 20.0)];
        let (sizes, rows) = routing_grid(&costs);
        assert_eq!(sizes, [1, 4]);
        assert_eq!(
            rows,
            [
                ("b", vec![Some(20.0), Some(40.0)]),
                ("a", vec![Some(10.0), None])
            ]
        );
        let lines = routing_table(&costs);
        assert_eq!(lines.len(), 3);
        assert!(
            lines[2].starts_with('a') && lines[2].ends_with('–'),
            "{lines:?}"
        );
    }

    #[test]
    fn dates_are_civil_utc() {
        assert_eq!(utc_from_unix(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc_from_unix(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(utc_from_unix(1_795_352_764), "2026-11-22 13:06 UTC");
    }

    #[test]
    fn litellm_is_skipped_unless_asked_and_installed() {
        let opts = CompareOptions::default();
        assert!(skip_reason(RowKind::Litellm, &opts).is_some());
        assert!(skip_reason(RowKind::Direct, &opts).is_none());
        let missing = CompareOptions {
            litellm_venv: Some("/nonexistent/venv".into()),
            ..CompareOptions::default()
        };
        let reason = skip_reason(RowKind::Litellm, &missing).unwrap();
        assert!(reason.contains("ops/litellm.sh"), "{reason}");
    }

    #[test]
    fn meridian_rows_need_the_binary() {
        let opts = CompareOptions {
            rows: vec![RowKind::Direct, RowKind::Meridian1],
            ..CompareOptions::default()
        };
        assert!(validate(&opts).is_err());
        let direct_only = CompareOptions {
            rows: vec![RowKind::Direct],
            ..CompareOptions::default()
        };
        assert!(validate(&direct_only).is_ok());
        let bad_rate = CompareOptions {
            rate: 0.0,
            ..direct_only
        };
        assert!(validate(&bad_rate).is_err());
    }
}
