#!/usr/bin/env bash
# The side-by-side benchmark from a fresh clone: builds the gateway and the
# load tester (the one dev profile), installs LiteLLM into its own virtualenv
# (PyPI only), and runs `meridian-loadtest compare` with every row.
#
#   ops/compare.sh                             the README's run (2000 req/s, LiteLLM included)
#   RATE=500 NO_LITELLM=1 ops/compare.sh --rows direct,meridian-1
#
# Extra arguments go to `compare` (see `meridian-loadtest compare --help`).
# RATE sets the open-loop rate (default 2000); NO_LITELLM=1 skips the LiteLLM
# row; the report goes to docs/perf/compare.{html,json} unless OUT names
# another directory.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
OUT=${OUT:-docs/perf}

log() { printf '== %s\n' "$*" >&2; }

ops/dev.sh build-deps
log "building meridian and meridian-loadtest"
# The build `ops/dev.sh test` and `run` make (tests included): the same
# cargo invocation, so nothing is compiled again after them.
cargo build --workspace --exclude meridian-sim --all-targets
litellm=()
if [ -z "${NO_LITELLM:-}" ]; then
  ops/litellm.sh
  litellm=(--litellm)
fi
mkdir -p "$OUT"
"$TARGET/debug/meridian-loadtest" compare \
  --meridian-bin "$TARGET/debug/meridian" \
  "${litellm[@]}" \
  --rate "${RATE:-2000}" \
  --html "$OUT/compare.html" --json "$OUT/compare.json" \
  "$@"
