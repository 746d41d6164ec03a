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
#
#   ops/figures.sh                    all three (about 35 minutes on two cores)
#   ops/figures.sh guarantees         one of them
#
# The README's numbers are then copied from these files by hand, with the
# date and commit each file records; nothing here edits the README.
set -euo pipefail
cd "$(dirname "$0")/.."
what=("$@")
[ ${#what[@]} -eq 0 ] && what=(guarantees simulation performance)
log() { printf '== %s\n' "$*" >&2; }
for w in "${what[@]}"; do
  case "$w" in
    guarantees)
      log "guarantees: node/tests/regions.rs"
      mkdir -p docs/figures
      {
        echo "# ops/figures.sh guarantees, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD)"
        cargo nextest run -p meridian-node --test regions --success-output immediate 2>&1 |
          grep -vE '^\s*(START|PASS|SLOW)|^\s*$|Compiling|Finished|Running|Starting|Nextest'
      } > docs/figures/regions.txt
      cat docs/figures/regions.txt
      ;;
    simulation) ops/sim-sweep.sh ;;
    performance) ops/compare.sh --sequential-gap-ms 20 ;;
    *) echo "unknown figure set: $w (guarantees, simulation, performance)" >&2; exit 2 ;;
  esac
done
