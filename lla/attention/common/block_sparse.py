"""Block-sparse attention over an index table, in plain JAX: the readable definition that the
block-sparse ops' references ("topk_block", ...) call and the sparse-flash kernels
(`lla.pallas_kernels.sparse_flash`) are tested against.

Tokens are cut into blocks of B (the last one partial when B does not divide N). Query block
b of head h attends, in one softmax with scale 1/sqrt(D), to the tokens of the key blocks
`indices[:, h, b]` (-1 = an empty slot); `causal` also hides key j from query i when j > i.
Every query must see at least one key. The work is [nQ, B] x [K·B] per head: no N x N array.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def pad_tokens(x: jax.Array, multiple: int) -> jax.Array:
    """[Bt, N, ...] -> [Bt, ceil(N / multiple)·multiple, ...], zeros appended."""
    extra = -x.shape[1] % multiple
    return x if not extra else jnp.pad(x, ((0, 0), (0, extra)) + ((0, 0),) * (x.ndim - 2))


def attend_blocks(q: jax.Array, k: jax.Array, v: jax.Array, indices: jax.Array, *,
                  block_size: int, causal: bool = False) -> jax.Array:
    """q [Bt, Nq, H, D], k, v [Bt, Nk, Hkv, D] (Hkv dividing H), indices int32
    [Bt, H, ceil(Nq / B), K] -> [Bt, Nq, H, D] in q's dtype (softmax in float32)."""
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
    probs = jax.nn.softmax(logits.reshape(*shape[:4], -1), axis=-1).reshape(shape)
    out = jnp.einsum("bhqikj,bhqkjd->bhqid", probs, values.astype(jnp.float32))
    out = out.transpose(0, 2, 3, 1, 4).reshape(batch, -1, heads, dim)
    return out[:, :q_tokens].astype(q.dtype)
