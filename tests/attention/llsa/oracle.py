"""A brute-force oracle for LLSA (log-linear sparse attention), written from the spec.

Spec: shared/papers/llsa.md §1.2–1.7 and the op contract of `lla.attention.llsa`. Written
without looking at the library's implementation; it is meant to be obviously correct, not
fast (N up to a few hundred tokens).

Semantics, per (batch, head), for q, k, v of N tokens, block size b, top-K, L levels:

* Level l (0..L) holds X^(l) = mean-pool of X^(l-1) over windows of b tokens (N / b^l tokens).
* Selection (no gradient, logits q·k without scale, ties to the lower token index):
  level L: every level-L query token keeps the top-K of all level-L keys; level l = L-1..1:
  level-l query token i (parent p = i // b) keeps the top-K of its candidate set
  {j*b + c : j in I^(l+1)[p], c < b}.
* A query in level-0 block qb attends, in ONE softmax with scale 1/sqrt(D), to
  (fine)   every token of the K level-0 blocks I^(1)[qb], weight 1;
  (l)      for 1 <= l <= L-1, the K*b candidate level-l tokens of the level-l token
           containing the query (children of I^(l+1)[qb // b^l]), weight b^l;
  (coarse) all N / b^L level-L tokens, weight b^L.
  A weight w adds log(w) to the logit. Nothing is de-duplicated.
* Ablations (paper Tables 1a / 5a): with enrich_levels = Le (0 <= Le <= L, default L) only
  the parts of levels 0..Le are in the key set (the coarser levels Le+1..L are left out;
  Le = 0 is plain top-K over the fine blocks); with reweight=False every weight is 1. Neither
  changes the selection, which always runs over all L levels.

The oracle builds, per (batch, head), a dense [N, M] logit matrix whose columns are ALL tokens
of every level concatenated (level 0, then 1, ..., then L; M = sum_l N / b^l), with -inf
outside the query's selected sets and log(w) inside, then takes a plain softmax over the
columns times the concatenated values. Pooling and attention are ordinary jnp ops, so jax
autodiff gives the oracle's gradients (through the mean pools into k and v; selection is
computed in numpy from stop-gradient values and enters only as a constant bias).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np


def resolve_levels(tokens: int, block_size: int, levels: int | None) -> int:
    """`levels`, or (None) the largest L >= 1 with block_size**(L+1) <= tokens, at least 1."""
    if levels is not None:
        return levels
    resolved = 1
    while block_size ** (resolved + 2) <= tokens:
        resolved += 1
    return resolved


def check_config(tokens: int, block_size: int, topk: int, levels: int) -> None:
    """The oracle's own preconditions (the same ones the op must reject)."""
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    if block_size < 2:
        raise ValueError(f"block_size must be >= 2, got {block_size}")
    if tokens % block_size**levels:
        raise ValueError(f"N={tokens} not divisible by block_size**levels")
    if not 1 <= topk <= tokens // block_size**levels:
        raise ValueError(f"topk={topk} not in [1, N / block_size**levels]")


# ---- selection (numpy, float64, explicit loops) -----------------------------------------


