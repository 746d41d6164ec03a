//! The `meridian` command: `serve` runs a node, `config check` validates a file.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

mod cert_cli;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use meridian_node::config::{self, Config, ProcessEnv};
use meridian_node::node::Seams;
use meridian_node::runtime::NodeBuilder;
use meridian_node::serve::{KeySource, resolve_master_key};

/// A request allocates and frees many small buffers across threads; mimalloc
/// does that for less CPU than glibc's malloc (README, Performance).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "meridian",
    version,
    about = "Multi-region LLM gateway, OpenAI- and Anthropic-compatible"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a gateway node. Without --config: a single-node region `local` with
    /// built-in mock models.
    Serve {
        /// A LiteLLM-style config.yaml (with an optional `meridian:` section).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Where the node keeps its state [default: ./meridian-data].
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Address to listen on [default: 127.0.0.1].
        #[arg(long)]
        host: Option<IpAddr>,
        /// Port to listen on [default: 4000].
        #[arg(long)]
        port: Option<u16>,
    },
    /// Work with configuration files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// The cluster's CA and its nodes' certificates (mutual TLS between nodes).
    Cert {
        #[command(subcommand)]
        command: cert_cli::CertCommand,
    },
    /// Inspect and change a region's membership through any of its nodes
    /// (the master key comes from MERIDIAN_MASTER_KEY or LITELLM_MASTER_KEY).
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Members, leader, term, applied index and each member's lag.
    Status {
        /// Base URL of any node of the region, e.g. http://127.0.0.1:4000.
        #[arg(long)]
        url: String,
    },
    /// Add a node (it starts with `peers` naming the region, then is added here).
    AddNode {
        #[arg(long)]
        url: String,
        #[arg(long)]
        raft_id: u64,
        /// The new node's inter-node address (its `cluster_listen`).
        #[arg(long)]
        cluster_addr: String,
        /// The new node's HTTP API URL.
        #[arg(long)]
        api_url: String,
    },
    /// Remove a node from the region.
    RemoveNode {
        #[arg(long)]
        url: String,
        #[arg(long)]
        raft_id: u64,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a config file and list every key Meridian ignores.
    Check { file: PathBuf },
}

/// The default log filter (see `serve`).
const DEFAULT_LOG: &str = "warn,meridian=info,meridian_node=info,meridian_consensus=info,\
     meridian_replication=info,meridian_link=info,meridian_storage=info";

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve {
            config,
            data_dir,
            host,
            port,
        } => run_serve(config, data_dir, host, port),
        Command::Config {
            command: ConfigCommand::Check { file },
        } => check(&file),
        Command::Cluster { command } => cluster(command),
        Command::Cert { command } => cert_cli::run(command),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn cluster(command: ClusterCommand) -> anyhow::Result<ExitCode> {
    let key = std::env::var("MERIDIAN_MASTER_KEY")
        .or_else(|_| std::env::var("LITELLM_MASTER_KEY"))
        .context("set MERIDIAN_MASTER_KEY to the region's master key")?;
    let (method, url, body) = match &command {
        ClusterCommand::Status { url } => (
            "GET",
            format!("{}/cluster/status", url.trim_end_matches('/')),
            None,
        ),
        ClusterCommand::AddNode {
            url,
            raft_id,
            cluster_addr,
            api_url,
        } => (
            "POST",
            format!("{}/cluster/add_node", url.trim_end_matches('/')),
            Some(
                serde_json::json!({ "raft_id": raft_id, "cluster_addr": cluster_addr, "api_url": api_url }),
            ),
        ),
        ClusterCommand::RemoveNode { url, raft_id } => (
            "POST",
            format!("{}/cluster/remove_node", url.trim_end_matches('/')),
            Some(serde_json::json!({ "raft_id": raft_id })),
        ),
    };
    meridian_node::upstream::install_crypto_provider();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let client = reqwest::Client::new();
        let mut request = match method {
            "GET" => client.get(&url),
            _ => client.post(&url),
        }
        .bearer_auth(&key)
        .timeout(std::time::Duration::from_secs(120));
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("calling {url}"))?;
        let status = response.status();
        let text = response.text().await?;
        let pretty = serde_json::from_str::<serde_json::Value>(&text)
            .and_then(|v| serde_json::to_string_pretty(&v))
            .unwrap_or(text);
        println!("{pretty}");
        Ok(if status.is_success() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    })
}

