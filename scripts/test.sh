#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole CPU test suite plus ruff. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
JAX_PLATFORMS=cpu .venv/bin/python -m pytest -n 2 --durations=15 "$@"
