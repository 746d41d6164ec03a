//! The CI seed set: whole worlds (two regions of three real nodes, a
//! provider, clients, seeded faults) run through the `meridian-sim` binary,
//! each in its own process, as a user would run them. Every guarantee holds
//! on every CI seed, every known bug is caught on at least one of them, and
//! every CI seed replays the same trace in a second process.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

/// Seeds every CI run checks (each world is ~35 simulated seconds).
const CI_SEEDS: &str = "1..5";
/// The subset the injected bugs are run against.
const BUG_SEEDS: &str = "1..3";

fn sim(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_meridian-sim"))
        .args(args)
        .output()
        .expect("meridian-sim runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Each CI seed runs twice, in two processes, and the traces must match.
#[test]
fn every_guarantee_holds_on_the_ci_seeds_and_each_replays() {
    let (ok, out) = sim(&["--seeds", CI_SEEDS, "--jobs", "2", "--check-determinism"]);
    println!("{out}");
    assert!(ok && !out.contains("VIOLATION"), "{out}");
    assert!(
        out.contains("every seed replayed the same trace twice"),
        "{out}"
    );
    // Four rows, one per seed, each with calls served.
    let rows: Vec<&str> = out
        .lines()
        .filter(|l| l.trim_start().starts_with(char::is_numeric))
        .collect();
    assert_eq!(rows.len(), 4, "{out}");
}

#[test]
fn a_seed_replays_the_same_trace() {
    let (ok, out) = sim(&["--seeds", "1..2", "--check-determinism"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("every seed replayed the same trace twice"),
        "{out}"
    );
}

/// Runs the bug seeds with `bug` switched on; the run must fail, naming one
/// of `expected` among the violated invariants.
fn caught(bug: &str, expected: &[&str]) {
    let (ok, out) = sim(&["--seeds", BUG_SEEDS, "--jobs", "2", "--inject-bug", bug]);
    println!("{out}");
    assert!(!ok, "{bug} went unnoticed:\n{out}");
    assert!(
        expected
            .iter()
            .any(|name| out.contains(&format!("VIOLATION {name} "))),
        "{bug} was not caught by any of {expected:?}:\n{out}"
    );
}

#[test]
fn a_merge_that_adds_is_caught() {
    caught(
        "merge-adds",
        &["acknowledged_spend_kept", "counters_converge"],
    );
}

#[test]
fn a_node_forgetting_its_slot_is_caught() {
    caught("forget-own-slot", &["acknowledged_spend_kept"]);
}

#[test]
fn dropped_deltas_are_caught() {
    caught(
        "drop-remote-deltas",
        &["counters_converge", "acknowledged_spend_kept"],
    );
}

#[test]
fn an_index_ignoring_remote_blocks_is_caught() {
    caught(
        "ignore-remote-blocks",
        &["revoked_key_refused", "metadata_identical"],
    );
}

#[test]
fn strict_admission_without_rights_is_caught() {
    caught("strict-without-rights", &["strict_never_exceeded"]);
}

#[test]
fn split_brain_is_caught() {
    caught("bootstrap-everywhere", &["one_leader_per_term"]);
}

/// The routing world: a region's provider fails and recovers; traffic moves
/// as configured, and the EU-only key never leaves the EU.
#[test]
fn routing_moves_traffic_as_configured_and_replays() {
    let (ok, out) = sim(&[
        "--scenario",
        "routing",
        "--seeds",
        "1..4",
        "--jobs",
        "2",
        "--check-determinism",
    ]);
    println!("{out}");
    assert!(ok && !out.contains("VIOLATION"), "{out}");
    assert!(
        out.contains("every seed replayed the same trace twice"),
        "{out}"
    );
}

#[test]
fn a_router_ignoring_residency_is_caught() {
    let (ok, out) = sim(&[
        "--scenario",
        "routing",
        "--seeds",
        BUG_SEEDS,
        "--inject-bug",
        "ignore-residency",
    ]);
    println!("{out}");
    assert!(!ok && out.contains("VIOLATION residency "), "{out}");
}

#[test]
fn every_bug_has_a_test() {
    let (ok, out) = sim(&["--list-bugs"]);
    assert!(ok, "{out}");
    let listed: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(
        listed,
        [
            "merge-adds",
            "forget-own-slot",
            "drop-remote-deltas",
            "ignore-remote-blocks",
            "strict-without-rights",
            "bootstrap-everywhere",
            "ignore-residency"
        ]
    );
}
