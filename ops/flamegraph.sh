#!/usr/bin/env bash
# Flamegraphs of one Meridian node under `meridian-loadtest compare`'s
# governed load (a virtual key with a budget and limits on every request):
# perf samples the node's process during one phase, inferno draws it.
#
#   ops/flamegraph.sh                 every profile below
#   ops/flamegraph.sh 2000rps max     some of them
#
# Profiles (each one compare run of the meridian-1 row, stopping by itself):
#   2000rps  the open-loop phase at 2,000 requests/s
#   max      the closed-loop phase (32 in flight)
#   50rps    the open-loop phase at 50 requests/s
#   lowload  the sequential phase: one client, 20 ms after each answer
#
# Writes docs/perf/flame-<profile>.svg (OUT names another directory) and
# keeps the folded stacks and a per-subsystem summary in $WORK
# (default /tmp/meridian-flame): ops/flamegraph.sh summary FILE.folded
# prints the summary again. Needs perf and inferno (`cargo install inferno`).
# FREQ (default 999) and CALL_GRAPH (default dwarf,16384; `fp` is lighter
# but Rust code here has no frame pointers) set perf's sampling.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
OUT=${OUT:-docs/perf}
WORK=${WORK:-/tmp/meridian-flame}
FREQ=${FREQ:-999}
CALL_GRAPH=${CALL_GRAPH:-dwarf,16384}
LOADTEST="$TARGET/debug/meridian-loadtest"
# MERIDIAN names another build of the node (e.g. a copy kept from before a
# change), LABEL what the titles call it (default: git describe), SUFFIX
# what the file names end with (flame-max-after.svg: SUFFIX=-after).
MERIDIAN=${MERIDIAN:-$TARGET/debug/meridian}
SUFFIX=${SUFFIX:-}

log() { printf '== %s\n' "$*" >&2; }

# Self time of a folded-stack file by subsystem (each sample's leaf frame
# decides; a kernel leaf counts as a syscall whoever called), the heaviest
# leaf frames, then the heaviest inclusive frames. Weights are perf's
# periods, i.e. CPU time.
summary() {
  python3 - "$1" <<'EOF'
import re, sys
from collections import Counter

GROUPS = [
    # order matters: the first match wins
    ("syscalls/kernel", r"\[k\]|^(entry_SYSCALL|do_syscall|__x64_sys|sys_|tcp_|ip_|__sys_|sock_|do_epoll|ep_poll|futex|schedule|__schedule|finish_task_switch|__GI___libc_|__libc_(send|recv|write|read)|epoll_wait|syscall|__futex|__lll_lock|pthread_cond|_raw_spin|native_|copy_user|irq|__softirq|net_rx|__do_softirq|loopback|__netif|tcp|skb|__kmalloc|kfree|kmem_cache|_copy|asm_)"),
    ("allocation", r"^(mi_|_mi_|mimalloc|__rust_alloc|__rust_dealloc|__rust_realloc|alloc::alloc|__rdl_|malloc|free|realloc|calloc|cfree|_int_malloc|_int_free|<mimalloc::)"),
    ("spend log/RocksDB", r"rocksdb|librocksdb|meridian_storage|spendlog|SpendLog"),
    ("JSON", r"serde_json|serde::|serde_path_to_error|<serde"),
    ("tracing/logging", r"tracing|tracing_subscriber|tracing_core|core::fmt|alloc::fmt|<&T as core::fmt|Display>::fmt|Debug>::fmt|std::io::Write|LineWriter"),
    ("auth", r"meridian_node::auth|sha2|Sha256|sha256|key_by_hash"),
    ("admission/counters", r"meridian_node::admission|meridian_replication|admission::"),
    ("upstream client", r"reqwest|hyper_util::client|hyper::client|meridian_node::upstream|hyper::proto::h1::role::Client|Client>"),
    ("HTTP server/hyper/axum", r"hyper|axum|http::|httparse|h2::|tower|meridian_node::listener|matchit"),
    ("tokio scheduling/wakeups", r"tokio::|mio::|parking_lot|std::thread|crossbeam|futures_util|futures_core"),
    ("openraft/consensus", r"openraft|meridian_consensus|automerge"),
    ("meridian pipeline/router/providers", r"meridian_node::"),
    ("core/std (memcpy, hashing, strings)", r"core::|alloc::|std::|hashbrown|memcpy|memmove|memset|memcmp|__memcpy|__memmove|__memset|__memcmp|strlen|_platform"),
]
RX = [(name, re.compile(rx)) for name, rx in GROUPS]

def group(frame):
    for name, rx in RX:
        if rx.search(frame):
            return name
    return "other"

self_by = Counter()
incl = Counter()
self_frame = Counter()
total = 0
with open(sys.argv[1]) as f:
    for line in f:
        stack, _, n = line.rstrip("\n").rpartition(" ")
        n = int(n)
        frames = stack.split(";")
        total += n
        leaf = frames[-1]
        self_frame[leaf] += n
        self_by[group(leaf)] += n
        for fr in set(frames[1:]):
            incl[fr] += n

pct = lambda n: 100.0 * n / total if total else 0.0
print(f"CPU sampled: {total / 1e9:.2f} s")
print("\nself time by subsystem (leaf frame):")
for name, n in self_by.most_common():
    print(f"  {pct(n):5.1f}%  {name}")
print("\ntop self frames:")
for fr, n in self_frame.most_common(25):
    print(f"  {pct(n):5.1f}%  [{group(fr)}] {fr[:150]}")
print("\ntop inclusive frames (meridian, hyper, reqwest, tokio, serde, tracing, rocksdb, mimalloc):")
keep = re.compile(r"meridian|hyper|reqwest|axum|tokio::runtime::task|serde|tracing|rocksdb|mi_|sha2|openraft|epoll|__x64_sys|futex")
shown = 0
for fr, n in incl.most_common():
    if keep.search(fr) and not re.search(r"poll_fn|::{{closure}}$|start_thread|std::rt|std::sys::", fr):
        print(f"  {pct(n):5.1f}%  {fr[:150]}")
        shown += 1
        if shown >= 45:
            break
EOF
}

