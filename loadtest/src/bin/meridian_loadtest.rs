//! `meridian-loadtest`: the fake upstream as a fast server (`upstream`), the
//! open-loop load generator with its JSON and HTML reports (`run`), and the
//! side-by-side comparison of the upstream alone, nginx as the floor,
//! Meridian, and LiteLLM and Portkey as peers (`compare`).
//!
//! ```sh
//! meridian-loadtest upstream --port 9000 --latency-ms 20 --output-tokens 100
//! meridian-loadtest run --url http://127.0.0.1:9000 --rate 1000 --duration 5 \
//!     --stream-fraction 0.3 --json run.json --html run.html
//! meridian-loadtest compare --meridian-bin target/debug/meridian --rate 500 \
//!     --duration 10 --json compare.json --html compare.html [--litellm]
//! meridian-loadtest compare --rows direct,nginx,meridian-1,portkey --rate 50 \
//!     --sequential-gap-ms 20 --meridian-bin target/debug/meridian
//! ```

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use meridian_loadtest::compare::{self, CompareOptions, RowKind};
use meridian_loadtest::fake_upstream::{self, UpstreamOptions};
use meridian_loadtest::{Load, RunOptions, report};

#[derive(Parser)]
#[command(about = "Load tests for Meridian: a fake upstream and an open-loop load generator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the fake OpenAI/Azure/Anthropic upstream, shaped for load tests.
    Upstream(UpstreamArgs),
    /// Send load to a gateway (or upstream) and report latency and throughput.
    Run(RunArgs),
    /// The same load against the fake upstream alone, Meridian (one node, a
    /// region of three, two regions) and optionally LiteLLM, side by side:
    /// latency and its overhead, max throughput, CPU and memory.
    Compare(CompareArgs),
}

#[derive(Args)]
struct UpstreamArgs {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 9000)]
    port: u16,
    /// Added before every answer.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Output tokens per chat/messages answer (usage, and stream chunks);
    /// the fixtures' own answer when unset.
    #[arg(long)]
    output_tokens: Option<u32>,
    /// Fraction of requests answered 500 in the provider's error shape.
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    /// Picks which requests fail.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Args)]
struct RunArgs {
    /// Base URL of the gateway, plain http (e.g. http://127.0.0.1:4000);
    /// repeat it to spread requests evenly over several nodes.
    #[arg(long, required = true)]
    url: Vec<String>,
    /// API key; also read from MERIDIAN_LOADTEST_KEY.
    #[arg(long, env = "MERIDIAN_LOADTEST_KEY", hide_env_values = true)]
    key: Option<String>,
    #[arg(long, default_value = "mock-chat")]
    model: String,
    /// Open loop: requests per second at fixed intended times [default: 100].
    #[arg(long, conflicts_with = "concurrency")]
    rate: Option<f64>,
    /// Closed loop: this many requests always in flight.
    #[arg(long)]
    concurrency: Option<usize>,
    /// Open loop: most requests in flight; sends beyond wait and count as late.
    #[arg(long, default_value_t = 512)]
    max_in_flight: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds sent first and not measured.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Fraction of requests that ask for a stream.
    #[arg(long, default_value_t = 0.0)]
    stream_fraction: f64,
    #[arg(long, default_value_t = 64)]
    max_tokens: u32,
    /// API path; picks the request format (chat/completions, completions,
    /// embeddings, messages).
    #[arg(long, default_value = "/v1/chat/completions")]
    path: String,
    /// Picks which requests stream.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Seconds before an unanswered request counts as a timeout.
    #[arg(long, default_value_t = 60.0)]
    timeout: f64,
    /// Write the result as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write an HTML report here.
    #[arg(long)]
    html: Option<PathBuf>,
    /// Names the run in reports.
    #[arg(long, default_value = "run")]
    label: String,
}