fn check(file: &std::path::Path) -> anyhow::Result<ExitCode> {
    let config = match config::load_file(file, &ProcessEnv, true) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("invalid: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let groups: std::collections::BTreeSet<_> =
        config.deployments.iter().map(|d| &d.model_group).collect();
    println!(
        "{}: valid — {} deployments in {} model groups",
        file.display(),
        config.deployments.len(),
        groups.len()
    );
    if config.ignored.is_empty() {
        println!("No ignored or unsupported keys.");
    } else {
        println!("{} keys are accepted but ignored:", config.ignored.len());
        for item in &config.ignored {
            println!("  {}: {}", item.path, item.reason);
        }
    }
    if !config.unset_env.is_empty() {
        println!(
            "{} environment variables are not set here:",
            config.unset_env.len()
        );
        for item in &config.unset_env {
            println!("  {}: {}", item.path, item.reason);
        }
    }
    for d in config.deployments.iter().filter(|d| d.price.is_none()) {
        println!(
            "  note: no price known for deployment `{}` ({}); set input_cost_per_token/output_cost_per_token",
            d.id, d.upstream_model
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn run_serve(
    file: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    host: Option<IpAddr>,
    port: Option<u16>,
) -> anyhow::Result<ExitCode> {
    // Everything the node writes (its database, the master key) is its
    // owner's alone: files 0600, directories 0700.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let log = log_sink::Batched::start();
    let _written_at_exit = log.guard();
    // Colours only for a person at a terminal (and not against NO_COLOR):
    // escape codes in a log file are noise for whoever reads it later.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    // For people by default: Meridian's own crates at INFO, dependencies
    // (openraft's state dumps, hyper, rustls) only at WARN; `RUST_LOG`
    // says otherwise.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(log)
        .init();
    let mut config = match &file {
        Some(path) => config::load_file(path, &ProcessEnv, false)?,
        None => Config::embedded(&ProcessEnv),
    };
    if let Some(dir) = data_dir {
        config.node.data_dir = dir;
    }
    config.node.listen = SocketAddr::new(
        host.unwrap_or(config.node.listen.ip()),
        port.unwrap_or(config.node.listen.port()),
    );
    if !config.ignored.is_empty() {
        let list: Vec<String> = config
            .ignored
            .iter()
            .map(|i| format!("{} ({})", i.path, i.reason))
            .collect();
        tracing::warn!(count = list.len(), keys = %list.join("; "), "config keys accepted but ignored");
    }
    for d in config.deployments.iter().filter(|d| d.price.is_none()) {
        tracing::warn!(deployment = %d.id, model = %d.upstream_model, "no price known; its calls cost 0");
    }

    let seams = Seams::production()?;
    let (master_key, key_source) = resolve_master_key(&config, &seams.rng)?;
    let listen = config.node.listen;
    let banner = Banner {
        listen,
        https: false,
        node: config.node.node_id.clone(),
        region: config.node.region.clone(),
        data_dir: config.node.data_dir.clone(),
        models: config
            .deployments
            .iter()
            .map(|d| d.model_group.clone())
            .collect(),
    };
    let data_dir = config.node.data_dir.clone();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("listening on {listen}"))?;
        let bound = listener.local_addr().unwrap_or(listen);
        let store = meridian_node::cluster::open_store(&data_dir)?;
        let public_tls = match &config.node.public_tls {
            None => None,
            Some(files) => {
                let tls = meridian_link::PublicTls::load(&files.cert, &files.key)
                    .context("loading the public listener's TLS certificate")?;
                tls.clone()
                    .spawn_reload_on_change(Duration::from_secs(10), std::future::pending());
                let on_hup = tls.clone();
                meridian_node::cluster::keep_reloading(
                    "public listener",
                    move || on_hup.reload(),
                    std::future::pending(),
                );
                Some(tls)
            }
        };
        let running = NodeBuilder::new(config, master_key.clone(), seams, store)
            .api_addr(bound)
            .start()
            .await?;
        let banner = Banner {
            listen: bound,
            https: public_tls.is_some(),
            ..banner
        };
        banner.print(&master_key, key_source);
        running
            .serve(
                meridian_node::listener::tcp_no_delay(listener),
                public_tls,
                shutdown_signal(),
            )
            .await?;
        Ok(ExitCode::SUCCESS)
    })
}

struct Banner {
    listen: SocketAddr,
    https: bool,
    node: String,
    region: String,
    data_dir: PathBuf,
    models: std::collections::BTreeSet<String>,
}

impl Banner {
    /// Printed to stdout, not the log: it is the one place a generated master
    /// key is shown.
    fn print(&self, key: &meridian_node::secret::Secret, source: KeySource) {
        let scheme = if self.https { "https" } else { "http" };
        let base = format!("{scheme}://{}", self.listen);
        // The key is shown once, when it is generated; after that the file
        // that keeps it is named instead (logs are kept and shipped).
        let shown_key = match source {
            KeySource::Configured | KeySource::Stored => "$MERIDIAN_MASTER_KEY".to_owned(),
            KeySource::Generated => key.expose().to_owned(),
        };
        let model = self.models.iter().next().map_or("MODEL", String::as_str);
        println!(
            "Meridian {} — node {}, region {}",
            env!("CARGO_PKG_VERSION"),
            self.node,
            self.region
        );
        println!("  listening on {base}");
        println!(
            "  models: {}",
            self.models.iter().cloned().collect::<Vec<_>>().join(", ")
        );
        match source {
            KeySource::Configured => println!("  master key: from the environment or config"),
            KeySource::Stored => println!(
                "  master key: kept in {} (printed once, when it was made)",
                self.data_dir.join("master_key").display()
            ),
            KeySource::Generated => println!(
                "  master key (generated now, kept in {}): {shown_key}",
                self.data_dir.display()
            ),
        }
        println!("Try it:");
        println!(
            "  curl {base}/v1/chat/completions -H 'Authorization: Bearer {shown_key}' -H 'Content-Type: application/json' \
             -d '{{\"model\":\"{model}\",\"messages\":[{{\"role\":\"user\",\"content\":\"Hello\"}}]}}'"
        );
    }
}

/// The log's way to stdout: a line is added to a buffer that a thread of its
/// own writes every [`log_sink::EVERY`] (at once past
/// [`log_sink::MAX_BUFFERED`], and for warnings and errors), so a request's
/// `info` line costs the worker a copy instead of a write to the file
/// behind stdout (~2.4 % of a loaded node's CPU: the lock, the line
/// buffering and one system call per line). What is buffered is written
/// when `serve` ends; a node killed outright loses at most the last
/// interval's lines, never a spend record (those are in the spend log).
mod log_sink {
    use std::io::Write;
    use std::sync::{Arc, Mutex, PoisonError};
    use std::time::Duration;

    use tracing_subscriber::fmt::MakeWriter;

    pub const EVERY: Duration = Duration::from_millis(50);
    pub const MAX_BUFFERED: usize = 64 * 1024;

    #[derive(Clone)]
    pub struct Batched(Arc<Mutex<Vec<u8>>>);

    impl Batched {
        /// The buffer, and the thread that writes it out.
        pub fn start() -> Self {
            let log = Self(Arc::default());
            let writer = log.clone();
            let spawned = std::thread::Builder::new()
                .name("log-writer".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(EVERY);
                        writer.write_out();
                    }
                });
            if let Err(e) = spawned {
                eprintln!(
                    "warning: no log writer thread ({e}); log lines are written when the buffer fills"
                );
            }
            log
        }

        /// Writes what is buffered when dropped.
        pub fn guard(&self) -> WrittenOnDrop {
            WrittenOnDrop(self.clone())
        }

        fn write_out(&self) {
            let lines = std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner));
            if !lines.is_empty() {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(&lines);
                let _ = out.flush();
            }
        }
    }

    pub struct WrittenOnDrop(Batched);

    impl Drop for WrittenOnDrop {
        fn drop(&mut self) {
            self.0.write_out();
        }
    }

    /// One event's line (the formatter writes it in one call).
    pub struct Line<'a> {
        log: &'a Batched,
        urgent: bool,
    }

    impl Write for Line<'_> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let full = {
                let mut lines = self.log.0.lock().unwrap_or_else(PoisonError::into_inner);
                lines.extend_from_slice(buf);
                lines.len() >= MAX_BUFFERED
            };
            if full || self.urgent {
                self.log.write_out();
            }
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Batched {
        type Writer = Line<'a>;

        fn make_writer(&'a self) -> Line<'a> {
            Line {
                log: self,
                urgent: false,
            }
        }

        fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Line<'a> {
            Line {
                log: self,
                urgent: *meta.level() <= tracing::Level::WARN,
            }
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}
