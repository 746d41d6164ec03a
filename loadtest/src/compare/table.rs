//! The text tables `compare` prints, and the routing-cost grid both
//! reports draw.

use std::fmt;

use super::RowKind;
use super::results::{Comparison, Overhead, RouterCost, RowResult};
use crate::RunResult;

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

/// A signed microsecond difference as milliseconds with a sign.
fn signed_ms(us: i64) -> String {
    format!("{:+.2}", us as f64 / 1000.0)
}

/// An optional figure with `decimals` places, or a dash.
pub(super) fn opt_f(v: Option<f64>, decimals: usize) -> String {
    v.map_or("–".into(), |v| format!("{v:.decimals$}"))
}

/// One latency line: the run's percentiles (ms) and its overhead over
/// `direct`'s at each, aligned under [`LATENCY_HEADER`].
fn latency_line(name: &str, run: &RunResult, overhead: Option<Overhead>) -> String {
    let l = &run.latency;
    let o = overhead.map_or_else(
        || vec!["–".to_owned(); 4],
        |o| {
            [o.p50_us, o.p90_us, o.p99_us, o.p999_us]
                .into_iter()
                .map(signed_ms)
                .collect()
        },
    );
    format!(
        "{:<21} {:>13} {:>8.2} {:>8.2} {:>8.2} {:>8.2}  {:>8} {:>8} {:>8} {:>8}",
        name,
        format!("{}/{}", run.successes, run.requests),
        l.p50_us as f64 / 1000.0,
        l.p90_us as f64 / 1000.0,
        l.p99_us as f64 / 1000.0,
        l.p999_us as f64 / 1000.0,
        o[0],
        o[1],
        o[2],
        o[3],
    )
}

const LATENCY_HEADER: [&str; 10] = [
    "row", "ok/sent", "p50", "p90", "p99", "p99.9", "+p50", "+p90", "+p99", "+p99.9",
];

fn latency_header() -> String {
    let h = LATENCY_HEADER;
    format!(
        "{:<21} {:>13} {:>8} {:>8} {:>8} {:>8}  {:>8} {:>8} {:>8} {:>8}",
        h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]
    )
}

/// How a row appears in a table.
enum Line<'a> {
    Ran(&'a RowResult),
    /// Not run, or failed: the reason's first line (a failure's log tail
    /// follows the tables).
    NotRun(String),
}

