"""The "pallas_tpu" implementation of LLSA: XLA pooling and selection, Mosaic TPU attention.

Pooling and selection are the reference's own (`hierarchy`); the attention is a
`jax.custom_vjp` around `lla.pallas_kernels.llsa.tpu`, whose BlockSpecs read the selection
from scalar-prefetched SMEM. Sparse-level dK/dV come back as per-(query block, pick)
partials and are summed into their key tokens here with a scatter-add.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from lla.attention.common.kernel_reasons import compiled_kernel_reasons
from lla.attention.llsa import causal as causal_hierarchy
from lla.attention.llsa import hierarchy, pallas
from lla.pallas_kernels.llsa import tpu

TUNABLE = pallas.tunable(tpu)


def unsupported_reasons(q, k, v, *, block_size, topk, levels, enrich_levels, reweight,
                        causal, interpret, config: tpu.Config):
    """Why the TPU kernels cannot run these inputs (`compiled_kernel_reasons`)."""
    return compiled_kernel_reasons(tpu, "tpu", config, interpret)


def _rows(x: jax.Array) -> jax.Array:
    """[Bt, N, H, D] -> heads-major rows [Bt·H, N, D]."""
    return hierarchy.heads_major(x).reshape(-1, x.shape[1], x.shape[3])


@functools.partial(jax.jit, static_argnames=("block_size", "topk", "levels", "enrich_levels",
                                             "reweight", "causal", "interpret", "config"))
def llsa_pallas_tpu(q, k, v, *, block_size, topk, levels, enrich_levels, reweight, causal,
                    interpret, config: tpu.Config):
    """q [Bt, N, H, D], k/v [Bt, N, Hkv, D] -> [Bt, N, H, D] (see `lla.attention.llsa`);
    `config` (shape, ablations and tiling) already describes the static arguments."""
    del enrich_levels, reweight, interpret
    batch, tokens, heads, head_dim = q.shape
    q_pooled = hierarchy.pyramid(jax.lax.stop_gradient(q), block_size, levels)
    k_pooled = hierarchy.pyramid(k, block_size, levels)
    v_pooled = hierarchy.pyramid(v, block_size, levels)
    picks = (causal_hierarchy.select(q, k_pooled, block_size, topk) if causal
             else hierarchy.select(q_pooled, k_pooled, block_size, topk))
    k_levels = (_rows(k), *(_rows(x.astype(k.dtype)) for x in k_pooled[1:]))
    v_levels = (_rows(v), *(_rows(x.astype(v.dtype)) for x in v_pooled[1:]))
    level_picks = tuple(picks[level].reshape(batch * heads, -1, topk)
                        for level in range(1, levels + 1))
    out = attend(_rows(q), k_levels, v_levels, level_picks, config)
    return hierarchy.heads_major(out.reshape(batch, heads, tokens, head_dim))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def attend(q, k_levels, v_levels, picks, config):
    """q [R, N, D] over the levels [Rkv, N_l, D] -> [R, N, D]; differentiable in q, k, v."""
    return tpu.forward(q, k_levels, v_levels, picks, config)[0]


def _attend_fwd(q, k_levels, v_levels, picks, config):
    out, lse = tpu.forward(q, k_levels, v_levels, picks, config)
    return out, (q, k_levels, v_levels, picks, out, lse)


def _scatter_partials(partial, picks, level, config: tpu.Config):
    """Partials [R, N/B, S, B, D] of level `level` -> [R, N_l, D] summed into key tokens.
    Causal: the picks of each block (an empty slot's partial is zero) and its open parent."""
    size = config.block_size
    if config.causal:
        blocks = jnp.arange(picks.shape[1], dtype=jnp.int32)
        open_parent = causal_hierarchy.complete_count(level + 1, blocks, size)
        parents = jnp.concatenate(
            [jnp.maximum(picks, 0), jnp.broadcast_to(open_parent[None, :, None],
                                                     (*picks.shape[:2], 1))], axis=-1)
    else:
        parents = jnp.repeat(picks, size ** level, axis=1)  # [R, N/B, K]: picks of each block
    tokens = (parents[..., None] * size + jnp.arange(size)).reshape(partial.shape[0], -1)
    values = partial.reshape(partial.shape[0], -1, partial.shape[-1])
    zeros = jnp.zeros((config.level_tokens(level), partial.shape[-1]), jnp.float32)
    return jax.vmap(lambda index, value: zeros.at[index].add(value))(tokens, values)


def _sum_query_heads(grad: jax.Array, config: tpu.Config) -> jax.Array:
    """[Bt·H, T, D] per query row -> [Bt·Hkv, T, D] summed over each GQA group."""
    group = config.heads // config.kv_heads
    return grad.reshape(-1, group, *grad.shape[1:]).sum(1)


def _attend_bwd(config, residuals, d_out):
    q, k_levels, v_levels, picks, out, lse = residuals
    d_out = d_out.astype(q.dtype)
    delta = jnp.sum(out.astype(jnp.float32) * d_out.astype(jnp.float32), -1, keepdims=True)
    dq, partials = tpu.backward_queries(q, d_out, lse, delta, k_levels, v_levels, picks,
                                        config)
    grads = [tuple(_scatter_partials(p, picks[level], level, config) for p in pair)
             for level, pair in enumerate(partials)]
    if config.attends(config.levels):
        grads.append(tpu.backward_coarse_dkv(q, d_out, lse, delta, k_levels[-1],
                                             v_levels[-1], config))
    # grads covers the attended levels, a prefix; the ablated ones get zero gradients.
    attended = len(grads)
    dk_levels = tuple(_sum_query_heads(dk, config).astype(k.dtype)
                      for (dk, _), k in zip(grads, k_levels[:attended], strict=True))
    dv_levels = tuple(_sum_query_heads(dv, config).astype(v.dtype)
                      for (_, dv), v in zip(grads, v_levels[:attended], strict=True))
    dk_levels += tuple(jnp.zeros_like(k) for k in k_levels[attended:])
    dv_levels += tuple(jnp.zeros_like(v) for v in v_levels[attended:])
    return dq, dk_levels, dv_levels, None


attend.defvjp(_attend_fwd, _attend_bwd)
