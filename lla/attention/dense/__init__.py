"""Dense softmax attention, registered as "dense": the baseline every sparse op is timed against.

Implementations, in preference order:
  "cudnn": cuDNN flash attention through `jax.nn.dot_product_attention` (GPU, bf16/f16);
           `cudnn.py`.
  "xla":   `common.chunked_softmax.chunked_attention`, pure JAX, online softmax over chunks
           with a flash-style custom VJP; never materialises N x N, on any platform;
           `reference.py`.

Block-causal masking (`causal_block_size=c` with `causal=True`: query i sees key j iff
j // c <= i // c) is the frame-causal mask of video models, c tokens per frame
(`lla.attention.token_order.frame_causal_arguments`). Any N is allowed: the last block may be
partial (N not a multiple of c), and c >= N is non-causal attention.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax

from lla.attention import registry
from lla.attention.common.validation import (
    SegmentIds,
    check_flag,
    check_int,
    check_kv_lengths,
    check_qkv,
    default_scale,
    split_segment_ids,
)
from lla.attention.dense import cudnn, decoding, reference


def dot_product_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    causal: bool = False,
    causal_block_size: int = 1,
    segment_ids: SegmentIds | None = None,
    kv_lengths: jax.Array | None = None,
    scale: float | None = None,
    implementation: str | Sequence[str] | None = None,
    return_residuals: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """softmax(q·kᵀ·scale + mask)·v for every head.

    Args:
      q: [B, Nq, H, D] float32, bfloat16 or float16.
      k, v: [B, Nk, Hkv, D], same dtype; Hkv divides H (grouped-query attention: query head
        h reads kv head h // (H // Hkv)).
      causal: query i sees keys j <= i (top-left aligned when Nq != Nk); with
        `causal_block_size` c, keys j with j // c <= i // c.
      causal_block_size: c >= 1, used with `causal=True` only: blocks of c consecutive tokens
        (the last one may be partial) see each other and every earlier block, e.g. the c
        tokens of each frame of a video. 1 (the default) is token causal attention.
      segment_ids: int [B, N] (Nq == Nk) or a pair ([B, Nq], [B, Nk]); a query sees only keys
        of its own segment. A query that sees no key outputs 0 (lse -inf).
      kv_lengths: int [B] or None: row b sees only keys j < kv_lengths[b] (a KV cache
        holding kv_lengths[b] valid entries; decoding passes q [B, 1, H, D] with the whole
        cache as k/v). Combines with causal and segment_ids (all masks apply).
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
    causal = check_flag("dense", "causal", causal)
    causal_block_size = _check_causal_block_size(causal_block_size, causal)
    return_residuals = check_flag("dense", "return_residuals", return_residuals)
    segments = split_segment_ids("dense", segment_ids, q, k)
    kv_lengths = check_kv_lengths("dense", kv_lengths, q, k)
    scale = default_scale(q.shape[-1], scale)
    static = dict(causal=causal, causal_block_size=causal_block_size, segments=segments,
                  kv_lengths=kv_lengths, scale=scale, return_residuals=return_residuals)
    return registry.call(DENSE, implementation, q, k, v, **static)


def _check_causal_block_size(causal_block_size, causal: bool) -> int:
    """`causal_block_size` as an int >= 1, and 1 unless `causal`; else ValueError."""
    causal_block_size = check_int("dense", "causal_block_size", causal_block_size, 1)
    if causal_block_size != 1 and not causal:
        raise ValueError(f"dense: causal_block_size={causal_block_size} needs causal=True (it "
                         f"sets the size of the causal blocks); pass causal=True, or leave "
                         f"causal_block_size at 1 for non-causal attention")
    return causal_block_size


DENSE = registry.register(registry.AttentionOp(
    name="dense",
    fn=dot_product_attention,
    capabilities=registry.Capabilities(causal=True, block_causal=True, segments=True,
                                       gqa=True, decode=True),
    implementations=(
        registry.Implementation("cudnn", cudnn.dense_cudnn, cudnn.unsupported_reasons,
                                ("gpu",)),
        registry.Implementation(
            "xla", reference.dense_xla,
            tunable=registry.Tunable(reference.default_config, ("chunk_q", "chunk_k"))),
    ),
    summary="softmax attention over all keys (causal, segment_ids, GQA, kv_lengths)",
    decoding=decoding.kv_lengths_decoding(dot_product_attention),
))
