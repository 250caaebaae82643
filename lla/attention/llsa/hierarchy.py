"""The LLSA hierarchy: level resolution, mean pooling and hierarchical top-K selection.

Shared by every LLSA implementation (the "xla" reference and the Pallas kernels), so all of
them attend to exactly the same sparse sets. Pooled levels are token-major like the op's
inputs, `[Bt, N / B^l, H, D]`; selections are heads-major, `[Bt, H, N / B^l, K]`.

Selection (the LLSA paper, arXiv 2512.16615), without gradient and without the 1/sqrt(D) scale:
  level L (coarsest): each level-L query token keeps the top-K of all level-L key tokens;
  level l < L: level-l query token i keeps the top-K of the K·B children of its parent's
  picks, {j·B + c : j in I[l+1][i // B], c < B}.
Selected indices are returned sorted ascending, so candidate lists are in token order and
ties (broken by `lax.top_k` towards the lower position) go to the lower token index.
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


def heads_major(x: jax.Array) -> jax.Array:
    """[Bt, N, H, D] <-> [Bt, H, N, D]."""
    return x.transpose(0, 2, 1, 3)


def default_levels(tokens: int, block_size: int, causal: bool = False) -> int:
    """The default L: the largest L with B^(L+1) <= N, at least 1 (= max(1, floor(log_B(N)
    - 1)); needs block_size >= 2); causal, one level fewer, at least 1.

    Causal calls stop a level earlier because the deeper hierarchy is the slower one there:
    at [1, 65536, 6, 64] on an H200, causal fwd+bwd took 4.24 ms at L = 2 and 8.14 ms at
    L = 3 (`experiments/results/nvidia_h200/llsa_causal_children.json`; the causal dK/dV of
    level L - 1 has no masked-tile form, docs/llsa_causal.md). One measured shape, so the
    rule is a heuristic. Non-causal, L = 3 and L = 2 tie at that shape (fwd+bwd 2.018 and
    2.008 ms, `llsa_masked_default.json`, `llsa_a.json`).
    """
    levels = 1
    while block_size ** (levels + 2) <= tokens:
        levels += 1
    return max(1, levels - 1) if causal else levels


def check_hierarchy(op: str, tokens: int, block_size: int, topk: int, levels: int) -> None:
    """Raises ValueError, saying what would work, unless the hierarchy of these (checked)
    ints is well formed."""
    span = block_size ** levels
    if tokens % span:
        below, above = tokens // span * span, -(-tokens // span) * span
        nearest = f"{below} or {above}" if below else f"{above}"
        raise ValueError(
            f"{op}: N={tokens} tokens is not divisible by block_size**levels = "
            f"{block_size}**{levels} = {span}; nearest valid N: {nearest} (or choose fewer "
            f"levels or another block_size)")
    coarsest = tokens // span
    if topk > coarsest:
        raise ValueError(
            f"{op}: topk={topk} exceeds the {coarsest} coarsest-level tokens "
            f"(N / block_size**levels = {tokens} / {span}); use topk <= {coarsest} or fewer "
            f"levels")


def check_enrich_levels(op: str, enrich_levels, levels: int) -> int:
    """`enrich_levels` resolved (None -> `levels`) and checked to be an int in 0..levels;
    else ValueError saying what would work."""
    if enrich_levels is None:
        return levels
    if isinstance(enrich_levels, bool | np.bool_) or not isinstance(
            enrich_levels, numbers.Integral) or not 0 <= enrich_levels <= levels:
        raise ValueError(
            f"{op}: enrich_levels must be None (all {levels} levels) or an int in "
            f"0..levels = 0..{levels} (0: plain top-K); got {enrich_levels!r}")
    return int(enrich_levels)


def pyramid(x: jax.Array, block_size: int, levels: int) -> list[jax.Array]:
    """x [Bt, N, H, D] -> L + 1 float32 arrays [Bt, N / B^l, H, D]: x and its means over
    windows of B^l consecutive tokens (each level pooled from the one below)."""
    pooled = [x.astype(jnp.float32)]
    for _ in range(levels):
        batch, tokens, *rest = pooled[-1].shape
        pooled.append(pooled[-1].reshape(batch, tokens // block_size, block_size, *rest)
                      .mean(2))
    return pooled


def children(parents: jax.Array, block_size: int) -> jax.Array:
    """Token indices of the children of `parents` [..., K] -> [..., K·B], in parent order."""
    offsets = jnp.arange(block_size, dtype=parents.dtype)
    return (parents[..., None] * block_size + offsets).reshape(*parents.shape[:-1], -1)


def gather_tokens(x: jax.Array, index: jax.Array) -> jax.Array:
    """x [Bt, H, T, D], index [Bt, H, ..., M] -> [Bt, H, ..., M, D]."""
    flat = index.reshape(*index.shape[:2], -1)
    gathered = jnp.take_along_axis(x, flat[..., None], axis=2)
    return gathered.reshape(*index.shape, x.shape[-1])


def _selection_inputs(q_level: jax.Array, k_level: jax.Array):
    """[Bt, T, H, D] q and [Bt, T, Hkv, D] k -> float32 heads-major [Bt, H, T, D] each, k's
    heads repeated for grouped-query attention, without gradient."""
    k_level = jnp.repeat(k_level, q_level.shape[2] // k_level.shape[2], axis=2)
    return (lax.stop_gradient(heads_major(q_level).astype(jnp.float32)),
            lax.stop_gradient(heads_major(k_level).astype(jnp.float32)))


def select_coarsest(q_level: jax.Array, k_level: jax.Array, topk: int) -> jax.Array:
    """Dense top-K at the coarsest level: q_level [Bt, N_L, H, D], k_level [Bt, N_L, Hkv, D]
    -> int32 [Bt, H, N_L, K], ascending (no gradient)."""
    q_level, k_level = _selection_inputs(q_level, k_level)
    scores = jnp.einsum("bhqd,bhkd->bhqk", q_level, k_level, precision=lax.Precision.HIGHEST)
    return jnp.sort(lax.top_k(scores, topk)[1].astype(jnp.int32), axis=-1)


def select_children(q_level: jax.Array, k_level: jax.Array, parent_picks: jax.Array,
                    block_size: int, topk: int) -> jax.Array:
    """Sparse top-K at level l < L: each level-l query keeps the top-K of the K·B children
    of its parent's picks.

    Args:
      q_level: [Bt, N_l, H, D]; k_level: [Bt, N_l, Hkv, D], Hkv dividing H.
      parent_picks: int32 [Bt, H, N_l / B, K], ascending: the level-(l+1) picks.

    Returns:
      int32 [Bt, H, N_l, K], ascending (no gradient).
    """
    q_level, k_level = _selection_inputs(q_level, k_level)
    candidates = children(parent_picks, block_size)  # [Bt, H, P, K·B], ascending
    keys = gather_tokens(k_level, candidates)  # [Bt, H, P, K·B, D]
    queries = q_level.reshape(*keys.shape[:3], block_size, -1)  # [Bt, H, P, B, D]
    scores = jnp.einsum("bhpqd,bhpcd->bhpqc", queries, keys, precision=lax.Precision.HIGHEST)
    positions = jnp.sort(lax.top_k(scores, topk)[1], axis=-1)  # [Bt, H, P, B, K]
    chosen = jnp.take_along_axis(candidates[..., None, :], positions, axis=-1)
    return chosen.reshape(*chosen.shape[:2], -1, topk).astype(jnp.int32)


def select(q_levels: list[jax.Array], k_levels: list[jax.Array], block_size: int,
           topk: int) -> dict[int, jax.Array]:
    """Hierarchical top-K selection (no gradient).

    Args:
      q_levels, k_levels: `pyramid` outputs, L + 1 arrays [Bt, N / B^l, H or Hkv, D] (level
        0 is not read and may be None).
      block_size, topk: B and K.

    Returns:
      {l: I_l} for l = 1..L, I_l int32 [Bt, H, N / B^l, K], ascending: the level-l tokens
      (= level-(l-1) blocks) picked by each level-l query token. I_1 are the fine blocks of
      each level-0 query block.
    """
    levels = len(q_levels) - 1
    picks = {levels: select_coarsest(q_levels[levels], k_levels[levels], topk)}
    for level in range(levels - 1, 0, -1):
        picks[level] = select_children(q_levels[level], k_levels[level], picks[level + 1],
                                       block_size, topk)
    return picks


def keys_per_query(q: jax.Array, k: jax.Array, v: jax.Array, *, block_size: int, topk: int,
                   levels: int, enrich_levels: int, **_) -> jax.Array:
    """The op's `keys_per_query`: K·B fine keys, K·B candidates at each attended level
    0 < l < L, and the N / B^L coarsest tokens when they are attended (Lₑ = L). A causal
    query block attends to fewer (only complete past tokens): this is the count of one
    with a whole sequence before it."""
    del q, v
    middle = min(enrich_levels, levels - 1)
    coarsest = k.shape[1] // block_size ** levels if enrich_levels == levels else 0
    return jnp.float32(topk * block_size * (1 + middle) + coarsest)
