"""Sequence-parallel LLSA: the tokens sharded over a mesh axis (inside `jax.shard_map`).

Device d holds the n = N / P consecutive tokens d·n .. (d+1)·n - 1, n a multiple of B^L,
so its query blocks are whole level-L tokens and every pooled window lies on one device.
Each device pools its own k and v (`hierarchy.pyramid`) and all-gathers every level (level
0 in the inputs' dtype), so it holds the whole pyramid; it selects for its own query blocks
against the global key levels with LLSA's own selection (`hierarchy.select` for its pooled
queries, or `causal.select_blocks` for its global block indices) and attends with the
reference's `attend` / `causal_attend`. No LLSA math is restated here: each row is computed
by the same code as in `lla.attention.llsa(..., implementation="xla")`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from lla.attention.common.validation import check_flag, check_int, check_qkv
from lla.attention.llsa import causal as causal_hierarchy
from lla.attention.llsa import hierarchy, reference

_OP = "sequence_parallel_llsa"


def sequence_parallel_llsa(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    axis_name: str = "sequence",
    block_size: int = 16,
    topk: int = 8,
    levels: int | None = None,
    enrich_levels: int | None = None,
    reweight: bool = True,
    causal: bool = False,
) -> jax.Array:
    """`lla.attention.llsa` over the whole sequence, from inside `jax.shard_map`.

    Equals the single-device op (implementation "xla") on this device's rows, forward and
    gradients (autodiff; the all-gathers transpose to reduce-scatters of dk, dv). It
    all-gathers k and v and their pooled levels: (P - 1)·n·Hkv·D elements of each received
    per device, plus 1/B of that per pooled level (in float32), and holds the whole k and v
    (and their float32 pyramids) per device, O(N·Hkv·D). Causal adds one `ppermute` of a
    block mean (the selection query of the first local block is the mean of the block before
    it, on the previous device). Compute and the reference's gathers scale with n, as
    `lla.attention.llsa` on n tokens, plus n/B·N/B^L coarsest-level logits.

    Args:
      q: [Bt, n, H, D], this device's n = N / P queries (tokens in hierarchy order).
      k, v: [Bt, n, Hkv, D], Hkv dividing H.
      axis_name: the mesh axis (P devices) the tokens are sharded over.
      block_size, topk, levels, enrich_levels, reweight, causal: as `lla.attention.llsa`'s,
        for the global N = n·P (levels None: the default for N); n must be a multiple of
        block_size**levels.

    Returns:
      [Bt, n, H, D] in q's dtype.
    """
    check_qkv(_OP, q, k, v)
    if q.shape[1] != k.shape[1]:
        raise ValueError(f"{_OP}: self-attention needs q and k with the same number of tokens; "
                         f"got q {tuple(q.shape)} and k {tuple(k.shape)}")
    devices = lax.axis_size(axis_name)
    local = q.shape[1]
    tokens = local * devices
    block_size = check_int(_OP, "block_size", block_size, 2)
    topk = check_int(_OP, "topk", topk, 1)
    causal = check_flag(_OP, "causal", causal)
    levels = (hierarchy.default_levels(tokens, block_size, causal) if levels is None
              else check_int(_OP, "levels", levels, 1))
    enrich_levels = hierarchy.check_enrich_levels(_OP, enrich_levels, levels)
    reweight = check_flag(_OP, "reweight", reweight)
    hierarchy.check_hierarchy(_OP, tokens, block_size, topk, levels)
    span = block_size ** levels
    if local % span:
        raise ValueError(
            f"{_OP}: each of the {devices} devices holds n = {local} tokens, not a multiple "
            f"of block_size**levels = {span}; use N a multiple of {devices * span}, fewer "
            f"levels or fewer devices")

    def gathered_pyramid(x):
        pooled = hierarchy.pyramid(x, block_size, levels)[1:]
        return [lax.all_gather(level, axis_name, axis=1, tiled=True)
                for level in (x, *pooled)]

    k_levels = gathered_pyramid(k)
    v_levels = gathered_pyramid(v)
    heads = q.shape[2]
    q_blocks = reference.query_blocks(q, block_size)
    k_rows = reference.heads_major_levels([x.astype(jnp.float32) for x in k_levels], heads)
    v_rows = reference.heads_major_levels([x.astype(jnp.float32) for x in v_levels], heads)
    options = dict(block_size=block_size, enrich_levels=enrich_levels, reweight=reweight)
    if not causal:
        picks = hierarchy.select(hierarchy.pyramid(q, block_size, levels), k_levels,
                                 block_size, topk)
        return reference.attend(q_blocks, picks, k_rows, v_rows, **options).astype(q.dtype)

    blocks = lax.axis_index(axis_name) * (local // block_size) + jnp.arange(
        local // block_size, dtype=jnp.int32)
    picks = causal_hierarchy.select_blocks(_selection_queries(q, block_size, axis_name),
                                           blocks, k_levels, block_size, topk)
    positions = blocks[:, None] * block_size + jnp.arange(block_size, dtype=jnp.int32)
    return reference.causal_attend(q_blocks, positions, picks, k_rows, v_rows,
                                   **options).astype(q.dtype)


def _selection_queries(q: jax.Array, block_size: int, axis_name: str) -> jax.Array:
    """`causal.selection_queries` of the local blocks: the mean query of the block before
    each, the first local block's from the previous device (zeros on device 0) ->
    float32 [Bt, H, n / B, D], without gradient."""
    means = hierarchy.pyramid(lax.stop_gradient(q), block_size, 1)[1]
    devices = lax.axis_size(axis_name)
    previous = lax.ppermute(means[:, -1:], axis_name, [(d, d + 1) for d in range(devices - 1)])
    return hierarchy.heads_major(jnp.concatenate([previous, means[:, :-1]], axis=1))
