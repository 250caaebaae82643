"""The sparse-flash TPU kernels' summary tokens (K2) in TPU interpret mode (NaN-poisoned
buffers): against the plain-JAX block-sparse definition and dense attention over keys +
summaries, and K2's constant-group identity. The plain lists are covered by every op's TPU
tests (topk_block's suite in full)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lla.attention.common.block_sparse import Summary
from lla.attention.common.block_sparse_pallas import attend_tpu
from lla.pallas_kernels.sparse_flash import tpu
from tests.attention.op_test_base import random_qkv, relative_error
from tests.attention.topk_block.oracle import masked_dense_attention
from tests.pallas_kernels.sparse_flash.test_gpu import assert_summary_tokens_join_the_softmax


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
    """As the GPU test: the last 4 blocks constant, listed as 4 summaries with bias ln 4."""
    q, k, v = random_qkv((1, 32, 32, 2, 1, 8))
    k = k.at[:, 16:].set(jnp.repeat(k[:, 16::4], 4, axis=1))
    v = v.at[:, 16:].set(jnp.repeat(v[:, 16::4], 4, axis=1))
    summary = Summary(k[:, 16::4], v[:, 16::4], jnp.full((1, 4, 1), np.log(4.0)))
    indices = jnp.broadcast_to(jnp.arange(4, dtype=jnp.int32), (1, 2, 8, 4))
    config = tpu.make_config(4, 4, 2, 1, 32, 32, 8, summary_tokens=4, interpret=True)
    with jax.default_matmul_precision("highest"):
        dense = masked_dense_attention(q, k, v, np.ones((32, 32), bool))
        assert relative_error(attend_tpu(q, k, v, indices, config, summary), dense) < 1e-5


def test_summary_tokens_need_non_causal_lists():
    with pytest.raises(ValueError, match="summary tokens are always visible"):
        tpu.make_config(4, 3, 2, 2, 32, 32, 8, summary_tokens=2, causal=True)
