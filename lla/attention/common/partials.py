"""Merging attention computed over disjoint key sets: `merge_partials`."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def merge_partials(*partials: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """Combines softmax attention over disjoint key sets into attention over their union.

    Each partial is (out [B, N, H, D], lse [B, H, N]) as returned with `return_residuals=True`
    (lse f32, natural log, -inf where a query saw no key). Exact: merging the halves of a key
    set equals attending to the whole set, and it is differentiable in every input.

    Returns:
      (out [B, N, H, D] in the first partial's dtype, lse [B, H, N] f32).
    """
    if not partials:
        raise ValueError("merge_partials needs at least one (out, lse) pair")
    outs = [o for o, _ in partials]
    lses = jnp.stack([lse.astype(jnp.float32) for _, lse in partials])
    for i, (out, lse) in enumerate(partials):
        expected = (out.shape[0], out.shape[2], out.shape[1])
        if out.ndim != 4 or tuple(lse.shape) != expected or out.shape != outs[0].shape:
            raise ValueError(
                f"merge_partials: partial {i} has out {tuple(out.shape)} and lse "
                f"{tuple(lse.shape)}; expected out {tuple(outs[0].shape)} [B, N, H, D] and "
                f"lse [B, H, N] = {expected}")
    row_max = lses.max(0)
    safe_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
    weights = jnp.exp(lses - safe_max)  # [P, B, H, N]; 0 for partials that saw no key
    total = weights.sum(0)
    seen = total > 0
    safe_total = jnp.where(seen, total, 1.0)
    lse = jnp.where(seen, safe_max + jnp.log(safe_total), -jnp.inf)
    share = (weights / safe_total).transpose(0, 1, 3, 2)[..., None]  # [P, B, N, H, 1]
    out = sum(share[i] * o.astype(jnp.float32) for i, o in enumerate(outs))
    return out.astype(outs[0].dtype), lse