def pool_np(x: np.ndarray, block_size: int) -> np.ndarray:
    """Mean over windows of `block_size` consecutive rows: [n, D] -> [n / b, D]."""
    n, d = x.shape
    out = np.zeros((n // block_size, d), np.float64)
    for j in range(n // block_size):
        out[j] = x[j * block_size:(j + 1) * block_size].mean(axis=0)
    return out


def top_k_lowest_index_on_ties(candidates, scores, topk):
    """The `topk` candidates with the largest score; equal scores go to the lower index.

    Returns (chosen indices in rank order, margin), where margin is the score gap between the
    last kept and the first dropped candidate (inf when nothing is dropped): the distance
    from a flip of the selection under float noise.
    """
    candidates = [int(c) for c in candidates]
    assert len(set(candidates)) == len(candidates), "candidates must be distinct"
    ranked = sorted(zip(candidates, scores, strict=True), key=lambda cs: (-cs[1], cs[0]))
    chosen = [c for c, _ in ranked[:topk]]
    margin = ranked[topk - 1][1] - ranked[topk][1] if len(ranked) > topk else math.inf
    return chosen, margin


@dataclass
class Selection:
    """Selection for one (batch, head): picks[l] is I^(l), int [N / b^l, K] for l = 1..L."""

    picks: dict[int, np.ndarray]
    margin: float  # smallest kept-vs-dropped score gap over all selections


def select_head(q: np.ndarray, k: np.ndarray, block_size: int, topk: int,
                levels: int) -> Selection:
    """Hierarchical top-K selection for one head; q, k: [N, D] (any float dtype)."""
    b = block_size
    q_levels = [np.asarray(q, np.float64)]
    k_levels = [np.asarray(k, np.float64)]
    for _ in range(levels):
        q_levels.append(pool_np(q_levels[-1], b))
        k_levels.append(pool_np(k_levels[-1], b))
    picks: dict[int, np.ndarray] = {}
    margin = math.inf
    # Coarsest level: dense over all level-L keys.
    n_top = q_levels[levels].shape[0]
    top = np.zeros((n_top, topk), np.int64)
    for i in range(n_top):
        scores = [float(q_levels[levels][i] @ k_levels[levels][j]) for j in range(n_top)]
        chosen, gap = top_k_lowest_index_on_ties(range(n_top), scores, topk)
        top[i] = chosen
        margin = min(margin, gap)
    picks[levels] = top
    # Finer levels: candidates are the children of the parent's picks.
    for level in range(levels - 1, 0, -1):
        n_level = q_levels[level].shape[0]
        chosen_level = np.zeros((n_level, topk), np.int64)
        for i in range(n_level):
            parent = i // b
            candidates = [j * b + c for j in picks[level + 1][parent] for c in range(b)]
            scores = [float(q_levels[level][i] @ k_levels[level][c]) for c in candidates]
            chosen, gap = top_k_lowest_index_on_ties(candidates, scores, topk)
            chosen_level[i] = chosen
            margin = min(margin, gap)
        picks[level] = chosen_level
    return Selection(picks, margin)


def select(q, k, block_size: int, topk: int, levels: int) -> list[list[Selection]]:
    """Per (batch, head) selections, [Bt][H]; q [Bt, N, H, D], k [Bt, N, Hkv, D] (concrete)."""
    q = np.asarray(q, np.float64)
    k = np.asarray(k, np.float64)
    group = q.shape[2] // k.shape[2]
    return [[select_head(q[n, :, h], k[n, :, h // group], block_size, topk, levels)
             for h in range(q.shape[2])] for n in range(q.shape[0])]


# ---- the dense bias over all levels' tokens ----------------------------------------------


def level_offsets(tokens: int, block_size: int, levels: int) -> list[int]:
    """Column offset of level l in the concatenation [level 0, ..., level L] (plus the total)."""
    offsets = [0]
    for level in range(levels + 1):
        offsets.append(offsets[-1] + tokens // block_size**level)
    return offsets


def bias_head(selection: Selection, tokens: int, block_size: int, levels: int,
              enrich_levels: int | None = None, reweight: bool = True) -> np.ndarray:
    """[N, M] float64 bias: log(weight) on each query's selected columns, -inf elsewhere.

    Only levels 0..enrich_levels (None: all) get columns; reweight=False sets every weight 1.

    No collisions: the parts of one query's key set live at different levels (fine = level 0,
    part l = level l for 1 <= l <= L-1, coarse = level L), so in the per-level column layout
    they occupy disjoint column ranges; within one part the tokens are distinct because
    I^(l) holds K distinct tokens (top-K of distinct candidates) and the children of
    distinct level-(l+1) tokens are distinct. So every (query, column) pair is set at most
    once, a key present in two parts appears in two columns, and both count, which is the
    "no de-duplication" rule. The assertion below checks this on every call.
    """
    b = block_size
    offsets = level_offsets(tokens, b, levels)
    bias = np.full((tokens, offsets[-1]), -np.inf)
    attended = levels if enrich_levels is None else enrich_levels

    def put(query, level, token, weight):
        if level > attended:
            return
        column = offsets[level] + int(token)
        assert bias[query, column] == -np.inf, "a column set twice for one query"
        bias[query, column] = math.log(weight) if reweight else 0.0

    for query in range(tokens):
        block = query // b
        for j in selection.picks[1][block]:                       # fine, level 0, weight 1
            for c in range(b):
                put(query, 0, j * b + c, 1)
        for level in range(1, levels):                            # intermediate levels
            parent = query // b ** (level + 1)   # = (level-l token of the query) // b
            for j in selection.picks[level + 1][parent]:
                for c in range(b):
                    put(query, level, j * b + c, b**level)
        for token in range(tokens // b**levels):                  # coarsest, all tokens
            put(query, levels, token, b**levels)
    return bias


def selection_bias(selections, tokens: int, block_size: int, levels: int,
                   enrich_levels: int | None = None, reweight: bool = True) -> np.ndarray:
    """[Bt, H, N, M] bias for all (batch, head) selections."""
    return np.stack([np.stack([bias_head(s, tokens, block_size, levels, enrich_levels,
                                         reweight) for s in row])
                     for row in selections])


# ---- attention (jnp, differentiable) -----------------------------------------------------


def pool(x: jax.Array, block_size: int) -> jax.Array:
    """Mean-pool [Bt, n, H, D] over windows of `block_size` tokens -> [Bt, n / b, H, D]."""
    batch, n, heads, d = x.shape
    return x.reshape(batch, n // block_size, block_size, heads, d).mean(axis=2)


def all_levels(x: jax.Array, block_size: int, levels: int) -> jax.Array:
    """[Bt, M, H, D]: the tokens of levels 0..L concatenated along the token axis."""
    parts = [x]
    for _ in range(levels):
        parts.append(pool(parts[-1], block_size))
    return jnp.concatenate(parts, axis=1)


def attend(q, k, v, bias) -> jax.Array:
    """softmax(q k^T / sqrt(D) + bias) over all-level columns, times all-level values.

    q [Bt, N, H, D]; k, v [Bt, M, Hkv, D] (all levels); bias [Bt, H, N, M] (no gradient wanted).
    """
    group = q.shape[2] // k.shape[2]
    k = jnp.repeat(k, group, axis=2)   # query head h reads kv head h // group
    v = jnp.repeat(v, group, axis=2)
    logits = jnp.einsum("bnhd,bmhd->bhnm", q, k) / math.sqrt(q.shape[-1])
    logits = logits + bias.astype(q.dtype)
    weights = jax.nn.softmax(logits, axis=-1)
    return jnp.einsum("bhnm,bmhd->bnhd", weights, v)


@partial(jax.jit, static_argnames=("block_size", "levels"))
def attend_all_levels(q, k, v, bias, *, block_size: int, levels: int) -> jax.Array:
    """Pool k, v to every level and attend with `bias`. Jitted only to compile once rather
    than op by op; the bias is an input, so autodiff treats it as a constant."""
    return attend(q, all_levels(k, block_size, levels), all_levels(v, block_size, levels),
                  bias)


def llsa_from_selection(q, k, v, selections, *, block_size: int, levels: int,
                        enrich_levels: int | None = None, reweight: bool = True) -> jax.Array:
    """The oracle's attention given fixed selections (differentiable in q, k, v)."""
    bias = selection_bias(selections, q.shape[1], block_size, levels, enrich_levels,
                          reweight).astype(np.float32)
    return attend_all_levels(q, k, v, bias, block_size=block_size, levels=levels)


def llsa_oracle(q, k, v, *, block_size: int = 16, topk: int = 8, levels: int | None = None,
                enrich_levels: int | None = None, reweight: bool = True) -> jax.Array:
    """Brute-force LLSA. Call eagerly (not under jit): selection reads concrete values.

    Works under `jax.vjp`/`jax.grad` run eagerly: the selection reads the stop-gradient
    values, the attention is plain jnp.
    """
    tokens = q.shape[1]
    levels = resolve_levels(tokens, block_size, levels)
    check_config(tokens, block_size, topk, levels)
    if enrich_levels is not None and not 0 <= enrich_levels <= levels:
        raise ValueError(f"enrich_levels={enrich_levels} not in [0, levels={levels}]")
    selections = select(np.asarray(jax.lax.stop_gradient(q)),
                        np.asarray(jax.lax.stop_gradient(k)), block_size, topk, levels)
    return llsa_from_selection(q, k, v, selections, block_size=block_size, levels=levels,
                               enrich_levels=enrich_levels, reweight=reweight)


def selection_margin(q, k, *, block_size: int, topk: int, levels: int | None = None) -> float:
    """Smallest kept-vs-dropped score gap of the selection on (q, k): a near tie shows small."""
    levels = resolve_levels(q.shape[1], block_size, levels)
    selections = select(q, k, block_size, topk, levels)
    return min(s.margin for row in selections for s in row)
