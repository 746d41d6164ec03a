#!/usr/bin/env bash
# Installs the LiteLLM proxy into its own virtualenv, for
# `meridian-loadtest compare --litellm` (which starts "$VENV/bin/litellm").
#
#   ops/litellm.sh            install (or check) the pinned version
#
# LITELLM_VENV overrides the virtualenv (default $HOME/.cache/meridian/litellm-venv,
# where `compare` looks unless given --litellm-venv); LITELLM_VERSION overrides
# the pin. Only PyPI is used. The proxy is run without a database: its
# Prisma layer downloads engine binaries at first use, which cannot be fetched
# here, so virtual keys, budgets and spend tracking stay off in that row.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${LITELLM_VENV:-$HOME/.cache/meridian/litellm-venv}
# The newest 1.x whose dependencies all resolve from the package index here
# (1.103.8 and later, and 1.104+, ask for a certifi release it does not have yet).
VERSION=${LITELLM_VERSION:-1.103.7}

log() { printf '== %s\n' "$*" >&2; }

if ! command -v python3 >/dev/null || ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  command -v apt-get >/dev/null || { echo "python3 with venv is needed (no apt-get here)" >&2; exit 1; }
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo=sudo
  log "installing python3 and python3-venv"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3 python3-venv >/dev/null
fi
if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV"
  mkdir -p "$(dirname "$VENV")"
  python3 -m venv "$VENV"
fi
stamp="$VENV/.litellm-version"
if [ "$(cat "$stamp" 2>/dev/null)" != "$VERSION" ] || [ ! -x "$VENV/bin/litellm" ]; then
  log "installing litellm[proxy]==$VERSION (a few minutes)"
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-cache-dir "litellm[proxy]==$VERSION"
  # An install cut short can leave the package recorded but its command not
  # written; installing the one package again writes it.
  [ -x "$VENV/bin/litellm" ] ||
    "$VENV/bin/pip" install -q --disable-pip-version-check --no-cache-dir --force-reinstall --no-deps "litellm==$VERSION"
  echo "$VERSION" >"$stamp"
fi
log "$("$VENV/bin/python" -c 'import importlib.metadata as m; print("litellm", m.version("litellm"))') in $VENV"
