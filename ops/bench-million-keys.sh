#!/usr/bin/env bash
# Does a node holding a million keys answer LLM calls as fast as an empty one?
#
#   ops/bench-million-keys.sh [KEYS]      (default 1000000; RATE, DURATION, ROUNDS)
#   FULL_STORE=DIR ops/bench-million-keys.sh   reuse a store from `million_keys --keep DIR`
#
# Builds the gateway, the load generator and the `million_keys` example; writes
# KEYS key records into a fresh store (a few minutes for a million); starts two
# gateways on one fake upstream — one on an empty store, one on the full store —
# each with the same virtual key (budget and limits set, so admission and spend
# accounting run); then loads them alternately at the same open-loop rate and
# prints each run's latency and the full/empty ratio per percentile.
set -euo pipefail
cd "$(dirname "$0")/.."
KEYS=${1:-1000000}
RATE=${RATE:-200}
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-2}
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
MASTER=sk-bench-master-0123456789
KEY=sk-bench-user

cargo build -q -p meridian-node --bin meridian -p meridian-loadtest --bin meridian-loadtest
cargo build -q -p meridian-consensus --example million_keys
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
wait_up() {
  for _ in $(seq 1 600); do
    curl -fsS "$1/health/liveliness" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "no answer from $1" >&2
  exit 1
}

if [ -n "${FULL_STORE:-}" ]; then
  echo "== using the store in $FULL_STORE"
  ln -s "$(realpath "$FULL_STORE")" "$WORK/full"
else
  echo "== writing $KEYS keys"
  "$TARGET/debug/examples/million_keys" "$KEYS" --keep "$WORK/full"
fi
mkdir -p "$WORK/empty"

UP=$(free_port)
"$TARGET/debug/meridian-loadtest" upstream --port "$UP" >/dev/null &
PIDS+=($!)
cat >"$WORK/config.yaml" <<EOF
model_list:
  - model_name: bench
    litellm_params:
      model: openai/bench
      api_base: http://127.0.0.1:$UP/v1
      api_key: sk-upstream
      input_cost_per_token: 0.000001
      output_cost_per_token: 0.000002
general_settings:
  master_key: $MASTER
meridian:
  region: us-east
EOF

declare -A URL PID
for store in empty full; do
  port=$(free_port)
  "$TARGET/debug/meridian" serve --config "$WORK/config.yaml" --data-dir "$WORK/$store" --port "$port" \
    >"$WORK/$store.log" 2>&1 &
  PID[$store]=$!
  PIDS+=($!)
  URL[$store]="http://127.0.0.1:$port"
done
for store in empty full; do
  wait_up "${URL[$store]}"
  # (A reused store may hold the key already: its 400 is fine.)
  curl -sS -o /dev/null -X POST "${URL[$store]}/key/generate" -H "Authorization: Bearer $MASTER" \
    -H 'content-type: application/json' \
    -d "{\"key\": \"$KEY\", \"max_budget\": 1000000, \"rpm_limit\": 100000000, \"tpm_limit\": 10000000000}" >/dev/null
  rss=$(awk '/VmRSS/ {print int($2/1024)}' "/proc/${PID[$store]}/status")
  echo "== $store store: gateway up, RSS ${rss} MiB"
done

for round in $(seq 1 "$ROUNDS"); do
  for store in empty full; do
    "$TARGET/debug/meridian-loadtest" run --url "${URL[$store]}" --key "$KEY" --model bench \
      --rate "$RATE" --duration "$DURATION" --warmup 2 --label "$store-$round" \
      --json "$WORK/$store-$round.json" >/dev/null
  done
done

python3 - "$WORK" "$ROUNDS" "$KEYS" "$RATE" <<'EOF'
import json, sys
work, rounds, keys, rate = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
pcts = ["p50_us", "p90_us", "p99_us", "p999_us"]
runs = {s: [json.load(open(f"{work}/{s}-{r}.json")) for r in range(1, rounds + 1)] for s in ("empty", "full")}
print(f"\nLLM path at {rate} req/s, open loop ({keys} keys in the full store):")
print(f"{'run':<10} {'ok':>6} {'errors':>7} " + " ".join(f"{p[:-3]:>8}" for p in pcts) + "   (ms)")
for s, rs in runs.items():
    for i, r in enumerate(rs, 1):
        lat = r["latency"]
        errs = sum(r["errors"].values())
        print(f"{s}-{i:<4} {r['successes']:>6} {errs:>7} " + " ".join(f"{lat[p] / 1000:>8.2f}" for p in pcts))
print("full / empty, median of rounds:")
def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2
print(" ".join(f"{p[:-3]}={median([r['latency'][p] for r in runs['full']]) / median([r['latency'][p] for r in runs['empty']]):.2f}" for p in pcts))
EOF
for store in empty full; do
  echo "$store gateway RSS after load: $(awk '/VmRSS/ {print int($2/1024)}' "/proc/${PID[$store]}/status") MiB"
done
