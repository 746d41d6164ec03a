//! The load generator behind `meridian-loadtest run`.
//!
//! Size: past the ~600-line rule, knowingly for now. Three parts share the
//! run's context (`Ctx`) and its tally:
//! - the schedule (open and closed loop);
//! - the request targets per wire format (`Target`: OpenAI, Anthropic,
//!   streams);
//! - the tally and progress line.
//!
//! `Target` is the part that moves out next (issue 16, item 5).
//!
//! Open loop (`Load::Rate`): request `i` is due at `t0 + i / rate`, whatever
//! the answers do, and its latency counts from that intended time, not from
//! when it actually left. A generator that waits for slow answers before
//! sending more ("coordinated omission") sends fewer requests exactly when
//! the target is slow and so hides the slowness; this one never waits on an
//! answer to schedule the next send. When it cannot keep up — its in-flight
//! cap is full, or the machine is too busy — requests leave late, are counted
//! in [`RunResult::late_sends`], and still carry their full delay.
//!
//! Closed loop (`Load::Concurrency`): a fixed number of workers, each sending
//! its next request when its previous one ends. Latency counts from the actual
//! send; that is the question a closed loop answers ("how fast at N users").
//!
//! Which requests stream is chosen from the seed by request number, so two
//! runs with the same options send the same mix.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;

use crate::result::{Summary, curve};
use crate::{Error, RunResult, seeded};

/// A send leaving later than this after its intended time counts as late.
/// Above the timer's 1 ms granularity and ordinary scheduling jitter.
pub const LATE_AFTER: Duration = Duration::from_millis(5);

/// Salts the seed for the stream-or-not choice, so a run and a fake upstream
/// given the same seed do not stream exactly the requests that fail.
const STREAM_CHOICE: u64 = 0x5354_5245_414d;

/// Highest trackable latency: an hour, far beyond any sane timeout.
const HISTOGRAM_MAX_US: u64 = 3_600_000_000;

/// How hard to push.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Load {
    /// Open loop: requests per second at fixed intended times.
    Rate(f64),
    /// Closed loop: this many requests always in flight.
    Concurrency(usize),
}

/// Everything `run` needs. [`RunOptions::default`] is a short open-loop run
/// of non-streamed chat completions against Meridian's built-in mock model.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The gateway's base URL, plain `http://` (`http://127.0.0.1:4000`).
    pub url: String,
    /// More base URLs of the same service (the other nodes of a region, or
    /// of other regions): request `i` goes to the `i mod n`-th of `url`
    /// followed by these, so load is spread evenly and reproducibly.
    pub extra_urls: Vec<String>,
    /// Appended to `url`; picks the request format: `/chat/completions`,
    /// `/completions`, `/embeddings` (never streamed) or `/messages` (Anthropic).
    pub path: String,
    /// Sent as `Authorization: Bearer` (as `x-api-key` for `/messages`).
    pub key: Option<String>,
    /// More headers sent with every request, as (name, value): what a
    /// gateway routes by when the key alone does not say (Portkey's
    /// `x-portkey-provider`).
    pub headers: Vec<(String, String)>,
    pub model: String,
    pub load: Load,
    /// Closed loop: how long each worker waits after an answer before its
    /// next request. With one worker, requests one at a time with gaps: a
    /// quiet client, so nothing is queued and latency is the path's own.
    pub gap: Duration,
    /// Open loop: most requests in flight at once; a send due beyond it waits
    /// (and counts as late). One connection each, HTTP/1.1.
    pub max_in_flight: usize,
    /// The measured window.
    pub duration: Duration,
    /// Sent before the window, not measured: opens connections, warms caches.
    pub warmup: Duration,
    /// Fraction of requests asking for a stream.
    pub stream_fraction: f64,
    pub max_tokens: u32,
    pub seed: u64,
    /// A request not answered in full by then counts as a `timeout` error.
    pub timeout: Duration,
    /// Names the run in its results.
    pub label: String,
    /// Redraws a one-line progress report on stderr every second.
    pub progress: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:4000".into(),
            extra_urls: Vec::new(),
            path: "/v1/chat/completions".into(),
            key: None,
            headers: Vec::new(),
            model: "mock-chat".into(),
            load: Load::Rate(100.0),
            gap: Duration::ZERO,
            max_in_flight: 512,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(1),
            stream_fraction: 0.0,
            max_tokens: 64,
            seed: 1,
            timeout: Duration::from_secs(60),
            label: "run".into(),
            progress: false,
        }
    }
}

