"""The "pallas_gpu" implementation of LLSA: XLA pooling, Pallas selection and attention.

Pooling runs in XLA (`hierarchy`, the same code as the reference); the selection keeps the
reference's picks exactly: the non-causal coarsest level in XLA and the sparse levels on
`lla.pallas_kernels.llsa.selection`. The attention over the selected sources is a
`jax.custom_vjp` around the kernels of `lla.pallas_kernels.llsa.gpu` (`causal_gpu` with
`causal=True`, whose selection is `lla.attention.llsa.causal.select`'s: its coarsest level on
the block-selection kernel of `sparse_flash.selection`, the others on
`selection.select_causal_children`); its inputs are
the pooled levels, so JAX differentiates the pooling itself and k, v get their gradients
through it.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from lla.attention.common.kernel_reasons import compiled_kernel_reasons
from lla.attention.llsa import causal, hierarchy, pallas
from lla.pallas_kernels.common import sum_query_heads
from lla.pallas_kernels.llsa import causal_gpu, gpu, selection
from lla.pallas_kernels.sparse_flash import metadata
from lla.pallas_kernels.sparse_flash import selection as block_selection

TUNABLE = pallas.tunable(gpu)


def unsupported_reasons(q, k, v, *, block_size, topk, levels, enrich_levels, reweight,
                        causal, interpret, config: gpu.Config):
    """Why the compiled GPU kernels cannot run these inputs (`compiled_kernel_reasons`)."""
    return compiled_kernel_reasons(gpu, "gpu", config, interpret)


def prepare(q, k, v, config: gpu.Config):
    """Pools in XLA and selects (`_select`); returns the kernels' k and v levels (L + 1 each,
    in k's dtype, layouts in `gpu`) and picks (L arrays, int32 [Bt·H, N / B^l, K]; causal:
    [Bt·H, N / B, K])."""
    size, levels = config.block_size, config.levels
    k_pooled = hierarchy.pyramid(k, size, levels)
    v_pooled = hierarchy.pyramid(v, size, levels)
    as_blocks = functools.partial(_as_blocks, block_size=size)
    picks = _select(q, k_pooled, config)
    k_levels = (as_blocks(k), *(as_blocks(x.astype(k.dtype)) for x in k_pooled[1:levels]),
                k_pooled[levels].astype(k.dtype))
    v_levels = (as_blocks(v), *(as_blocks(x.astype(v.dtype)) for x in v_pooled[1:levels]),
                v_pooled[levels].astype(v.dtype))
    return k_levels, v_levels, tuple(picks[level] for level in range(1, levels + 1))


def _as_blocks(x, block_size):
    """[Bt, N_l, Hkv, D] -> [Bt, N_l / B, B, Hkv, D]."""
    return x.reshape(x.shape[0], -1, block_size, *x.shape[2:])


def _select(q, k_pooled, config: gpu.Config) -> dict:
    """{l: picks, rows-major [Bt·H, ..., K]}: causal, `_select_causal`; else the coarsest
    level in XLA and the others with the `selection.select_children` kernel."""
    if config.causal:
        return _select_causal(q, k_pooled, config)
    rows = q.shape[0] * q.shape[2]
    size, levels = config.block_size, config.levels
    q_pooled = hierarchy.pyramid(jax.lax.stop_gradient(q), size, levels)
    coarsest = hierarchy.select_coarsest(q_pooled[levels], k_pooled[levels], config.topk)
    picks = {levels: coarsest.reshape(rows, *coarsest.shape[2:])}
    for level in range(levels - 1, 0, -1):
        picks[level] = selection.select_children(
            q_pooled[level], _as_blocks(jax.lax.stop_gradient(k_pooled[level]), size),
            picks[level + 1], config)
    return picks


def _select_causal(q, k_pooled, config: gpu.Config) -> dict:
    """`causal.select` on kernels: the coarsest level on the block-selection kernel
    (`sparse_flash.selection`, `past_stride` = B^(L-1): query block b sees the coarsest
    tokens j < b·B / B^L), the others on `selection.select_causal_children`;
    {l: int32 [Bt·H, N / B, K]}."""
    size, levels = config.block_size, config.levels
    s = causal.selection_queries(q, size)  # [Bt, H, N / B, D]
    kernel_config = block_selection.make_config(
        config.topk, config.heads, config.kv_heads, s.shape[2], k_pooled[levels].shape[1],
        config.head_dim, past_stride=size ** (levels - 1), interpret=config.interpret)
    coarsest = block_selection.select_blocks(
        hierarchy.heads_major(s), jax.lax.stop_gradient(k_pooled[levels]), kernel_config)
    s = s.reshape(-1, *s.shape[2:])  # rows-major [Bt·H, N / B, D]
    picks = {levels: coarsest.reshape(s.shape[0], -1, config.topk)}
    for level in range(levels - 1, 0, -1):
        picks[level] = selection.select_causal_children(
            s, _as_blocks(jax.lax.stop_gradient(k_pooled[level]), size), picks[level + 1],
            level, config)
    return picks


@functools.partial(jax.jit, static_argnames=("block_size", "topk", "levels", "enrich_levels",
                                             "reweight", "causal", "interpret", "config"))
def llsa_pallas_gpu(q, k, v, *, block_size, topk, levels, enrich_levels, reweight, causal,
                    interpret, config: gpu.Config):
    """q [Bt, N, H, D], k/v [Bt, N, Hkv, D] -> [Bt, N, H, D] (see `lla.attention.llsa`);
    `config` (shape, ablations and tiling) already describes the static arguments."""
    del block_size, topk, levels, enrich_levels, reweight, causal, interpret
    return attend(q, *prepare(q, k, v, config), config)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def attend(q, k_levels, v_levels, picks, config):
    """The kernels' attention, q [Bt, N, H, D] over `prepare`d levels -> [Bt, N, H, D];
    differentiable in q, k_levels and v_levels."""
    return _kernels(config).forward(q, k_levels, v_levels, picks, config)[0]


def _kernels(config: gpu.Config):
    """The kernel module of the call: `causal_gpu` or `gpu`."""
    return causal_gpu if config.causal else gpu


def _attend_fwd(q, k_levels, v_levels, picks, config):
    out, lse = _kernels(config).forward(q, k_levels, v_levels, picks, config)
    return out, (q, k_levels, v_levels, picks, out, lse)


def _attend_bwd(config, residuals, d_out):
    q, k_levels, v_levels, picks, out, lse = residuals
    delta = jnp.einsum("bnhd,bnhd->bhn", out.astype(jnp.float32), d_out.astype(jnp.float32))
    delta = delta.reshape(lse.shape)
    d_out = d_out.astype(q.dtype)
    kernels = _kernels(config)
    dq = kernels.backward_dq(q, d_out, lse, delta, k_levels, v_levels, picks, config)
    dk_levels, dv_levels = [], []
    for level, (k, v) in enumerate(zip(k_levels, v_levels, strict=True)):
        if not config.attends(level):  # a level the ablation leaves out of the softmax
            dk_levels.append(jnp.zeros_like(k))
            dv_levels.append(jnp.zeros_like(v))
            continue
        k_tokens = k.reshape(k.shape[0], -1, *k.shape[-2:])  # [Bt, N_l, Hkv, D]
        v_tokens = v.reshape(k_tokens.shape)
        if config.masked(level):
            dk, dv = gpu.backward_masked_dkv(q, d_out, lse, delta, k_tokens, v_tokens,
                                             picks[level], level, config)
        elif level < config.levels:
            key_blocks = k_tokens.shape[1] // config.block_size
            offsets, groups = metadata.transpose(picks[level], key_blocks)  # causal: -1 slots
            dk, dv = kernels.backward_sparse_dkv(q, d_out, lse, delta, k_tokens, v_tokens,
                                                 offsets, groups, level, config)
        else:
            dk, dv = gpu.backward_coarse_dkv(q, d_out, lse, delta, k_tokens, v_tokens, config)
        dk_levels.append(sum_query_heads(dk, config.kv_heads).reshape(k.shape).astype(k.dtype))
        dv_levels.append(sum_query_heads(dv, config.kv_heads).reshape(v.shape).astype(v.dtype))
    return dq, tuple(dk_levels), tuple(dv_levels), None


attend.defvjp(_attend_fwd, _attend_bwd)
