"""The block-list metadata of block-sparse attention: query-major lists and their key-major
CSR transpose."""

from __future__ import annotations

import numpy as np

from lla.pallas_kernels.sparse_flash.metadata import query_major, transpose


def random_table(rng, rows, groups, topk, keys, empty_fraction=0.3):
    """int32 [rows, groups, topk]: distinct key blocks per list, some slots -1 (anywhere)."""
    table = np.stack([[rng.choice(keys, topk, replace=False) for _ in range(groups)]
                      for _ in range(rows)]).astype(np.int32)
    table[rng.random(table.shape) < empty_fraction] = -1
    return table


def test_transpose_lists_every_reader_in_ascending_order_and_skips_empty_slots():
    rng = np.random.default_rng(0)
    rows, groups, topk, keys = 3, 10, 3, 7
    table = random_table(rng, rows, groups, topk, keys)
    offsets, readers = map(np.asarray, transpose(table, keys))
    assert offsets.shape == (rows, keys + 1) and readers.shape == (rows, groups * topk)
    for r in range(rows):
        assert offsets[r, 0] == 0 and offsets[r, -1] == (table[r] >= 0).sum()
        for j in range(keys):
            expected = [g for g in range(groups) if j in table[r, g]]
            assert readers[r, offsets[r, j]:offsets[r, j + 1]].tolist() == expected


def test_unpicked_keys_have_empty_ranges():
    offsets, readers = map(np.asarray, transpose(np.array([[[0, 2], [2, 0]]], np.int32), 4))
    assert offsets.tolist() == [[0, 2, 2, 4, 4]]
    assert readers.tolist() == [[0, 1, 0, 1]]


def test_query_major_sorts_valid_blocks_first_and_counts_them():
    table = np.array([[[5, -1, 2, 0], [-1, -1, -1, -1], [3, 1, -1, 4]]], np.int32)
    blocks, counts = map(np.asarray, query_major(table))
    assert counts.tolist() == [[3, 0, 3]]
    assert blocks.tolist() == [[[0, 2, 5, 0], [0, 0, 0, 0], [1, 3, 4, 0]]]