/// Highest rate and concurrency accepted: beyond them a typo, not a test.
const MAX_RATE: f64 = 1_000_000.0;
const MAX_CONCURRENCY: usize = 100_000;
/// Longest run (window plus warm-up) accepted.
const MAX_RUN: Duration = Duration::from_secs(24 * 3600);
/// Longest closed-loop gap accepted: a client slower than this is not load.
pub const MAX_GAP: Duration = Duration::from_secs(60);

impl RunOptions {
    /// Rejects options out of range before anything is sent; [`run`] calls it.
    pub fn validate(&self) -> Result<(), Error> {
        let invalid = |why: String| Err(Error::InvalidOption(why));
        match self.load {
            Load::Rate(rate) if !(rate > 0.0 && rate <= MAX_RATE) => {
                return invalid(format!("rate {rate} is not within (0, {MAX_RATE}]"));
            }
            Load::Concurrency(c) if c == 0 || c > MAX_CONCURRENCY => {
                return invalid(format!(
                    "concurrency {c} is not within 1..={MAX_CONCURRENCY}"
                ));
            }
            _ => {}
        }
        if self.max_in_flight == 0 {
            return invalid("max in flight must be at least 1".into());
        }
        if self.duration.is_zero() || self.duration + self.warmup > MAX_RUN {
            return invalid("duration must be above zero and, with warm-up, at most a day".into());
        }
        if !(0.0..=1.0).contains(&self.stream_fraction) {
            return invalid(format!(
                "stream fraction {} is not between 0 and 1",
                self.stream_fraction
            ));
        }
        if self.timeout.is_zero() {
            return invalid("timeout must be above zero".into());
        }
        if !self.gap.is_zero() && matches!(self.load, Load::Rate(_)) {
            // The open loop sends on a schedule; a gap would silently not apply.
            return invalid("a gap between requests needs a closed loop (concurrency)".into());
        }
        if self.gap > MAX_GAP {
            return invalid(format!(
                "gap {:?} is above the most accepted, {MAX_GAP:?}",
                self.gap
            ));
        }
        if let Load::Rate(rate) = self.load
            && Schedule::new(rate, self.warmup, self.duration).measured() == 0
        {
            return invalid(
                "no request falls in the measured window: raise rate or duration".into(),
            );
        }
        Ok(())
    }
}

/// Runs a load test to the end and returns what it measured.
pub async fn run(opts: RunOptions) -> Result<RunResult, Error> {
    opts.validate()?;
    let target = Target::new(&opts)?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(usize::MAX)
        .build(connector);

    let t0 = Instant::now();
    let end = t0 + opts.warmup + opts.duration;
    let plan = match opts.load {
        Load::Rate(rate) => Plan::Open(Schedule::new(rate, opts.warmup, opts.duration)),
        Load::Concurrency(workers) => Plan::Closed(workers),
    };
    let measure_from = match plan {
        // From the first request due after the warm-up.
        Plan::Open(schedule) => t0 + schedule.due(schedule.warm),
        Plan::Closed(_) => t0 + opts.warmup,
    };
    let ctx = Arc::new(Ctx {
        client,
        target,
        seed: opts.seed ^ STREAM_CHOICE,
        stream_fraction: opts.stream_fraction,
        timeout: opts.timeout,
        measure_from,
        sent: AtomicU64::new(0),
    });
    let (tx, rx) = mpsc::unbounded_channel();
    match plan {
        Plan::Open(schedule) => {
            tokio::spawn(open_loop(ctx.clone(), schedule, t0, opts.max_in_flight, tx));
        }
        Plan::Closed(workers) => closed_loop(&ctx, workers, opts.gap, end, tx),
    }
    let progress = opts.progress.then_some(Progress {
        t0,
        measure_from,
        end,
    });
    let tally = collect(rx, Tally::new(measure_from), &ctx, progress).await;
    Ok(tally.into_result(&opts, ctx.target.describe()))
}

/// [`Load`] made concrete for this run.
#[derive(Clone, Copy)]
enum Plan {
    Open(Schedule),
    Closed(usize),
}