#[derive(Args)]
struct CompareArgs {
    /// Rows to run, comma-separated, in any order (they run in this one):
    /// direct, nginx, meridian-1, meridian-1-nometrics, meridian-region, meridian-2regions,
    /// litellm, portkey.
    #[arg(
        long,
        default_value = "direct,nginx,meridian-1,meridian-1-nometrics,meridian-region,meridian-2regions,litellm,portkey"
    )]
    rows: String,
    /// The `meridian` binary the Meridian rows start.
    #[arg(long, env = "MERIDIAN_BIN")]
    meridian_bin: Option<PathBuf>,
    /// The binary run as `upstream` for the fake upstream [default: this one].
    #[arg(long)]
    upstream_bin: Option<PathBuf>,
    /// Run the LiteLLM row (install it first with ops/litellm.sh).
    #[arg(long)]
    litellm: bool,
    /// The virtualenv ops/litellm.sh made
    /// [default: $HOME/.cache/meridian/litellm-venv].
    #[arg(long, env = "LITELLM_VENV")]
    litellm_venv: Option<PathBuf>,
    /// LiteLLM's --num_workers (its default is 1).
    #[arg(long, default_value_t = 1)]
    litellm_workers: usize,
    /// The nginx the nginx row starts [default: nginx on PATH, then
    /// /usr/sbin/nginx].
    #[arg(long, env = "NGINX_BIN")]
    nginx_bin: Option<PathBuf>,
    /// Where the Portkey row finds the gateway, installed there with npm
    /// when it is not [default: $HOME/.cache/meridian/portkey].
    #[arg(long, env = "PORTKEY_DIR")]
    portkey_dir: Option<PathBuf>,
    /// Open-loop phase: requests per second.
    #[arg(long, default_value_t = 500.0)]
    rate: f64,
    /// Open-loop phase: measured seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Open-loop phase: seconds sent first and not measured.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Closed-loop phase (max throughput): requests always in flight.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Closed-loop phase: measured seconds (after 1 s of warm-up).
    #[arg(long, default_value_t = 5.0)]
    throughput_duration: f64,
    /// Adds a sequential phase, first: one client, waiting this many ms
    /// after each answer before its next request, for --duration after
    /// --warmup (low load, nothing queued).
    #[arg(long)]
    sequential_gap_ms: Option<u64>,
    /// Fraction of requests that ask for a stream.
    #[arg(long, default_value_t = 0.0)]
    stream_fraction: f64,
    #[arg(long, default_value_t = 64)]
    max_tokens: u32,
    /// Added by the fake upstream before every answer.
    #[arg(long, default_value_t = 0)]
    upstream_latency_ms: u64,
    /// Seconds a row may take to be ready for load.
    #[arg(long, default_value_t = 120.0)]
    startup_timeout: f64,
    /// Write every run and the comparison rows as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the HTML report here.
    #[arg(long)]
    html: Option<PathBuf>,
}

fn seconds(name: &str, value: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value)
        .with_context(|| format!("--{name} {value} is not a number of seconds"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Upstream(args) => upstream(args).await,
        Command::Run(args) => run(args).await,
        Command::Compare(args) => compare(args).await,
    }
}

