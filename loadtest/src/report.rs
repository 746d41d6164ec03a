//! Reports for people: one self-contained HTML page (inline SVG and CSS, no
//! script, nothing fetched) drawing any number of runs on the same plots —
//! a latency-by-percentile curve, throughput over time — and a table.
//! `run` writes it for one run; `compare` adds its side-by-side table
//! ([`comparison_html`]).

use std::fmt::Write as _;

use crate::compare::Comparison;
use crate::result::ms;
use crate::{Load, RunResult};

/// Series colours, in turn (a colour-blind-safe palette).
const COLOURS: [&str; 8] = [
    "#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#000000", "#f0e442",
];

/// Percentile axis ticks, as (nines, label): 90 is one nine, 99 two, ...
const PERCENTILE_TICKS: [(f64, &str); 8] = [
    (0.0, "0"),
    (std::f64::consts::LOG10_2, "50"), // -log10(0.5)
    (1.0, "90"),
    (2.0, "99"),
    (3.0, "99.9"),
    (4.0, "99.99"),
    (5.0, "99.999"),
    (6.0, "99.9999"),
];

/// The whole report page for `runs`, each a labelled series.
pub fn html(title: &str, runs: &[RunResult]) -> String {
    let body = format!(
        "{OPEN_LOOP_NOTE}\n<h2>Latency by percentile</h2>\n{latency}\n\
         <h2>Throughput (successful answers per second)</h2>\n{throughput}\n\
         <h2>Runs</h2>\n{table}\n",
        latency = latency_plot(runs),
        throughput = throughput_plot(runs),
        table = table(runs),
    );
    page(title, &body)
}

/// The report of `meridian-loadtest compare`: the machine and the command,
/// the comparison table, how to read it, then the usual plots and runs
/// table (open-loop runs on the latency plot, closed-loop ones on the
/// throughput plot).
pub fn comparison_html(title: &str, c: &Comparison) -> String {
    let fixed: Vec<RunResult> = c.rows.iter().map(|r| r.fixed_rate.clone()).collect();
    let max: Vec<RunResult> = c.rows.iter().map(|r| r.max_throughput.clone()).collect();
    let mut facts = String::from("<ul class=\"note\">\n");
    let _ = writeln!(facts, "<li>Date: {}</li>", escape(&c.date));
    let _ = writeln!(
        facts,
        "<li>Machine: {} cores ({}), {} MiB of memory; everything below ran on it at once</li>",
        c.machine.cores,
        escape(&c.machine.cpu_model),
        c.machine.memory_mib
    );
    for build in &c.builds {
        let _ = writeln!(facts, "<li>{}</li>", escape(build));
    }
    let _ = writeln!(
        facts,
        "<li>Command: <code>{}</code></li>",
        escape(&c.command)
    );
    facts.push_str("</ul>\n");
    let mut notes = String::from("<ul class=\"note\">\n");
    for note in &c.notes {
        let _ = writeln!(notes, "<li>{}</li>", escape(note));
    }
    notes.push_str("</ul>\n");
    let mut missing = String::new();
    for (what, list) in [("skipped", &c.skipped), ("failed", &c.failed)] {
        for n in list {
            let _ = writeln!(
                missing,
                "<p class=\"note\"><b>{} {what}:</b> {}</p>",
                escape(n.row.name()),
                escape(&n.reason)
            );
        }
    }
    let all = c.runs();
    let body = format!(
        "{facts}<h2>Side by side</h2>\n{comparison}\n{sequential}{missing}{notes}{routing}\
         <h2>Latency by percentile, open loop at {rate}/s</h2>\n{OPEN_LOOP_NOTE}\n{latency}\n\
         <h2>Closed loop at {concurrency} in flight: successful answers per second</h2>\n{throughput}\n\
         <h2>Runs</h2>\n{table}\n",
        comparison = comparison_table(c),
        sequential = sequential_table(c),
        routing = routing_table(&c.routing),
        rate = c.settings.rate,
        concurrency = c.settings.concurrency,
        latency = latency_plot(&fixed),
        throughput = throughput_plot(&max),
        table = table(&all),
    );
    page(title, &body)
}

/// What choosing a deployment costs, strategies down, group sizes across.
fn routing_table(costs: &[crate::compare::RouterCost]) -> String {
    if costs.is_empty() {
        return String::new();
    }
    let (sizes, rows) = crate::compare::routing_grid(costs);
    let mut s = String::from(
        "<h2>Choosing a deployment</h2>\n<p class=\"note\">Nanoseconds per routing decision \
         in <code>meridian</code>'s code (the <code>router_cost</code> example: one thread, \
         in memory, live state updated as calls would). It depends on the group's size, not \
         on the request rate.</p>\n<table>\n<tr><th>strategy</th>",
    );
    for n in &sizes {
        let _ = write!(s, "<th>{n} deployments</th>");
    }
    s.push_str("</tr>\n");
    for (strategy, cells) in rows {
        let _ = write!(s, "<tr><td>{}</td>", escape(strategy));
        for cell in cells {
            match cell {
                Some(ns) => {
                    let _ = write!(s, "<td>{ns:.0} ns</td>");
                }
                None => s.push_str("<td>–</td>"),
            }
        }
        s.push_str("</tr>\n");
    }
    s.push_str("</table>\n");
    s
}

