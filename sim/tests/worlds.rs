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

/// Runs `scenario`'s bug seeds with `bug` switched on: the run must fail,
/// and every invariant in `must_catch` must be among the violations. A bug
/// caught only by some other checker fails the test: the named checker
/// would have become a no-op and nothing would have noticed.
fn caught_in(scenario: &str, bug: &str, must_catch: &[&str]) -> String {
    let (ok, out) = sim(&[
        "--scenario",
        scenario,
        "--seeds",
        BUG_SEEDS,
        "--jobs",
        "2",
        "--inject-bug",
        bug,
    ]);
    println!("{out}");
    assert!(!ok, "{bug} went unnoticed:\n{out}");
    for name in must_catch {
        assert!(
            out.contains(&format!("VIOLATION {name} ")),
            "{bug} was not caught by {name}:\n{out}"
        );
    }
    out
}

fn caught(bug: &str, must_catch: &[&str]) -> String {
    caught_in("faults", bug, must_catch)
}

/// The invariants a run's violations name.
fn violated(out: &str) -> std::collections::BTreeSet<&str> {
    out.lines()
        .filter_map(|l| l.trim_start().strip_prefix("VIOLATION "))
        .filter_map(|l| l.split_whitespace().next())
        .collect()
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

/// Spend acknowledged before it is durable is lost with a crash on the
/// node alone: the others never saw it, so all agree on less than clients
/// were told.
#[test]
fn an_answer_sent_before_its_cost_is_durable_is_caught_by_acknowledged_spend_alone() {
    caught_alone("ack-before-durable", "acknowledged_spend_kept");
}

#[test]
fn dropped_deltas_are_caught() {
    caught(
        "drop-remote-deltas",
        &["counters_converge", "acknowledged_spend_kept"],
    );
}

/// The block is replicated like any record; only the check that the key
/// is refused sees a node that does not honour it.
#[test]
fn authentication_ignoring_remote_blocks_is_caught_by_revocation_alone() {
    caught_alone("ignore-remote-blocks", "revoked_key_refused");
}

/// A record that differs in a field nothing enforces: keys work, counters
/// agree, and only the record-by-record comparison sees it.
#[test]
fn a_record_changed_in_transit_is_caught_by_metadata_identical_alone() {
    caught_alone("rename-remote-keys", "metadata_identical");
}

/// Request counts no limit in the world comes near (the plain key's
/// `rpm_limit`): only convergence sees the other region's counts missing.
#[test]
fn dropped_request_counts_are_caught_by_convergence_alone() {
    caught_alone("drop-remote-request-counts", "counters_converge");
}

#[test]
fn strict_admission_without_rights_is_caught() {
    caught_alone("strict-without-rights", "strict_never_exceeded");
}

#[test]
fn split_brain_is_caught() {
    caught("bootstrap-everywhere", &["one_leader_per_term"]);
}

/// Runs `scenario`'s bug seeds with `bug` switched on: `invariant` must
/// catch it, and no other invariant may.
fn caught_alone_in(scenario: &str, bug: &str, invariant: &str) {
    let out = caught_in(scenario, bug, &[invariant]);
    assert_eq!(
        violated(&out).into_iter().collect::<Vec<_>>(),
        [invariant],
        "{bug} was caught by more than {invariant}:\n{out}"
    );
}

fn caught_alone(bug: &str, invariant: &str) {
    caught_alone_in("faults", bug, invariant);
}

/// Only the overshoot bound can see an `available` budget that is not
/// enforced: spend is still counted, kept and converged.
#[test]
fn available_admission_that_ignores_the_budget_is_caught_by_the_bound_alone() {
    caught_alone("available-admits-blindly", "available_overshoot_bounded");
}

/// A key whose creation was acknowledged but never committed is missing on
/// every node alike: the nodes agree, and only the check against what
/// clients were told sees it.
#[test]
fn an_acknowledged_but_lost_write_is_caught_by_committed_metadata_alone() {
    caught_alone("ack-unforwarded-creates", "committed_metadata_kept");
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

/// Residency that fails open while the EU deployment cools down sends the
/// EU-only key to the US during the outage, where no other check looks.
#[test]
fn a_router_whose_residency_fails_open_is_caught_by_residency_alone() {
    caught_alone_in("routing", "ignore-residency", "residency");
}

/// A router that misses its own region's deployment (declared `US-East`)
/// serves the US node's calls from anywhere; the EU node is unaffected, so
/// only locality sees it.
#[test]
fn a_router_missing_its_own_region_is_caught_by_locality_alone() {
    caught_alone_in("routing", "ignore-locality", "locality");
}

/// Without cooldowns the EU node keeps sending to its failing provider:
/// only failover sees it.
#[test]
fn a_router_that_never_cools_down_is_caught_by_failover_alone() {
    caught_alone_in("routing", "never-cool-down", "failover");
}

/// A deployment that never comes back from cooldown: only recovery sees it.
#[test]
fn a_cooldown_that_never_ends_is_caught_by_recovery_alone() {
    caught_alone_in("routing", "cooldown-forever", "recovery");
}

/// Every bug `--list-bugs` names has a test in this file that switches it on
/// and names the invariant that must catch it.
#[test]
fn every_bug_has_a_test() {
    let (ok, out) = sim(&["--list-bugs"]);
    assert!(ok, "{out}");
    let listed: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(listed.len() >= 8, "{out}");
    // This file without whitespace, so formatting does not matter.
    let source: String = include_str!("worlds.rs")
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    for bug in listed {
        let tested = source.contains(&format!("caught(\"{bug}\",&["))
            || source.contains(&format!("caught_alone(\"{bug}\",\""))
            || source.contains(&format!("caught_in(\"routing\",\"{bug}\",&["))
            || source.contains(&format!("caught_alone_in(\"routing\",\"{bug}\",\""));
        assert!(tested, "no test switches on {bug}");
    }
}

/// Every invariant of both worlds is named by at least one bug test in this
/// file: a checker no bug trips could be a no-op.
#[test]
fn every_invariant_has_a_bug_test() {
    let source: String = include_str!("worlds.rs")
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let faults = meridian_sim::invariants::all(&meridian_sim::world::Spec::new(1));
    let names = faults
        .iter()
        .map(|i| i.name())
        .chain(meridian_sim::routing::CHECKS);
    for name in names {
        let quoted = format!("\"{name}\"");
        let named = source.match_indices("caught").any(|(at, _)| {
            source[at..]
                .split(';')
                .next()
                .is_some_and(|call| call.contains(&quoted))
        });
        assert!(named, "no bug test names {name}");
    }
}
