"""The memorisation check on small random arrays: nearest neighbours against brute force across
chunk boundaries (with leave-one-out exclusion), a copied training image found at distance 0
with ratio 0, novel samples at ratio ~1, far ones at large ratios, the summary's fractions and
the suspicious grid's layout. The evaluator's --memorisation runs in
tests/experiments/test_evaluate.py."""

from __future__ import annotations

import numpy as np
import pytest

from lla.evaluation import memorisation


def brute_force(queries, keys, exclude=None):
    """(distance, index) of the nearest key, numpy float64, the excluded key skipped."""
    distance = np.linalg.norm(queries[:, None].astype(np.float64) - keys[None], axis=-1)
    if exclude is not None:
        distance[np.arange(len(queries)), exclude] = np.inf
    return distance.min(1), distance.argmin(1)


@pytest.mark.parametrize(("queries", "keys", "chunk_size"), [(37, 53, 16), (5, 3, 2), (16, 17, 8)])
def test_nearest_neighbours_match_brute_force_across_chunks(queries, keys, chunk_size):
    rng = np.random.default_rng(queries)
    q = rng.normal(size=(queries, 7)).astype(np.float32)
    q[-1] = 0  # the padding keys are zeros: they must never be found
    k = rng.normal(size=(keys, 7)).astype(np.float32)
    found = memorisation.nearest_neighbours(q, k, chunk_size=chunk_size)
    distance, index = brute_force(q, k)
    np.testing.assert_array_equal(found.index, index)
    np.testing.assert_allclose(found.distance, distance, rtol=1e-5)
    assert found.distance.dtype == np.float32 and found.index.shape == (queries,)
    # The nearest key sits in the last, partial chunk for some query (padding must not win).
    assert (index >= (keys // chunk_size) * chunk_size).any() or keys % chunk_size == 0


def test_leave_one_out_skips_each_query_s_own_row():
    keys = np.random.default_rng(1).normal(size=(23, 5)).astype(np.float32)
    found = memorisation.nearest_neighbours(keys, keys, exclude=np.arange(23), chunk_size=8)
    distance, index = brute_force(keys, keys, np.arange(23))
    np.testing.assert_array_equal(found.index, index)
    np.testing.assert_allclose(found.distance, distance, rtol=1e-5)
    assert (found.distance > 0).all()


def test_uint8_images_are_compared_exactly():
    # Large uint8 norms cancel in |q|^2 - 2 q.k + |k|^2; the recomputed distance is exact.
    keys = np.random.default_rng(2).integers(0, 256, (9, 3 * 16 * 16), dtype=np.uint8)
    found = memorisation.nearest_neighbours(keys[[4, 0, 8]], keys, chunk_size=4)
    np.testing.assert_array_equal(found.index, [4, 0, 8])
    np.testing.assert_array_equal(found.distance, 0)


def images_and_features(rng, count, resolution=6):
    """uint8 images [count, R, R, 3] and stand-in features float32 [count, 11]."""
    images = rng.integers(0, 256, (count, resolution, resolution, 3), dtype=np.uint8)
    return images, rng.normal(size=(count, 11)).astype(np.float32)


def test_a_copied_training_image_has_distance_and_ratio_zero_novel_ones_about_one():
    rng = np.random.default_rng(3)
    train, train_features = images_and_features(rng, 41)
    held_out, held_out_features = images_and_features(rng, 19)
    novel, novel_features = images_and_features(rng, 9)
    samples = np.concatenate([novel[:4], train[[29]], novel[4:]])
    sample_features = np.concatenate([novel_features[:4], train_features[[29]],
                                      novel_features[4:]])
    report = memorisation.check(samples, sample_features, train, train_features, held_out,
                                held_out_features, chunk_size=8)
    for space, (s, t, h) in ((report.pixel, (samples, train, held_out)),
                             (report.inception, (sample_features, train_features,
                                                 held_out_features))):
        flat = [a.reshape(len(a), -1).astype(np.float64) for a in (s, t, h)]
        scale = 1 / 127.5 if space is report.pixel else 1.0
        distance, index = brute_force(flat[0], flat[1])
        np.testing.assert_array_equal(space.samples.index, index)
        np.testing.assert_allclose(space.samples.distance, distance * scale, rtol=1e-5)
        baseline = np.median(brute_force(flat[2], flat[1])[0]) * scale
        assert space.baseline == pytest.approx(baseline, rel=1e-5)
        np.testing.assert_allclose(space.ratio, distance * scale / baseline, rtol=1e-5)
        assert space.samples.index[4] == 29 and space.samples.distance[4] == 0
        novel_ratio = np.delete(space.ratio, 4)
        assert novel_ratio.min() > 0.5 and novel_ratio.max() < 2  # as new as unseen data
    assert report.ratio[4] == 0 and not report.leave_one_out
    assert report.most_suspicious(3)[0] == 4

    summary = report.summary(threshold=0.5, train_ids=np.arange(41) + 1000)
    assert summary["baseline"] == "held_out" and summary["samples"] == 10
    assert summary["reference_images"] == 19
    assert summary["fraction_below"] == pytest.approx(0.1)  # only the copy
    assert summary["reference_fraction_below"] == 0.0
    assert summary["pixel"]["ratio_min"] == 0 and summary["inception"]["ratio_min"] == 0
    first = summary["most_suspicious"][0]
    assert first == {"sample": 4, "ratio": 0.0, "pixel_train": 1029, "pixel_distance": 0.0,
                     "inception_train": 1029, "inception_distance": 0.0}
    assert len(summary["most_suspicious"]) == 10
    per_sample = report.per_sample(np.arange(41) + 1000)
    np.testing.assert_array_equal(per_sample["pixel_train"], report.pixel.samples.index + 1000)
    assert {key: value.shape for key, value in per_sample.items()} == {
        key: (10,) for key in ("ratio", "pixel_distance", "pixel_train", "pixel_ratio",
                               "inception_distance", "inception_train", "inception_ratio")}


def test_far_samples_have_large_ratios_and_leave_one_out_is_the_baseline_without_held_out():
    rng = np.random.default_rng(4)
    train = rng.integers(100, 156, (30, 5, 5, 1), dtype=np.uint8)  # mid-grey noise
    train_features = rng.normal(size=(30, 8)).astype(np.float32)
    samples = np.repeat(np.array([0, 255], np.uint8), 3)[:, None, None, None] * np.ones(
        (1, 5, 5, 1), np.uint8)  # black and white: far from every training image
    sample_features = 10 + rng.normal(size=(6, 8)).astype(np.float32)
    report = memorisation.check(samples, sample_features, train, train_features,
                                chunk_size=7)
    assert report.leave_one_out
    flat = train.reshape(30, -1).astype(np.float64)
    baseline = np.median(brute_force(flat, flat, np.arange(30))[0]) / 127.5
    assert report.pixel.baseline == pytest.approx(baseline, rel=1e-5)
    assert (report.pixel.ratio > 3).all() and (report.inception.ratio > 3).all()
    summary = report.summary()
    assert summary["baseline"] == "leave_one_out" and summary["reference_images"] == 30
    assert summary["fraction_below"] == 0.0
    # The training images' own leave-one-out ratios: median 1 by construction.
    assert np.median(report.pixel.reference_ratio) == pytest.approx(1.0, rel=1e-5)


def test_suspicious_grid_rows_are_sample_pixel_and_inception_neighbours():
    rng = np.random.default_rng(5)
    train, train_features = images_and_features(rng, 12, resolution=4)
    samples, sample_features = images_and_features(rng, 5, resolution=4)
    samples[2], sample_features[2] = train[7], train_features[3]  # two different neighbours
    sample_features[4] = train_features[5]  # a copy in Inception space only: suspicious too
    report = memorisation.check(samples, sample_features, train, train_features)
    assert report.ratio[4] == 0 < report.pixel.ratio[4]
    grid = memorisation.suspicious_grid(report, samples, train, count=2)
    assert grid.shape == (2 * 4, 3 * 4, 3)
    np.testing.assert_array_equal(report.most_suspicious(2), [2, 4])  # ratio ties: lower first
    np.testing.assert_array_equal(grid[:4, :4], samples[2])
    np.testing.assert_array_equal(grid[:4, 4:8], train[7])
    np.testing.assert_array_equal(grid[:4, 8:], train[3])
    np.testing.assert_array_equal(grid[4:, :4], samples[4])
    np.testing.assert_array_equal(grid[4:, 4:8], train[report.pixel.samples.index[4]])
    np.testing.assert_array_equal(grid[4:, 8:], train[5])


def test_errors():
    images, features = images_and_features(np.random.default_rng(6), 4)
    with pytest.raises(ValueError, match="both held_out and held_out_features"):
        memorisation.check(images, features, images, features, held_out=images)
    with pytest.raises(ValueError, match=r"images \(4, 6, 6, 3\) with features \(3, 11\)"):
        memorisation.check(images, features[:3], images, features)
    with pytest.raises(ValueError, match="leave-one-out needs >= 2"):
        memorisation.check(images, features, images[:1], features[:1])
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        memorisation.nearest_neighbours(features, features, chunk_size=0)
    with pytest.raises(ValueError, match=r"expected queries \[N, 11\]"):
        memorisation.nearest_neighbours(features[:, :3], features)
