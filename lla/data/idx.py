"""IDX files (the MNIST format) and Fashion-MNIST read from them.

Get Fashion-MNIST (Debian package `dataset-fashion-mnist`, MIT) with
`bash scripts/fetch_fashion_mnist.sh [DEST]` (default `data/fashion-mnist`).
"""

from __future__ import annotations

import gzip
import math
import os
import pathlib

import numpy as np
from PIL import Image

from lla.data.arrays import ArraySource

# IDX type byte -> element type (big-endian).
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FASHION_MNIST_CLASSES = ("t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal",
                         "shirt", "sneaker", "bag", "ankle boot")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """The array stored in IDX file `path` (gzip-compressed if it ends in .gz).

    Layout: magic `00 00 <type> <ndim>`, ndim big-endian uint32 sizes, then the elements.
    """
    path = pathlib.Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as file:
            data = file.read()
    except (EOFError, gzip.BadGzipFile) as error:
        raise ValueError(f"cannot read IDX file {str(path)!r}: {error}") from error
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] not in IDX_DTYPES:
        raise ValueError(f"{str(path)!r} is not an IDX file: magic number {data[:4].hex()}, "
                         "expected 0000TTNN (TT a type code such as 08 for uint8, NN the "
                         "number of dimensions; 00000803 for images, 00000801 for labels)")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(IDX_DTYPES[data[2]])
    if len(data) != header + math.prod(shape) * dtype.itemsize:
        raise ValueError(f"IDX file {str(path)!r} is {len(data)} bytes, but its header promises "
                         f"shape {shape} of {dtype} ({header + math.prod(shape) * dtype.itemsize} "
                         "bytes): truncated or not an IDX file")
    return np.frombuffer(data, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def fashion_mnist(directory: str | os.PathLike = "data/fashion-mnist", split: str = "train", *,
                  resolution: int = 32, channels: int = 3) -> ArraySource:
    """Fashion-MNIST `split` ("train": 60k, "test": 10k) from the IDX files in `directory`.

    The 28x28 grey images are resized (bilinear) to `resolution`, and repeated to RGB when
    `channels=3` (the default, so RGB models can train on it). 10 classes,
    `FASHION_MNIST_CLASSES`. Files may be gzipped (`.gz`, as the Debian package ships them).
    """
    if split not in FASHION_MNIST_FILES:
        raise ValueError(f"unknown Fashion-MNIST split {split!r}; known: "
                         f"{', '.join(FASHION_MNIST_FILES)}")
    directory = pathlib.Path(directory).expanduser()
    paths = [find_idx(directory, name) for name in FASHION_MNIST_FILES[split]]
    if None in paths:
        expected = " and ".join(f"{name}.gz" for name in FASHION_MNIST_FILES[split])
        raise FileNotFoundError(
            f"Fashion-MNIST {split} files not found in {str(directory)!r}: expected {expected} "
            f"(or the same names without .gz). Fetch them with "
            f"`bash scripts/fetch_fashion_mnist.sh {directory}`")
    images, labels = (read_idx(path) for path in paths)
    if images.ndim != 3 or images.dtype != np.uint8 or labels.ndim != 1:
        raise ValueError(f"{paths[0]} / {paths[1]}: expected uint8 images [N, 28, 28] and labels "
                         f"[N], got {images.dtype} {images.shape} and {labels.shape}")
    return ArraySource(images, labels, resolution=resolution, channels=channels,
                       num_classes=len(FASHION_MNIST_CLASSES),
                       class_names=FASHION_MNIST_CLASSES,
                       resample=Image.Resampling.BILINEAR)


def find_idx(directory: pathlib.Path, name: str) -> pathlib.Path | None:
    """`directory/name.gz` or `directory/name`, whichever exists first, else None."""
    for candidate in (directory / f"{name}.gz", directory / name):
        if candidate.is_file():
            return candidate
    return None
