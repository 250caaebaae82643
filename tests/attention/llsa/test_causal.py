"""Causal LLSA (docs/llsa_causal.md): the Pallas GPU and TPU kernels (interpret mode) against
the "xla" reference across levels, tilings and ablations, strict causality of the library's
implementations, and decoding (prefill + steps) against the causal forward. The reference is
held to the independent brute-force oracle in `test_causal_oracle.py`; the shared op suite
(`test_llsa.py`) also runs `causal=True` through both kernel tilings."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import lla.attention as attention
from lla.attention.llsa import causal, decoding, hierarchy, pallas_gpu
from lla.pallas_kernels.llsa import gpu
from tests.attention.causality import assert_strictly_causal
from tests.attention.llsa.inputs import with_level_structure
from tests.attention.llsa.test_llsa import assert_interpret_matches_reference
from tests.attention.op_test_base import random_qkv

SMALL_TILES = dict(query_blocks=2, fine_chunk=1, pick_chunk=1, coarse_tile=2, dkv_rows=8,
                   coarse_splits=2)


@pytest.mark.parametrize(
    ("shape", "static", "tuning"),
    [
        # L = 1: the coarsest level is the blocks; several coarsest tiles and splits.
        ((1, 64, 64, 2, 1, 8), dict(block_size=4, topk=3, levels=1), SMALL_TILES),
        # L = 3 with every loop run several times, GQA 4:2.
        ((1, 128, 128, 4, 2, 8), dict(block_size=4, topk=2, levels=3), SMALL_TILES),
        # The ablations on the default tiling: plain causal top-K, one coarse level, no weights.
        ((1, 128, 128, 2, 2, 8), dict(block_size=4, topk=2, levels=2, enrich_levels=0), None),
        ((1, 128, 128, 2, 2, 8), dict(block_size=4, topk=2, levels=2, enrich_levels=1), None),
        ((2, 96, 96, 2, 1, 8), dict(block_size=4, topk=2, levels=2, reweight=False), None),
        # One query block per program (no cross-block masks), all picks in one tile.
        ((1, 128, 128, 2, 1, 8), dict(block_size=4, topk=2, levels=2),
         dict(query_blocks=1, pick_chunk=2, fine_chunk=2)),
        # B not a power of two; picks of three per tile.
        ((1, 72, 72, 1, 1, 8), dict(block_size=6, topk=3, levels=1), dict(fine_chunk=3)),
    ],
)
def test_pallas_interpret_matches_reference(shape, static, tuning):
    assert_interpret_matches_reference("pallas_gpu", shape, {**static, "causal": True},
                                       tuning)


@pytest.mark.parametrize("implementation", ["xla", "pallas_gpu"])
def test_strictly_causal(implementation):
    assert_strictly_causal(
        lambda *x: attention.llsa(*x, block_size=4, topk=2, levels=2, causal=True,
                                  implementation=implementation,
                                  interpret=implementation != "xla"),
        (1, 64, 64, 2, 1, 8), t=37)  # t inside a block and a level-2 token: open parents


def test_pallas_tpu_interpret_matches_reference():
    """The TPU kernels in TPU interpret mode (NaN-poisoned buffers): picks and open parents
    at levels 0 and 1, two coarsest tiles, four query chunks in the coarsest dK/dV, GQA."""
    assert_interpret_matches_reference("pallas_tpu", (1, 64, 64, 2, 1, 8),
                                       dict(block_size=4, topk=2, levels=2, causal=True),
                                       dict(coarse_tile=2, query_chunk=16))


# ---- decoding ------------------------------------------------------------------------------

def decode_all(q, k, v, prompt, static):
    """Prefill `prompt` tokens, then step through the rest: the outputs of every position."""
    batch, capacity, heads, head_dim = q.shape
    cache = decoding.init_cache(batch, capacity, heads, k.shape[2], head_dim, k.dtype, **static)
    out, cache = decoding.prefill(q[:, :prompt], k[:, :prompt], v[:, :prompt], cache, **static)
    rows = [out]
    for t in range(prompt, capacity):
        row, cache = decoding.step(q[:, t:t + 1], k[:, t:t + 1], v[:, t:t + 1], cache,
                                   **static)
        rows.append(row)
    return jnp.concatenate(rows, axis=1), cache


@pytest.mark.parametrize(
    ("prompt", "static", "heads"),
    [
        (1, dict(block_size=4, topk=2, levels=2), (4, 2)),
        (6, dict(block_size=4, topk=2, levels=2, enrich_levels=1, reweight=False), (2, 2)),
        (16, dict(block_size=4, topk=3, levels=1), (2, 1)),
        (21, dict(block_size=2, topk=2, levels=3), (2, 2)),
    ],
)
def test_decoding_equals_the_causal_forward(prompt, static, heads):
    """Prefill (prompts inside and at the end of a block) and every later step give the rows
    of one causal forward (float32, < 1e-5): the pooled levels written token by token, the
    per-block selection queries and the open parents all match the definition."""
    q, k, v = random_qkv((2, 32, 32, *heads, 8))
    q, k, v = with_level_structure((q, k, v), static["block_size"], static["levels"])
    expected = attention.llsa(q, k, v, causal=True, implementation="xla", **static)
    got, cache = decode_all(q, k, v, prompt, static)
    error = jnp.abs(got - expected).max(axis=(0, 2, 3)) / jnp.abs(expected).max()
    assert float(error.max()) < 1e-5, f"worst position {int(jnp.argmax(error))}"
    assert int(cache.length) == q.shape[1]
    pyramid = hierarchy.pyramid(k, static["block_size"], static["levels"])
    for level, (cached, want) in enumerate(zip(cache.pooled_keys, pyramid[1:], strict=True),
                                           start=1):
        np.testing.assert_allclose(cached, want, rtol=1e-6, atol=1e-6,
                                   err_msg=f"pooled level {level}")


def test_decoding_past_the_end_and_bad_sizes():
    q, k, v = random_qkv((1, 16, 16, 2, 2, 8))
    static = dict(block_size=4, topk=2, levels=1)
    _, cache = decode_all(q, k, v, 16, static)
    row, _ = decoding.step(q[:, :1], k[:, :1], v[:, :1], cache, **static)
    assert bool(jnp.isnan(row).all())
    with pytest.raises(ValueError, match=r"capacity 18 is not a multiple of .* use 20"):
        decoding.init_cache(1, 18, 2, 2, 8, jnp.float32, **static)
    cache = decoding.init_cache(1, 16, 2, 2, 8, jnp.float32, **static)
    with pytest.raises(ValueError, match="does not fit a cache of 16"):
        decoding.prefill(*random_qkv((1, 20, 20, 2, 2, 8)), cache, **static)


@pytest.mark.parametrize(("tokens", "levels"), [(4096, 2), (1024, 3)])
def test_gpu_selection_equals_the_reference_selection(tokens, levels):
    """The GPU path's causal selection (coarsest level on the block-selection kernel, the
    others on the causal children kernel, in interpret mode) picks what `causal.select`
    picks, slot for slot: 256 coarsest tokens in two key chunks at L = 2, and L = 3's 16
    with two intermediate levels; GQA 2:1."""
    q, k, _ = random_qkv((1, tokens, tokens, 2, 1, 16))
    k_pooled = hierarchy.pyramid(k, 4, levels)
    config = gpu.make_config(4, 3, levels, 2, 1, tokens, 16, causal=True, interpret=True)
    got = pallas_gpu._select_causal(q, k_pooled, config)
    want = causal.select(q, k_pooled, 4, 3)
    assert sorted(got) == sorted(want) == list(range(1, levels + 1))
    for level in want:
        np.testing.assert_array_equal(np.asarray(got[level]),
                                      np.asarray(want[level]).reshape(got[level].shape))
    assert (np.asarray(want[levels])[..., -1] >= 0).any()  # some blocks fill all K slots


def test_gpu_selection_breaks_ties_to_the_lower_token_as_the_reference_does():
    """Equal keys: every candidate ties, so each level keeps its K lowest candidates: the
    children of the lowest picks, before the open parent's complete children."""
    q, _, _ = random_qkv((1, 256, 256, 2, 1, 16))
    k_pooled = hierarchy.pyramid(jnp.ones((1, 256, 1, 16)), 4, 3)
    config = gpu.make_config(4, 3, 3, 2, 1, 256, 16, causal=True, interpret=True)
    got = pallas_gpu._select_causal(q, k_pooled, config)
    want = causal.select(q, k_pooled, 4, 3)
    for level in want:
        np.testing.assert_array_equal(np.asarray(got[level]),
                                      np.asarray(want[level]).reshape(got[level].shape))
    # block 37 (tokens 148..151): complete level-3 tokens 0, 1 (of 64 tokens each), level-2
    # tokens 0..8, level-1 tokens 0..36; so level 3 picks 0 and 1 and an empty slot, level
    # 2 the lowest three of 0..7 and the open parent's 8, level 1 the lowest of 0..11, 36
    np.testing.assert_array_equal(np.asarray(got[3])[0, 37], [0, 1, -1])
    np.testing.assert_array_equal(np.asarray(got[2])[0, 37], [0, 1, 2])
    np.testing.assert_array_equal(np.asarray(got[1])[0, 37], [0, 1, 2])