async fn upstream(args: UpstreamArgs) -> anyhow::Result<()> {
    let options = UpstreamOptions {
        latency: Duration::from_millis(args.latency_ms),
        output_tokens: args.output_tokens,
        error_rate: args.error_rate,
        seed: args.seed,
    };
    options.validate()?;
    let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
        .await
        .with_context(|| format!("binding {}:{}", args.host, args.port))?;
    println!(
        "fake upstream listening on http://{}",
        listener.local_addr()?
    );
    fake_upstream::serve_forever(listener, options).await?;
    Ok(())
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let load = match (args.rate, args.concurrency) {
        (_, Some(c)) => Load::Concurrency(c),
        (rate, None) => Load::Rate(rate.unwrap_or(100.0)),
    };
    let mut urls = args.url.into_iter();
    let url = urls.next().context("--url is required")?;
    let opts = RunOptions {
        url,
        extra_urls: urls.collect(),
        path: args.path,
        key: args.key,
        headers: Vec::new(),
        model: args.model,
        load,
        gap: Duration::ZERO,
        max_in_flight: args.max_in_flight,
        duration: seconds("duration", args.duration)?,
        warmup: seconds("warmup", args.warmup)?,
        stream_fraction: args.stream_fraction,
        max_tokens: args.max_tokens,
        seed: args.seed,
        timeout: seconds("timeout", args.timeout)?,
        label: args.label,
        progress: std::io::stderr().is_terminal(),
    };
    let result = meridian_loadtest::run(opts).await?;
    print!("{result}");
    if let Some(path) = &args.json {
        result
            .write_json(path)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("  json       {}", path.display());
    }
    if let Some(path) = &args.html {
        let title = format!("meridian-loadtest: {}", result.label);
        std::fs::write(path, report::html(&title, std::slice::from_ref(&result)))
            .with_context(|| format!("writing {}", path.display()))?;
        println!("  html       {}", path.display());
    }
    Ok(())
}

async fn compare(args: CompareArgs) -> anyhow::Result<()> {
    let rows = RowKind::parse_list(&args.rows)?;
    let upstream_bin = match args.upstream_bin {
        Some(bin) => bin,
        None => std::env::current_exe().context("finding this binary for the fake upstream")?,
    };
    let cache = || {
        let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
        PathBuf::from(home).join(".cache/meridian")
    };
    let litellm_venv = args.litellm.then(|| {
        args.litellm_venv
            .unwrap_or_else(|| cache().join("litellm-venv"))
    });
    let portkey_dir = args.portkey_dir.unwrap_or_else(|| cache().join("portkey"));
    let opts = CompareOptions {
        rows,
        meridian_bin: args.meridian_bin,
        upstream_bin,
        litellm_venv,
        litellm_workers: args.litellm_workers,
        nginx_bin: args.nginx_bin,
        portkey_dir: Some(portkey_dir),
        rate: args.rate,
        duration: seconds("duration", args.duration)?,
        warmup: seconds("warmup", args.warmup)?,
        concurrency: args.concurrency,
        throughput_duration: seconds("throughput-duration", args.throughput_duration)?,
        sequential_gap: args.sequential_gap_ms.map(Duration::from_millis),
        stream_fraction: args.stream_fraction,
        max_tokens: args.max_tokens,
        upstream_latency: Duration::from_millis(args.upstream_latency_ms),
        startup_timeout: seconds("startup-timeout", args.startup_timeout)?,
        command_line: command_line(),
        progress: true,
    };
    // Interrupted, the comparison is dropped, and with it every process it
    // started (stopped) and its work directory (removed).
    let comparison = tokio::select! {
        result = compare::compare(opts) => result?,
        signal = interrupted() => anyhow::bail!("interrupted by {signal}; every started process was stopped"),
    };
    print!("{comparison}");
    if let Some(path) = &args.json {
        comparison
            .write_json(path)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("json: {}", path.display());
    }
    if let Some(path) = &args.html {
        let page = report::comparison_html("meridian-loadtest compare", &comparison);
        std::fs::write(path, page).with_context(|| format!("writing {}", path.display()))?;
        println!("html: {}", path.display());
    }
    if !comparison.failed.is_empty() {
        anyhow::bail!("{} row(s) failed", comparison.failed.len());
    }
    Ok(())
}

/// This process's arguments, quoted where a shell would need it.
fn command_line() -> String {
    let quote = |a: String| {
        if !a.is_empty()
            && a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./=,:@+".contains(c))
        {
            a
        } else {
            format!("'{}'", a.replace('\'', r"'\''"))
        }
    };
    std::env::args().map(quote).collect::<Vec<_>>().join(" ")
}

/// Ctrl-C or SIGTERM, by name.
async fn interrupted() -> &'static str {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return "SIGINT";
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}
