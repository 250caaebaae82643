#!/usr/bin/env bash
# Fetch OpenMoji (4,495 colour emoji, CC-BY-SA 4.0) from the npm package `openmoji` 17.0.0
# (tarball SHA-256 pinned) and rasterise every package/color/svg/*.svg with PyPI `resvg-py`
# 0.5.0 (installed into the venv if missing), composited over white (the emoji are drawn on
# a transparent canvas), into DEST (default data/openmoji): DEST/<res>/images.npy, uint8
# [4495, res, res, 3], for each RES (default 64 128 256), plus DEST/manifest.json (hexcode,
# group, annotation, skin tone of each row). `lla.data.OpenMoji(DEST, resolution=RES)` reads
# them. Needs curl or npm, sha256sum and Python with pip; renders only the resolutions not
# yet in DEST, so a second run does nothing. About 1.2 GB for the three resolutions.
# Usage: bash scripts/fetch_openmoji.sh [DEST [RES ...]]
#   (OPENMOJI_TGZ=path/to/openmoji-17.0.0.tgz uses a tarball downloaded elsewhere)
set -euo pipefail
dest="${1:-data/openmoji}"
shift || true
resolutions=("$@")
[ ${#resolutions[@]} -gt 0 ] || resolutions=(64 128 256)
python="${PYTHON:-python3}"
[ -x .venv/bin/python ] && python="${PYTHON:-.venv/bin/python}"
version=17.0.0
tarball_url="https://registry.npmjs.org/openmoji/-/openmoji-$version.tgz"
tarball_sha256=55ee7d13485dec86e9f38c1f3a645a13382d33ff97c0cd845ee824b0aef45e68
resvg=resvg-py==0.5.0

for res in "${resolutions[@]}"; do
  if ! [[ "$res" =~ ^[1-9][0-9]*$ ]]; then
    echo "fetch_openmoji: resolution '$res' is not a positive integer" >&2
    echo "  Usage: bash scripts/fetch_openmoji.sh [DEST [RES ...]]" >&2
    exit 1
  fi
done
if ! command -v "$python" >/dev/null 2>&1 || ! "$python" -c 'import lla' 2>/dev/null; then
  echo "fetch_openmoji: $python cannot import lla; run bash scripts/setup.sh first" \
       "(or point PYTHON at an environment with lla installed)." >&2
  exit 1
fi
missing="$("$python" -c 'import sys; from lla.data.openmoji import missing_resolutions
print(*missing_resolutions(sys.argv[1], map(int, sys.argv[2:])))' "$dest" "${resolutions[@]}")"
if [ -z "$missing" ]; then
  echo "OpenMoji ${resolutions[*]} px is already in $(cd "$dest" && pwd)"
  exit 0
fi

if ! "$python" -c "import resvg_py, sys; sys.exit(resvg_py.__version__ != '${resvg#*==}')" \
    2>/dev/null; then
  echo "fetch_openmoji: installing $resvg (the SVG renderer) into $("$python" -c \
    'import sys; print(sys.prefix)')" >&2
  if ! "$python" -m pip install --quiet --disable-pip-version-check "$resvg" >&2; then
    echo "fetch_openmoji: could not install $resvg from PyPI (no network?)." >&2
    exit 1
  fi
fi
if ! command -v sha256sum >/dev/null 2>&1; then
  echo "fetch_openmoji: sha256sum not found (coreutils)." >&2
  exit 1
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
tgz="$work/openmoji-$version.tgz"
if [ -n "${OPENMOJI_TGZ:-}" ]; then  # a tarball fetched elsewhere
  cp "$OPENMOJI_TGZ" "$tgz"
elif command -v curl >/dev/null 2>&1; then
  curl -fsSL --retry 3 -o "$tgz" "$tarball_url" || rm -f "$tgz"
fi
if [ -z "${OPENMOJI_TGZ:-}" ] && [ ! -f "$tgz" ] && command -v npm >/dev/null 2>&1; then
  (cd "$work" && npm pack --silent "openmoji@$version" >/dev/null) || rm -f "$tgz"
fi
if [ ! -f "$tgz" ]; then
  echo "fetch_openmoji: could not download openmoji@$version from the npm registry" \
       "(no network, or neither curl nor npm?)." >&2
  echo "  Elsewhere: npm pack openmoji@$version, then run this script with the .tgz in" \
       "\$OPENMOJI_TGZ" >&2
  exit 1
fi
if ! sha256sum --check --status <<<"$tarball_sha256  $tgz"; then
  echo "fetch_openmoji: openmoji-$version.tgz does not match the pinned SHA-256" \
       "$tarball_sha256" >&2
  sha256sum "$tgz" >&2 || true
  exit 1
fi

echo "fetch_openmoji: rendering $missing px into $dest" >&2
start=$SECONDS
"$python" - "$tgz" "$dest" $missing <<'PY'
import sys
from lla.data.openmoji import write_dataset
tarball, dest, *resolutions = sys.argv[1:]
manifest = write_dataset(tarball, dest, [int(r) for r in resolutions], progress=True)
print(f"{manifest['count']} emoji of {manifest['package']} rendered with "
      f"{manifest['renderer']}; resolutions in {dest}: {manifest['resolutions']}")
PY
echo "OpenMoji is in $(cd "$dest" && pwd) ($((SECONDS - start)) s):"
ls -l "$dest" "$dest"/*/
