"""IDX reading and Fashion-MNIST from small synthetic IDX files (no network)."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from lla.data import fashion_mnist, get_source, read_idx

TYPE_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D}


def idx_bytes(array):
    """The IDX encoding of `array`, written independently of `read_idx`."""
    array = np.asarray(array)
    header = bytes([0, 0, TYPE_CODES[array.dtype], array.ndim])
    header += b"".join(size.to_bytes(4, "big") for size in array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path, array):
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def write_fashion_mnist(directory, count=6, split="train", gz=True):
    prefix = {"train": "train", "test": "t10k"}[split]
    suffix = ".gz" if gz else ""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, count).astype(np.uint8)
    write_idx(directory / f"{prefix}-images-idx3-ubyte{suffix}", images)
    write_idx(directory / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
    return images, labels


@pytest.mark.parametrize(("name", "array"), [
    ("images.gz", np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)),
    ("labels", np.array([1, -2, 70000], np.int32)),
    ("matrix.gz", np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)),
])
def test_round_trip(tmp_path, name, array):
    write_idx(tmp_path / name, array)
    read = read_idx(tmp_path / name)
    assert read.dtype == array.dtype and read.dtype.isnative
    np.testing.assert_array_equal(read, array)


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_from_idx_files(tmp_path, gz):
    images, labels = write_fashion_mnist(tmp_path, gz=gz)
    source = fashion_mnist(tmp_path, "train", resolution=28, channels=1)
    assert (source.num_examples, source.num_classes) == (6, 10)
    assert source.class_names[0] == "t-shirt/top" and source.class_names[9] == "ankle boot"
    for index in range(6):
        image, label = source.example(index)
        np.testing.assert_array_equal(image[..., 0], images[index])
        assert label == labels[index]


def test_fashion_mnist_upscaled_rgb(tmp_path):
    images, _ = write_fashion_mnist(tmp_path, split="test")
    source = get_source("fashion_mnist", directory=tmp_path, split="test", resolution=56)
    image, _ = source.example(2)
    assert image.shape == (56, 56, 3) and image.dtype == np.uint8
    assert np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 1],
                                                                          image[..., 2])
    pooled = image[..., 0].reshape(28, 2, 28, 2).astype(float).mean(axis=(1, 3))
    assert np.corrcoef(pooled.ravel(), images[2].ravel())[0, 1] > 0.9


def test_missing_files_name_the_expected_files_and_the_fetch_script(tmp_path):
    write_fashion_mnist(tmp_path, split="train")
    with pytest.raises(FileNotFoundError, match=r"t10k-images-idx3-ubyte\.gz and "
                                                r"t10k-labels-idx1-ubyte\.gz.*"
                                                r"scripts/fetch_fashion_mnist\.sh"):
        fashion_mnist(tmp_path, "test")
    with pytest.raises(FileNotFoundError, match="train-images"):
        fashion_mnist(tmp_path / "nowhere")


def test_bad_magic_number(tmp_path):
    (tmp_path / "x.idx").write_bytes(b"\x12\x34\x08\x01" + bytes(8))
    with pytest.raises(ValueError, match="not an IDX file: magic number 12340801"):
        read_idx(tmp_path / "x.idx")
    (tmp_path / "y.idx").write_bytes(b"\0\0\x07\x01" + bytes(8))  # unknown type code
    with pytest.raises(ValueError, match="magic number 00000701"):
        read_idx(tmp_path / "y.idx")


def test_truncated_file_and_broken_gzip(tmp_path):
    (tmp_path / "short.idx").write_bytes(idx_bytes(np.zeros((4, 5), np.uint8))[:-3])
    with pytest.raises(ValueError, match=r"shape \(4, 5\).*truncated"):
        read_idx(tmp_path / "short.idx")
    (tmp_path / "plain.gz").write_bytes(idx_bytes(np.zeros(3, np.uint8)))
    with pytest.raises(ValueError, match=r"cannot read IDX file .*plain\.gz"):
        read_idx(tmp_path / "plain.gz")


def test_inconsistent_files_and_unknown_split(tmp_path):
    write_fashion_mnist(tmp_path, count=6)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(5, np.uint8))
    with pytest.raises(ValueError, match="6 images but labels of shape"):
        fashion_mnist(tmp_path)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros(5, np.uint8))
    with pytest.raises(ValueError, match=r"expected uint8 images \[N, 28, 28\]"):
        fashion_mnist(tmp_path)
    with pytest.raises(ValueError, match="unknown Fashion-MNIST split 'validation'"):
        fashion_mnist(tmp_path, "validation")
