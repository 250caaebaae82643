#!/usr/bin/env bash
# Set up lla in .venv/ at the repository root: find Python >= 3.12, create the venv, install
# lla (editable) with its test/dev extras, every version pinned by requirements/lock.txt.
# Idempotent: a second run only reinstalls when pyproject.toml or the lock changed.
# Python is looked for in this order: $LLA_PYTHON, python3.12, python3.13, python3 (pyenv
# shims honour .python-version), pyenv's installed 3.12+ versions, `uv python find`.
set -euo pipefail
cd "$(dirname "$0")/.."

is_py312() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; }

find_python() {
  local cand
  for cand in "${LLA_PYTHON:-}" python3.12 python3.13 python3; do
    if [ -n "$cand" ] && command -v "$cand" >/dev/null 2>&1 && is_py312 "$cand"; then
      command -v "$cand"; return 0
    fi
  done
  if command -v pyenv >/dev/null 2>&1; then
    local version
    for version in $(pyenv versions --bare 2>/dev/null | grep -E '^3\.(1[2-9])(\.[0-9]+)?$' | sort -rV); do
      cand="$(pyenv root)/versions/$version/bin/python"
      if is_py312 "$cand"; then echo "$cand"; return 0; fi
    done
  fi
  if command -v uv >/dev/null 2>&1 && cand="$(uv python find '>=3.12' 2>/dev/null)"; then
    echo "$cand"; return 0
  fi
  return 1
}

if ! [ -x .venv/bin/python ] || ! is_py312 .venv/bin/python; then
  if ! python="$(find_python)"; then
    echo "setup: no Python >= 3.12 found. Install one (e.g. 'pyenv install 3.12', 'uv python install 3.12'" >&2
    echo "       or your OS package python3.12) or point LLA_PYTHON at it, then run this again." >&2
    exit 1
  fi
  echo "setup: creating .venv with $python ($("$python" --version))"
  rm -rf .venv
  "$python" -m venv .venv
fi

stamp=.venv/.lla-installed
want="$(cat pyproject.toml requirements/lock.txt | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing lla and pinned dependencies into .venv"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install --quiet --disable-pip-version-check \
    -c requirements/lock.txt -e '.[dev]'
  echo "$want" > "$stamp"
fi
echo "setup: ready ($(.venv/bin/python --version), jax $(.venv/bin/python -c 'import jax; print(jax.__version__)'))"
