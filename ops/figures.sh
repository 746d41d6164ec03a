#!/usr/bin/env bash
# Regenerates the figures the README quotes, each into the file the README
# names, and says which README section each one feeds:
#
#   guarantees  "Guarantees" (regions): the measured lines under "Measured on
#               two local regions"      -> docs/figures/regions.txt
#   simulation  "Simulation": the 1,000-seed sweep and the bug table
#               -> docs/sim/sweep/, docs/sim/bugs.md (ops/sim-sweep.sh)
#   performance "Performance": the side-by-side comparison
#               -> docs/perf/compare.{json,html} (ops/compare.sh)
#   small       the smaller figures quoted around them, one file:
#               gossip bytes per counter, the router's cost per pick, how
#               long a region's admin writes pause when its leader is killed
#               -> docs/figures/small.txt (about 3 minutes)
#   scale       "Metadata scale": a million keys loaded, and a gateway on
#               them against an empty one -> docs/figures/scale.txt
#               (ops/bench-million-keys.sh; about 15 minutes)
#   ci          "cold .ci/run": a fresh clone of HEAD, its own target
#               directory, `.ci/run` timed -> docs/figures/ci.txt (30-40
#               minutes on two cores; nothing else should run)
#
#   ops/figures.sh                    every set (about 90 minutes)
#   ops/figures.sh guarantees small   some of them
#
# The README's numbers are then copied from these files by hand, with the
# date and commit each file records; nothing here edits the README.
set -euo pipefail
cd "$(dirname "$0")/.."
what=("$@")
[ ${#what[@]} -eq 0 ] && what=(guarantees simulation performance small scale ci)
log() { printf '== %s\n' "$*" >&2; }
stamp() { echo "# ops/figures.sh $1, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD)"; }
mkdir -p docs/figures
for w in "${what[@]}"; do
  case "$w" in
    guarantees)
      log "guarantees: node/tests/regions.rs"
      {
        stamp guarantees
        cargo nextest run -p meridian-node --test regions --success-output immediate 2>&1 |
          grep -vE '^\s*(START|PASS|SLOW)|^\s*$|Compiling|Finished|Running|Starting|Nextest'
      } > docs/figures/regions.txt
      cat docs/figures/regions.txt
      ;;
    simulation) ops/sim-sweep.sh ;;
    performance) ops/compare.sh --sequential-gap-ms 20 ;;
    small)
      log "small: gossip size, router cost, leader failover"
      {
        stamp small
        echo "## gossip: cargo test -p meridian-replication --lib wire -- --nocapture"
        cargo test -q -p meridian-replication --lib wire -- --nocapture 2>/dev/null | grep 'bytes per'
        echo "## router: cargo run -p meridian-node --example router_cost"
        cargo run -q -p meridian-node --example router_cost 2>/dev/null
        echo "## failover: cargo nextest run -p meridian-node --test cluster --no-capture"
        cargo nextest run -p meridian-node --test cluster --no-capture 2>&1 | grep 'writes resumed'
      } > docs/figures/small.txt
      cat docs/figures/small.txt
      ;;
    scale)
      log "scale: ops/bench-million-keys.sh"
      { stamp scale; ops/bench-million-keys.sh 2>&1; } > docs/figures/scale.txt
      tail -n 30 docs/figures/scale.txt
      ;;
    ci)
      log "ci: a cold .ci/run on a fresh clone of HEAD"
      work=$(mktemp -d)
      git clone -q . "$work/clone"
      started=$(date -u +%s)
      status=0
      (cd "$work/clone" && CARGO_TARGET_DIR="$work/target" .ci/run) > "$work/ci.log" 2>&1 || status=$?
      took=$(( $(date -u +%s) - started ))
      { stamp ci; echo "cold .ci/run: exit $status, $took s ($(( took / 60 )) min $(( took % 60 )) s), $(nproc) cores"; } > docs/figures/ci.txt
      cat docs/figures/ci.txt
      rm -rf "$work"
      ;;
    *) echo "unknown figure set: $w (guarantees, simulation, performance, small, scale, ci)" >&2; exit 2 ;;
  esac
done