impl Comparison {
    /// Every row asked for, in run order: measured, or why not.
    fn lines(&self) -> Vec<(RowKind, Line<'_>)> {
        let first = |reason: &str| reason.lines().next().unwrap_or_default().to_owned();
        let mut lines: Vec<(RowKind, Line<'_>)> = self
            .rows
            .iter()
            .map(|r| (r.row, Line::Ran(r)))
            .chain(self.skipped.iter().map(|n| {
                (
                    n.row,
                    Line::NotRun(format!("not run: {}", first(&n.reason))),
                )
            }))
            .chain(
                self.failed
                    .iter()
                    .map(|n| (n.row, Line::NotRun(format!("FAILED: {}", first(&n.reason))))),
            )
            .collect();
        lines.sort_by_key(|(row, _)| *row);
        lines
    }
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
        let lines = self.lines();
        let not_run = |f: &mut fmt::Formatter<'_>, row: RowKind, why: &str| {
            writeln!(f, "{:<21} {why}", row.name())
        };
        if let Some(gap) = s.sequential_gap_ms {
            writeln!(f)?;
            writeln!(
                f,
                "Latency of one client, {gap} ms between an answer and the next request, {} s \
                 after {} s warm-up (ms); overhead = row − direct; CPU s per 1,000 requests",
                s.duration_s, s.warmup_s
            )?;
            writeln!(f, "{} {:>8}", latency_header(), "CPU")?;
            for (row, line) in &lines {
                match line {
                    Line::Ran(r) => {
                        if let Some(run) = &r.sequential {
                            let text = latency_line(row.name(), run, r.sequential_overhead);
                            writeln!(f, "{text} {:>8}", opt_f(r.cpu_s_per_1k_sequential, 3))?;
                        }
                    }
                    Line::NotRun(why) => not_run(f, *row, why)?,
                }
            }
        }
        writeln!(f)?;
        writeln!(
            f,
            "Latency at {} req/s, open loop, {} s after {} s warm-up (ms); overhead = row − direct",
            s.rate, s.duration_s, s.warmup_s
        )?;
        writeln!(f, "{}", latency_header())?;
        for (row, line) in &lines {
            match line {
                Line::Ran(r) => {
                    writeln!(f, "{}", latency_line(row.name(), &r.fixed_rate, r.overhead))?
                }
                Line::NotRun(why) => not_run(f, *row, why)?,
            }
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
            "{:<24} {:>7} {:>7} {:>6} {:>8} {:>7} {:>8} {:>8} {:>9} {:>9} {:>9}",
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
        for (row, line) in &lines {
            let r = match line {
                Line::Ran(r) => r,
                Line::NotRun(why) => {
                    writeln!(f, "{:<24} {why}", row.name())?;
                    continue;
                }
            };
            let failed = r.fixed_rate.error_count()
                + r.max_throughput.error_count()
                + r.sequential.as_ref().map_or(0, RunResult::error_count);
            writeln!(
                f,
                "{:<24} {:>7.0} {:>7} {:>6} {:>8} {:>7} {:>8} {:>8} {:>9} {:>9} {:>9}",
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
            let runs = [
                Some(&r.fixed_rate),
                Some(&r.max_throughput),
                r.sequential.as_ref(),
            ];
            for run in runs.into_iter().flatten() {
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
                "Choosing a deployment (the router_cost example: one thread, in memory), ns per choice"
            )?;
            for line in routing_table(&self.routing) {
                writeln!(f, "{line}")?;
            }
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

    use crate::compare::{NotRun, Settings};
    use crate::procfs::Machine;
    use crate::{Load, Summary};

    fn run(label: &str, p50_us: u64, rps: f64) -> RunResult {
        RunResult {
            label: label.into(),
            target: String::new(),
            model: "bench".into(),
            load: Load::Rate(50.0),
            max_in_flight: 1,
            duration_s: 1.0,
            warmup_s: 0.0,
            stream_fraction: 0.0,
            max_tokens: 16,
            seed: 1,
            requests: 50,
            sent_total: 50,
            streams: 0,
            successes: 50,
            errors: Default::default(),
            late_sends: 0,
            elapsed_s: 1.0,
            throughput_rps: rps,
            latency: Summary {
                p50_us,
                p99_us: p50_us * 2,
                ..Summary::default()
            },
            ttfb: Summary::default(),
            reported_overhead: Summary::default(),
            send_lag: Summary::default(),
            latency_curve: Vec::new(),
            per_second: Vec::new(),
        }
    }

    fn row(kind: RowKind, p50_us: u64, rps: f64) -> RowResult {
        RowResult {
            row: kind,
            description: kind.description().into(),
            processes: 1,
            measured: "gateway".into(),
            key: String::new(),
            fixed_rate: run(&format!("{} @ 50/s", kind.name()), p50_us, 0.0),
            max_throughput: run(&format!("{} max", kind.name()), p50_us, rps),
            sequential: Some(run(&format!("{} sequential", kind.name()), p50_us / 2, 0.0)),
            sequential_overhead: None,
            cpu_s_per_1k_sequential: Some(0.5),
            overhead: None,
            ttfb_overhead: None,
            throughput_ratio: None,
            cpu_s_per_1k: Some(0.25),
            cpu_s_per_1k_max: Some(0.125),
            upstream_cpu_s_per_1k: None,
            generator_cpu_s_per_1k: None,
            idle_cpu_percent: Some(0.5),
            rss_idle_kib: 1024,
            rss_after_kib: 2048,
        }
    }

    #[test]
    fn tables_list_every_row_asked_for_in_run_order() {
        let mut c = Comparison {
            date: "2026-12-07 12:00 UTC".into(),
            command: "compare".into(),
            machine: Machine::default(),
            clock_ticks_per_s: 100,
            builds: Vec::new(),
            settings: Settings {
                rate: 50.0,
                duration_s: 1.0,
                warmup_s: 0.0,
                concurrency: 4,
                throughput_duration_s: 1.0,
                throughput_warmup_s: 1.0,
                stream_fraction: 0.0,
                max_tokens: 16,
                upstream_latency_ms: 0,
                sequential_gap_ms: Some(20),
            },
            // Portkey ran before nginx in this list; the tables still follow
            // run order.
            rows: vec![
                row(RowKind::Direct, 1_000, 8_000.0),
                row(RowKind::Portkey, 4_000, 1_000.0),
                row(RowKind::Nginx, 1_500, 6_000.0),
            ],
            skipped: vec![NotRun {
                row: RowKind::Litellm,
                reason: "not asked for (--litellm)".into(),
            }],
            failed: vec![NotRun {
                row: RowKind::Meridian1,
                reason: "meridian local-1 exited (1); last lines of x.log:\nboom".into(),
            }],
            notes: Vec::new(),
            routing: Vec::new(),
        };
        c.relate_to_direct();
        let text = c.to_string();
        let lines: Vec<&str> = text.lines().collect();
        let first = |prefix: &str| {
            lines
                .iter()
                .position(|l| l.starts_with(prefix))
                .unwrap_or_else(|| panic!("no line starting {prefix:?} in:\n{text}"))
        };
        // Three tables, each with every row asked for, in run order.
        let sequential = first("Latency of one client, 20 ms");
        let open = first("Latency at 50 req/s");
        let max = first("Max throughput");
        assert!(sequential < open && open < max, "{text}");
        for (from, to) in [(sequential, open), (open, max), (max, lines.len())] {
            let names: Vec<&str> = lines[from..to]
                .iter()
                .filter_map(|l| l.split_whitespace().next())
                .filter(|w| RowKind::ALL.iter().any(|r| r.name() == *w))
                .collect();
            assert_eq!(
                names,
                ["direct", "nginx", "meridian-1", "litellm", "portkey"],
                "{text}"
            );
        }
        // Overheads over direct: nginx +0.50 ms at p50 in the open loop and
        // +0.25 ms sequentially; portkey +3.00 and +1.50.
        let nginx: Vec<&&str> = lines.iter().filter(|l| l.starts_with("nginx ")).collect();
        assert!(nginx[0].contains("+0.25"), "{text}");
        assert!(nginx[0].ends_with("0.500"), "{text}");
        assert!(nginx[1].contains("+0.50"), "{text}");
        let portkey = lines.iter().find(|l| l.starts_with("portkey (1)")).unwrap();
        assert!(portkey.contains(" 0.125 "), "{text}");
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("portkey ") && l.contains("+3.00"))
        );
        // Rows that did not run say why, on one line; a failure's log follows.
        assert!(text.contains(&format!(
            "{:<21} not run: not asked for (--litellm)",
            "litellm"
        )));
        assert!(text.contains(&format!(
            "{:<21} FAILED: meridian local-1 exited (1)",
            "meridian-1"
        )));
        assert!(text.contains(
            "FAILED meridian-1: meridian local-1 exited (1); last lines of x.log:\nboom"
        ));
        assert_eq!(c.rows[2].throughput_ratio, Some(0.75));

        // Without a sequential gap there is no sequential table.
        c.settings.sequential_gap_ms = None;
        assert!(!c.to_string().contains("Latency of one client"));

        // Streams' first byte: an overhead only where both direct and the
        // row streamed.
        assert_eq!(c.rows[1].ttfb_overhead, None);
        let streamed = |p50_us| Summary {
            count: 10,
            p50_us,
            p99_us: p50_us * 2,
            ..Summary::default()
        };
        c.rows[0].fixed_rate.ttfb = streamed(400);
        c.rows[1].fixed_rate.ttfb = streamed(700);
        c.relate_to_direct();
        let nginx = c.rows[1].ttfb_overhead.expect("both streamed");
        assert_eq!((nginx.p50_us, nginx.p99_us), (300, 600));
        assert_eq!(c.rows[2].ttfb_overhead, None, "this row did not stream");
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
}