/// When each open-loop request is due.
#[derive(Clone, Copy)]
struct Schedule {
    rate: f64,
    /// Requests in the warm-up, sent first.
    warm: u64,
    /// All requests, warm-up included.
    total: u64,
}

impl Schedule {
    fn new(rate: f64, warmup: Duration, duration: Duration) -> Self {
        let count = |d: Duration| (d.as_secs_f64() * rate).round() as u64;
        Self {
            rate,
            warm: count(warmup),
            total: count(warmup + duration),
        }
    }

    fn measured(&self) -> u64 {
        self.total - self.warm
    }

    /// Offset of request `i` from the start; computed from `i`, not by adding
    /// up intervals, so rounding never drifts.
    fn due(&self, i: u64) -> Duration {
        Duration::from_nanos((i as f64 * 1e9 / self.rate) as u64)
    }
}

/// Latency as the open loop counts it: from when the request was due, so time
/// spent waiting to be sent is part of it.
fn latency_from(intended: Instant, done: Instant) -> Duration {
    done.saturating_duration_since(intended)
}

/// What every sender shares.
struct Ctx {
    client: Client<HttpConnector, Full<Bytes>>,
    target: Target,
    seed: u64,
    stream_fraction: f64,
    timeout: Duration,
    measure_from: Instant,
    /// Requests sent so far, for the progress line.
    sent: AtomicU64,
}

/// Sends every scheduled request at its due time, never waiting on answers
/// except when `max_in_flight` are out (then the sends are late, and counted).
async fn open_loop(
    ctx: Arc<Ctx>,
    schedule: Schedule,
    t0: Instant,
    max_in_flight: usize,
    tx: mpsc::UnboundedSender<Sample>,
) {
    let slots = Arc::new(Semaphore::new(max_in_flight));
    for i in 0..schedule.total {
        let intended = t0 + schedule.due(i);
        tokio::time::sleep_until(intended).await;
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let ctx = ctx.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let sample = ctx.exchange(i, Some(intended)).await;
            drop(slot);
            let _ = tx.send(sample);
        });
    }
}

/// Starts `workers` senders, each sending its next request `gap` after the
/// previous one ends, until `end`. Takes `tx` so that the collector ends
/// once the last worker has.
fn closed_loop(
    ctx: &Arc<Ctx>,
    workers: usize,
    gap: Duration,
    end: Instant,
    tx: mpsc::UnboundedSender<Sample>,
) {
    let next = Arc::new(AtomicU64::new(0));
    for _ in 0..workers {
        let (ctx, tx, next) = (ctx.clone(), tx.clone(), next.clone());
        tokio::spawn(async move {
            while Instant::now() < end {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if tx.send(ctx.exchange(i, None).await).is_err() {
                    return;
                }
                if !gap.is_zero() {
                    tokio::time::sleep_until((Instant::now() + gap).min(end)).await;
                }
            }
        });
    }
}

/// One request's fate, as the collector needs it.
struct Sample {
    intended: Instant,
    sent: Instant,
    done: Instant,
    stream: bool,
    measured: bool,
    outcome: Outcome,
}

enum Outcome {
    /// Answered with a complete body; `first_byte` is when its first byte came
    /// (when the headers did, for an empty body).
    Answered {
        status: u16,
        first_byte: Instant,
        /// What the gateway said it added (`x-meridian-overhead-duration-ms`),
        /// µs, when it said.
        reported_us: Option<u64>,
    },
    Timeout,
    /// No answer, or a broken connection or body.
    Transport,
}

impl Ctx {
    /// Sends request `i` and waits for all of it. `intended` is when it was
    /// due (open loop); `None` counts from the send itself (closed loop).
    async fn exchange(&self, i: u64, intended: Option<Instant>) -> Sample {
        let stream = self.target.streams && seeded::chance(self.seed, i, self.stream_fraction);
        let sent = Instant::now();
        let intended = intended.unwrap_or(sent);
        self.sent.fetch_add(1, Ordering::Relaxed);
        let outcome = match self.target.request(i, stream) {
            Ok(request) => tokio::time::timeout(self.timeout, self.send(request))
                .await
                .unwrap_or(Outcome::Timeout),
            // Validated when the target was built; cannot differ per request.
            Err(_) => Outcome::Transport,
        };
        Sample {
            intended,
            sent,
            done: Instant::now(),
            stream,
            measured: intended >= self.measure_from,
            outcome,
        }
    }

