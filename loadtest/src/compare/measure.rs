//! Running one row: start its processes, measure them idle, load them in
//! each phase with their CPU read around it, stop them.

use super::RowKind;
use super::child::Group;
use super::gateway::{self, NodeSpec, Start, Upstream};
use super::options::{CompareOptions, IDLE_WINDOW, phase_options};
use super::results::{RowResult, cpu_s_per_1k};
use super::table::opt_f;
use crate::Error;
use crate::procfs;
use crate::result::ms;

/// Starts `row`, loads it in both phases, and stops it.
pub(super) async fn run_row(
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
