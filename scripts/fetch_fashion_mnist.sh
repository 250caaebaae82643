#!/usr/bin/env bash
# Fetch Fashion-MNIST (60k + 10k 28x28 grey images, 10 classes, MIT) from the Debian package
# `dataset-fashion-mnist` into DEST (default data/fashion-mnist): the four IDX .gz files that
# `lla.data.fashion_mnist(DEST)` reads. Needs apt-get and dpkg (Debian/Ubuntu), not root.
# Usage: bash scripts/fetch_fashion_mnist.sh [DEST]
set -euo pipefail
dest="${1:-data/fashion-mnist}"
files=(train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz
       t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz)

for tool in apt-get dpkg; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "fetch_fashion_mnist: $tool not found; this script needs a Debian/Ubuntu system." >&2
    echo "  Elsewhere, put ${files[*]} into $dest by hand." >&2
    exit 1
  fi
done

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
if ! (cd "$work" && apt-get download dataset-fashion-mnist); then
  echo "fetch_fashion_mnist: download failed; refreshing the package lists (apt-get update)" >&2
  if [ "$(id -u)" -eq 0 ]; then apt-get update; else sudo apt-get update; fi
  (cd "$work" && apt-get download dataset-fashion-mnist)
fi
dpkg -x "$work"/dataset-fashion-mnist_*.deb "$work/root"

source_dir="$work/root/usr/share/datasets/fashion-mnist"
mkdir -p "$dest"
for file in "${files[@]}"; do
  if [ ! -f "$source_dir/$file" ]; then
    echo "fetch_fashion_mnist: $file missing from the package (layout changed?)" >&2
    exit 1
  fi
  cp "$source_dir/$file" "$dest/"
done
echo "Fashion-MNIST is in $(cd "$dest" && pwd):"
ls -l "$dest"
