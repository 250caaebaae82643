"""The "cudnn" implementation of dense attention: cuDNN flash attention through
`jax.nn.dot_product_attention` (GPU, bf16/f16, no segment ids, no residuals); `kv_lengths`
goes to it as `key_value_seq_lengths` (cuDNN's padding mask; a length of 0 outputs zeros).

Token causal attention (`causal_block_size` 1) is cuDNN's own causal mask, which skips the
masked tiles. Block-causal attention (`causal_block_size` > 1) has no cuDNN mask type: it goes
in as a boolean mask [1, 1, N, N] (`block_causal_mask`), which jax turns into an additive
bias, so it costs an N x N bias in HBM (at N = 4096, 32 MiB in bf16) and computes every tile.
It is the dense baseline, not a fast path.

Not visible to `unsupported_reasons`, which cannot tell a forward from a differentiated call:
jax's cuDNN backward raises NotImplementedError for an odd Nq or Nk (jax 0.11.2, when the
call is differentiated); forward-only calls with odd lengths, e.g. decoding with Nq = 1, run
(checked on an H200)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

_CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)


def block_causal_mask(tokens: int, causal_block_size: int) -> jax.Array:
    """bool [1, 1, N, N]: query i sees key j iff j // c <= i // c (c = causal_block_size)."""
    blocks = jnp.arange(tokens) // causal_block_size
    return (blocks[None, :] <= blocks[:, None])[None, None]


def dense_cudnn(q, k, v, *, causal, causal_block_size, segments, kv_lengths, scale,
                return_residuals):
    """q [B, Nq, H, D], k/v [B, Nk, Hkv, D] -> [B, Nq, H, D]."""
    del segments, return_residuals  # rejected by unsupported_reasons
    block_causal = causal and causal_block_size > 1
    mask = block_causal_mask(q.shape[1], causal_block_size) if block_causal else None
    return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale,
                                        is_causal=causal and not block_causal,
                                        key_value_seq_lengths=kv_lengths,
                                        implementation="cudnn")


def unsupported_reasons(q, k, v, *, causal, causal_block_size, segments, kv_lengths, scale,
                        return_residuals):
    """Why cuDNN cannot run these inputs (platform, dtype, head_dim, segments, residuals,
    causal shapes, block-causal with kv_lengths)."""
    reasons = []
    if jax.default_backend() != "gpu":
        reasons.append(f"needs a CUDA GPU, platform is {jax.default_backend()}")
    if q.dtype not in _CUDNN_DTYPES:
        reasons.append(f"dtype {q.dtype} not supported (bfloat16 or float16)")
    head_dim = q.shape[-1]
    if head_dim % 8 or head_dim > 256:
        reasons.append(f"head_dim {head_dim} must be a multiple of 8 and <= 256")
    if segments is not None:
        reasons.append("segment_ids not supported")
    if return_residuals:
        reasons.append("return_residuals not supported (its lse is neither f32 nor "
                       "differentiable)")
    if causal and q.shape[1] != k.shape[1]:
        reasons.append(f"causal needs Nq == Nk, got {q.shape[1]} and {k.shape[1]}")
    if causal and causal_block_size > 1 and kv_lengths is not None:
        reasons.append(f"causal_block_size {causal_block_size} with kv_lengths not supported "
                       f"(the block mask is a bias, not combined with cuDNN's padding mask "
                       f"here); use 'xla'")
    return reasons