    async fn send(&self, request: Request<Full<Bytes>>) -> Outcome {
        let Ok(response) = self.client.request(request).await else {
            return Outcome::Transport;
        };
        let headers_at = Instant::now();
        let status = response.status().as_u16();
        let reported_us = reported_overhead_us(response.headers());
        let mut body = response.into_body();
        let mut first_byte = None;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else {
                return Outcome::Transport;
            };
            if first_byte.is_none() && frame.data_ref().is_some_and(|d| !d.is_empty()) {
                first_byte = Some(Instant::now());
            }
        }
        Outcome::Answered {
            status,
            first_byte: first_byte.unwrap_or(headers_at),
            reported_us,
        }
    }
}

/// The gateway's own account of what it added to a call, from its
/// `x-meridian-overhead-duration-ms` header (milliseconds, fractional).
fn reported_overhead_us(headers: &http::HeaderMap) -> Option<u64> {
    let ms: f64 = headers
        .get("x-meridian-overhead-duration-ms")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (ms.is_finite() && ms >= 0.0).then(|| (ms * 1000.0).round() as u64)
}

/// Where requests go and what they carry: bodies serialized once, cloned
/// per request as reference-count bumps.
struct Target {
    /// One per base URL; request `i` goes to `uris[i % len]`. Never empty.
    uris: Vec<Uri>,
    /// The API has a streamed form (all but embeddings).
    streams: bool,
    anthropic: bool,
    auth: Option<(HeaderName, HeaderValue)>,
    /// [`RunOptions::headers`], checked once.
    extra: Vec<(HeaderName, HeaderValue)>,
    plain: Bytes,
    streamed: Bytes,
}

