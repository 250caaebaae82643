"""The key-major CSR transpose of LLSA selections."""

from __future__ import annotations

import numpy as np

from lla.pallas_kernels.llsa.metadata import transpose_picks


def test_transpose_lists_every_reader_in_ascending_order():
    rng = np.random.default_rng(0)
    rows, groups, topk, keys = 3, 10, 3, 7
    picks = np.stack([[rng.choice(keys, topk, replace=False) for _ in range(groups)]
                      for _ in range(rows)]).astype(np.int32)
    offsets, flat = map(np.asarray, transpose_picks(picks, keys))
    assert offsets.shape == (rows, keys + 1) and flat.shape == (rows, groups * topk)
    for r in range(rows):
        assert offsets[r, 0] == 0 and offsets[r, -1] == groups * topk
        for j in range(keys):
            readers = flat[r, offsets[r, j]:offsets[r, j + 1]]
            expected = [g for g in range(groups) if j in picks[r, g]]
            assert readers.tolist() == expected


def test_unpicked_keys_have_empty_ranges():
    picks = np.array([[[0, 2], [2, 0]]], np.int32)
    offsets, flat = map(np.asarray, transpose_picks(picks, 4))
    assert offsets.tolist() == [[0, 2, 2, 4, 4]]
    assert flat.tolist() == [[0, 1, 0, 1]]
