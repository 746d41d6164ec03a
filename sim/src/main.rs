//! `meridian-sim`: runs worlds of real Meridian nodes under turmoil.
//!
//!   meridian-sim --seeds 1..20              sweep seeds, print a table
//!   meridian-sim --reproduce 7              replay one seed, print its trace
//!   meridian-sim --seeds 1..4 --check-determinism
//!   meridian-sim --list-bugs
//!   meridian-sim --seeds 1..4 --inject-bug merge-adds
//!   meridian-sim --seeds 1..40 --report sim/report
//!   meridian-sim --scenario routing --seeds 1..4
//!
//! Each world runs in a process of its own (this binary with `--world`):
//! some dependencies keep process-wide random state (futures' `select!`
//! RNG is seeded from a per-process counter), so only a fresh process
//! replays a seed exactly — and a seed then behaves the same in a sweep as
//! under `--reproduce`.

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::{Context as _, bail};
use clap::Parser;
use meridian_bugs::Bug;
use meridian_sim::report;
use meridian_sim::world::{self, Outcome, Spec};

#[derive(Parser, Clone)]
#[command(
    name = "meridian-sim",
    about = "Deterministic simulations of Meridian clusters"
)]
struct Args {
    /// Seeds to run, `A..B` (B excluded) or `A..=B`.
    #[arg(long)]
    seeds: Option<String>,
    /// Replays one seed and prints everything its clients saw.
    #[arg(long)]
    reproduce: Option<u64>,
    /// Runs one world here and prints its outcome as JSON (used by sweeps).
    #[arg(long, hide = true)]
    world: Option<u64>,
    /// Switches a known bug on (see --list-bugs); may be repeated.
    #[arg(long = "inject-bug")]
    bugs: Vec<String>,
    #[arg(long)]
    list_bugs: bool,
    /// Runs each seed twice and fails if the traces differ.
    #[arg(long)]
    check_determinism: bool,
    /// Writes report.md and report.svg into this directory.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Nodes per region [default: 3].
    #[arg(long)]
    nodes: Option<u64>,
    /// Length of the faulty phase, in seconds [default: 20].
    #[arg(long)]
    faulty_secs: Option<u64>,
    /// Largest wall-clock skew of a node, either way, in ms [default: 2000].
    #[arg(long)]
    max_skew_ms: Option<u64>,
    /// Largest jump of a node's clock while it runs, either way, in ms
    /// (0: no jumps) [default: 3000].
    #[arg(long)]
    max_jump_ms: Option<u64>,
    /// The world to run: `faults` (regions of three nodes under partitions,
    /// crashes and skew) or `routing` (a region's provider fails; traffic
    /// must move as configured, residency included).
    #[arg(long, default_value = "faults", value_parser = ["faults", "routing"])]
    scenario: String,
    /// Worlds run at once [default: the number of CPUs].
    #[arg(long)]
    jobs: Option<usize>,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn parse_seeds(text: &str) -> anyhow::Result<Vec<u64>> {
    let (a, b, inclusive) = if let Some((a, b)) = text.split_once("..=") {
        (a, b, true)
    } else if let Some((a, b)) = text.split_once("..") {
        (a, b, false)
    } else {
        (text, text, true)
    };
    let a: u64 = a.trim().parse().with_context(|| format!("seed {a:?}"))?;
    let b: u64 = b.trim().parse().with_context(|| format!("seed {b:?}"))?;
    let seeds: Vec<u64> = if inclusive {
        (a..=b).collect()
    } else {
        (a..b).collect()
    };
    if seeds.is_empty() {
        bail!("no seeds in {text:?}");
    }
    Ok(seeds)
}

impl Args {
    fn bugs(&self) -> anyhow::Result<Vec<Bug>> {
        self.bugs
            .iter()
            .map(|name| {
                Bug::from_name(name)
                    .with_context(|| format!("unknown bug {name:?} (see --list-bugs)"))
            })
            .collect()
    }

    fn spec(&self, seed: u64) -> anyhow::Result<Spec> {
        let mut spec = Spec::new(seed);
        spec.bugs = self.bugs()?;
        if let Some(n) = self.nodes {
            spec.nodes_per_region = n;
        }
        if let Some(s) = self.faulty_secs {
            spec.faulty_for = std::time::Duration::from_secs(s);
        }
        if let Some(ms) = self.max_skew_ms {
            spec.max_skew = std::time::Duration::from_millis(ms);
        }
        if let Some(ms) = self.max_jump_ms {
            spec.max_jump = std::time::Duration::from_millis(ms);
        }
        Ok(spec)
    }

