"""Dense softmax attention, registered as "dense": the baseline every sparse op is timed against.

Implementations, in preference order:
  "cudnn": cuDNN flash attention through `jax.nn.dot_product_attention` (GPU, bf16/f16).
  "xla":   `chunked_softmax.chunked_attention`, pure JAX, online softmax over chunks with a
           flash-style custom VJP; never materialises N x N, on any platform.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from lla.attention import registry
from lla.attention.chunked_softmax import chunked_attention
from lla.attention.validation import SegmentIds, check_qkv, default_scale, split_segment_ids

_CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)


def dot_product_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    causal: bool = False,
    segment_ids: SegmentIds | None = None,
    scale: float | None = None,
    implementation: str | Sequence[str] | None = None,
    return_residuals: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """softmax(q·kᵀ·scale + mask)·v for every head.

    Args:
      q: [B, Nq, H, D] float32, bfloat16 or float16.
      k, v: [B, Nk, Hkv, D], same dtype; Hkv divides H (grouped-query attention: query head
        h reads kv head h // (H // Hkv)).
      causal: query i sees keys j <= i (top-left aligned when Nq != Nk).
      segment_ids: int [B, N] (Nq == Nk) or a pair ([B, Nq], [B, Nk]); a query sees only keys
        of its own segment. A query that sees no key outputs 0 (lse -inf).
      scale: logit multiplier, default 1/sqrt(D).
      implementation: None (best available: "cudnn" on GPU for bf16/f16, else "xla"), a name,
        or a sequence of names tried in order.
      return_residuals: also return lse.

    Returns:
      out [B, Nq, H, D] in q's dtype; with `return_residuals`, (out, lse [B, H, Nq] float32,
      natural log), differentiable in both (see `merge_partials`).

    Raises:
      ValueError: malformed inputs (the message names the argument and expected shape).
      NoImplementationError: no requested implementation supports the inputs.
    """
    check_qkv("dense", q, k, v)
    segments = split_segment_ids("dense", segment_ids, q, k)
    scale = default_scale(q.shape[-1], scale)
    static = dict(causal=causal, segments=segments, scale=scale,
                  return_residuals=return_residuals)
    impl = registry.select(DENSE, implementation, q, k, v, **static)
    return impl.fn(q, k, v, **static)


def _xla(q, k, v, *, causal, segments, scale, return_residuals):
    out, lse = chunked_attention(q, k, v, segments, causal=causal, scale=scale)
    return (out, lse) if return_residuals else out


def _cudnn(q, k, v, *, causal, segments, scale, return_residuals):
    del segments, return_residuals  # rejected by _cudnn_reasons
    return jax.nn.dot_product_attention(q, k, v, scale=scale, is_causal=causal,
                                        implementation="cudnn")


def _cudnn_reasons(q, k, v, *, causal, segments, scale, return_residuals):
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
    return reasons


DENSE = registry.register(registry.AttentionOp(
    name="dense",
    fn=dot_product_attention,
    capabilities=registry.Capabilities(
        causal=True, spatial_dims=(), segments=True, gqa=True, decode=False, trainable=True,
        dtypes=("float32", "bfloat16", "float16")),
    implementations={
        "cudnn": registry.Implementation("cudnn", _cudnn, _cudnn_reasons, ("gpu",)),
        "xla": registry.Implementation("xla", _xla, registry.always_supported,
                                       ("cpu", "gpu", "tpu")),
    },
    summary="softmax attention over all keys (causal, segment_ids, GQA)",
))
