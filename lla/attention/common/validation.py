"""Input checks shared by all attention ops: each error names the argument, the shape or dtype
received and what would work."""

from __future__ import annotations

import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np

SegmentIds = jax.Array | tuple[jax.Array, jax.Array]


def check_qkv(op: str, q: jax.Array, k: jax.Array, v: jax.Array) -> None:
    """Checks q `[B, Nq, H, D]`, k and v `[B, Nk, Hkv, D]` with Hkv dividing H, one float dtype.

    Raises:
      ValueError: naming the offending argument, its shape or dtype, and the expected one.
    """
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.ndim != 4:
            raise ValueError(
                f"{op}: {name} must have rank 4, [batch, tokens, heads, head_dim]; "
                f"got shape {tuple(x.shape)} (rank {x.ndim})")
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(
                f"{op}: {name} must be a floating dtype (float32, bfloat16 or float16); "
                f"got {x.dtype}")
    batch, _, heads, head_dim = q.shape
    _, kv_tokens, kv_heads, _ = k.shape
    expected_kv = f"({batch}, Nk, Hkv, {head_dim}) with Hkv dividing {heads}"
    if k.shape[0] != batch or k.shape[3] != head_dim or heads % kv_heads:
        raise ValueError(f"{op}: k has shape {tuple(k.shape)}; expected {expected_kv} "
                         f"(q has shape {tuple(q.shape)})")
    if tuple(v.shape) != tuple(k.shape):
        raise ValueError(f"{op}: v has shape {tuple(v.shape)}; expected k's shape "
                         f"{tuple(k.shape)}, i.e. ({batch}, {kv_tokens}, {kv_heads}, {head_dim})")
    if not q.dtype == k.dtype == v.dtype:
        raise ValueError(f"{op}: q, k and v must share one dtype; got q {q.dtype}, "
                         f"k {k.dtype}, v {v.dtype} (cast them to one of these first)")


def split_segment_ids(
    op: str, segment_ids: SegmentIds | None, q: jax.Array, k: jax.Array
) -> tuple[jax.Array, jax.Array] | None:
    """Returns (q_segment_ids `[B, Nq]`, kv_segment_ids `[B, Nk]`) or None.

    `segment_ids` is one integer array `[B, N]` (when q and k have the same number of tokens)
    or a pair of them. A query attends only to keys with the same segment id.

    Raises:
      ValueError: wrong rank, shape or dtype, naming what was expected.
    """
    if segment_ids is None:
        return None
    batch, q_tokens = q.shape[:2]
    kv_tokens = k.shape[1]
    if isinstance(segment_ids, tuple | list):
        if len(segment_ids) != 2:
            raise ValueError(f"{op}: segment_ids must be one array [B, N] or a pair "
                             f"(q_segment_ids [B, Nq], kv_segment_ids [B, Nk]); "
                             f"got a sequence of {len(segment_ids)}")
        q_ids, kv_ids = segment_ids
    else:
        if q_tokens != kv_tokens:
            raise ValueError(
                f"{op}: a single segment_ids array needs q and k with the same number of "
                f"tokens (got {q_tokens} and {kv_tokens}); pass a pair "
                f"(q_segment_ids [{batch}, {q_tokens}], kv_segment_ids [{batch}, {kv_tokens}])")
        q_ids = kv_ids = segment_ids
    for name, ids, tokens in (("q_segment_ids", q_ids, q_tokens),
                              ("kv_segment_ids", kv_ids, kv_tokens)):
        if not isinstance(ids, jax.Array | np.ndarray):
            raise ValueError(f"{op}: {name} must be an integer array [{batch}, {tokens}]; "
                             f"got {type(ids).__name__} {ids!r}")
        if tuple(ids.shape) != (batch, tokens):
            raise ValueError(f"{op}: {name} has shape {tuple(ids.shape)}; "
                             f"expected ({batch}, {tokens})")
        if not jnp.issubdtype(ids.dtype, jnp.integer):
            raise ValueError(f"{op}: {name} must be an integer array; got {ids.dtype}")
    return q_ids, kv_ids


def check_kv_lengths(op: str, kv_lengths, q: jax.Array, k: jax.Array) -> jax.Array | None:
    """Returns `kv_lengths` (None, or an integer array `[B]`: the number of valid keys of each
    batch row, e.g. the filled part of a KV cache) as int32.

    Raises:
      ValueError: not an integer array of shape (B,), naming what was expected.
    """
    if kv_lengths is None:
        return None
    batch, kv_tokens = q.shape[0], k.shape[1]
    expected = (f"an integer array [{batch}] (valid keys per batch row, 0 to {kv_tokens}) "
                f"or None")
    if not isinstance(kv_lengths, jax.Array | np.ndarray):
        raise ValueError(f"{op}: kv_lengths must be {expected}; got "
                         f"{type(kv_lengths).__name__} {kv_lengths!r}")
    if tuple(kv_lengths.shape) != (batch,) or not jnp.issubdtype(kv_lengths.dtype, jnp.integer):
        raise ValueError(f"{op}: kv_lengths must be {expected}; got {kv_lengths.dtype} of "
                         f"shape {tuple(kv_lengths.shape)}")
    return jnp.asarray(kv_lengths, jnp.int32)


def default_scale(head_dim: int, scale: float | None) -> float:
    """The logit scale: `scale` if given (checked by `check_scale`), else 1/sqrt(head_dim)."""
    check_scale("attention", scale)
    return float(head_dim) ** -0.5 if scale is None else float(scale)


def check_int(op: str, name: str, value, minimum: int) -> int:
    """`value` as an int if it is an integer (not a bool) >= `minimum`; else ValueError."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Integral) \
            or value < minimum:
        raise ValueError(f"{op}: {name} must be an int >= {minimum}; got {value!r}")
    return int(value)


def check_flag(op: str, name: str, value) -> bool:
    """`value` if it is a bool (numpy bools too); else ValueError."""
    if not isinstance(value, bool | np.bool_):
        raise ValueError(f"{op}: {name} must be True or False; got {value!r}")
    return bool(value)


def check_scale(op: str, scale) -> None:
    """None or a finite positive number; else ValueError."""
    if scale is None:
        return
    if isinstance(scale, bool | np.bool_) or not isinstance(scale, numbers.Real) \
            or not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"{op}: scale must be a finite positive number or None (for "
                         f"1/sqrt(head_dim)); got {scale!r}")