const OPEN_LOOP_NOTE: &str = r#"<p class="note">Open-loop latencies count from each request's intended send time, so a
generator or gateway falling behind shows as latency rather than as requests never sent.
Percentiles are on a log scale of nines.</p>"#;

/// A self-contained page around `body` (HTML).
fn page(title: &str, body: &str) -> String {
    let title = escape(title);
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; max-width: 64rem; }}
table {{ border-collapse: collapse; font-size: 0.9rem; margin-bottom: 1rem; }}
th, td {{ border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
svg {{ font-size: 12px; }}
.note {{ color: #555; font-size: 0.9rem; }}
</style>
</head>
<body>
<h1>{title}</h1>
{body}</body>
</html>
"#
    )
}

fn signed_ms(us: i64) -> String {
    format!("{:+.2} ms", us as f64 / 1000.0)
}

fn comparison_table(c: &Comparison) -> String {
    let mut s = String::from(
        "<table>\n<tr><th>row</th><th>ok / sent</th><th>p50</th><th>p90</th><th>p99</th>\
         <th>p99.9</th><th>overhead p50</th><th>overhead p90</th><th>overhead p99</th>\
         <th>overhead p99.9</th><th>stream first byte overhead p50</th>\
         <th>stream first byte overhead p99</th><th>max req/s</th><th>× direct</th>\
         <th>CPU s / 1k req at rate</th><th>CPU s / 1k req at max</th><th>idle CPU</th>\
         <th>RSS idle</th><th>RSS after</th><th>processes</th>\
         <th>upstream CPU s / 1k at rate</th><th>generator CPU s / 1k at rate</th></tr>\n",
    );
    let opt = |v: Option<f64>, decimals: usize| {
        v.map_or_else(|| "–".to_owned(), |v| format!("{v:.decimals$}"))
    };
    for r in &c.rows {
        let l = &r.fixed_rate.latency;
        let overhead: Vec<String> = match r.overhead {
            Some(o) => [o.p50_us, o.p90_us, o.p99_us, o.p999_us]
                .into_iter()
                .map(signed_ms)
                .collect(),
            None => vec!["–".to_owned(); 4],
        };
        let ttfb: Vec<String> = match r.ttfb_overhead {
            Some(o) => vec![signed_ms(o.p50_us), signed_ms(o.p99_us)],
            None => vec!["–".to_owned(); 2],
        };
        let _ = writeln!(
            s,
            "<tr><td title=\"{}\">{}</td><td>{} / {}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.0}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1} MiB</td><td>{:.1} MiB</td><td>{} ({})</td>\
             <td>{}</td><td>{}</td></tr>",
            escape(&r.description),
            escape(r.row.name()),
            r.fixed_rate.successes,
            r.fixed_rate.requests,
            ms(l.p50_us),
            ms(l.p90_us),
            ms(l.p99_us),
            ms(l.p999_us),
            overhead[0],
            overhead[1],
            overhead[2],
            overhead[3],
            ttfb[0],
            ttfb[1],
            r.max_throughput.throughput_rps,
            opt(r.throughput_ratio, 3),
            opt(r.cpu_s_per_1k, 3),
            opt(r.cpu_s_per_1k_max, 3),
            r.idle_cpu_percent
                .map_or_else(|| "–".to_owned(), |p| format!("{p:.1} %")),
            r.rss_idle_kib as f64 / 1024.0,
            r.rss_after_kib as f64 / 1024.0,
            r.processes,
            escape(&r.measured),
            opt(r.upstream_cpu_s_per_1k, 3),
            opt(r.generator_cpu_s_per_1k, 3),
        );
    }
    s.push_str("</table>");
    s
}

/// The sequential phase's latencies and overheads, when it ran.
fn sequential_table(c: &Comparison) -> String {
    let Some(gap) = c.settings.sequential_gap_ms else {
        return String::new();
    };
    let mut s = format!(
        "<h3>One client, {gap} ms between an answer and the next request</h3>\n<table>\n\
         <tr><th>row</th><th>ok / sent</th><th>p50</th><th>p99</th><th>overhead p50</th>\
         <th>overhead p99</th><th>CPU s / 1k req</th></tr>\n"
    );
    for r in &c.rows {
        let Some(run) = &r.sequential else { continue };
        let (o50, o99) = r.sequential_overhead.map_or_else(
            || ("–".to_owned(), "–".to_owned()),
            |o| (signed_ms(o.p50_us), signed_ms(o.p99_us)),
        );
        let cpu = r
            .cpu_s_per_1k_sequential
            .map_or_else(|| "–".to_owned(), |v| format!("{v:.3}"));
        let _ = writeln!(
            s,
            "<tr><td>{}</td><td>{} / {}</td><td>{}</td><td>{}</td><td>{o50}</td><td>{o99}</td>\
             <td>{cpu}</td></tr>",
            escape(r.row.name()),
            run.successes,
            run.requests,
            ms(run.latency.p50_us),
            ms(run.latency.p99_us),
        );
    }
    s.push_str("</table>\n");
    s
}

fn nines(percentile: f64) -> f64 {
    -(1.0 - percentile / 100.0).max(1e-9).log10()
}

/// Latency by percentile on a log axis: rows from a fraction of a
/// millisecond to minutes (an overloaded proxy) all stay readable.
fn latency_plot(runs: &[RunResult]) -> String {
    let all_ms = runs
        .iter()
        .flat_map(|r| r.latency_curve.iter().map(|p| p.us as f64 / 1000.0))
        .filter(|ms| *ms > 0.0);
    let (lo, hi) = all_ms.fold((f64::INFINITY, 0.0_f64), |(lo, hi), ms| {
        (lo.min(ms), hi.max(ms))
    });
    let lo = if lo.is_finite() {
        lo.log10().floor()
    } else {
        -1.0
    };
    let hi = hi.max(f64::MIN_POSITIVE).log10().ceil().max(lo + 1.0);
    let series: Vec<Series<'_>> = runs
        .iter()
        .map(|run| Series {
            label: &run.label,
            points: run
                .latency_curve
                .iter()
                .map(|p| {
                    let ms = (p.us as f64 / 1000.0).max(10f64.powf(lo));
                    (nines(p.percentile), ms.log10() - lo)
                })
                .collect(),
        })
        .collect();
    let deepest = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .fold(2.0, f64::max)
        .ceil();
    let x_ticks = PERCENTILE_TICKS
        .iter()
        .filter(|(x, _)| *x <= deepest)
        .map(|(x, label)| (*x, (*label).to_owned()))
        .collect();
    let y_ticks = (lo as i32..=hi as i32)
        .map(|e| (f64::from(e) - lo, decade_label(e)))
        .collect();
    let y_max = hi - lo;
    Plot {
        x_label: "percentile",
        y_label: "latency (ms, log scale)",
        x_max: deepest,
        y_max,
        x_ticks,
        y_ticks,
        series,
        steps: false,
    }
    .svg()
}

/// `10^e` milliseconds as a tick label: 0.01, 0.1, 1, 10, 1000, 10000.
fn decade_label(e: i32) -> String {
    if e < 0 {
        format!("{:.*}", e.unsigned_abs() as usize, 10f64.powi(e))
    } else {
        format!("{:.0}", 10f64.powi(e))
    }
}

fn throughput_plot(runs: &[RunResult]) -> String {
    let series: Vec<Series<'_>> = runs
        .iter()
        .map(|run| Series {
            label: &run.label,
            points: run
                .per_second
                .iter()
                .enumerate()
                .map(|(second, &count)| (second as f64, count as f64))
                .collect(),
        })
        .collect();
    let seconds = runs.iter().map(|r| r.per_second.len()).max().unwrap_or(0);
    let (x_max, x_ticks) = linear_ticks(seconds as f64);
    let (y_max, y_ticks) = linear_ticks(max_y(&series));
    Plot {
        x_label: "seconds",
        y_label: "requests / s",
        x_max,
        y_max,
        x_ticks,
        y_ticks,
        series,
        steps: true,
    }
    .svg()
}

fn max_y(series: &[Series<'_>]) -> f64 {
    series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.0, f64::max)
}

/// A round axis maximum at or above `max`, with about five ticks (steps of
/// 1, 2 or 5 times a power of ten) labelled to the step's precision.
fn linear_ticks(max: f64) -> (f64, Vec<(f64, String)>) {
    let max = if max.is_finite() && max > 0.0 {
        max
    } else {
        1.0
    };
    let rough = max / 5.0;
    let magnitude = 10f64.powf(rough.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= rough)
        .unwrap_or(10.0 * magnitude);
    let top = (max / step).ceil() * step;
    let decimals = (-step.log10().floor()).max(0.0) as usize;
    let count = (top / step).round() as usize;
    let ticks = (0..=count)
        .map(|i| {
            let v = i as f64 * step;
            (v, format!("{v:.decimals$}"))
        })
        .collect();
    (top, ticks)
}

struct Series<'a> {
    label: &'a str,
    points: Vec<(f64, f64)>,
}

/// A line chart from zero to (`x_max`, `y_max`).
struct Plot<'a> {
    x_label: &'a str,
    y_label: &'a str,
    x_max: f64,
    y_max: f64,
    x_ticks: Vec<(f64, String)>,
    y_ticks: Vec<(f64, String)>,
    series: Vec<Series<'a>>,
    /// Draw each point as a one-unit-wide step (per-second buckets).
    steps: bool,
}

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 360.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 20.0;
const BOTTOM: f64 = 50.0;

