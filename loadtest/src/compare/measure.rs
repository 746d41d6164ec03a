//! Running one row: start its processes, measure them idle, load them in
//! each phase with their CPU read around it, stop them.

use super::RowKind;
use super::child::Group;
use super::gateway::{self, NodeSpec, Start, Upstream};
use super::options::{CompareOptions, IDLE_WINDOW, Phase, phase_options};
use super::results::{RowResult, cpu_s_per_1k};
use super::table::opt_f;
use super::{nginx, portkey};
use crate::procfs;
use crate::result::ms;
use crate::{Error, RunResult};

/// The key sent where no key is checked: the fake upstream accepts any,
/// and the pass-through rows hand it on.
const ANY_KEY: &str = "sk-x";

/// A row's processes, ready for load, and how load reaches them.
struct Target {
    group: Group,
    urls: Vec<String>,
    key: String,
    /// Sent with every request.
    headers: Vec<(String, String)>,
    /// The processes whose CPU and memory are the row's.
    measured: Vec<u32>,
    key_note: &'static str,
}

/// Starts `row`'s processes (none for `direct`) and waits until they are
/// ready for load.
async fn start_row(
    row: RowKind,
    start: &Start<'_>,
    upstream: &Upstream,
    opts: &CompareOptions,
) -> Result<Target, Error> {
    let target = |ready: gateway::Ready, headers, key_note| {
        let measured = ready.group.pids();
        Target {
            group: ready.group,
            urls: ready.urls,
            key: ready.key,
            headers,
            measured,
            key_note,
        }
    };
    Ok(match row {
        // `direct` starts nothing: its processes are the upstream's.
        RowKind::Direct => Target {
            group: Group::default(),
            urls: vec![upstream.url()],
            key: ANY_KEY.into(),
            headers: Vec::new(),
            measured: upstream.group.pids(),
            key_note: "none checked (the fake upstream accepts any)",
        },
        RowKind::Nginx => {
            let path = std::env::var_os("PATH");
            let bin = nginx::locate(opts.nginx_bin.as_deref(), path.as_deref())
                .map_err(Error::InvalidOption)?;
            let ready = start.nginx(&bin, ANY_KEY).await?;
            target(ready, Vec::new(), "passed on unchecked")
        }
        RowKind::Portkey => {
            let path = std::env::var_os("PATH");
            let node = super::child::find_program("node", path.as_deref())
                .ok_or_else(|| Error::InvalidOption("node not found on PATH".into()))?;
            let dir = opts
                .portkey_dir
                .as_deref()
                .ok_or_else(|| Error::InvalidOption("no Portkey directory".into()))?;
            let ready = start.portkey(&node, dir, ANY_KEY).await?;
            let headers = portkey::headers(start.upstream_port);
            target(
                ready,
                headers,
                "passed on unchecked; provider and host in x-portkey-* headers",
            )
        }
        RowKind::Litellm => {
            let venv = opts
                .litellm_venv
                .as_deref()
                .ok_or_else(|| Error::InvalidOption("no LiteLLM virtualenv".into()))?;
            let ready = start.litellm(venv, opts.litellm_workers).await?;
            target(ready, Vec::new(), "the master key")
        }
        RowKind::Meridian1
        | RowKind::Meridian1NoMetrics
        | RowKind::MeridianRegion
        | RowKind::Meridian2Regions => {
            let bin = opts
                .meridian_bin
                .as_deref()
                .ok_or_else(|| Error::InvalidOption("no meridian binary".into()))?;
            let nodes = match row {
                RowKind::MeridianRegion => gateway::plan(&["us-east"], 3)?,
                RowKind::Meridian2Regions => gateway::plan(&["us-east", "eu-west"], 1)?,
                _ => Vec::<NodeSpec>::new(),
            };
            let extra = match row {
                RowKind::Meridian1NoMetrics => "meridian:\n  disable_metrics: true\n",
                _ => "",
            };
            let ready = start.meridian(bin, &nodes, extra).await?;
            target(
                ready,
                Vec::new(),
                "a virtual key with max_budget, rpm_limit and tpm_limit",
            )
        }
    })
}

/// Starts `row`, loads it in each phase, and stops it.
pub(super) async fn run_row(
    row: RowKind,
    start: &Start<'_>,
    upstream: &Upstream,
    opts: &CompareOptions,
    clock: u64,
    say: &impl Fn(String),
) -> Result<RowResult, Error> {
    let Target {
        mut group,
        urls,
        key,
        headers,
        measured,
        key_note,
    } = start_row(row, start, upstream, opts).await?;
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
        "   ready on {}; RSS {:.1} MiB, idle CPU {}%",
        urls.join(" "),
        rss_idle_kib as f64 / 1024.0,
        opt_f(idle_cpu_percent, 1),
    ));

    let ticks = || -> Result<(u64, u64, u64), Error> {
        Ok((
            procfs::tree_cpu_ticks(&measured)?,
            procfs::tree_cpu_ticks(&upstream_pids)?,
            procfs::stat(self_pid)?.cpu.own,
        ))
    };
    let mut load = async |phase: Phase, label: String| -> Result<RunResult, Error> {
        let options = phase_options(
            opts,
            &label,
            urls.clone(),
            Some(key.clone()),
            headers.clone(),
            phase,
        );
        let result = crate::run(options).await?;
        group.check_alive(name)?;
        Ok(result)
    };
    let before_sequential = ticks()?;
    let sequential = match opts.sequential_gap {
        Some(gap) => {
            say(format!(
                "   sequential: one client, {} ms between requests",
                gap.as_millis()
            ));
            let run = load(Phase::Sequential, format!("{name} sequential")).await?;
            say(format!(
                "   p50 {} p99 {}, {} failed",
                ms(run.latency.p50_us),
                ms(run.latency.p99_us),
                run.error_count()
            ));
            Some(run)
        }
        None => None,
    };
    let before = ticks()?;
    say(format!("   open loop at {}/s", opts.rate));
    let fixed = load(Phase::Rate, format!("{name} @ {}/s", opts.rate)).await?;
    let after_fixed = ticks()?;
    say(format!(
        "   p50 {} p99 {}, {} failed; closed loop at concurrency {}",
        ms(fixed.latency.p50_us),
        ms(fixed.latency.p99_us),
        fixed.error_count(),
        opts.concurrency
    ));
    let max = load(Phase::Max, format!("{name} max")).await?;
    let after_max = ticks()?;
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
        measured: match row {
            RowKind::Direct => "fake upstream",
            RowKind::Nginx => "proxy",
            _ => "gateway",
        }
        .into(),
        key: key_note.into(),
        cpu_s_per_1k: per_1k(before.0, after_fixed.0, fixed.sent_total),
        cpu_s_per_1k_max: per_1k(after_fixed.0, after_max.0, max.sent_total),
        upstream_cpu_s_per_1k: per_1k(before.1, after_fixed.1, fixed.sent_total),
        generator_cpu_s_per_1k: per_1k(before.2, after_fixed.2, fixed.sent_total),
        fixed_rate: fixed,
        max_throughput: max,
        cpu_s_per_1k_sequential: sequential
            .as_ref()
            .and_then(|s| per_1k(before_sequential.0, before.0, s.sent_total)),
        sequential,
        sequential_overhead: None,
        overhead: None,
        ttfb_overhead: None,
        throughput_ratio: None,
        idle_cpu_percent,
        rss_idle_kib,
        rss_after_kib,
    })
}
