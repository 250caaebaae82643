"""Block-sparse attention over an index table, in plain JAX: the readable definition that the
block-sparse ops' references ("topk_block", ...) call and the sparse-flash kernels
(`lla.pallas_kernels.sparse_flash`) are tested against.

Tokens are cut into blocks of B (the last one partial when B does not divide N). Query block
b of head h attends, in one softmax with scale 1/sqrt(D), to the tokens of the key blocks
`indices[:, h, b]` (-1 = an empty slot); `causal` also hides key j from query i when j > i.
Every query must see at least one key. The work is [nQ, B] x [K·B] per head: no N x N array.

Summary tokens (seed-papers K2; `Summary`): S extra keys and values that every query sees in
the same softmax, each with an additive logit bias, typically ln n for a token standing for n
keys (ASA_GT's pooled global tokens, SVG-EAR's centroids). If a group of n keys all equal
(k̄, v̄), attending to its summary with bias ln n instead gives exactly the same output.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from lla.attention.common.validation import check_int


def num_blocks(tokens: int, block_size: int) -> int:
    """ceil(tokens / block_size)."""
    return -(-tokens // block_size)


def block_means(x: jax.Array, block_size: int) -> jax.Array:
    """x [Bt, N, H, D] -> float32 [Bt, ceil(N / B), H, D]: the mean of each block's tokens
    (the last block's own count when it is partial)."""
    batch, tokens, heads, dim = x.shape
    blocks = num_blocks(tokens, block_size)
    padded = jnp.pad(x.astype(jnp.float32), ((0, 0), (0, blocks * block_size - tokens),
                                             (0, 0), (0, 0)))
    sums = padded.reshape(batch, blocks, block_size, heads, dim).sum(2)
    return sums / block_sizes(tokens, block_size)[:, None, None].astype(jnp.float32)


def check_block_arguments(op: str, kv_tokens: int, block_size, topk) -> tuple[int, int]:
    """(block_size, topk) checked to be ints >= 1 with topk at most the number of key blocks;
    else ValueError saying what would work."""
    block_size = check_int(op, "block_size", block_size, 1)
    topk = check_int(op, "topk", topk, 1)
    key_blocks = num_blocks(kv_tokens, block_size)
    if topk > key_blocks:
        raise ValueError(f"{op}: topk={topk} exceeds the {key_blocks} key blocks "
                         f"(ceil(Nk / block_size) = ceil({kv_tokens} / {block_size})); use "
                         f"topk <= {key_blocks} or a smaller block_size")
    return block_size, topk


def block_sizes(tokens: int, block_size: int) -> jax.Array:
    """int32 [ceil(N / B)]: the tokens of each block (the last one's own count)."""
    starts = block_size * jnp.arange(num_blocks(tokens, block_size))
    return jnp.minimum(block_size, tokens - starts)


def listed_keys(indices: jax.Array, block_size: int, q_tokens: int,
                kv_tokens: int) -> jax.Array:
    """indices int32 [Bt, H, nQ, K] (-1 = empty) -> float32 scalar: the mean over batch,
    heads and queries of the keys in the blocks listed for the query's block (partial last
    blocks counted by their own sizes); the block-sparse ops' `keys_per_query`."""
    sizes = block_sizes(kv_tokens, block_size).astype(jnp.float32)  # no int32 overflow
    listed = jnp.where(indices >= 0, sizes[jnp.maximum(indices, 0)], 0).sum(-1)
    queries = block_sizes(q_tokens, block_size).astype(jnp.float32)
    return (listed * queries).sum(-1).mean() / q_tokens


def pad_tokens(x: jax.Array, multiple: int) -> jax.Array:
    """[Bt, N, ...] -> [Bt, ceil(N / multiple)·multiple, ...], zeros appended."""
    extra = -x.shape[1] % multiple
    return x if not extra else jnp.pad(x, ((0, 0), (0, extra)) + ((0, 0),) * (x.ndim - 2))


class Summary(NamedTuple):
    """Always-visible summary tokens: keys and values [Bt, S, Hkv, D] (the kv heads of k and
    v), and bias float32 [Bt, S, Hkv], added to their logits (natural log; no gradient)."""

    keys: jax.Array
    values: jax.Array
    bias: jax.Array


def attend_blocks(q: jax.Array, k: jax.Array, v: jax.Array, indices: jax.Array, *,
                  block_size: int, causal: bool = False,
                  summary: Summary | None = None) -> jax.Array:
    """q [Bt, Nq, H, D], k, v [Bt, Nk, Hkv, D] (Hkv dividing H), indices int32
    [Bt, H, ceil(Nq / B), K] -> [Bt, Nq, H, D] in q's dtype (softmax in float32); `summary`
    (non-causal only) adds tokens every query sees."""
    batch, q_tokens, heads, dim = q.shape
    kv_tokens, kv_heads = k.shape[1], k.shape[2]
    size = block_size

    def blocks(x, count):  # [Bt, N, h, D] -> heads-major [Bt, H, n, B, D]
        x = jnp.repeat(pad_tokens(x, size), heads // count, axis=2)
        return x.reshape(batch, -1, size, heads, dim).transpose(0, 3, 1, 2, 4)

    q_blocks = blocks(q, heads)
    slots = jnp.maximum(indices, 0)[..., None, None]  # [Bt, H, nQ, K, 1, 1]
    keys = jnp.take_along_axis(blocks(k, kv_heads)[:, :, None], slots, axis=3)
    values = jnp.take_along_axis(blocks(v, kv_heads)[:, :, None], slots, axis=3)
    logits = jnp.einsum("bhqid,bhqkjd->bhqikj", q_blocks, keys,
                        preferred_element_type=jnp.float32) * dim ** -0.5
    key_position = indices[..., None] * size + jnp.arange(size)  # [Bt, H, nQ, K, B]
    visible = (indices >= 0)[..., None] & (key_position < kv_tokens)
    visible = jnp.broadcast_to(visible[:, :, :, None], logits.shape)
    if causal:
        query_position = (jnp.arange(q_blocks.shape[2])[:, None] * size
                          + jnp.arange(size))[:, :, None, None]  # [nQ, B, 1, 1]
        visible &= key_position[:, :, :, None] <= query_position
    logits = jnp.where(visible, logits, -jnp.inf)
    shape = logits.shape
    logits = logits.reshape(*shape[:4], -1)  # [Bt, H, nQ, B, K·B]
    values = values.reshape(*values.shape[:3], -1, dim).astype(jnp.float32)
    if summary is None:
        out = jnp.einsum("bhqim,bhqmd->bhqid", jax.nn.softmax(logits, axis=-1), values)
    else:
        group = heads // kv_heads
        summary_keys = jnp.repeat(summary.keys, group, axis=2)
        summary_values = jnp.repeat(summary.values, group, axis=2).astype(jnp.float32)
        bias = jnp.repeat(jax.lax.stop_gradient(summary.bias), group, axis=2)
        summary_logits = jnp.einsum("bhqid,bshd->bhqis", q_blocks, summary_keys,
                                    preferred_element_type=jnp.float32) * dim ** -0.5
        summary_logits = summary_logits + bias.transpose(0, 2, 1)[:, :, None, None, :]
        probs = jax.nn.softmax(jnp.concatenate([logits, summary_logits], axis=-1), axis=-1)
        out = (jnp.einsum("bhqim,bhqmd->bhqid", probs[..., :logits.shape[-1]], values)
               + jnp.einsum("bhqis,bshd->bhqid", probs[..., logits.shape[-1]:],
                            summary_values))
    out = out.transpose(0, 2, 3, 1, 4).reshape(batch, -1, heads, dim)
    return out[:, :q_tokens].astype(q.dtype)
