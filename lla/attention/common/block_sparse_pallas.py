"""Block-sparse attention over an index table on the sparse-flash Pallas kernels, with their
custom VJPs: the "pallas_gpu" (`attend_gpu`) and "pallas_tpu" (`attend_tpu`) paths every
block-sparse op ("topk_block", ...) shares.

Same contract as `block_sparse.attend_blocks` (its reference): q [Bt, Nq, H, D], k, v
[Bt, Nk, Hkv, D], indices int32 [Bt, H, ceil(Nq / B), K] with -1 for empty slots. Here the
sequences are zero-padded to whole blocks (the kernels mask the padding keys), the lists go
through `lla.pallas_kernels.sparse_flash.metadata` (query-major lists for the forward and dQ,
their key-major CSR for dK/dV on GPU; on TPU the per-slot dK/dV partials are scatter-added
into their key blocks), and the per-query-head dK/dV are summed over GQA groups. Summary
tokens (K2) are a separate sweep on GPU and extra key blocks at the head of every list on TPU;
their dK/dV flow back through the same kernels.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from lla.attention.common.block_sparse import Summary, pad_tokens
from lla.pallas_kernels.common import sum_query_heads
from lla.pallas_kernels.sparse_flash import gpu, metadata, tpu


def gpu_config(q, k, *, block_size, topk, causal=False, summary_tokens=0,
               interpret=False) -> gpu.Config:
    """The GPU kernels' shape of a call with the heuristic tiling (`gpu.make_config`)."""
    return gpu.make_config(block_size, topk, q.shape[2], k.shape[2], q.shape[1], k.shape[1],
                           q.shape[3], causal=causal, summary_tokens=summary_tokens,
                           interpret=interpret)


def tpu_config(q, k, *, block_size, topk, causal=False, summary_tokens=0,
               interpret=False) -> tpu.Config:
    """The TPU kernels' shape of a call."""
    return tpu.make_config(block_size, topk, q.shape[2], k.shape[2], q.shape[1], k.shape[1],
                           q.shape[3], causal=causal, summary_tokens=summary_tokens,
                           interpret=interpret)


def attend_gpu(q, k, v, indices, config: gpu.Config,
               summary: Summary | None = None) -> jax.Array:
    """-> [Bt, Nq, H, D] in q's dtype; differentiable in q, k, v and the summary keys and
    values (not in `indices` or the summary bias). `config.summary_tokens` must match."""
    rows = indices.shape[0] * indices.shape[1]
    indices = jax.lax.stop_gradient(indices).reshape(rows, *indices.shape[2:])
    blocks, counts = metadata.query_major(indices)
    offsets, readers = metadata.transpose(indices, config.key_blocks)
    size = config.block_size
    summary = () if summary is None else (
        summary.keys, summary.values,
        jax.lax.stop_gradient(summary.bias).astype(jnp.float32).transpose(0, 2, 1))
    out = _attend(pad_tokens(q, size), pad_tokens(k, size), pad_tokens(v, size), summary,
                  blocks, counts, offsets, readers, config)
    return out[:, :q.shape[1]]


@functools.partial(jax.custom_vjp, nondiff_argnums=(8,))
def _attend(q, k, v, summary, blocks, counts, offsets, readers, config):
    return gpu.forward(q, k, v, blocks, counts, summary, config)[0]


def _attend_fwd(q, k, v, summary, blocks, counts, offsets, readers, config):
    out, lse = gpu.forward(q, k, v, blocks, counts, summary, config)
    return out, (q, k, v, summary, blocks, counts, offsets, readers, out, lse)


def _attend_bwd(config, residuals, d_out):
    q, k, v, summary, blocks, counts, offsets, readers, out, lse = residuals
    delta = jnp.einsum("bnhd,bnhd->bhn", out.astype(jnp.float32), d_out.astype(jnp.float32))
    delta = delta.reshape(lse.shape)
    d_out = d_out.astype(q.dtype)
    dq = gpu.backward_dq(q, d_out, lse, delta, k, v, blocks, counts, summary, config)
    dk, dv = gpu.backward_dkv(q, d_out, lse, delta, k, v, offsets, readers, config)
    d_summary = ()
    if summary:
        summary_dk, summary_dv = gpu.backward_summary_dkv(q, d_out, lse, delta, summary,
                                                          config)
        d_summary = (sum_query_heads(summary_dk, config.kv_heads).astype(summary[0].dtype),
                     sum_query_heads(summary_dv, config.kv_heads).astype(summary[1].dtype),
                     jnp.zeros_like(summary[2]))
    dk = sum_query_heads(dk, config.kv_heads).astype(k.dtype)
    dv = sum_query_heads(dv, config.kv_heads).astype(v.dtype)
    return dq, dk, dv, d_summary, None, None, None, None


