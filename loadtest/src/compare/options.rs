//! What a comparison is asked to do: its options, their checks before
//! anything starts, which rows cannot run here, and each phase's generator
//! options.

use std::path::PathBuf;
use std::time::Duration;

use super::gateway;
use super::{RowKind, nginx, portkey};
use crate::run::MAX_GAP;
use crate::{Error, Load, RunOptions};

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
    /// The nginx the `nginx` row starts; `None` looks for `nginx` on PATH,
    /// then in `/usr/sbin`.
    pub nginx_bin: Option<PathBuf>,
    /// Where Portkey is installed, or is installed with npm when it is not;
    /// `None` skips the Portkey row.
    pub portkey_dir: Option<PathBuf>,
    /// The open-loop phase: requests per second, measured window, warm-up.
    pub rate: f64,
    pub duration: Duration,
    pub warmup: Duration,
    /// The closed-loop phase: requests in flight, measured window (after
    /// [`THROUGHPUT_WARMUP`]).
    pub concurrency: usize,
    pub throughput_duration: Duration,
    /// A sequential phase too, first: one client, waiting this long after
    /// each answer before its next request, for `duration` after `warmup`.
    /// The latency of a quiet path, nothing queued anywhere.
    pub sequential_gap: Option<Duration>,
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
            nginx_bin: None,
            portkey_dir: None,
            rate: 500.0,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(2),
            concurrency: 32,
            throughput_duration: Duration::from_secs(5),
            sequential_gap: None,
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

/// The load phases a row gets, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// One client, a gap after each answer (with `--sequential-gap-ms`).
    Sequential,
    /// Open loop at `rate`.
    Rate,
    /// Closed loop at `concurrency`: the most the stack sustains.
    Max,
}

/// Checks the options before anything starts.
pub(super) fn validate(opts: &CompareOptions) -> Result<(), Error> {
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
    if opts.sequential_gap.is_some_and(|gap| gap > MAX_GAP) {
        return Err(Error::InvalidOption(format!(
            "the sequential gap is above the most accepted, {MAX_GAP:?}"
        )));
    }
    // The generator's own checks, once, before anything starts.
    let mut phases = vec![Phase::Rate, Phase::Max];
    if opts.sequential_gap.is_some() {
        phases.push(Phase::Sequential);
    }
    for phase in phases {
        let urls = vec!["http://127.0.0.1:1".into()];
        phase_options(opts, "check", urls, None, Vec::new(), phase).validate()?;
    }
    Ok(())
}

/// Why `row` will not run, if it will not: not asked for, or a program it
/// needs is missing (Portkey's install, when npm is there, comes later).
pub(super) fn skip_reason(row: RowKind, opts: &CompareOptions) -> Option<String> {
    let path = std::env::var_os("PATH");
    match row {
        RowKind::Litellm => {}
        RowKind::Nginx => return nginx::locate(opts.nginx_bin.as_deref(), path.as_deref()).err(),
        RowKind::Portkey => return portkey::missing(opts.portkey_dir.as_deref(), path.as_deref()),
        _ => return None,
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

/// One phase's generator options; `headers` go with every request.
pub(super) fn phase_options(
    opts: &CompareOptions,
    label: &str,
    urls: Vec<String>,
    key: Option<String>,
    headers: Vec<(String, String)>,
    phase: Phase,
) -> RunOptions {
    let mut urls = urls.into_iter();
    let url = urls.next().unwrap_or_default();
    let (load, gap, duration, warmup) = match phase {
        Phase::Sequential => (
            Load::Concurrency(1),
            opts.sequential_gap.unwrap_or_default(),
            opts.duration,
            opts.warmup,
        ),
        Phase::Rate => (
            Load::Rate(opts.rate),
            Duration::ZERO,
            opts.duration,
            opts.warmup,
        ),
        Phase::Max => (
            Load::Concurrency(opts.concurrency),
            Duration::ZERO,
            opts.throughput_duration,
            THROUGHPUT_WARMUP,
        ),
    };
    RunOptions {
        url,
        extra_urls: urls.collect(),
        key,
        headers,
        model: gateway::MODEL.into(),
        load,
        gap,
        duration,
        warmup,
        stream_fraction: opts.stream_fraction,
        max_tokens: opts.max_tokens,
        label: label.into(),
        progress: false,
        ..RunOptions::default()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

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
            ..direct_only.clone()
        };
        assert!(validate(&bad_rate).is_err());
    }

    #[test]
    fn low_load_options_are_accepted_and_bounded() {
        let direct = || CompareOptions {
            rows: vec![RowKind::Direct],
            ..CompareOptions::default()
        };
        let low = CompareOptions {
            rate: 50.0,
            sequential_gap: Some(Duration::from_millis(20)),
            ..direct()
        };
        assert!(validate(&low).is_ok());
        let long_gap = CompareOptions {
            sequential_gap: Some(MAX_GAP + Duration::from_millis(1)),
            ..direct()
        };
        assert!(validate(&long_gap).is_err());
        // 0.01/s for 10 s: no request in the window.
        let too_slow = CompareOptions {
            rate: 0.01,
            ..direct()
        };
        assert!(validate(&too_slow).is_err());

        let urls = vec!["http://a:1".to_owned(), "http://b:2".to_owned()];
        let seq = phase_options(&low, "s", urls.clone(), None, Vec::new(), Phase::Sequential);
        assert_eq!(seq.load, Load::Concurrency(1));
        assert_eq!(seq.gap, Duration::from_millis(20));
        assert_eq!((seq.duration, seq.warmup), (low.duration, low.warmup));
        assert_eq!(seq.extra_urls, ["http://b:2"]);
        let rate = phase_options(&low, "r", urls.clone(), None, Vec::new(), Phase::Rate);
        assert_eq!((rate.load, rate.gap), (Load::Rate(50.0), Duration::ZERO));
        let headers = vec![("x-a".to_owned(), "1".to_owned())];
        let max = phase_options(
            &low,
            "m",
            urls,
            Some("k".into()),
            headers.clone(),
            Phase::Max,
        );
        assert_eq!(max.load, Load::Concurrency(low.concurrency));
        assert_eq!(max.warmup, THROUGHPUT_WARMUP);
        assert_eq!((max.key.as_deref(), max.headers), (Some("k"), headers));
    }

    #[test]
    fn reference_rows_say_why_they_cannot_run() {
        let opts = CompareOptions {
            nginx_bin: Some("/nonexistent/nginx".into()),
            ..CompareOptions::default()
        };
        let reason = skip_reason(RowKind::Nginx, &opts).unwrap();
        assert!(reason.contains("/nonexistent/nginx"), "{reason}");
        // No directory to find or install Portkey in: not asked for.
        let reason = skip_reason(RowKind::Portkey, &opts).unwrap();
        assert!(reason.contains("--portkey-dir"), "{reason}");
        assert!(skip_reason(RowKind::Meridian1, &opts).is_none());
    }
}
