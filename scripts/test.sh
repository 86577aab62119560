#!/usr/bin/env bash
# Run the whole test suite on a fresh machine: venv, packages, Chromium for the browser test,
# ruff and mypy, then pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ATP_VIZ_DEV=1 source scripts/setup.sh
if [ ! -x /usr/lib/chromium/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing Debian chromium for the browser test" >&2
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
# Lint, format and type checks first (configured in pyproject.toml), then the test suite.
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
