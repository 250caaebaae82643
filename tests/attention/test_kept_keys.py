"""`lla.attention.kept_keys` (each op's `keys_per_query`) against keys counted in the
independent oracles' masks: the number the benchmarks turn into density and the ideal
speed-up must be the work the op's definition asks for, partial blocks included."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest

import lla.attention as attention
from lla.attention.common import block_sparse
from tests.attention.asa.oracle import asa_mask
from tests.attention.llsa import oracle as llsa_oracle
from tests.attention.sla.oracle import block_class_masks
from tests.attention.topk_block.oracle import topk_block_mask

TOKENS, BLOCK = 100, 16  # 7 blocks, the last of 4 tokens: a query block and a key block


def qkv(tokens=TOKENS, heads=4, kv_heads=2, dim=8, seed=0):
    keys = jax.random.split(jax.random.PRNGKey(seed), 3)
    return (jax.random.normal(keys[0], (2, tokens, heads, dim)),
            jax.random.normal(keys[1], (2, tokens, kv_heads, dim)),
            jax.random.normal(keys[2], (2, tokens, kv_heads, dim)))


def mean_keys(mask: np.ndarray) -> float:
    """bool [B, H, Nq, Nk] -> keys per query, averaged over batch, heads and queries."""
    return float(mask.sum(-1).mean())


@pytest.mark.parametrize(("topk", "local"), [(3, False), (3, True), (7, False)])
def test_topk_block_counts_the_oracle_mask(topk, local):
    q, k, v = qkv()
    want = mean_keys(topk_block_mask(q, k, BLOCK, topk, local=local))
    got = attention.kept_keys("topk_block", q, k, v, block_size=BLOCK, topk=topk, local=local)
    assert got == pytest.approx(want, rel=1e-6)
    if topk == 7:  # every block kept: dense work
        assert got == TOKENS


def test_topk_block_causal_counts_whole_diagonal_blocks():
    """The kernels compute the diagonal block whole and mask it, so it counts whole: the
    oracle's causal mask plus the hidden upper triangle of every diagonal block."""
    q, k, v = qkv()
    hidden = sum(size * (size - 1) / 2 for size in (16,) * 6 + (4,)) / TOKENS
    want = mean_keys(topk_block_mask(q, k, BLOCK, 3, causal=True)) + hidden
    got = attention.kept_keys("topk_block", q, k, v, block_size=BLOCK, topk=3, causal=True)
    assert got == pytest.approx(want, rel=1e-6)


def test_vsa_adds_the_pooled_tiles():
    q, k, v = qkv()
    want = mean_keys(topk_block_mask(q, k, BLOCK, 3)) + math.ceil(TOKENS / BLOCK)
    assert attention.kept_keys("vsa", q, k, v, block_size=BLOCK, topk=3) == pytest.approx(
        want, rel=1e-6)


def test_sla_counts_the_critical_blocks():
    q, k, v = qkv()
    critical, _ = block_class_masks(q, k, BLOCK, 3 / 7, 2 / 7)
    got = attention.kept_keys("sla", q, k, v, block_size=BLOCK, critical=3 / 7,
                              negligible=2 / 7)
    assert got == pytest.approx(mean_keys(critical), rel=1e-6)


@pytest.mark.parametrize(("op", "pool"), [("asa", None), ("asa_gt", 8)])
def test_asa_counts_the_prober_mask_and_global_tokens(op, pool):
    q, k, v = qkv()
    prober = dict(block_size=BLOCK, samples=4, tau=0.5, min_keep=0.1, max_keep=0.7, seed=3)
    want = mean_keys(asa_mask(q, k, **prober)) + (0 if pool is None else
                                                  math.ceil(TOKENS / pool))
    extra = {} if pool is None else {"pool": pool}
    got = attention.kept_keys(op, q, k, v, **prober, **extra)
    assert got == pytest.approx(want, rel=1e-6)
    assert want != pytest.approx(TOKENS)  # tau 0.5 keeps a data-dependent part


@pytest.mark.parametrize("enrich_levels", [0, 1, 2])
def test_llsa_counts_the_oracle_key_sets(enrich_levels):
    q, k, v = qkv(tokens=64, heads=2, kv_heads=1)
    selections = llsa_oracle.select(np.asarray(q), np.asarray(k), 4, 2, 2)
    bias = llsa_oracle.selection_bias(selections, 64, 4, 2, enrich_levels)
    got = attention.kept_keys("llsa", q, k, v, block_size=4, topk=2, levels=2,
                              enrich_levels=enrich_levels)
    assert got == pytest.approx(float(np.isfinite(bias).sum(-1).mean()), rel=1e-6)


def test_ops_that_do_not_say_give_none():
    q, k, v = qkv()
    assert attention.kept_keys("dense", q, k, v) is None


def test_long_sequences_do_not_overflow():
    """65,536 tokens in blocks of 128, all 512 blocks kept: the sums pass 2^31 in int32."""
    tokens = 65536
    indices = np.broadcast_to(np.arange(512, dtype=np.int32), (1, 1, 512, 512))
    keys = block_sparse.listed_keys(jax.numpy.asarray(indices), 128, tokens, tokens)
    assert float(keys) == tokens
