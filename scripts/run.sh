#!/usr/bin/env bash
# Start the dashboard on the embedded default model (http://127.0.0.1:8501).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh
exec .venv/bin/python -m streamlit run app.py "$@"