_attend.defvjp(_attend_fwd, _attend_bwd)


def attend_tpu(q, k, v, indices, config: tpu.Config,
               summary: Summary | None = None) -> jax.Array:
    """`attend_gpu` on the TPU kernels (heads-major rows inside). Summary tokens become nS
    extra key blocks after the nK real ones, at the head of every list, with their bias in
    the kernels' `key_bias` row (`lla.pallas_kernels.sparse_flash.tpu`)."""
    rows = indices.shape[0] * indices.shape[1]
    blocks, counts = metadata.query_major(
        jax.lax.stop_gradient(indices).reshape(rows, *indices.shape[2:]))
    size = config.block_size
    k_rows, v_rows = _rows(pad_tokens(k, size)), _rows(pad_tokens(v, size))
    key_bias = None
    if summary is not None:
        k_rows = jnp.concatenate([k_rows, _rows(pad_tokens(summary.keys, size))], axis=1)
        v_rows = jnp.concatenate([v_rows, _rows(pad_tokens(summary.values, size))], axis=1)
        key_bias = _summary_key_bias(summary.bias, config)
        summary_blocks = config.key_blocks + jnp.arange(config.summary_blocks, dtype=jnp.int32)
        blocks = jnp.concatenate(
            [jnp.broadcast_to(summary_blocks, (*blocks.shape[:2], summary_blocks.size)),
             blocks], axis=-1)
        counts = counts + config.summary_blocks
    out = _attend_tpu(_rows(pad_tokens(q, size)), k_rows, v_rows, key_bias, blocks, counts,
                      config)
    out = out.reshape(q.shape[0], q.shape[2], -1, q.shape[3]).transpose(0, 2, 1, 3)
    return out[:, :q.shape[1]]


def _summary_key_bias(bias: jax.Array, config: tpu.Config) -> jax.Array:
    """bias [Bt, S, Hkv] -> float32 [Rkv, 1, (nK + nS)·B]: 0 on the real key columns, the
    summary biases, -inf on the padding after them (no gradient)."""
    bias = jax.lax.stop_gradient(bias).astype(jnp.float32).transpose(0, 2, 1)
    bias = bias.reshape(-1, bias.shape[-1])
    padding = config.summary_blocks * config.block_size - config.summary_tokens
    return jnp.concatenate([
        jnp.zeros((bias.shape[0], config.key_blocks * config.block_size), jnp.float32), bias,
        jnp.full((bias.shape[0], padding), -jnp.inf, jnp.float32)], axis=1)[:, None]


def _rows(x: jax.Array) -> jax.Array:
    """[Bt, N, H, D] -> heads-major rows [Bt·H, N, D]."""
    return x.transpose(0, 2, 1, 3).reshape(-1, x.shape[1], x.shape[3])


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _attend_tpu(q, k, v, key_bias, blocks, counts, config):
    return tpu.forward(q, k, v, blocks, counts, config, key_bias)[0]


def _attend_tpu_fwd(q, k, v, key_bias, blocks, counts, config):
    out, lse = tpu.forward(q, k, v, blocks, counts, config, key_bias)
    return out, (q, k, v, key_bias, blocks, counts, out, lse)


def _attend_tpu_bwd(config, residuals, d_out):
    q, k, v, key_bias, blocks, counts, out, lse = residuals
    d_out = d_out.astype(q.dtype)
    delta = jnp.sum(out.astype(jnp.float32) * d_out.astype(jnp.float32), -1, keepdims=True)
    dq, dk, dv = tpu.backward(q, d_out, lse, delta, k, v, blocks, counts, config, key_bias)
    size, group = config.block_size, config.heads // config.kv_heads
    tokens = (blocks[..., None] * size + jnp.arange(size)).reshape(blocks.shape[0], -1)

    def into_keys(partials, like):  # [R, nQ, T, B, D] -> [Rkv, (nK + nS)·B, D]
        zeros = jnp.zeros(like.shape[1:], jnp.float32)
        per_row = jax.vmap(lambda index, value: zeros.at[index].add(value))(
            tokens, partials.reshape(partials.shape[0], -1, partials.shape[-1]))
        return per_row.reshape(-1, group, *per_row.shape[1:]).sum(1).astype(like.dtype)

    d_key_bias = None if key_bias is None else jnp.zeros_like(key_bias)
    return dq, into_keys(dk, k), into_keys(dv, v), d_key_bias, None, None


_attend_tpu.defvjp(_attend_tpu_fwd, _attend_tpu_bwd)
