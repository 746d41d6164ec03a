//! `meridian-loadtest compare`: the same load, on the same machine, in one
//! run, against the fake upstream alone and against the systems in front of
//! it, side by side.
//!
//! Rows, in order (each started fresh, with its own data directories, and
//! stopped before the next starts; the fake upstream is one process shared
//! by all):
//! - `direct`: the fake upstream alone — the baseline;
//! - `nginx`: nginx as a minimal pass-through proxy — the floor any gateway
//!   pays here for a second HTTP exchange ([`nginx`]);
//! - `meridian-1`: one Meridian node;
//! - `meridian-1-nometrics`: the same with its metrics off
//!   (`meridian.disable_metrics`): beside `meridian-1`, what recording
//!   metrics costs;
//! - `meridian-region`: a region of three Meridian nodes, load spread over them;
//! - `meridian-2regions`: two regions of one node each, load spread over both;
//! - `litellm`: the LiteLLM proxy (with `--litellm`), without a database;
//! - `portkey`: the Portkey OSS gateway on node, installed with npm into a
//!   cache directory at first use ([`portkey`]).
//!
//! A row that cannot run here (not asked for, a program missing, an install
//! that failed) is reported as not run, with the reason.
//!
//! Each row gets the same phases: with `--sequential-gap-ms`, first one
//! client sending a request, waiting for the answer and the gap, and so on
//! (the latency of a quiet path); an open-loop run at a fixed rate (its
//! latencies, and their *overhead* over `direct` at the same percentile);
//! then a closed-loop run at a fixed concurrency (the throughput the whole
//! stack sustains, and its ratio to `direct`). Around each phase the CPU time
//! of the row's processes is read from `/proc`, and their resident memory
//! before and after load. Meridian rows send every request with a virtual key
//! that has a budget and rate limits, so authentication, admission and spend
//! accounting all run.

mod calls;
mod child;
mod gateway;
mod measure;
mod nginx;
mod notes;
mod options;
mod portkey;
mod results;
mod rows;
mod table;
mod time;

pub use self::options::{CompareOptions, IDLE_WINDOW, THROUGHPUT_WARMUP};
pub use self::results::{
    Comparison, NotRun, Overhead, RouterCost, RowResult, Settings, cpu_s_per_1k, ratio,
};
pub use self::rows::RowKind;
pub use self::table::{GridRow, routing_grid, routing_table};
pub use self::time::utc_from_unix;

use self::child::WorkDir;
use self::gateway::{Start, Upstream};
use self::measure::run_row;
use self::notes::{builds, notes};
use self::options::{skip_reason, validate};
use self::results::router_costs;
use self::time::now_utc;
use crate::Error;
use crate::procfs::{self, Machine};

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
        // Filled in once the rows ran: Portkey may be installed by then.
        builds: Vec::new(),
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
            sequential_gap_ms: opts
                .sequential_gap
                .map(|gap| u64::try_from(gap.as_millis()).unwrap_or(u64::MAX)),
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
    let http = calls::http();
    for &row in &opts.rows {
        if let Some(reason) = prepare(row, &opts, &say).await {
            say(format!("== {}: not run: {reason}", row.name()));
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
    comparison.builds = builds(&opts);
    if opts.rows.iter().any(|r| r.is_meridian())
        && let Some(bin) = &opts.meridian_bin
    {
        say("== routing: what choosing a deployment costs (router_cost example)".into());
        match router_costs(bin) {
            Ok(costs) => comparison.routing = costs,
            Err(e) => say(format!("== routing: not measured: {e}")),
        }
    }
    comparison.notes = notes(&comparison);
    Ok(comparison)
}

/// Why `row` cannot run here, if it cannot: [`skip_reason`], then for
/// Portkey its install when it is not installed yet.
async fn prepare(row: RowKind, opts: &CompareOptions, say: &impl Fn(String)) -> Option<String> {
    if let Some(reason) = skip_reason(row, opts) {
        return Some(reason);
    }
    match (row, &opts.portkey_dir) {
        (RowKind::Portkey, Some(dir)) => portkey::ensure_installed(dir, opts.startup_timeout, say)
            .await
            .err(),
        _ => None,
    }
}
