//! The text tables `compare` prints, and the routing-cost grid both
//! reports draw.

use std::fmt;

use super::results::{Comparison, RouterCost};

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
