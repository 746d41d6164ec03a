#!/usr/bin/env bash
# The long simulation sweep on record (outside CI): the fault world over
# SEEDS seeds (default 1..=1000) with every checker, and every injectable bug
# over BUG_SEEDS (default 1..=20) of its world, then writes
#   docs/sim/sweep/report.md, report.svg   the seed sweep (meridian-sim --report)
#   docs/sim/bugs.md                        per bug: the seeds it was caught on, by what
# Two worlds at a time (JOBS); about 15 minutes on two cores.
#
#   ops/sim-sweep.sh
#   SEEDS=1..=100 BUG_SEEDS=1..=5 OUT=/tmp/sweep ops/sim-sweep.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SEEDS=${SEEDS:-1..=1000}
BUG_SEEDS=${BUG_SEEDS:-1..=20}
JOBS=${JOBS:-2}
OUT=${OUT:-docs/sim}
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
log() { printf '== %s\n' "$*" >&2; }

cargo build -p meridian-sim
# A copy: the sweep re-runs its own binary per world, and a rebuild during
# the sweep must not pull it away.
bin=$(mktemp -d)/meridian-sim
cp "$TARGET/debug/meridian-sim" "$bin"
commit=$(git rev-parse --short HEAD)

log "fault world, seeds $SEEDS"
started=$(date -u +%s)
"$bin" --seeds "$SEEDS" --jobs "$JOBS" --report "$OUT/sweep" | tail -n 3
log "took $(( $(date -u +%s) - started )) s"

log "every bug, seeds $BUG_SEEDS"
{
  echo "# Injected bugs over seeds $BUG_SEEDS"
  echo
  echo "Made by \`ops/sim-sweep.sh\` at commit $commit on $(date -u '+%Y-%m-%d %H:%M UTC')."
  echo "Per bug: on how many seeds the run failed, and how many seeds each"
  echo "invariant caught it on. A bug no seed catches would be a checker that"
  echo "cannot fail."
  echo
  echo "| bug | world | seeds caught | caught by (seeds) |"
  echo "|---|---|---:|---|"
  for bug in $("$bin" --list-bugs | awk '{print $1}'); do
    case "$bug" in
      ignore-residency|ignore-locality|never-cool-down|cooldown-forever) world=routing ;;
      *) world=faults ;;
    esac
    out=$("$bin" --scenario "$world" --seeds "$BUG_SEEDS" --jobs "$JOBS" --inject-bug "$bug" 2>&1 || true)
    total=$(printf '%s\n' "$out" | grep -cE '^ +[0-9]+ ' || true)
    caught=$(printf '%s\n' "$out" | grep -E '^ +[0-9]+ ' | awk '$3 > 0' | wc -l)
    # One count per (invariant, seed): a violation is printed more than once.
    by=$(printf '%s\n' "$out" | grep 'VIOLATION' |
      sed -E 's/.*VIOLATION ([a-z_]+) .*--reproduce ([0-9]+).*/\1 \2/' | sort -u |
      awk '{print $1}' | uniq -c | awk '{printf "%s`%s` %d", sep, $2, $1; sep=", "}')
    echo "| \`$bug\` | $world | $caught of $total | $by |"
  done
} > "$OUT/bugs.md"
cat "$OUT/bugs.md"
