//! What a run measured, as data: [`RunResult`] is written as JSON by `run`,
//! read back to compare runs, and drawn by [`crate::report`].
//!
//! Every latency is in microseconds and, in open-loop runs, counted from the
//! request's intended send time (see [`crate::run`]).

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::{Error, Load};

/// One run's settings and measurements.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// Names the run in reports and comparisons.
    pub label: String,
    /// The full URL requests were sent to.
    pub target: String,
    pub model: String,
    pub load: Load,
    /// Open loop: most requests in flight at once (sends wait beyond that).
    pub max_in_flight: usize,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub stream_fraction: f64,
    pub max_tokens: u32,
    pub seed: u64,
    /// Requests of the measured window (warm-up excluded), all answered,
    /// failed or timed out by the time the run ends.
    pub requests: u64,
    /// Every request sent and completed, warm-up included: what a process
    /// served while the whole run lasted (CPU per request in `compare`).
    #[serde(default)]
    pub sent_total: u64,
    /// Of `requests`, how many asked for a stream.
    pub streams: u64,
    /// Answered 2xx with a complete body.
    pub successes: u64,
    /// Failed requests by HTTP status (`"500"`), or `"timeout"`, or
    /// `"transport"` (no answer, a broken connection or body).
    pub errors: BTreeMap<String, u64>,
    /// Open loop: sends that left more than [`crate::run::LATE_AFTER`] after
    /// their intended time: the generator, or its in-flight cap, fell behind.
    /// Their latency still counts from the intended time.
    pub late_sends: u64,
    /// From the first measured request's intended time to the last answer.
    pub elapsed_s: f64,
    /// `successes / elapsed_s`.
    pub throughput_rps: f64,
    /// Successful requests, to the end of the body.
    pub latency: Summary,
    /// Successful streams, to the first byte of the body.
    pub ttfb: Summary,
    /// What a Meridian node said it added to each successful answer
    /// (`x-meridian-overhead-duration-ms`); empty for other targets.
    #[serde(default)]
    pub reported_overhead: Summary,
    /// How late sends left after their intended time.
    pub send_lag: Summary,
    /// Latency by percentile, for plots: from p0 up to the deepest percentile
    /// the sample supports, the last point being the maximum.
    pub latency_curve: Vec<CurvePoint>,
    /// Successful answers completed in each second of the run, from the first
    /// measured request's intended time; the last bucket holds the drain.
    pub per_second: Vec<u64>,
}

/// A distribution's usual figures, microseconds. All zero when empty.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub count: u64,
    pub min_us: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

/// One point of a percentile curve.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    pub percentile: f64,
    pub us: u64,
}

impl Summary {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            min_us: h.min(),
            mean_us: h.mean(),
            p50_us: h.value_at_quantile(0.5),
            p90_us: h.value_at_quantile(0.9),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

/// Steps per "nine" of the curve (90 → 99 → 99.9 ...).
const CURVE_STEPS_PER_NINE: u32 = 20;
/// The curve stops at 99.9999: deeper needs more than a million samples anyway.
const CURVE_MAX_NINES: f64 = 6.0;

/// Latency by percentile, evenly spaced in "nines" (`-log10(1 - p)`), the
/// scale the report plots on, down to one sample in the tail: a percentile
/// finer than 1/count says nothing the maximum does not.
pub fn curve(h: &Histogram<u64>) -> Vec<CurvePoint> {
    if h.is_empty() {
        return Vec::new();
    }
    let deepest = (h.len() as f64).log10().min(CURVE_MAX_NINES);
    let steps = (deepest * f64::from(CURVE_STEPS_PER_NINE)).floor() as u32;
    let mut points: Vec<CurvePoint> = (0..=steps)
        .map(|step| {
            let nines = f64::from(step) / f64::from(CURVE_STEPS_PER_NINE);
            let quantile = 1.0 - 10f64.powf(-nines);
            CurvePoint {
                percentile: quantile * 100.0,
                us: h.value_at_quantile(quantile),
            }
        })
        .collect();
    points.push(CurvePoint {
        percentile: 100.0 * (1.0 - 10f64.powf(-deepest)),
        us: h.max(),
    });
    points
}

impl RunResult {
    /// Total failed requests.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn write_json(&self, path: &Path) -> Result<(), Error> {
        let mut text = serde_json::to_string_pretty(self)?;
        text.push('\n');
        std::fs::write(path, text)?;
        Ok(())
    }
}

/// Microseconds as milliseconds with two decimals, for people.
pub(crate) fn ms(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1000.0)
}

/// The human summary `meridian-loadtest run` prints.
impl fmt::Display for RunResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let load = match self.load {
            Load::Rate(rate) => format!("open loop at {rate}/s"),
            Load::Concurrency(c) => format!("closed loop at concurrency {c}"),
        };
        writeln!(
            f,
            "{}: {load} for {}s (+{}s warm-up) -> {}",
            self.label, self.duration_s, self.warmup_s, self.target
        )?;
        writeln!(
            f,
            "  requests   {} sent ({} streamed), {} ok, {} failed",
            self.requests,
            self.streams,
            self.successes,
            self.error_count()
        )?;
        if !self.errors.is_empty() {
            let list: Vec<String> = self
                .errors
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            writeln!(f, "  errors     {}", list.join(", "))?;
        }
        if let Load::Rate(_) = self.load {
            writeln!(
                f,
                "  sends      {} late (> {} ms behind schedule); lag p99 {}, max {}",
                self.late_sends,
                crate::run::LATE_AFTER.as_millis(),
                ms(self.send_lag.p99_us),
                ms(self.send_lag.max_us)
            )?;
        }
        writeln!(
            f,
            "  throughput {:.1} req/s over {:.2}s",
            self.throughput_rps, self.elapsed_s
        )?;
        write_summary(f, "latency", &self.latency)?;
        if self.ttfb.count > 0 {
            write_summary(f, "ttfb", &self.ttfb)?;
        }
        if self.reported_overhead.count > 0 {
            write_summary(f, "reported", &self.reported_overhead)?;
        }
        Ok(())
    }
}

fn write_summary(f: &mut fmt::Formatter<'_>, name: &str, s: &Summary) -> fmt::Result {
    writeln!(
        f,
        "  {name:<10} p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  mean {}",
        ms(s.p50_us),
        ms(s.p90_us),
        ms(s.p99_us),
        ms(s.p999_us),
        ms(s.max_us),
        ms(s.mean_us.round() as u64)
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn curve_reaches_the_tail_and_ends_at_the_max() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        for v in 1..=10_000u64 {
            h.record(v).unwrap();
        }
        let points = curve(&h);
        assert_eq!(points.first().unwrap().percentile, 0.0);
        let last = points.last().unwrap();
        assert_eq!(last.us, h.max());
        assert!(
            (last.percentile - 99.99).abs() < 1e-6,
            "{}",
            last.percentile
        );
        assert!(points.windows(2).all(|w| w[0].us <= w[1].us));
        assert!(
            points
                .windows(2)
                .all(|w| w[0].percentile <= w[1].percentile)
        );
        assert!(curve(&Histogram::<u64>::new(3).unwrap()).is_empty());
    }

    #[test]
    fn summary_of_empty_is_zero() {
        assert_eq!(
            Summary::of(&Histogram::<u64>::new(3).unwrap()),
            Summary::default()
        );
    }
}
