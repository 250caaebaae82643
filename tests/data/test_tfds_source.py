"""TFDS: the not-installed message, and the adapter against a stand-in `tensorflow_datasets`
(TFDS itself is an optional dependency and is not installed for the tests)."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from lla.data import batches, get_source, tfds_source


def test_not_installed_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import fails
    with pytest.raises(ImportError, match=r"pip install -e '\.\[tfds\]'"):
        tfds_source("mnist", resolution=32)
    with pytest.raises(ImportError, match="tensorflow-datasets"):
        get_source("tfds:celeb_a", resolution=32)


class FakeBuilder:
    def __init__(self, name, data_dir=None):
        if name != "toy":
            raise ValueError(f"dataset {name} not found")
        label = types.SimpleNamespace(num_classes=3)
        self.info = types.SimpleNamespace(features={"image": object(), "label": label})

    def as_data_source(self, split):
        rng = np.random.default_rng(0)
        return [{"image": rng.integers(0, 256, (30, 20, 1), dtype=np.uint8), "label": i % 3}
                for i in range(5)]


@pytest.fixture
def fake_tfds(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets",
                        types.SimpleNamespace(builder=FakeBuilder))


def test_reads_records_by_random_access(fake_tfds):
    source = get_source("tfds:toy", resolution=8)
    assert (source.num_examples, source.num_classes) == (5, 3)
    batch = next(batches(source, batch_size=5, seed=0))
    assert batch["image"].shape == (5, 8, 8, 3)
    assert sorted(batch["label"].tolist()) == [0, 0, 1, 1, 2]


def test_unlabelled_and_errors(fake_tfds):
    assert tfds_source("toy", resolution=8, label_key=None).example(4)[1] == 0
    with pytest.raises(RuntimeError, match="tfds build nope --file_format=array_record"):
        tfds_source("nope", resolution=8)
    with pytest.raises(ValueError, match="no feature 'img'; features: image, label"):
        tfds_source("toy", resolution=8, image_key="img")
    with pytest.raises(ValueError, match=r"no feature 'class'.*label_key=None"):
        tfds_source("toy", resolution=8, label_key="class")
