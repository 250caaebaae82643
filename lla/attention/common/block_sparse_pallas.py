"""Block-sparse attention over an index table on the sparse-flash Pallas kernels, with its
custom VJP: the "pallas_gpu" path every block-sparse op ("topk_block", ...) shares.

Same contract as `block_sparse.attend_blocks` (its reference): q [Bt, Nq, H, D], k, v
[Bt, Nk, Hkv, D], indices int32 [Bt, H, ceil(Nq / B), K] with -1 for empty slots. Here the
sequences are zero-padded to whole blocks (the kernels mask the padding keys), the lists go
through `lla.pallas_kernels.sparse_flash.metadata` (query-major lists for the forward and dQ,
their key-major CSR for dK/dV), and the per-query-head dK/dV are summed over GQA groups.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from lla.attention.common.block_sparse import pad_tokens
from lla.pallas_kernels.common import sum_query_heads
from lla.pallas_kernels.sparse_flash import gpu, metadata


def attend_gpu(q, k, v, indices, config: gpu.Config) -> jax.Array:
    """-> [Bt, Nq, H, D] in q's dtype; differentiable in q, k and v (not in `indices`)."""
    rows = indices.shape[0] * indices.shape[1]
    indices = jax.lax.stop_gradient(indices).reshape(rows, *indices.shape[2:])
    blocks, counts = metadata.query_major(indices)
    offsets, readers = metadata.transpose(indices, config.key_blocks)
    size = config.block_size
    out = _attend(pad_tokens(q, size), pad_tokens(k, size), pad_tokens(v, size), blocks,
                  counts, offsets, readers, config)
    return out[:, :q.shape[1]]


@functools.partial(jax.custom_vjp, nondiff_argnums=(7,))
def _attend(q, k, v, blocks, counts, offsets, readers, config):
    return gpu.forward(q, k, v, blocks, counts, config)[0]


def _attend_fwd(q, k, v, blocks, counts, offsets, readers, config):
    out, lse = gpu.forward(q, k, v, blocks, counts, config)
    return out, (q, k, v, blocks, counts, offsets, readers, out, lse)


def _attend_bwd(config, residuals, d_out):
    q, k, v, blocks, counts, offsets, readers, out, lse = residuals
    delta = jnp.einsum("bnhd,bnhd->bhn", out.astype(jnp.float32), d_out.astype(jnp.float32))
    delta = delta.reshape(lse.shape)
    d_out = d_out.astype(q.dtype)
    dq = gpu.backward_dq(q, d_out, lse, delta, k, v, blocks, counts, config)
    dk, dv = gpu.backward_dkv(q, d_out, lse, delta, k, v, offsets, readers, config)
    dk = sum_query_heads(dk, config.kv_heads).astype(k.dtype)
    dv = sum_query_heads(dv, config.kv_heads).astype(v.dtype)
    return dq, dk, dv, None, None, None, None


_attend.defvjp(_attend_fwd, _attend_bwd)
