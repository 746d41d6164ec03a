#!/usr/bin/env bash
# Meridian's developer entry points (the README's two commands, and CI's).
#
#   ops/dev.sh run [serve flags]   build and start the gateway on its embedded default
#   ops/dev.sh test                every test tier: unit, router, integration,
#                                  simulation (cargo), then the official-SDK tier
#   ops/dev.sh lint                cargo fmt --check and clippy -D warnings
#   ops/dev.sh build-deps          install the system packages a build needs
#
# Needs only the Rust toolchain; anything else (Python's venv, ...) is installed
# with apt-get when missing. CARGO_TARGET_DIR is honoured.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
VENV=${MERIDIAN_VENV:-$HOME/.cache/meridian/venv}

log() { printf '\n== %s\n' "$*" >&2; }

# apt-get install the named packages that are not installed yet.
apt_install() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null || { echo "missing system packages: ${missing[*]} (no apt-get here)" >&2; exit 1; }
  log "installing ${missing[*]}"
  local sudo=""; [ "$(id -u)" -ne 0 ] && sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

ensure_build_deps() {
  command -v cargo >/dev/null || { echo "cargo not found: install the Rust toolchain (rustup) first" >&2; exit 1; }
  # RocksDB's bundled C++ needs a C++ compiler, and its bindings libclang.
  apt_install gcc g++ libc6-dev libclang-dev
}

ensure_python() {
  if ! command -v python3 >/dev/null || ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    apt_install python3 python3-venv
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    log "creating the SDK test environment in $VENV"
    mkdir -p "$(dirname "$VENV")"
    python3 -m venv "$VENV"
  fi
  local req=node/tests/sdk/requirements.txt stamp="$VENV/.requirements"
  if ! cmp -s "$req" "$stamp"; then
    "$VENV/bin/pip" install -q --disable-pip-version-check -r "$req"
    cp "$req" "$stamp"
  fi
}

cmd_run() {
  ensure_build_deps
  # The very build `test` makes (tests included): cargo resolves the
  # dependencies' features per invocation, so building the binary alone
  # would compile another variant of it and of the crates it uses.
  cargo build --workspace --exclude meridian-sim --all-targets
  exec "$TARGET/debug/meridian" serve "$@"
}

cmd_test() {
  ensure_build_deps
  # Two builds that never mix: the product (the binary `run` starts, every
  # test tier but the simulator's, the SDK tier) without the simulator's
  # bug switches, so `run` after `test` builds nothing; and the simulator's,
  # which compiles the same crates again with the switches on.
  log "building the product (tests, binaries and the SDK tier share it; so does 'run')"
  cargo build --workspace --exclude meridian-sim --all-targets
  log "unit, router and integration tiers"
  if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --exclude meridian-sim --profile ci
  else
    cargo test --workspace --exclude meridian-sim
  fi
  log "simulation tier (its own build, with the bug switches)"
  if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run -p meridian-sim --profile ci
  else
    cargo test -p meridian-sim
  fi
  log "real-client tier: official openai and anthropic SDKs against a running gateway"
  ensure_python
  MERIDIAN_BIN="$TARGET/debug/meridian" FAKE_UPSTREAM_BIN="$TARGET/debug/fake-upstream" \
    "$VENV/bin/python" -m pytest -q -p no:cacheprovider node/tests/sdk
}

cmd_build_deps() {
  ensure_build_deps
}

cmd_lint() {
  ensure_build_deps
  cargo fmt --all -- --check
  cargo clippy --workspace --all-targets -- -D warnings
  python3 ops/check-tiers.py
}

case "${1:-}" in
  run) shift; cmd_run "$@" ;;
  test) shift; cmd_test "$@" ;;
  lint) shift; cmd_lint "$@" ;;
  build-deps) shift; cmd_build_deps ;;
  *) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
