"""Ring attention: dense attention with the tokens sharded over a mesh axis (inside
`jax.shard_map`).

Device d holds queries and keys d·n .. (d+1)·n - 1 (n = N / P). The k/v blocks travel round
the ring, one hop per step (d sends to d + 1, so at step s device d holds the block of device
d - s mod P); each step's (out, lse) from `dot_product_attention(..., return_residuals=True)`
is merged into the running one with `merge_partials`, in float32. Causal: a block from an
earlier device is attended in full, the own block causally (the diagonal), a block from a
later device not at all (its step is skipped with `lax.cond`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

from lla.attention.common.partials import merge_partials
from lla.attention.common.validation import check_flag
from lla.attention.dense import dot_product_attention


def ring_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    axis_name: str = "sequence",
    causal: bool = False,
    scale: float | None = None,
    implementation: str | Sequence[str] | None = None,
    return_residuals: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Dense softmax attention over the whole sequence, from inside `jax.shard_map`.

    Equals `dot_product_attention` of the gathered sequence on this device's rows. P - 1
    `ppermute` hops of the local k and v ([B, n, Hkv, D] each per hop); per step one local
    dense attention of [n queries, n keys] (`implementation` as the dense op's). Gradients by
    autodiff: the backward replays the ring in reverse (dk, dv hop back), one dense backward
    per step, and keeps every visited k/v block as a residual, so its memory is that of
    all-gathering k and v (O(N·Hkv·D) per device) rather than the forward's O(n·Hkv·D).

    Args:
      q: [B, n, H, D], this device's n = N / P consecutive queries (device d: d·n ..).
      k, v: [B, n, Hkv, D], the same tokens' keys and values; Hkv divides H.
      axis_name: the mesh axis (P devices) the tokens are sharded over.
      causal: query i sees keys j <= i (global positions).
      scale: logit multiplier, default 1/sqrt(D).
      implementation: the dense op's implementation for the local steps.
      return_residuals: also return the lse.

    Returns:
      [B, n, H, D] in q's dtype; with `return_residuals`, (out, lse [B, H, n] float32).
    """
    causal = check_flag("ring_attention", "causal", causal)
    devices = lax.axis_size(axis_name)
    me = lax.axis_index(axis_name)
    attend = functools.partial(dot_product_attention, q, scale=scale,
                               implementation=implementation, return_residuals=True)

    def in_full(k_block, v_block):
        out, lse = attend(k_block, v_block)
        return out.astype(jnp.float32), lse

    def skipped(k_block, v_block):
        del k_block, v_block
        rows = q.astype(jnp.float32)
        return jnp.zeros_like(rows), jnp.full_like(rows[..., 0], -jnp.inf).transpose(0, 2, 1)

    out, lse = attend(k, v, causal=causal)  # the own block: the diagonal when causal
    ring = [(d, (d + 1) % devices) for d in range(devices)]

    def step(carry, hop):
        out, lse, k_block, v_block = carry
        k_block, v_block = lax.ppermute((k_block, v_block), axis_name, ring)
        owner = (me - hop) % devices
        if causal:
            partial = lax.cond(owner < me, in_full, skipped, k_block, v_block)
        else:
            partial = in_full(k_block, v_block)
        out, lse = merge_partials((out, lse), partial)
        return (out, lse, k_block, v_block), None

    (out, lse, _, _), _ = lax.scan(step, (out.astype(jnp.float32), lse, k, v),
                                   jnp.arange(1, devices))
    out = out.astype(q.dtype)
    return (out, lse) if return_residuals else out
