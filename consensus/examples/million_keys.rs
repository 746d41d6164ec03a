//! How a region's metadata scales with its keys: writes N key records into a
//! RocksDB store as the state machine keeps them, then measures what a node
//! pays at start (loading them), in memory (RSS), and per authentication (an
//! in-memory lookup by hash). Each key also has its automerge document (saved
//! bytes, ~0.4 KB) for cross-region sync, which stays in the store.
//!
//! `cargo run -p meridian-consensus --example million_keys -- 1000000` (the dev
//! profile, like every build here: RocksDB is compiled in one profile only).
//! `... -- 1000000 --keep DIR` leaves the store in `DIR/db`, where
//! `meridian serve --data-dir DIR` (region `us-east`) starts on it: the way to
//! measure the LLM path of a node holding a million keys.

use std::sync::Arc;
use std::time::Instant;

use meridian_consensus::metadata::{Command, Kind, MetadataState, Proposal};
use meridian_consensus::raft::StateMachine;
use meridian_consensus::raft::state_machine::stage;
use meridian_storage::{Durability, RocksStore, Store, WriteBatch};

/// Whose documents these are (their automerge actor).
const REGION: &str = "us-east";

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map(str::to_owned)
        })
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn token(i: u64) -> String {
    format!("{:064x}", u128::from(i) * 0x9e37_79b9_7f4a_7c15)
}

#[allow(clippy::disallowed_methods)] // wall-clock timing is the point of this tool
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--load") {
        let dir = args.get(2).ok_or("usage: --load DIR N")?;
        let n = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(1);
        return load(std::path::Path::new(dir), n);
    }
    let n: u64 = args
        .get(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let temp = tempfile::tempdir()?;
    let dir = match args.iter().position(|a| a == "--keep") {
        Some(i) => {
            std::path::PathBuf::from(args.get(i + 1).ok_or("--keep needs a directory")?).join("db")
        }
        None => temp.path().to_path_buf(),
    };
    {
        let store: Arc<dyn Store> = Arc::new(RocksStore::open(&dir)?);
        // A node opens its state machine before anything is applied (which
        // marks the store's document index as complete).
        drop(StateMachine::open(store.clone(), REGION)?);
        let started = Instant::now();
        let mut state = MetadataState::new(REGION);
        let mut batch = WriteBatch::default();
        for i in 0..n {
            let record = serde_json::json!({
                "token": token(i), "key_name": "sk-...abcd", "models": ["gpt-4o"],
                "user_id": format!("user-{}", i % 1000), "rpm_limit": 100,
            });
            let (_, changes) = state.apply(&Proposal {
                at_ms: 1,
                command: Command::Create {
                    kind: Kind::Key,
                    record,
                },
            });
            stage(&mut batch, changes);
            if batch.ops.len() >= 10_000 {
                store.write(std::mem::take(&mut batch), Durability::Process)?;
            }
        }
        store.write(batch, Durability::Power)?;
        println!("wrote {n} keys in {:.1} s", started.elapsed().as_secs_f64());
    }
    // Load in a fresh process, so its RSS is what a restarted node pays.
    let status = std::process::Command::new(std::env::current_exe()?)
        .args(["--load", &dir.display().to_string(), &n.to_string()])
        .status()?;
    if !status.success() {
        return Err("the load phase failed".into());
    }
    Ok(())
}

#[allow(clippy::disallowed_methods)]
fn load(dir: &std::path::Path, n: u64) -> Result<(), Box<dyn std::error::Error>> {
    let before = rss_mib();
    let started = Instant::now();
    let store: Arc<dyn Store> = Arc::new(RocksStore::open(dir)?);
    let sm = StateMachine::open(store, REGION)?;
    let load = started.elapsed();
    let state = sm.shared_state();
    let count = state.read().map(|s| s.key_count()).unwrap_or(0);
    println!(
        "start-up: loaded {count} keys in {:.2} s; RSS {:.0} MiB (before: {before:.0} MiB)",
        load.as_secs_f64(),
        rss_mib()
    );
    // Documents stay in the store; counting them reads its index.
    let docs = state.read().map_err(|_| "poisoned")?.document_count()?;
    println!("documents in the store: {docs}");
    let hashes: Vec<[u8; 32]> = (0..100_000u64)
        .map(|i| {
            meridian_consensus::metadata::token_bytes(&token(i * (n / 100_000).max(1)))
                .unwrap_or([0; 32])
        })
        .collect();
    let started = Instant::now();
    let guard = state.read().map_err(|_| "poisoned")?;
    let found = hashes
        .iter()
        .filter(|h| guard.key_by_hash(h).is_some())
        .count();
    let per = started.elapsed().as_nanos() as f64 / hashes.len() as f64;
    println!(
        "lookup: {found}/{} found, {per:.0} ns per authentication lookup",
        hashes.len()
    );
    Ok(())
}
