"""`batches`: determinism, resume, host sharding, epochs, value range, argument errors."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from lla.data import ProceduralShapes, batch_indices, batches, get_source


@dataclasses.dataclass(frozen=True)
class IndexSource:
    """A finite source whose label is the example index and whose pixels are index % 256."""

    num_examples: int = 10
    resolution: int = 2
    channels: int = 1
    num_classes: int = 0

    def example(self, index):
        return np.full((2, 2, 1), index % 256, np.uint8), int(index)


def take(source, steps, **kwargs):
    kwargs = {"batch_size": 4, "seed": 0} | kwargs
    return list(itertools.islice(batches(source, **kwargs), steps))


def labels(batch_list):
    return [batch["label"].tolist() for batch in batch_list]


SOURCES = {"finite": IndexSource(num_examples=7), "procedural": ProceduralShapes(resolution=8)}


@pytest.mark.parametrize("kind", sorted(SOURCES))
def test_same_seed_same_batches_different_seed_different(kind):
    source = SOURCES[kind]
    first, again, other = (take(source, 3, seed=seed) for seed in (3, 3, 4))
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    assert any(not np.array_equal(a["image"], c["image"])
               for a, c in zip(first, other, strict=True))


@pytest.mark.parametrize("kind", sorted(SOURCES))
def test_resume_gives_the_batches_of_an_uninterrupted_run(kind):
    uninterrupted = take(SOURCES[kind], 5, seed=1)
    resumed = take(SOURCES[kind], 2, seed=1, start_step=3)
    for a, b in zip(uninterrupted[3:], resumed, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])


@pytest.mark.parametrize("process_count", [2, 4])
@pytest.mark.parametrize("kind", sorted(SOURCES))
def test_process_shards_partition_the_global_batch(kind, process_count):
    source = SOURCES[kind]
    whole = take(source, 2, batch_size=8, seed=2)
    shards = [take(source, 2, batch_size=8, seed=2, process_index=k,
                   process_count=process_count) for k in range(process_count)]
    for step in range(2):
        parts = [shard[step] for shard in shards]
        for part in parts:
            assert part["image"].shape == (8 // process_count, *whole[0]["image"].shape[1:])
            assert part["label"].shape == (8 // process_count,)
        for key in ("image", "label"):
            np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]),
                                          whole[step][key])
    if kind == "finite":  # indices of one global batch are distinct within an epoch
        indices = [batch_indices(100, batch_size=8, seed=2, step=0, process_index=k,
                                 process_count=process_count) for k in range(process_count)]
        assert len(set(itertools.chain(*indices))) == 8


def test_every_example_once_per_epoch_in_a_new_order():
    stream = list(itertools.chain(*labels(take(IndexSource(num_examples=10), 5))))
    epochs = [stream[:10], stream[10:20]]
    assert all(sorted(epoch) == list(range(10)) for epoch in epochs)
    assert epochs[0] != epochs[1]
    assert epochs[0] != list(range(10))


def test_infinite_sources_never_share_examples_across_seeds():
    seed0 = batch_indices(None, batch_size=4, seed=0, step=0)
    seed1 = batch_indices(None, batch_size=4, seed=1, step=0)
    assert seed0 == [0, 1, 2, 3]
    assert not set(seed0) & set(seed1)


def test_images_are_float32_in_minus_one_one_and_labels_int32():
    batch = take(IndexSource(num_examples=256), 1, batch_size=256)[0]
    assert batch["image"].dtype == np.float32 and batch["label"].dtype == np.int32
    expected = batch["label"].astype(np.float32) / 127.5 - 1
    np.testing.assert_allclose(batch["image"][:, 0, 0, 0], expected, atol=1e-6)
    assert batch["image"].min() == -1.0 and batch["image"].max() == 1.0


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"batch_size": 10, "process_count": 4}, "not divisible by process_count 4; use a "
                                             "multiple of 4, e.g. 8 or 12"),
    ({"batch_size": 3, "process_count": 4}, "e.g. 4$"),
    ({"batch_size": 0}, "batch_size must be a positive int"),
    ({"process_count": 0}, "process_count must be a positive int"),
    ({"process_index": 2, "process_count": 2}, r"process_index must be in \[0, 2\)"),
    ({"process_index": -1, "process_count": 2}, "process_index"),
    ({"seed": -1}, "seed must be a non-negative int"),
    ({"start_step": 1.5}, "start_step must be a non-negative int"),
])
def test_bad_arguments_raise_at_the_call(kwargs, message):
    kwargs = {"batch_size": 8, "seed": 0} | kwargs
    with pytest.raises(ValueError, match=message):
        batches(IndexSource(), **kwargs)


def test_empty_source_is_rejected():
    with pytest.raises(ValueError, match="has no examples"):
        batches(IndexSource(num_examples=0), batch_size=2, seed=0)


class FloatSource(IndexSource):
    def example(self, index):
        return np.zeros((2, 2, 1), np.float32), 0


def test_a_source_returning_the_wrong_array_is_named():
    iterator = batches(FloatSource(), batch_size=2, seed=0)
    with pytest.raises(ValueError, match=r"FloatSource.example\(\d+\) returned float32"):
        next(iterator)


def test_get_source_default_and_unknown_names():
    assert isinstance(get_source(), ProceduralShapes)
    assert get_source("procedural", resolution=32).resolution == 32
    for name in ("imagenet", "tfds:", "Procedural"):
        with pytest.raises(ValueError, match="known: procedural, image_folder, fashion_mnist, "
                                             "openmoji, procedural_text, shakespeare, "
                                             "moving_mnist, "
                                             "tfds:<tfds dataset name>"):
            get_source(name)
    with pytest.raises(ValueError, match="data source 'procedural': got an unexpected keyword "
                                         "argument 'sequence_length'; its arguments are: "
                                         "resolution, channels"):
        get_source("procedural", sequence_length=8)
