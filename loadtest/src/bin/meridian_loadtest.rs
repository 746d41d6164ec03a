//! `meridian-loadtest`: the fake upstream as a fast server (`upstream`) and
//! the open-loop load generator with its JSON and HTML reports (`run`).
//!
//! ```sh
//! meridian-loadtest upstream --port 9000 --latency-ms 20 --output-tokens 100
//! meridian-loadtest run --url http://127.0.0.1:9000 --rate 1000 --duration 5 \
//!     --stream-fraction 0.3 --json run.json --html run.html
//! ```

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
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
    /// Base URL of the gateway, plain http (e.g. http://127.0.0.1:4000).
    #[arg(long)]
    url: String,
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

fn seconds(name: &str, value: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value)
        .with_context(|| format!("--{name} {value} is not a number of seconds"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Upstream(args) => upstream(args).await,
        Command::Run(args) => run(args).await,
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
    let opts = RunOptions {
        url: args.url,
        path: args.path,
        key: args.key,
        model: args.model,
        load,
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
