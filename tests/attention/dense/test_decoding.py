"""Dense attention's `Decoding` (`lla/attention/dense/decoding.py`): prefill then steps against
one causal forward, GQA, key chunks crossed by the cache's length, the unfilled tail never
read, one compilation for every length, NaN past the cache's end, and the argument errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lla.attention as attention
from lla.attention import registry
from lla.attention.dense.decoding import KVCache
from tests.attention.op_test_base import random_qkv

DECODING = attention.get("dense").decoding
SMALL_CHUNKS = dict(chunk_q=8, chunk_k=16)


@pytest.fixture(autouse=True)
def _exact_matmuls():
    with jax.default_matmul_precision("highest"):
        yield


def relative_error(actual, expected) -> float:
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))


def decode(q, k, v, prompt, capacity, dtype=jnp.float32, **op_kwargs):
    """(the outputs [B, N, H, D] of a prefill of `prompt` tokens then one step per token, the
    final cache), through jitted prefill and step."""
    batch, tokens, heads, head_dim = q.shape
    cache = DECODING.init(batch, capacity, heads, k.shape[2], head_dim, dtype, **op_kwargs)
    prefill = jax.jit(lambda q, k, v, cache: DECODING.prefill(q, k, v, cache, **op_kwargs))
    step = jax.jit(lambda q, k, v, cache: DECODING.step(q, k, v, cache, **op_kwargs))
    out, cache = prefill(q[:, :prompt], k[:, :prompt], v[:, :prompt], cache)
    rows = [out]
    for t in range(prompt, tokens):
        out, cache = step(q[:, t:t + 1], k[:, t:t + 1], v[:, t:t + 1], cache)
        rows.append(out)
    return jnp.concatenate(rows, axis=1), cache


@pytest.mark.parametrize(
    ("shape", "prompt", "capacity"),
    [((2, 37, 37, 4, 2, 8), 5, 40),      # GQA 4 / 2; the length crosses 16-key chunks
     ((1, 23, 23, 3, 1, 16), 1, 23)],    # MQA, one-token prompt, the cache filled to its end
)
def test_prefill_then_steps_equal_one_causal_forward(shape, prompt, capacity):
    q, k, v = random_qkv(shape)
    with attention.tuning("dense", "xla", **SMALL_CHUNKS):
        expected = attention.dot_product_attention(q, k, v, causal=True)
        out, cache = decode(q, k, v, prompt, capacity)
    assert relative_error(out, expected) < 1e-5
    assert isinstance(cache, KVCache) and int(cache.length) == shape[1]
    assert cache.keys.shape == cache.values.shape == (shape[0], capacity, shape[4], shape[5])
    np.testing.assert_array_equal(cache.keys[:, :shape[1]], k)  # the keys, in order
    np.testing.assert_array_equal(cache.values[:, :shape[1]], v)


def test_op_kwargs_reach_the_op():
    """A scale passed as an op keyword argument is used by prefill and steps alike."""
    q, k, v = random_qkv((2, 12, 12, 2, 2, 8), seed=3)
    expected = attention.dot_product_attention(q, k, v, causal=True, scale=0.1)
    out, _ = decode(q, k, v, 4, 16, scale=0.1, implementation="xla")
    assert relative_error(out, expected) < 1e-5
    assert relative_error(out, attention.dot_product_attention(q, k, v, causal=True)) > 1e-2


def test_the_unfilled_tail_is_never_read():
    """Huge values written past the cache's length change no output bit."""
    q, k, v = random_qkv((2, 9, 9, 2, 2, 8), seed=1)
    cache = DECODING.init(2, 24, 2, 2, 8, jnp.float32)
    _, cache = DECODING.prefill(q[:, :6], k[:, :6], v[:, :6], cache)
    tail = jnp.arange(24)[None, :, None, None] >= 6
    dirty = KVCache(jnp.where(tail, 1e4, cache.keys), jnp.where(tail, 1e4, cache.values),
                    cache.length)
    step = jax.jit(DECODING.step)
    for t in range(6, 9):
        clean_out, cache = step(q[:, t:t + 1], k[:, t:t + 1], v[:, t:t + 1], cache)
        dirty_out, dirty = step(q[:, t:t + 1], k[:, t:t + 1], v[:, t:t + 1], dirty)
        np.testing.assert_array_equal(clean_out, dirty_out)


def test_a_step_compiles_once_for_every_length():
    q, k, v = random_qkv((1, 10, 10, 2, 2, 8))
    traces = []

    def step(q, k, v, cache):
        traces.append(cache.length)
        return DECODING.step(q, k, v, cache)

    step = jax.jit(step)
    _, cache = DECODING.prefill(q[:, :2], k[:, :2], v[:, :2],
                                DECODING.init(1, 10, 2, 2, 8, jnp.float32))
    for t in range(2, 10):
        _, cache = step(q[:, t:t + 1], k[:, t:t + 1], v[:, t:t + 1], cache)
    assert len(traces) == 1 and int(cache.length) == 10


def test_a_step_past_the_cache_end_outputs_nan():
    """The step at position capacity has nowhere to go: its output is NaN (the LM's logits
    past the cache's end are NaN through it); the steps before it are finite."""
    q, k, v = random_qkv((2, 1, 1, 2, 2, 8))
    cache = DECODING.init(2, 3, 2, 2, 8, jnp.float32)
    _, cache = DECODING.prefill(q, k, v, cache)
    step = jax.jit(DECODING.step)
    for _ in range(2):  # positions 1 and 2 fill the cache
        out, cache = step(q, k, v, cache)
        assert np.isfinite(out).all()
    out, cache = step(q, k, v, cache)
    assert np.isnan(out).all() and int(cache.length) == 4
    assert np.isnan(step(q, k, v, cache)[0]).all()


def test_the_cache_keeps_its_dtype():
    """A bfloat16 cache stores float32 keys and values in bfloat16 (the shapes and dtypes of
    a `lax.scan` carry never change)."""
    q, k, v = random_qkv((1, 4, 4, 2, 2, 8), dtype=jnp.bfloat16)
    cache = DECODING.init(1, 8, 2, 2, 8, jnp.bfloat16)
    _, prefilled = jax.eval_shape(DECODING.prefill, q[:, :3], k[:, :3], v[:, :3], cache)
    _, stepped = jax.eval_shape(DECODING.step, q[:, 3:], k[:, 3:].astype(jnp.float32),
                                v[:, 3:].astype(jnp.float32), prefilled)
    expected = jax.tree.map(lambda x: (x.shape, x.dtype), cache)
    for state in (prefilled, stepped):
        assert jax.tree.map(lambda x: (x.shape, x.dtype), state) == expected


def test_what_cannot_be_decoded_is_rejected_with_the_reason():
    q, k, v = random_qkv((1, 5, 5, 2, 2, 8))
    cache = DECODING.init(1, 4, 2, 2, 8, jnp.float32)
    with pytest.raises(ValueError, match="5-token prompt does not fit a cache of 4 positions"):
        DECODING.prefill(q, k, v, cache)
    with pytest.raises(ValueError, match="causal_block_size=4 lets a token see later tokens"):
        DECODING.init(1, 4, 2, 2, 8, jnp.float32, causal_block_size=4)
    with pytest.raises(ValueError, match="causal, segment_ids cannot be passed"):
        DECODING.prefill(q[:, :2], k[:, :2], v[:, :2], cache, causal=True,
                         segment_ids=jnp.ones((1, 2), jnp.int32))


def test_dense_registers_its_decoding():
    op = attention.get("dense")
    assert isinstance(op.decoding, registry.Decoding) and op.capabilities.decode