impl Target {
    fn new(opts: &RunOptions) -> Result<Self, Error> {
        let uris = std::iter::once(&opts.url)
            .chain(&opts.extra_urls)
            .map(|base| full_uri(base, &opts.path))
            .collect::<Result<Vec<Uri>, Error>>()?;
        // The first URL's path without any query: all share `opts.path`.
        let path = uris
            .first()
            .map(|u| u.path().to_owned())
            .unwrap_or_default();
        let path = path.as_str();
        let bad = |reason: &str| Error::Url {
            url: format!("{}{}", opts.url.trim_end_matches('/'), opts.path),
            reason: reason.into(),
        };
        let anthropic = path.ends_with("/messages");
        let embeddings = path.ends_with("/embeddings");
        let model = opts.model.as_str();
        let hello = json!([{"role": "user", "content": "Hello"}]);
        let (plain, streamed) = if embeddings {
            let body = json!({"model": model, "input": "Hello"});
            (body.clone(), body)
        } else if anthropic {
            let body = json!({"model": model, "max_tokens": opts.max_tokens, "messages": hello});
            let mut streamed = body.clone();
            streamed["stream"] = true.into();
            (body, streamed)
        } else if path.ends_with("/chat/completions") {
            let body = json!({"model": model, "max_tokens": opts.max_tokens, "messages": hello});
            let mut streamed = body.clone();
            streamed["stream"] = true.into();
            streamed["stream_options"] = json!({"include_usage": true});
            (body, streamed)
        } else if path.ends_with("/completions") {
            let body = json!({"model": model, "max_tokens": opts.max_tokens, "prompt": "Hello"});
            let mut streamed = body.clone();
            streamed["stream"] = true.into();
            streamed["stream_options"] = json!({"include_usage": true});
            (body, streamed)
        } else {
            return Err(bad(
                "the path names no known API (chat/completions, completions, embeddings, messages)",
            ));
        };
        let auth = match &opts.key {
            None => None,
            Some(key) => {
                let (name, value) = if anthropic {
                    (HeaderName::from_static("x-api-key"), key.clone())
                } else {
                    (header::AUTHORIZATION, format!("Bearer {key}"))
                };
                let mut value = HeaderValue::try_from(value).map_err(|_| {
                    Error::InvalidOption("the key is not a valid header value".into())
                })?;
                value.set_sensitive(true);
                Some((name, value))
            }
        };
        let extra = opts
            .headers
            .iter()
            .map(|(name, value)| {
                let bad = || Error::InvalidOption(format!("bad header {name:?}: {value:?}"));
                Ok((
                    HeaderName::try_from(name.as_str()).map_err(|_| bad())?,
                    HeaderValue::try_from(value.as_str()).map_err(|_| bad())?,
                ))
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let target = Self {
            uris,
            streams: !embeddings,
            anthropic,
            auth,
            extra,
            plain: Bytes::from(serde_json::to_vec(&plain)?),
            streamed: Bytes::from(serde_json::to_vec(&streamed)?),
        };
        // Surfaces a request that cannot be built now, not once per send.
        target.request(0, false)?;
        Ok(target)
    }

    /// The URLs requests go to, for the result.
    fn describe(&self) -> String {
        let all: Vec<String> = self.uris.iter().map(Uri::to_string).collect();
        all.join(" ")
    }

    /// Request number `i`, to its share of the URLs.
    fn request(&self, i: u64, stream: bool) -> Result<Request<Full<Bytes>>, Error> {
        let n = self.uris.len() as u64;
        let uri = usize::try_from(i % n.max(1))
            .ok()
            .and_then(|at| self.uris.get(at))
            .ok_or_else(|| Error::InvalidOption("no target URL".into()))?;
        let mut request =
            Request::post(uri.clone()).header(header::CONTENT_TYPE, "application/json");
        if let Some((name, value)) = &self.auth {
            request = request.header(name, value.clone());
        }
        if self.anthropic {
            request = request.header("anthropic-version", "2023-06-01");
        }
        for (name, value) in &self.extra {
            request = request.header(name, value.clone());
        }
        let body = if stream { &self.streamed } else { &self.plain };
        Ok(request.body(Full::new(body.clone()))?)
    }
}

/// `base` + `path` as a URI, checked to be plain `http://` with a host.
fn full_uri(base: &str, path: &str) -> Result<Uri, Error> {
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let bad = |reason: &str| Error::Url {
        url: url.clone(),
        reason: reason.into(),
    };
    let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
    if uri.scheme_str() != Some("http") {
        return Err(bad("only plain http:// is supported"));
    }
    if uri.host().is_none() {
        return Err(bad("no host"));
    }
    Ok(uri)
}

/// What the collector accumulates from samples of the measured window.
struct Tally {
    measure_from: Instant,
    latency: Histogram<u64>,
    ttfb: Histogram<u64>,
    reported: Histogram<u64>,
    send_lag: Histogram<u64>,
    requests: u64,
    streams: u64,
    successes: u64,
    late_sends: u64,
    errors: BTreeMap<String, u64>,
    per_second: Vec<u64>,
    last_done: Option<Instant>,
    /// Every sample, warm-up included, for the progress line.
    completed: u64,
}

fn histogram() -> Histogram<u64> {
    // Three significant digits from 1 µs to an hour: constant, valid bounds.
    Histogram::new_with_bounds(1, HISTOGRAM_MAX_US, 3)
        .unwrap_or_else(|e| unreachable!("constant histogram bounds rejected: {e}"))
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl Tally {
    fn new(measure_from: Instant) -> Self {
        Self {
            measure_from,
            latency: histogram(),
            ttfb: histogram(),
            reported: histogram(),
            send_lag: histogram(),
            requests: 0,
            streams: 0,
            successes: 0,
            late_sends: 0,
            errors: BTreeMap::new(),
            per_second: Vec::new(),
            last_done: None,
            completed: 0,
        }
    }

    fn add(&mut self, s: &Sample) {
        self.completed += 1;
        if !s.measured {
            return;
        }
        self.requests += 1;
        self.streams += u64::from(s.stream);
        let lag = s.sent.saturating_duration_since(s.intended);
        self.send_lag.saturating_record(micros(lag));
        self.late_sends += u64::from(lag > LATE_AFTER);
        self.last_done = self.last_done.max(Some(s.done));
        let failure = match s.outcome {
            Outcome::Answered {
                status,
                first_byte,
                reported_us,
            } if (200..300).contains(&status) => {
                self.successes += 1;
                if let Some(us) = reported_us {
                    self.reported.saturating_record(us);
                }
                self.latency
                    .saturating_record(micros(latency_from(s.intended, s.done)));
                if s.stream {
                    self.ttfb
                        .saturating_record(micros(latency_from(s.intended, first_byte)));
                }
                let second = s
                    .done
                    .saturating_duration_since(self.measure_from)
                    .as_secs();
                let second = usize::try_from(second).unwrap_or(usize::MAX - 1);
                if self.per_second.len() <= second {
                    self.per_second.resize(second + 1, 0);
                }
                self.per_second[second] += 1;
                return;
            }
            Outcome::Answered { status, .. } => status.to_string(),
            Outcome::Timeout => "timeout".into(),
            Outcome::Transport => "transport".into(),
        };
        *self.errors.entry(failure).or_default() += 1;
    }

    fn into_result(self, opts: &RunOptions, target: String) -> RunResult {
        let elapsed = self
            .last_done
            .map(|done| done.saturating_duration_since(self.measure_from))
            .unwrap_or_default()
            .as_secs_f64();
        RunResult {
            label: opts.label.clone(),
            target,
            model: opts.model.clone(),
            load: opts.load,
            max_in_flight: opts.max_in_flight,
            duration_s: opts.duration.as_secs_f64(),
            warmup_s: opts.warmup.as_secs_f64(),
            stream_fraction: opts.stream_fraction,
            max_tokens: opts.max_tokens,
            seed: opts.seed,
            requests: self.requests,
            sent_total: self.completed,
            streams: self.streams,
            successes: self.successes,
            errors: self.errors,
            late_sends: self.late_sends,
            elapsed_s: elapsed,
            throughput_rps: if elapsed > 0.0 {
                self.successes as f64 / elapsed
            } else {
                0.0
            },
            latency: Summary::of(&self.latency),
            ttfb: Summary::of(&self.ttfb),
            reported_overhead: Summary::of(&self.reported),
            send_lag: Summary::of(&self.send_lag),
            latency_curve: curve(&self.latency),
            per_second: self.per_second,
        }
    }
}

/// The progress line's clock.
struct Progress {
    t0: Instant,
    measure_from: Instant,
    end: Instant,
}

/// Drains samples until every sender is done (all their channel ends
/// dropped), redrawing the progress line every second if asked.
async fn collect(
    mut rx: mpsc::UnboundedReceiver<Sample>,
    mut tally: Tally,
    ctx: &Ctx,
    progress: Option<Progress>,
) -> Tally {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            sample = rx.recv() => match sample {
                Some(sample) => tally.add(&sample),
                None => break,
            },
            _ = tick.tick(), if progress.is_some() => {
                if let Some(p) = &progress {
                    draw_progress(p, &tally, ctx);
                }
            }
        }
    }
    if progress.is_some() {
        // Clears the line so the summary starts clean.
        eprint!("\r\x1b[2K");
    }
    tally
}

fn draw_progress(p: &Progress, tally: &Tally, ctx: &Ctx) {
    let now = Instant::now();
    let phase = if now < p.measure_from {
        "warm-up"
    } else if now < p.end {
        "measuring"
    } else {
        "draining"
    };
    let sent = ctx.sent.load(Ordering::Relaxed);
    eprint!(
        "\r\x1b[2K{:6.1}s {phase:<9}  sent {sent}  in flight {}  ok {}  failed {}  late {}  p99 {}",
        now.saturating_duration_since(p.t0).as_secs_f64(),
        sent.saturating_sub(tally.completed),
        tally.successes,
        tally.errors.values().sum::<u64>(),
        tally.late_sends,
        crate::result::ms(tally.latency.value_at_quantile(0.99)),
    );
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn schedule_counts_and_spaces_requests() {
        let s = Schedule::new(
            200.0,
            Duration::from_millis(250),
            Duration::from_millis(1500),
        );
        assert_eq!(s.warm, 50);
        assert_eq!(s.measured(), 300);
        assert_eq!(s.due(0), Duration::ZERO);
        assert_eq!(s.due(200), Duration::from_secs(1));
        assert_eq!(s.due(1), Duration::from_millis(5));
    }

    #[test]
    fn late_sends_carry_their_wait() {
        // Due at t, sent 300 ms late, answered 10 ms after leaving: the open
        // loop reports 310 ms, not the 10 ms a naive client would see.
        let due = Instant::now();
        let sent = due + Duration::from_millis(300);
        let done = sent + Duration::from_millis(10);
        assert_eq!(latency_from(due, done), Duration::from_millis(310));

        let mut tally = Tally::new(due);
        tally.add(&Sample {
            intended: due,
            sent,
            done,
            stream: false,
            measured: true,
            outcome: Outcome::Answered {
                status: 200,
                first_byte: done,
                reported_us: Some(120),
            },
        });
        assert_eq!(tally.late_sends, 1);
        let latency = tally.latency.max();
        assert!(tally.latency.equivalent(latency, 310_000), "{latency}");
        // The gateway's own account is kept beside what the client measured.
        assert_eq!((tally.reported.len(), tally.reported.max()), (1, 120));
    }

    #[test]
    fn the_reported_overhead_header_is_read_in_microseconds() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(reported_overhead_us(&headers), None);
        headers.insert(
            "x-meridian-overhead-duration-ms",
            http::HeaderValue::from_static("0.287"),
        );
        assert_eq!(reported_overhead_us(&headers), Some(287));
        headers.insert(
            "x-meridian-overhead-duration-ms",
            http::HeaderValue::from_static("-1"),
        );
        assert_eq!(reported_overhead_us(&headers), None);
    }

