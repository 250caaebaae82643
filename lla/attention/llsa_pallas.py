"""The "pallas_gpu" implementation of LLSA: XLA pooling and selection, Pallas attention.

Pooling and the hierarchical selection run in XLA (`llsa_hierarchy`, the same code as the
reference, so both attend to identical sets). The attention over the selected sources is a
`jax.custom_vjp` around the kernels of `lla.pallas_kernels.llsa.gpu`; its inputs are the
pooled levels, so JAX differentiates the pooling itself and k, v get their gradients through
it.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from lla.attention import llsa_hierarchy as hierarchy
from lla.pallas_kernels.llsa import gpu, metadata


def _config(q, k, *, block_size, topk, levels, interpret) -> gpu.Config:
    _, tokens, heads, head_dim = q.shape
    return gpu.make_config(block_size, topk, levels, heads, k.shape[2], tokens, head_dim,
                           interpret=interpret)


def unsupported_reasons(q, k, v, *, block_size, topk, levels, interpret):
    reasons = []
    if interpret:
        return reasons
    if jax.default_backend() != "gpu":
        reasons.append(f"needs a GPU (or interpret=True), platform is {jax.default_backend()}")
    config = _config(q, k, block_size=block_size, topk=topk, levels=levels,
                     interpret=interpret)
    return reasons + gpu.unsupported_reasons(config)


def _rows(x: jax.Array) -> jax.Array:
    """[Bt, H, T, D] -> [Bt·H, T, D]."""
    return x.reshape(-1, *x.shape[2:])


@functools.partial(jax.jit, static_argnames=("block_size", "topk", "levels", "interpret"))
def llsa_pallas_gpu(q, k, v, *, block_size, topk, levels, interpret):
    """q [Bt, N, H, D], k/v [Bt, N, Hkv, D] -> [Bt, N, H, D] (see `lla.attention.llsa`)."""
    batch, tokens, heads, head_dim = q.shape
    config = _config(q, k, block_size=block_size, topk=topk, levels=levels,
                     interpret=interpret)
    q_pooled = hierarchy.pyramid(jax.lax.stop_gradient(q), block_size, levels)
    k_pooled = hierarchy.pyramid(k, block_size, levels)
    v_pooled = hierarchy.pyramid(v, block_size, levels)
    groups = heads // k.shape[2]
    picks = hierarchy.select(
        q_pooled, [None] + [jnp.repeat(x, groups, axis=1) for x in k_pooled[1:]],
        block_size, topk)

    def kernel_layout(x, level):
        """Level-l keys in the kernels' layout: blocks for sparse levels, tokens for L."""
        x = _rows(x).astype(k.dtype)
        if level < levels:
            return x.reshape(x.shape[0], -1, block_size, head_dim)
        return x

    k_levels = tuple(kernel_layout(x, level) for level, x in enumerate(k_pooled))
    v_levels = tuple(kernel_layout(x, level) for level, x in enumerate(v_pooled))
    level_picks = tuple(_rows(picks[level]) for level in range(1, levels + 1))
    out = _attend(_rows(hierarchy.heads_major(q)), k_levels, v_levels, level_picks, config)
    return hierarchy.heads_major(out.reshape(batch, heads, tokens, head_dim))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _attend(q, k_levels, v_levels, picks, config):
    return gpu.forward(q, k_levels, v_levels, picks, config)[0]


def _attend_fwd(q, k_levels, v_levels, picks, config):
    out, lse = gpu.forward(q, k_levels, v_levels, picks, config)
    return out, (q, k_levels, v_levels, picks, out, lse)


def _attend_bwd(config, residuals, d_out):
    q, k_levels, v_levels, picks, out, lse = residuals
    delta = jnp.einsum("rnd,rnd->rn", out.astype(jnp.float32), d_out.astype(jnp.float32))
    d_out = d_out.astype(q.dtype)
    dq = gpu.backward_dq(q, d_out, lse, delta, k_levels, v_levels, picks, config)
    dk_levels, dv_levels = [], []
    for level, (k, v) in enumerate(zip(k_levels, v_levels, strict=True)):
        k_tokens = k.reshape(k.shape[0], -1, k.shape[-1])
        v_tokens = v.reshape(k_tokens.shape)
        if level < config.levels:
            offsets, groups = metadata.transpose_picks(picks[level], k_tokens.shape[1]
                                                       // config.block_size)
            dk, dv = gpu.backward_sparse_dkv(q, d_out, lse, delta, k_tokens, v_tokens,
                                             offsets, groups, level, config)
        else:
            dk, dv = gpu.backward_coarse_dkv(q, d_out, lse, delta, k_tokens, v_tokens, config)
        dk_levels.append(_sum_query_heads(dk, config).reshape(k.shape).astype(k.dtype))
        dv_levels.append(_sum_query_heads(dv, config).reshape(v.shape).astype(v.dtype))
    return dq, tuple(dk_levels), tuple(dv_levels), None


def _sum_query_heads(grad: jax.Array, config: gpu.Config) -> jax.Array:
    """[Bt·H, T, D] per query head -> [Bt·Hkv, T, D] summed over each GQA group."""
    group = config.heads // config.kv_heads
    return grad.reshape(-1, config.kv_heads, group, *grad.shape[1:]).sum(2).reshape(
        -1, *grad.shape[1:])


_attend.defvjp(_attend_fwd, _attend_bwd)