# profile NAME MARKER DELAY SECONDS -- compare args: runs compare, waits for
# MARKER on its progress output, then DELAY s of warm-up, then samples the
# meridian process for SECONDS.
profile() {
  local name=$1 marker=$2 delay=$3 seconds=$4
  shift 5
  mkdir -p "$WORK" "$OUT"
  local progress="$WORK/$name.compare.log" data="$WORK/$name.perf.data"
  log "$name: compare $*"
  rm -f "$progress" "$data"
  "$LOADTEST" compare --meridian-bin "$MERIDIAN" --rows meridian-1 "$@" \
    --json "$WORK/$name.compare.json" >"$WORK/$name.compare.out" 2>"$progress" &
  local compare=$!
  local waited=0
  until grep -q -- "$marker" "$progress" 2>/dev/null; do
    sleep 0.2
    waited=$((waited + 1))
    if ! kill -0 "$compare" 2>/dev/null || [ "$waited" -gt 1500 ]; then
      log "$name: compare ended before '$marker'"; cat "$progress" >&2; return 1
    fi
  done
  local node
  local comm
  comm=$(basename "$MERIDIAN" | cut -c1-15)
  node=$(pgrep -P "$compare" -x "$comm" | head -n1 || true)
  [ -n "$node" ] || { log "$name: no $comm process under compare ($compare)"; wait "$compare"; return 1; }
  sleep "$delay"
  log "$name: perf record on pid $node for ${seconds}s ($(uptime | sed 's/.*load/load/'))"
  uptime >"$WORK/$name.uptime"
  perf record -F "$FREQ" -g --call-graph "$CALL_GRAPH" -p "$node" -o "$data" \
    -- sleep "$seconds" 2>"$WORK/$name.perf.log" >/dev/null
  wait "$compare" || log "$name: compare exited with $?"
  log "$name: folding"
  perf script -i "$data" --no-inline 2>/dev/null | inferno-collapse-perf --all >"$WORK/$name.folded"
  inferno-flamegraph --minwidth 0.25 \
    --title "meridian node, $name: ${LABEL:-$(git describe --always --dirty 2>/dev/null)}, $(cat "$WORK/$name.uptime" | sed 's/.*load/load/')" \
    <"$WORK/$name.folded" >"$OUT/flame-$name$SUFFIX.svg"
  summary "$WORK/$name.folded" >"$WORK/$name.summary.txt"
  log "$name: $OUT/flame-$name$SUFFIX.svg ($(du -h "$OUT/flame-$name$SUFFIX.svg" | cut -f1)), summary $WORK/$name.summary.txt"
  rm -f "$data"
}

run() {
  case $1 in
    2000rps) profile 2000rps "open loop at" 3 5 -- --rate 2000 --duration 10 --warmup 2 --throughput-duration 2 ;;
    max) profile max "closed loop at" 2 5 -- --rate 200 --duration 2 --warmup 1 --throughput-duration 8 ;;
    50rps) profile 50rps "open loop at" 3 15 -- --rate 50 --duration 20 --warmup 2 --throughput-duration 2 ;;
    lowload) profile lowload "sequential:" 2 15 -- --sequential-gap-ms 20 --rate 50 --duration 20 --warmup 1 --throughput-duration 2 ;;
    summary) summary "$2"; exit ;;
    *) echo "unknown profile $1 (2000rps, max, 50rps, lowload)" >&2; exit 2 ;;
  esac
}

if [ "${1:-}" = summary ]; then run "$@"; fi
for p in "${@:-2000rps max 50rps lowload}"; do
  for q in $p; do run "$q"; done
done
