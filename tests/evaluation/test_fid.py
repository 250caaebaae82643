"""FID against closed forms and scipy's sqrtm, KID against its definition written out and
its unbiasedness, and the reference-feature cache's keys."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from lla.evaluation import fid


def correlated(rng, n, d, shift=0.0):
    mixing = rng.normal(size=(d, d)) / np.sqrt(d)
    return rng.normal(size=(n, d)) @ mixing + shift


@pytest.mark.parametrize(("n", "d"), [(300, 16), (20, 256)])  # full rank and rank 19
def test_fid_of_identical_sets_is_zero(n, d):
    features = np.abs(correlated(np.random.default_rng(0), n, d))
    assert abs(fid.fid(features, features)) < 1e-6


def test_fid_of_diagonal_gaussians_is_the_closed_form_and_rotation_invariant():
    rng = np.random.default_rng(1)
    d = 12
    a_var, b_var = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    a_mean, b_mean = rng.normal(size=d), rng.normal(size=d)
    expected = np.sum((a_mean - b_mean) ** 2) + np.sum((np.sqrt(a_var) - np.sqrt(b_var)) ** 2)
    a = fid.Statistics(a_mean, np.diag(a_var), 100)
    b = fid.Statistics(b_mean, np.diag(b_var), 100)
    assert fid.frechet_distance(a, b) == pytest.approx(expected, rel=1e-12)
    rotation, _ = np.linalg.qr(rng.normal(size=(d, d)))  # same orthogonal change of basis
    turned = [fid.Statistics(rotation @ s.mean, rotation @ s.cov @ rotation.T, 100)
              for s in (a, b)]
    assert fid.frechet_distance(*turned) == pytest.approx(expected, rel=1e-9)


def test_trace_of_the_matrix_square_root_equals_scipy_sqrtm_when_full_rank():
    rng = np.random.default_rng(2)
    a = fid.statistics(correlated(rng, 500, 32))
    b = fid.statistics(np.abs(correlated(rng, 400, 32, shift=0.3)))
    expected = np.trace(scipy.linalg.sqrtm(a.cov @ b.cov)).real
    assert fid.trace_sqrt_product(a.cov, b.cov) == pytest.approx(expected, rel=1e-10)


def test_statistics_are_float64_mean_and_unbiased_covariance():
    features = np.random.default_rng(3).normal(size=(50, 5)).astype(np.float32)
    stats = fid.statistics(features)
    centred = features.astype(np.float64) - features.astype(np.float64).mean(0)
    assert stats.mean.dtype == stats.cov.dtype == np.float64 and stats.count == 50
    np.testing.assert_allclose(stats.cov, centred.T @ centred / 49, rtol=1e-12)
    with pytest.raises(ValueError, match=r"N >= 2"):
        fid.statistics(features[:1])


def mmd2_by_pairs(x, y, biased=False):
    """MMD^2 with (x . y / d + 1)^3, every pair summed out; unbiased skips i == j within a set."""
    d, m = x.shape[1], len(x)
    k = lambda u, v: (u @ v / d + 1) ** 3  # noqa: E731
    within = sum(k(s[i], s[j]) for s in (x, y) for i in range(m) for j in range(m)
                 if biased or i != j)
    cross = sum(k(x[i], y[j]) for i in range(m) for j in range(m))
    return within / (m * m if biased else m * (m - 1)) - 2 * cross / m ** 2


def test_kid_of_one_full_subset_is_the_unbiased_mmd_written_out():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(6, 3)), rng.normal(size=(9, 3)) + 0.5
    # subset size 1000 clips to 6 rows; a subset of all of x is a permutation of it.
    value, spread = fid.kid(x, y[:6], subsets=1)
    assert value == pytest.approx(mmd2_by_pairs(x, y[:6]), rel=1e-12) and spread == 0
    mean, std = fid.kid(x, y, subset_size=4, subsets=7, seed=1)
    rng = np.random.default_rng(1)  # the same draws: x rows, then y rows, per subset
    values = [mmd2_by_pairs(x[rng.choice(6, 4, replace=False)], y[rng.choice(9, 4, replace=False)])
              for _ in range(7)]
    assert (mean, std) == pytest.approx((np.mean(values), np.std(values)), rel=1e-12)


def test_kid_is_unbiased_for_one_distribution_and_positive_for_two():
    rng = np.random.default_rng(5)
    trials = [(rng.normal(size=(30, 4)), rng.normal(size=(30, 4))) for _ in range(200)]
    unbiased = np.array([fid.kid(x, y, subsets=1)[0] for x, y in trials])
    biased = np.array([mmd2_by_pairs(x[:10], y[:10], biased=True) for x, y in trials])
    standard_error = unbiased.std() / np.sqrt(len(trials))
    assert abs(unbiased.mean()) < 3 * standard_error
    assert biased.mean() > 10 * biased.std() / np.sqrt(len(trials))  # the test can tell
    x, y = rng.normal(size=(400, 4)), rng.normal(size=(400, 4))
    same_mean, same_std = fid.kid(x, y, subset_size=100, subsets=50)
    assert abs(same_mean) < 3 * same_std
    shifted_mean, shifted_std = fid.kid(x, y + 1.0, subset_size=100, subsets=50)
    assert shifted_mean > 5 * shifted_std and shifted_mean > 20 * abs(same_mean)


def test_kid_needs_two_rows_and_one_dimension():
    with pytest.raises(ValueError, match=">= 2 rows"):
        fid.kid(np.zeros((1, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="dimensions differ"):
        fid.kid(np.zeros((4, 3)), np.zeros((4, 2)))


class CountingImages:
    """images() for fid.reference: `count` procedural uint8 images, counting its calls."""

    def __init__(self, count, resolution):
        self.count, self.resolution, self.calls = count, resolution, 0

    def __call__(self):
        self.calls += 1
        rng = np.random.default_rng(self.count * 1000 + self.resolution)
        images = rng.integers(0, 256, (self.count, self.resolution, self.resolution, 3))
        return iter(np.array_split(images.astype(np.uint8), 3))  # batches


def pixel_features(batch):
    """A stand-in feature network: per-channel means and standard deviations, [B, 6]."""
    batch = batch.astype(np.float64)
    return np.concatenate([batch.mean((1, 2)), batch.std((1, 2))], axis=1)


def test_reference_features_are_cached_by_dataset_resolution_and_count(tmp_path):
    def reference(name, resolution, count, images, version="v1"):
        return fid.reference(name, resolution, count, images, features=pixel_features,
                             version=version, directory=tmp_path)

    images = CountingImages(8, 16)
    first = reference("toy", 16, 8, images)
    assert images.calls == 1 and first.features.shape == (8, 6)
    assert first.features.dtype == np.float32 and first.statistics.count == 8
    again = reference("toy", 16, 8, images)
    assert images.calls == 1                                          # from the file
    np.testing.assert_array_equal(again.features, first.features)
    np.testing.assert_array_equal(again.statistics.cov, first.statistics.cov)
    for name, resolution, count in (("toy", 16, 6), ("toy", 32, 8), ("toy2", 16, 8)):
        other = CountingImages(count, resolution)
        assert reference(name, resolution, count, other).features.shape == (count, 6)
        assert other.calls == 1                                       # never the wrong file
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "toy-16px-6.npz", "toy-16px-8.npz", "toy-32px-8.npz", "toy2-16px-8.npz"]
    reference("toy", 16, 8, images, version="v2")                     # another network
    assert images.calls == 2


def test_reference_refuses_wrong_counts_names_and_mislabelled_files(tmp_path):
    with pytest.raises(ValueError, match="gave 5 images, expected 8"):
        fid.reference("toy", 16, 8, CountingImages(5, 16), features=pixel_features,
                      directory=tmp_path)
    with pytest.raises(ValueError, match="dataset name"):
        fid.reference_path("../toy", 16, 8, tmp_path)
    fid.reference("toy", 16, 8, CountingImages(8, 16), features=pixel_features,
                  directory=tmp_path)
    (tmp_path / "toy-16px-8.npz").rename(tmp_path / "toy-16px-9.npz")
    with pytest.raises(ValueError, match="delete it"):
        fid.reference("toy", 16, 9, CountingImages(9, 16), features=pixel_features,
                      directory=tmp_path)
