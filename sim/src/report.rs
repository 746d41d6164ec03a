//! A sweep's table (terminal and Markdown) and its plot (SVG): convergence
//! time and overshoot against the length of the split between regions.

use std::fmt::Write as _;
use std::path::Path;

use crate::world::Outcome;

/// "never" or the milliseconds from the heal.
fn ms(t: Option<u64>) -> String {
    t.map_or_else(|| "never".to_owned(), |d| d.to_string())
}

/// "first/settled" milliseconds to agreement after the heal.
fn converged(o: &Outcome) -> String {
    format!("{}/{}", ms(o.converged_after_ms), ms(o.settled_after_ms))
}

pub fn table_header() -> String {
    format!(
        "{:>6} {:>8} {:>10} {:>13} {:>10} {:>10} {:>10} {:>11} {:>7}  faults",
        "seed",
        "split_ms",
        "violations",
        "agree_ms",
        "avail_over",
        "bound",
        "unenforced",
        "strict_over",
        "served"
    )
}

pub fn table_row(o: &Outcome) -> String {
    format!(
        "{:>6} {:>8} {:>10} {:>13} {:>9.1}% {:>9.1}% {:>9.1}% {:>10.1}% {:>7}  {}",
        o.seed,
        o.split_ms,
        o.violations.len(),
        converged(o),
        o.available_overshoot * 100.0,
        o.available_bound * 100.0,
        o.available_unenforced * 100.0,
        o.strict_overshoot * 100.0,
        o.served,
        o.faults.join(", ")
    )
}

/// Writes `report.md` and `report.svg` into `dir`.
pub fn write(dir: &Path, outcomes: &[Outcome]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("report.md"), markdown(outcomes))?;
    std::fs::write(dir.join("report.svg"), svg(outcomes))?;
    Ok(())
}

pub fn markdown(outcomes: &[Outcome]) -> String {
    let mut out = String::from("# Simulation sweep\n\n");
    let violations: usize = outcomes.iter().map(|o| o.violations.len()).sum();
    let worst_available = outcomes
        .iter()
        .map(|o| o.available_overshoot)
        .fold(0.0, f64::max);
    let worst_strict = outcomes
        .iter()
        .map(|o| o.strict_overshoot)
        .fold(0.0, f64::max);
    let max_ms = |f: fn(&Outcome) -> Option<u64>| outcomes.iter().filter_map(f).max().unwrap_or(0);
    let least = |f: fn(&Outcome) -> f64| outcomes.iter().map(f).fold(f64::INFINITY, f64::min);
    let _ = writeln!(
        out,
        "{} seeds, {} violations. Worst overshoot of an `available` budget: {:.1} % of the limit \
         (the bound allowed at least {:.0} %; with no enforcement its calls would have overshot by at least {:.0} %); \
         of a `strict` budget: {:.1} %. Agreement after the heal: first reached within {} ms, \
         settled for good within {} ms.\n",
        outcomes.len(),
        violations,
        worst_available * 100.0,
        least(|o| o.available_bound) * 100.0,
        least(|o| o.available_unenforced) * 100.0,
        worst_strict * 100.0,
        max_ms(|o| o.converged_after_ms),
        max_ms(|o| o.settled_after_ms),
    );
    out.push_str("![convergence and overshoot against split length](report.svg)\n\n");
    out.push_str("Agreement: when every node first agreed after the heal / when the agreement that lasted to the end began (ms). Overshoots, the bound and the no-enforcement figure are per budget period, in % of the budget.\n\n");
    out.push_str("| seed | split (ms) | violations | agreement (ms) | available overshoot | bound | no enforcement | strict overshoot | calls served | faults |\n");
    out.push_str("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
    for o in outcomes {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {:.1} % | {:.0} % | {:.0} % | {:.1} % | {} | {} |",
            o.seed,
            o.split_ms,
            o.violations.len(),
            converged(o),
            o.available_overshoot * 100.0,
            o.available_bound * 100.0,
            o.available_unenforced * 100.0,
            o.strict_overshoot * 100.0,
            o.served,
            o.faults.join(", ")
        );
    }
    for o in outcomes {
        for v in &o.violations {
            let _ = writeln!(
                out,
                "\n- seed {}: **{}** at {} ms: {}",
                o.seed, v.invariant, v.at_ms, v.message
            );
        }
    }
    out
}

/// Two scatter plots side by side, split length on x: convergence time
/// (ms) and overshoot (% of the limit, `available` and `strict`).
pub fn svg(outcomes: &[Outcome]) -> String {
    let (w, h, pad) = (420.0, 300.0, 50.0);
    let max_x = outcomes
        .iter()
        .map(|o| o.split_ms as f64)
        .fold(1000.0, f64::max);
    let max_conv = outcomes
        .iter()
        .filter_map(|o| o.converged_after_ms.map(|d| d as f64))
        .fold(1000.0, f64::max);
    let max_over = outcomes
        .iter()
        .map(|o| o.available_overshoot.max(o.strict_overshoot) * 100.0)
        .fold(10.0, f64::max);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"11\">\n",
        2.0 * w
    );
    let panel = |s: &mut String,
                 x0: f64,
                 title: &str,
                 y_label: &str,
                 max_y: f64,
                 points: &[(f64, f64, &str)]| {
        let _ = writeln!(s, "<g transform=\"translate({x0},0)\">");
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"18\" text-anchor=\"middle\" font-size=\"13\">{title}</text>",
            w / 2.0
        );
        let _ = writeln!(
            s,
            "<line x1=\"{pad}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>",
            h - pad,
            w - 10.0,
            h - pad
        );
        let _ = writeln!(
            s,
            "<line x1=\"{pad}\" y1=\"30\" x2=\"{pad}\" y2=\"{}\" stroke=\"black\"/>",
            h - pad
        );
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">split between regions (ms, max {max_x:.0})</text>",
            w / 2.0,
            h - 15.0
        );
        let _ = writeln!(
            s,
            "<text x=\"12\" y=\"{}\" transform=\"rotate(-90 12 {})\" text-anchor=\"middle\">{y_label} (max {max_y:.0})</text>",
            h / 2.0,
            h / 2.0
        );
        for (x, y, color) in points {
            let px = pad + x / max_x * (w - pad - 20.0);
            let py = (h - pad) - y / max_y * (h - pad - 40.0);
            let _ = writeln!(
                s,
                "<circle cx=\"{px:.1}\" cy=\"{py:.1}\" r=\"3.5\" fill=\"{color}\"/>"
            );
        }
        s.push_str("</g>\n");
    };
    let conv: Vec<(f64, f64, &str)> = outcomes
        .iter()
        .filter_map(|o| {
            o.converged_after_ms
                .map(|d| (o.split_ms as f64, d as f64, "#1f77b4"))
        })
        .collect();
    let over: Vec<(f64, f64, &str)> = outcomes
        .iter()
        .flat_map(|o| {
            let x = o.split_ms as f64;
            [
                (x, o.available_overshoot * 100.0, "#ff7f0e"),
                (x, o.strict_overshoot * 100.0, "#2ca02c"),
            ]
        })
        .collect();
    panel(
        &mut s,
        0.0,
        "convergence after the heal",
        "ms",
        max_conv,
        &conv,
    );
    panel(
        &mut s,
        w,
        "budget overshoot (orange: available, green: strict)",
        "% of limit",
        max_over,
        &over,
    );
    s.push_str("</svg>\n");
    s
}