impl Plot<'_> {
    fn x(&self, v: f64) -> f64 {
        LEFT + v / self.x_max * (WIDTH - LEFT - RIGHT)
    }

    fn y(&self, v: f64) -> f64 {
        HEIGHT - BOTTOM - v / self.y_max * (HEIGHT - TOP - BOTTOM)
    }

    fn svg(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img">"#
        );
        let (left, right) = (self.x(0.0), self.x(self.x_max));
        let (bottom, top) = (self.y(0.0), self.y(self.y_max));
        for (v, label) in &self.y_ticks {
            let y = self.y(*v);
            let _ = writeln!(
                s,
                r##"<line x1="{left:.1}" y1="{y:.1}" x2="{right:.1}" y2="{y:.1}" stroke="#e5e5e5"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                left - 6.0,
                y + 4.0,
                escape(label)
            );
        }
        for (v, label) in &self.x_ticks {
            let x = self.x(*v);
            let _ = writeln!(
                s,
                r##"<line x1="{x:.1}" y1="{top:.1}" x2="{x:.1}" y2="{bottom:.1}" stroke="#e5e5e5"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                bottom + 16.0,
                escape(label)
            );
        }
        let _ = writeln!(
            s,
            r##"<polyline points="{left:.1},{top:.1} {left:.1},{bottom:.1} {right:.1},{bottom:.1}" fill="none" stroke="#444"/>"##
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            (left + right) / 2.0,
            HEIGHT - 10.0,
            escape(self.x_label)
        );
        let _ = writeln!(
            s,
            r#"<text transform="translate(16 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
            (top + bottom) / 2.0,
            escape(self.y_label)
        );
        for (i, series) in self.series.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            let mut points = String::new();
            for &(x, y) in &series.points {
                let _ = write!(points, "{:.1},{:.1} ", self.x(x), self.y(y));
                if self.steps {
                    let _ = write!(points, "{:.1},{:.1} ", self.x(x + 1.0), self.y(y));
                }
            }
            let label = escape(series.label);
            let _ = writeln!(
                s,
                r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"><title>{label}</title></polyline>"#,
                points.trim_end()
            );
            // Legend, top left inside the plot.
            let y = top + 14.0 + 18.0 * i as f64;
            let _ = writeln!(
                s,
                r#"<rect x="{:.1}" y="{:.1}" width="12" height="12" fill="{colour}"/><text x="{:.1}" y="{:.1}">{label}</text>"#,
                left + 10.0,
                y - 10.0,
                left + 28.0,
                y
            );
        }
        s.push_str("</svg>");
        s
    }
}

