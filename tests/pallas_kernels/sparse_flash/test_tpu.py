"""The sparse-flash TPU kernels' summary tokens (K2) in TPU interpret mode (NaN-poisoned
buffers): against the plain-JAX block-sparse definition and dense attention over keys +
summaries, and K2's constant-group identity. The plain lists are covered by every op's TPU
tests (topk_block's suite in full)."""

from __future__ import annotations

import pytest

from lla.attention.common.block_sparse_pallas import attend_tpu
from lla.pallas_kernels.sparse_flash import tpu
from tests.pallas_kernels.sparse_flash.test_gpu import (
    assert_constant_groups_equal_their_summaries,
    assert_summary_tokens_join_the_softmax,
)


@pytest.mark.parametrize(("shape", "summary_tokens"), [
    ((1, 22, 22, 2, 1, 8), 5),   # GQA; 5 summaries fill 2 blocks of 4, the last partial
    ((1, 13, 13, 2, 2, 8), 8),   # partial last query and key block, whole summary blocks
])
def test_summary_tokens_join_the_softmax(shape, summary_tokens):
    config = tpu.make_config(4, 3, shape[3], shape[4], shape[1], shape[2], shape[5],
                             summary_tokens=summary_tokens, interpret=True)
    assert config.steps == 3 + -(-summary_tokens // 4)
    assert_summary_tokens_join_the_softmax(attend_tpu, config, shape, summary_tokens)


def test_a_constant_group_equals_its_summary_with_log_count_bias():
    assert_constant_groups_equal_their_summaries(
        attend_tpu, tpu.make_config(4, 4, 2, 1, 32, 32, 8, summary_tokens=4, interpret=True))


def test_summary_tokens_need_non_causal_lists():
    with pytest.raises(ValueError, match="summary tokens are always visible"):
        tpu.make_config(4, 3, 2, 2, 32, 32, 8, summary_tokens=2, causal=True)
