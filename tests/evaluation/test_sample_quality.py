"""FID/KID of a sampler against its data source (`sample_quality.score`) with a stand-in
feature network: the sampler's batches and keys, the fixed real draw (FID 0 when the
"samples" are exactly those images), the reference cache (computed once, then read), cache
names that tell sources apart, and the errors. The Inception path runs in
tests/experiments/test_evaluate.py."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from lla.data import ArraySource, ProceduralShapes
from lla.evaluation import fid, sample_quality


def pixel_features(batch):
    """A stand-in feature network: per-channel means, standard deviations and mean absolute
    horizontal differences (x 10: texture tells noise from shapes) and corner pixels."""
    batch = batch.astype(np.float64) / 255
    texture = [batch.std((1, 2)), np.abs(np.diff(batch, axis=2)).mean((1, 2))]
    return np.concatenate([batch.mean((1, 2)), 10 * np.concatenate(texture, axis=1),
                           batch[:, 0, 0], batch[:, -1, -1]], axis=1)


def random_source(count=12, resolution=6):
    images = np.random.default_rng(0).integers(0, 256, (count, resolution, resolution, 3),
                                               dtype=np.uint8)
    return ArraySource(images, np.zeros(count), resolution=resolution)


class Replay:
    """A "sampler" that returns the source's images at `indices`, batch after batch, and
    records the keys it was given."""

    def __init__(self, source, indices, batch_size):
        self.source, self.indices, self.batch_size = source, list(indices), batch_size
        self.keys = []

    def __call__(self, key):
        start = len(self.keys) * self.batch_size
        self.keys.append(key)
        chosen = (self.indices * 2)[start:start + self.batch_size]  # wraps past the end
        return np.stack([self.source.example(int(i))[0] for i in chosen])


class CountingFeatures:
    def __init__(self):
        self.images = 0

    def __call__(self, batch):
        self.images += len(batch)
        return pixel_features(batch)


def score(sample, source, count, batch_size, directory, features=pixel_features, **kwargs):
    return sample_quality.score(sample, source, count=count, batch_size=batch_size,
                                key=jax.random.key(3), features=features, version="pixels",
                                directory=directory, progress=False, **kwargs)


def test_the_reference_images_replayed_score_zero_and_batches_drop_the_surplus(tmp_path):
    source = random_source()
    indices = sample_quality.reference_indices(source, 10)
    assert sorted(indices.tolist()) != list(range(10))        # a permutation, not a prefix
    assert len(set(indices.tolist())) == 10
    replay = Replay(source, indices, batch_size=4)            # 3 batches, 2 surplus images
    scores = score(replay, source, 10, 4, tmp_path)
    assert scores.fid == pytest.approx(0.0, abs=1e-9)
    assert (scores.count, scores.reference_count, scores.kid_subset_size) == (10, 10, 10)
    assert len(replay.keys) == 3
    for i, key in enumerate(replay.keys):
        assert (jax.random.key_data(key) == jax.random.key_data(
            jax.random.fold_in(jax.random.key(3), i))).all()
    unused = sorted(set(range(12)) - set(indices.tolist()))
    other = Replay(source, [*indices[:8], *unused], batch_size=4)   # 2 of 10 images differ
    assert score(other, source, 10, 4, tmp_path).fid > 0.01


def test_noise_scores_far_worse_than_real_images(tmp_path):
    source = ProceduralShapes(resolution=8, channels=1)
    real = Replay(source, range(100, 140), batch_size=8)      # unseen images of the source
    noise = np.random.default_rng(0)

    def noise_sampler(key):
        return noise.integers(0, 256, (8, 8, 8, 1), dtype=np.uint8)

    good = score(real, source, 40, 8, tmp_path, kid_subsets=20)
    bad = score(noise_sampler, source, 40, 8, tmp_path, kid_subsets=20)
    assert bad.fid > 10 * good.fid and bad.kid_mean > 10 * abs(good.kid_mean)
    assert good.metrics() == {"samples/fid": good.fid, "samples/kid_mean": good.kid_mean,
                              "samples/kid_std": good.kid_std}
    assert set(good.metrics("samples_raw/")) == {"samples_raw/fid", "samples_raw/kid_mean",
                                                  "samples_raw/kid_std"}


def test_the_reference_is_computed_once_then_read_from_the_cache(tmp_path):
    source = random_source()
    features = CountingFeatures()
    replay = Replay(source, range(6), batch_size=4)
    first = score(replay, source, 6, 4, tmp_path, features=features)
    assert features.images == 6 + 6                           # real images, then samples
    path = sample_quality.reference_file(source, 6, tmp_path)
    assert path.is_file() and path.name == f"{first.reference}-6px-6.npz"
    cached = fid.reference(first.reference, 6, 6, lambda: pytest.fail("recomputed"),
                           version="pixels", directory=tmp_path)
    np.testing.assert_array_equal(
        cached.features, pixel_features(np.stack(
            [source.example(int(i))[0] for i in sample_quality.reference_indices(source, 6)]))
        .astype(np.float32))
    again = score(Replay(source, range(6), batch_size=4), source, 6, 4, tmp_path,
                  features=features)
    assert features.images == 12 + 6                          # the samples only
    assert again.fid == first.fid


def test_more_samples_than_images_use_every_image_once(tmp_path):
    source = random_source(count=5)
    scores = score(Replay(source, range(5), batch_size=4), source, 8, 4, tmp_path)
    assert (scores.count, scores.reference_count, scores.kid_subset_size) == (8, 5, 5)
    assert sorted(sample_quality.reference_indices(source, 8).tolist()) == list(range(5))
    assert sample_quality.reference_file(source, 8, tmp_path).name.endswith("-6px-5.npz")


def test_cache_names_tell_sources_apart_and_repeat_for_the_same_source():
    names = {sample_quality.reference_name(source) for source in (
        ProceduralShapes(resolution=8, channels=1), ProceduralShapes(resolution=8, channels=3),
        ProceduralShapes(resolution=16, channels=1), random_source(), random_source(count=11))}
    assert len(names) == 5
    name = sample_quality.reference_name(ProceduralShapes(resolution=8, channels=1))
    assert name == sample_quality.reference_name(ProceduralShapes(resolution=8, channels=1))
    assert name.startswith("proceduralshapes-") and fid.DATASET_NAME.fullmatch(name)


def test_refuses_fewer_than_two_samples_and_wrong_batches(tmp_path):
    source = random_source()
    with pytest.raises(ValueError, match="need >= 2 samples"):
        score(Replay(source, range(4), 4), source, 1, 4, tmp_path)
    with pytest.raises(ValueError, match="gave 3 images, expected batch_size 4"):
        score(Replay(source, range(3), 3), source, 6, 4, tmp_path)
    with pytest.raises(ValueError, match="has 1 image"):
        score(Replay(source, range(4), 4), random_source(count=1), 4, 4, tmp_path)