fn table(runs: &[RunResult]) -> String {
    let mut s = String::from(
        "<table>\n<tr><th>run</th><th>load</th><th>requests</th><th>ok</th><th>failed</th>\
         <th>req/s</th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th>\
         <th>mean</th><th>ttfb p50</th><th>ttfb p99</th><th>reported overhead p50</th>\
         <th>reported overhead p99</th><th>late sends</th></tr>\n",
    );
    for run in runs {
        let load = match run.load {
            Load::Rate(rate) => format!("{rate}/s"),
            Load::Concurrency(c) => format!("{c} concurrent"),
        };
        let failed = if run.errors.is_empty() {
            "0".to_owned()
        } else {
            let list: Vec<String> = run
                .errors
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            list.join(", ")
        };
        let when = |summary: &crate::result::Summary, us: u64| {
            if summary.count == 0 {
                "–".to_owned()
            } else {
                ms(us)
            }
        };
        let _ = writeln!(
            s,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&run.label),
            escape(&load),
            run.requests,
            run.successes,
            escape(&failed),
            run.throughput_rps,
            ms(run.latency.p50_us),
            ms(run.latency.p90_us),
            ms(run.latency.p99_us),
            ms(run.latency.p999_us),
            ms(run.latency.max_us),
            ms(run.latency.mean_us.round() as u64),
            when(&run.ttfb, run.ttfb.p50_us),
            when(&run.ttfb, run.ttfb.p99_us),
            when(&run.reported_overhead, run.reported_overhead.p50_us),
            when(&run.reported_overhead, run.reported_overhead.p99_us),
            run.late_sends,
        );
    }
    s.push_str("</table>");
    s
}

/// Text safe inside HTML and SVG elements and quoted attributes.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
#[path = "report_tests.rs"]
mod tests;