    #[test]
    fn options_are_validated() {
        assert!(RunOptions::default().validate().is_ok());
        let with = |f: fn(&mut RunOptions)| {
            let mut o = RunOptions::default();
            f(&mut o);
            o.validate()
        };
        assert!(with(|o| o.load = Load::Rate(0.0)).is_err());
        assert!(with(|o| o.load = Load::Rate(f64::NAN)).is_err());
        assert!(with(|o| o.load = Load::Concurrency(0)).is_err());
        assert!(with(|o| o.stream_fraction = 1.5).is_err());
        assert!(with(|o| o.duration = Duration::ZERO).is_err());
        assert!(with(|o| o.max_in_flight = 0).is_err());
        assert!(
            with(|o| {
                o.load = Load::Rate(0.1);
                o.duration = Duration::from_secs(1);
            })
            .is_err()
        );
        // A gap belongs to the closed loop, and is bounded.
        assert!(with(|o| o.gap = Duration::from_millis(20)).is_err());
        assert!(
            with(|o| {
                o.load = Load::Concurrency(1);
                o.gap = Duration::from_millis(20);
            })
            .is_ok()
        );
        assert!(
            with(|o| {
                o.load = Load::Concurrency(1);
                o.gap = MAX_GAP + Duration::from_millis(1);
            })
            .is_err()
        );
    }