    /// Runs the chosen scenario's world of `seed` here.
    fn run_world(&self, seed: u64) -> anyhow::Result<Outcome> {
        let outcome = match self.scenario.as_str() {
            "routing" => meridian_sim::routing::run(seed, &self.bugs()?),
            _ => world::run(&self.spec(seed)?),
        };
        outcome.map_err(anyhow::Error::msg)
    }

    /// The flags that shape a world, to pass on to a child.
    fn world_flags(&self) -> Vec<String> {
        let mut flags = vec!["--scenario".to_owned(), self.scenario.clone()];
        for b in &self.bugs {
            flags.extend(["--inject-bug".to_owned(), b.clone()]);
        }
        if let Some(n) = self.nodes {
            flags.extend(["--nodes".to_owned(), n.to_string()]);
        }
        if let Some(s) = self.faulty_secs {
            flags.extend(["--faulty-secs".to_owned(), s.to_string()]);
        }
        if let Some(ms) = self.max_skew_ms {
            flags.extend(["--max-skew-ms".to_owned(), ms.to_string()]);
        }
        if let Some(ms) = self.max_jump_ms {
            flags.extend(["--max-jump-ms".to_owned(), ms.to_string()]);
        }
        flags
    }

    fn reproduce_command(&self, seed: u64) -> String {
        let mut cmd = format!("cargo run -p meridian-sim -- --reproduce {seed}");
        for flag in self.world_flags() {
            cmd.push(' ');
            cmd.push_str(&flag);
        }
        cmd
    }
}

/// Runs one world in a fresh process of this binary.
fn world_in_child(args: &Args, seed: u64) -> anyhow::Result<Outcome> {
    let exe = std::env::current_exe().context("finding this binary")?;
    let out = Command::new(exe)
        .arg("--world")
        .arg(seed.to_string())
        .args(args.world_flags())
        .output()
        .context("running a world")?;
    if !out.status.success() {
        bail!(
            "the world of seed {seed} failed to run: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout).context("reading a world's outcome")
}

fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.list_bugs {
        for bug in Bug::ALL {
            println!("{:<24} {}", bug.name(), bug.describe());
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(seed) = args.world {
        let outcome = args.run_world(seed)?;
        println!("{}", serde_json::to_string(&outcome)?);
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(seed) = args.reproduce {
        let outcome = args.run_world(seed)?;
        for line in &outcome.trace {
            println!("{line}");
        }
        println!("{}", report::table_header());
        println!("{}", report::table_row(&outcome));
        for v in &outcome.violations {
            println!("VIOLATION {} at {} ms: {}", v.invariant, v.at_ms, v.message);
        }
        return Ok(exit(outcome.violations.is_empty()));
    }
    let Some(seeds) = args.seeds.as_deref() else {
        bail!("give --seeds A..B, --reproduce SEED or --list-bugs");
    };
    let seeds = parse_seeds(seeds)?;
    args.bugs()?;
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
        .max(1);
    println!("{}", report::table_header());
    let mut outcomes: Vec<Outcome> = Vec::new();
    for batch in seeds.chunks(jobs) {
        let results: Vec<anyhow::Result<(Outcome, Option<Outcome>)>> = std::thread::scope(|s| {
            let handles: Vec<_> = batch
                .iter()
                .map(|&seed| {
                    let args = &args;
                    s.spawn(move || {
                        let first = world_in_child(args, seed)?;
                        let again = if args.check_determinism {
                            Some(world_in_child(args, seed)?)
                        } else {
                            None
                        };
                        Ok((first, again))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("a world panicked")))
                })
                .collect()
        });
        for result in results {
            let (outcome, again) = result?;
            if let Some(again) = again
                && again.trace != outcome.trace
            {
                let at = outcome
                    .trace
                    .iter()
                    .zip(&again.trace)
                    .position(|(a, b)| a != b)
                    .unwrap_or(outcome.trace.len().min(again.trace.len()));
                let line = |t: &[String]| t.get(at).cloned().unwrap_or_default();
                bail!(
                    "seed {} is not deterministic: the traces differ at line {at}:\n  first:  {}\n  second: {}",
                    outcome.seed,
                    line(&outcome.trace),
                    line(&again.trace)
                );
            }
            println!("{}", report::table_row(&outcome));
            for v in &outcome.violations {
                println!(
                    "  VIOLATION {} at {} ms: {} (reproduce: {})",
                    v.invariant,
                    v.at_ms,
                    v.message,
                    args.reproduce_command(outcome.seed)
                );
            }
            outcomes.push(outcome);
        }
    }
    if args.check_determinism {
        println!("every seed replayed the same trace twice");
    }
    if let Some(dir) = &args.report {
        report::write(dir, &outcomes)?;
        println!("report written to {}", dir.display());
    }
    let clean = outcomes.iter().all(|o| o.violations.is_empty());
    Ok(exit(clean))
}

fn exit(clean: bool) -> ExitCode {
    if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