@pytest.mark.parametrize(("tokens", "block_size", "plain", "causal_levels"),
                         [(65536, 16, 3, 2), (4096, 16, 2, 1), (16, 16, 1, 1), (64, 2, 5, 4)])
def test_default_levels_causal_one_fewer(tokens, block_size, plain, causal_levels):
    """`levels=None` with causal=True is one level below the non-causal default, never 0."""
    assert hierarchy.default_levels(tokens, block_size) == plain
    assert hierarchy.default_levels(tokens, block_size, causal=True) == causal_levels


def test_default_levels_reach_the_op_and_the_cache():
    """The op and the decoding cache resolve causal `levels=None` alike (N = 64, B = 4:
    L = 1, where the non-causal default is 2), so a default cache decodes the default
    forward."""
    static = dict(block_size=4, topk=2)
    q, k, v = with_level_structure(random_qkv((1, 64, 64, 2, 1, 8)), 4, 2)
    default = attention.llsa(q, k, v, causal=True, implementation="xla", **static)
    one = attention.llsa(q, k, v, causal=True, implementation="xla", levels=1, **static)
    two = attention.llsa(q, k, v, causal=True, implementation="xla", levels=2, **static)
    np.testing.assert_array_equal(default, one)
    assert float(jnp.abs(default - two).max()) > 1e-3
    assert len(decoding.init_cache(1, 64, 2, 1, 8, jnp.float32, **static).pooled_keys) == 1
