"""ArraySource: resizing, and the cache of resized images."""

import numpy as np

from lla.data import ArraySource


def test_cached_examples_equal_freshly_resized_ones():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labels = np.arange(5)
    cached = ArraySource(images, labels, resolution=32, channels=3)
    fresh = ArraySource(images, labels, resolution=32, channels=3, cache_bytes=0)
    assert fresh._cache is None and cached._cache is not None
    for _ in range(2):  # the second pass reads the cache
        for index in (3, 0, 3, 4):
            (a, label_a), (b, label_b) = cached.example(index), fresh.example(index)
            np.testing.assert_array_equal(a, b)
            assert label_a == label_b == index
    for _ in range(2):  # fresh or from the cache, what callers get is read-only
        assert not cached.example(1)[0].flags.writeable
    assert cached._cached.sum() == 4