    #[test]
    fn targets_pick_the_request_format() {
        let target = |path: &str| {
            Target::new(&RunOptions {
                path: path.into(),
                key: Some("sk-1".into()),
                ..RunOptions::default()
            })
        };
        let chat = target("/v1/chat/completions").unwrap();
        let streamed: serde_json::Value = serde_json::from_slice(&chat.streamed).unwrap();
        assert_eq!(streamed["stream_options"]["include_usage"], true);
        let request = chat.request(0, false).unwrap();
        assert_eq!(request.headers()[header::AUTHORIZATION], "Bearer sk-1");

        let messages = target("/v1/messages").unwrap();
        let request = messages.request(0, true).unwrap();
        assert_eq!(request.headers()["x-api-key"], "sk-1");
        assert!(!target("/v1/embeddings").unwrap().streams);
        assert!(target("/v1/nothing").is_err());

        let routed = Target::new(&RunOptions {
            headers: vec![("x-portkey-provider".into(), "openai".into())],
            ..RunOptions::default()
        })
        .unwrap();
        let request = routed.request(3, false).unwrap();
        assert_eq!(request.headers()["x-portkey-provider"], "openai");
        let bad = |name: &str, value: &str| {
            Target::new(&RunOptions {
                headers: vec![(name.into(), value.into())],
                ..RunOptions::default()
            })
            .is_err()
        };
        assert!(bad("no spaces", "v"));
        assert!(bad("x-ok", "line\nbreak"));
        assert!(
            Target::new(&RunOptions {
                url: "https://example.com".into(),
                ..RunOptions::default()
            })
            .is_err()
        );
    }
}
