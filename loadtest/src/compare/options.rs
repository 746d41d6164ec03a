//! What a comparison is asked to do: its options, their checks before
//! anything starts, which rows cannot run here, and each phase's generator
//! options.

use std::path::PathBuf;
use std::time::Duration;

use super::RowKind;
use super::gateway;
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
pub(super) fn skip_reason(row: RowKind, opts: &CompareOptions) -> Option<String> {
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
pub(super) fn phase_options(
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
            ..direct_only
        };
        assert!(validate(&bad_rate).is_err());
    }
}
