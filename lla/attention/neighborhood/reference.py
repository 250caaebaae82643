"""The "xla" implementation of neighbourhood attention: the readable definition.

Per axis, `_neighbours` lists the coordinates each position sees (the window arithmetic of
`lla.pallas_kernels.neighborhood.windows`, shared with the kernels); query chunks gather
their prod(kernel_size) keys and values and take one masked softmax. float32 at HIGHEST
precision; autodiff gives the gradients. Held to the brute-force mask oracle of
tests/attention/neighborhood/oracle.py.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from lla.pallas_kernels.neighborhood.windows import group_extent, window


def _neighbours(spatial_shape, kernel_size, dilation, causal) -> tuple[list, list]:
    """Per axis, the coordinates each position sees: (index int [n, k], valid bool [n, k])
    lists; invalid slots (causal windows near the start) hold the position itself."""
    indices, valid = [], []
    for n, kk, d, c in zip(spatial_shape, kernel_size, dilation, causal, strict=True):
        position = np.arange(n)
        group, slot = position % d, position // d
        lo, hi = window(slot, group_extent(n, d, group), kk, c)
        member = lo[:, None] + np.arange(kk)[None, :]
        ok = member < hi[:, None]
        indices.append(np.where(ok, group[:, None] + d * member, position[:, None]))
        valid.append(ok)
    return indices, valid


@dataclasses.dataclass(frozen=True)
class Config:
    """Queries per step of the reference (one step's gathered keys are [B, chunk, prod(k), H,
    D])."""

    chunk: int


def default_config(q, k, v, *, spatial_shape, kernel_size, dilation, causal,
                   interpret) -> Config:
    """Chunks of about 2^25 gathered floats per step."""
    batch, tokens, heads, head_dim = q.shape
    window_keys = math.prod(kernel_size)
    return Config(int(max(1, min(tokens, 2 ** 25 // (batch * heads * head_dim * window_keys)))))


@functools.partial(jax.jit, static_argnames=(
    "spatial_shape", "kernel_size", "dilation", "causal", "interpret", "config"))
def neighborhood_xla(q, k, v, *, spatial_shape, kernel_size, dilation, causal, interpret,
                     config: Config):
    """q [B, N, H, D], k/v [B, N, Hkv, D] -> [B, N, H, D] (see `lla.attention.neighborhood`).

    Queries go in chunks of C = `config.chunk` (`lax.map`, each step rematerialised in the
    backward pass); a chunk of C queries gathers its C·prod(k) keys and values, so memory is
    O(C·prod(k)·H·D), never N x N.
    """
    del interpret  # pure JAX
    batch, tokens, heads, head_dim = q.shape
    kv_heads = k.shape[2]
    indices, valid = _neighbours(spatial_shape, kernel_size, dilation, causal)
    strides = [math.prod(spatial_shape[a + 1:]) for a in range(len(spatial_shape))]
    window_keys = math.prod(kernel_size)
    chunk = min(config.chunk, tokens)
    chunks = -(-tokens // chunk)
    positions = jnp.minimum(jnp.arange(chunks * chunk), tokens - 1).reshape(chunks, chunk)
    k32, v32 = k.astype(jnp.float32), v.astype(jnp.float32)
    q_chunks = jnp.pad(q.astype(jnp.float32) * head_dim ** -0.5,
                       [(0, 0), (0, chunks * chunk - tokens), (0, 0), (0, 0)])
    q_chunks = q_chunks.reshape(batch, chunks, chunk, kv_heads, heads // kv_heads, head_dim)

    def attend(args):
        q_chunk, position = args  # [B, C, Hkv, G, D], [C]
        index = jnp.zeros((chunk,) + (1,) * len(strides), jnp.int32)
        ok = jnp.ones((chunk,) + (1,) * len(strides), bool)
        for a, (table, mask, stride) in enumerate(zip(indices, valid, strides, strict=True)):
            coordinate = (position // stride) % spatial_shape[a]
            shape = [chunk] + [1] * len(strides)
            shape[a + 1] = kernel_size[a]
            index = index + (jnp.asarray(table)[coordinate] * stride).reshape(shape)
            ok = ok & jnp.asarray(mask)[coordinate].reshape(shape)
        index, ok = index.reshape(chunk, window_keys), ok.reshape(chunk, window_keys)
        keys, values = k32[:, index], v32[:, index]  # [B, C, K, Hkv, D]
        # Products and sums rather than einsums: exact float32 on every backend, and no
        # batched matrix-vector GEMMs for XLA's GPU emitters to tile.
        logits = (q_chunk[:, :, None] * keys[:, :, :, :, None]).sum(-1)  # [B, C, K, Hkv, G]
        logits = jnp.where(ok[None, :, :, None, None], logits, -jnp.inf)
        probs = jax.nn.softmax(logits, axis=2)
        return (probs[..., None] * values[:, :, :, :, None]).sum(2)  # [B, C, Hkv, G, D]

    out = lax.map(jax.checkpoint(attend), (q_chunks.swapaxes(0, 1), positions))
    out = out.swapaxes(0, 1).reshape(batch, chunks * chunk, heads, head_dim)
    return out[:, :tokens].astype(q.dtype)
