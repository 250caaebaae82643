"""A brute-force oracle for causal LLSA, written from docs/llsa_causal.md alone.

Written without looking at the library's implementation (reference, kernels, causal
selection); it is meant to be obviously correct, not fast (N up to a few hundred tokens).

Semantics as read from the page, per batch row and query head h (which reads kv head
h // (H / Hkv)), for N tokens in sequence order, B = block_size, K = topk, L = levels,
N divisible by B^L:

* Level-l token j (l = 0..L) spans positions j·B^l .. (j+1)·B^l - 1; its key and value are
  the plain means of k and v over that span (level 0: the token itself). Its children are
  the level-(l-1) tokens j·B .. j·B + B - 1.
* Query block b holds positions b·B .. b·B + B - 1. For l >= 1, c_l(b) = floor(b·B / B^l);
  the level-l tokens j < c_l(b) are complete for b (whole span before the block); the open
  parent at level l+1 is the token c_{l+1}(b). Note c_1(b) = b.
* Selection (numpy, float64, no gradient): block b selects with s_b = mean of the queries
  of block b-1 (block 0 selects nothing); scores s_b · k^(l)_j without scale; top-K ranks
  by (-score, token index), so ties go to the lower index; fewer than K candidates are all
  kept. Top-down:
    level L:            C_L(b) = {j < c_L(b)},                       I_L(b) = top-K of C_L(b)
    level l = L-1..1:   C_l(b) = children of I_{l+1}(b)
                                 ∪ {c_{l+1}(b)·B .. c_l(b) - 1},     I_l(b) = top-K of C_l(b)
  (the second set: the complete children of the open parent).
* Query t in block b attends in ONE softmax, scale 1/sqrt(D), a weight w entering as
  +log(w) on the logit, to the key set
    level 0:        the B tokens of every block in I_1(b), and its own tokens b·B .. t, w 1
    level 1..L-1:   every candidate in C_l(b),                                       w B^l
    level L:        every complete level-L token, C_L(b),                            w B^L
  Within one level no token appears twice (the picks' children are complete, the open
  parent is not, children of distinct tokens are distinct); across levels nothing is
  de-duplicated.
* enrich_levels = Le (default L) keeps the key-set parts of levels 0..Le and drops
  Le+1..L; reweight=False gives every weight 1. Neither changes the selection, which always
  runs over all L levels. topk is any K >= 1 here (K larger than every candidate set means
  "keep everything"); the library may restrict it further.

Consequences the tests check: for query t the spans of its key set cover 0..t exactly
(no position > t, no gap); N = B is dense causal attention; nothing at positions <= t
depends on a later token.

The oracle builds, per (batch, head), a dense [N, M] logit bias whose columns are ALL tokens
of every level concatenated (level 0, then 1, ..., then L; M = sum_l N / B^l), -inf outside
the query's key set and log(w) inside, takes a plain softmax over the columns and multiplies
by the concatenated values. Pooling and attention are ordinary jnp ops, so jax autodiff gives
the oracle's gradients (into q directly, into k and v also through the mean pools); the
selection is computed in numpy from stop-gradient values and enters only as a constant bias.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

# Shared with the non-causal oracle: the all-level softmax and the tie rule (no causal logic).
from tests.attention.llsa.oracle import attend, top_k_lowest_index_on_ties

# ---- configuration and index arithmetic -------------------------------------------------


def check_config(tokens: int, block_size: int, topk: int, levels: int,
                 enrich_levels: int | None = None) -> None:
    """The oracle's own preconditions (from the page's notation section)."""
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    if block_size < 2:
        raise ValueError(f"block_size must be >= 2, got {block_size}")
    if topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")
    if tokens % block_size**levels:
        raise ValueError(f"N={tokens} not divisible by block_size**levels="
                         f"{block_size**levels}")
    if enrich_levels is not None and not 0 <= enrich_levels <= levels:
        raise ValueError(f"enrich_levels={enrich_levels} not in [0, levels={levels}]")


def complete_count(block: int, level: int, block_size: int) -> int:
    """c_l(b) = floor(b·B / B^l): level-l tokens j < c_l(b) lie wholly before block b."""
    assert level >= 1
    return (block * block_size) // block_size**level


def span(level: int, token: int, block_size: int) -> range:
    """The positions a level-`level` token covers."""
    width = block_size**level
    return range(token * width, (token + 1) * width)


def children(token: int, block_size: int) -> list[int]:
    """The level-(l-1) children of a level-l token (same list at every level)."""
    return [token * block_size + c for c in range(block_size)]


# ---- selection (numpy, float64, explicit loops) -----------------------------------------


def span_means_np(x: np.ndarray, block_size: int, level: int) -> np.ndarray:
    """Level-`level` tokens of x [N, D]: the mean of x over each token's span (float64)."""
    n, d = x.shape
    width = block_size**level
    out = np.zeros((n // width, d), np.float64)
    for j in range(n // width):
        out[j] = np.asarray(x[j * width:(j + 1) * width], np.float64).mean(axis=0)
    return out


@dataclass
class CausalSelection:
    """Selection of one (batch, head).

    candidates[l][b] = C_l(b) (ascending) and picks[l][b] = I_l(b) (rank order), for
    l = 1..L and every query block b; margin is the smallest kept-vs-dropped score gap.
    """

    block_size: int
    levels: int
    candidates: dict[int, list[list[int]]]
    picks: dict[int, list[list[int]]]
    margin: float


def select_head(q: np.ndarray, k: np.ndarray, *, block_size: int, topk: int,
                levels: int) -> CausalSelection:
    """Causal hierarchical top-K selection for one head; q, k: [N, D] (concrete values)."""
    b_, big_l = block_size, levels
    q = np.asarray(q, np.float64)
    k_levels = {level: span_means_np(k, b_, level) for level in range(1, big_l + 1)}
    n_blocks = q.shape[0] // b_
    candidates = {level: [] for level in range(1, big_l + 1)}
    picks = {level: [] for level in range(1, big_l + 1)}
    margin = math.inf
    for block in range(n_blocks):
        if block == 0:   # nothing lies before block 0: nothing to select
            for level in range(1, big_l + 1):
                candidates[level].append([])
                picks[level].append([])
            continue
        s = q[(block - 1) * b_:block * b_].mean(axis=0)   # the selection query s_b
        for level in range(big_l, 0, -1):
            complete = complete_count(block, level, b_)
            if level == big_l:
                cand = list(range(complete))
            else:
                from_picks = [c for j in picks[level + 1][block] for c in children(j, b_)]
                open_parent = complete_count(block, level + 1, b_)
                open_children = list(range(open_parent * b_, complete))
                cand = sorted(from_picks + open_children)
                assert len(set(cand)) == len(cand), "a candidate listed twice"
            assert all(j < complete for j in cand), "an incomplete candidate"
            scores = [float(s @ k_levels[level][j]) for j in cand]
            chosen, gap = top_k_lowest_index_on_ties(cand, scores, topk)
            candidates[level].append(cand)
            picks[level].append(chosen)
            margin = min(margin, gap)
    return CausalSelection(b_, big_l, candidates, picks, margin)


def select(q, k, *, block_size: int, topk: int, levels: int) -> list[list[CausalSelection]]:
    """Per (batch, query head) selections [Bt][H]; q [Bt, N, H, D], k [Bt, N, Hkv, D]."""
    q = np.asarray(q, np.float64)
    k = np.asarray(k, np.float64)
    group = q.shape[2] // k.shape[2]
    return [[select_head(q[n, :, h], k[n, :, h // group], block_size=block_size, topk=topk,
                         levels=levels)
             for h in range(q.shape[2])] for n in range(q.shape[0])]


# ---- key sets ------------------------------------------------------------------------------


def key_list(selection: CausalSelection, position: int,
             enrich_levels: int | None = None) -> list[tuple[int, int]]:
    """The (level, token) pairs query `position` attends to, as a list (no de-duplication
    within the list; the caller checks there is nothing to de-duplicate)."""
    b_, big_l = selection.block_size, selection.levels
    attended = big_l if enrich_levels is None else enrich_levels
    block = position // b_
    keys = [(0, token) for j in selection.picks[1][block] for token in children(j, b_)]
    keys += [(0, token) for token in range(block * b_, position + 1)]     # own block
    for level in range(1, big_l + 1):   # levels 1..L-1: C_l; level L: C_L (all complete)
        keys += [(level, j) for j in selection.candidates[level][block]]
    return [(level, token) for level, token in keys if level <= attended]


def key_set(selection: CausalSelection, position: int,
            enrich_levels: int | None = None) -> set[tuple[int, int]]:
    """The explicit key set {(level, token)} of query `position` (asserts no duplicates)."""
    keys = key_list(selection, position, enrich_levels)
    assert len(set(keys)) == len(keys), f"a key listed twice for query {position}"
    return set(keys)


def attended_keys(q, k, position: int, *, block_size: int, topk: int, levels: int,
                  enrich_levels: int | None = None, batch: int = 0,
                  head: int = 0) -> set[tuple[int, int]]:
    """Key set {(level, token)} of query `position` of (batch, head), selecting on (q, k)."""
    q = np.asarray(q, np.float64)
    k = np.asarray(k, np.float64)
    group = q.shape[2] // k.shape[2]
    selection = select_head(q[batch, :, head], k[batch, :, head // group],
                            block_size=block_size, topk=topk, levels=levels)
    return key_set(selection, position, enrich_levels)


def covered_positions(keys, block_size: int) -> list[int]:
    """Every position covered by the spans of `keys`, with multiplicity, sorted."""
    return sorted(p for level, token in keys for p in span(level, token, block_size))


# ---- the dense bias over all levels' tokens ----------------------------------------------


def level_offsets(tokens: int, block_size: int, levels: int) -> list[int]:
    """Column offset of level l in the concatenation [level 0, ..., level L] (plus the total)."""
    offsets = [0]
    for level in range(levels + 1):
        offsets.append(offsets[-1] + tokens // block_size**level)
    return offsets


def bias_head(selection: CausalSelection, tokens: int, enrich_levels: int | None = None,
              reweight: bool = True) -> np.ndarray:
    """[N, M] float64 bias: log(weight) on each query's key set, -inf elsewhere."""
    b_, big_l = selection.block_size, selection.levels
    offsets = level_offsets(tokens, b_, big_l)
    bias = np.full((tokens, offsets[-1]), -np.inf)
    for position in range(tokens):
        for level, token in key_set(selection, position, enrich_levels):
            assert 0 <= token < tokens // b_**level
            bias[position, offsets[level] + token] = (math.log(b_**level) if reweight
                                                      else 0.0)
    return bias


def selection_bias(selections, tokens: int, enrich_levels: int | None = None,
                   reweight: bool = True) -> np.ndarray:
    """[Bt, H, N, M] bias for all (batch, head) selections."""
    return np.stack([np.stack([bias_head(s, tokens, enrich_levels, reweight) for s in row])
                     for row in selections])


# ---- attention (jnp, differentiable) -----------------------------------------------------


def span_means(x: jax.Array, block_size: int, level: int) -> jax.Array:
    """[Bt, N, H, D] -> [Bt, N / B^l, H, D]: the mean of x over each level-l token's span."""
    batch, n, heads, d = x.shape
    width = block_size**level
    return x.reshape(batch, n // width, width, heads, d).mean(axis=2)


def all_levels(x: jax.Array, block_size: int, levels: int) -> jax.Array:
    """[Bt, M, H, D]: the tokens of levels 0..L concatenated along the token axis."""
    return jnp.concatenate([x] + [span_means(x, block_size, level)
                                  for level in range(1, levels + 1)], axis=1)


@partial(jax.jit, static_argnames=("block_size", "levels"))
def attend_all_levels(q, k, v, bias, *, block_size: int, levels: int) -> jax.Array:
    """Pool k, v to every level and attend with `bias` (an input: a constant to autodiff)."""
    return attend(q, all_levels(k, block_size, levels), all_levels(v, block_size, levels),
                  bias)


@partial(jax.jit, static_argnames=("block_size", "levels"))
def attend_forward_and_vjp(q, k, v, bias, cotangent, *, block_size: int, levels: int):
    """`attend_all_levels` and its VJP at `cotangent` in one compiled call."""
    out, vjp = jax.vjp(lambda *x: attend(x[0], all_levels(x[1], block_size, levels),
                                         all_levels(x[2], block_size, levels), bias),
                       q, k, v)
    return out, vjp(cotangent)


def causal_llsa_from_selection(q, k, v, selections, *, block_size: int, levels: int,
                               enrich_levels: int | None = None,
                               reweight: bool = True) -> jax.Array:
    """The oracle's attention given fixed selections (differentiable in q, k, v)."""
    bias = selection_bias(selections, q.shape[1], enrich_levels, reweight).astype(np.float32)
    return attend_all_levels(q, k, v, bias, block_size=block_size, levels=levels)


def causal_llsa_oracle(q, k, v, *, block_size: int, topk: int, levels: int,
                       enrich_levels: int | None = None, reweight: bool = True) -> jax.Array:
    """Brute-force causal LLSA; q [Bt, N, H, D], k, v [Bt, N, Hkv, D] -> [Bt, N, H, D].

    Call eagerly (not under jit): the selection reads concrete values. Works under eager
    `jax.vjp` / `jax.grad`: the selection reads the stop-gradient values.
    """
    tokens = q.shape[1]
    check_config(tokens, block_size, topk, levels, enrich_levels)
    assert k.shape[1] == tokens and v.shape[1] == tokens and q.shape[2] % k.shape[2] == 0
    selections = select(np.asarray(jax.lax.stop_gradient(q)),
                        np.asarray(jax.lax.stop_gradient(k)), block_size=block_size,
                        topk=topk, levels=levels)
    return causal_llsa_from_selection(q, k, v, selections, block_size=block_size,
                                      levels=levels, enrich_levels=enrich_levels,
                                      reweight=reweight)


def causal_llsa_oracle_and_vjp(q, k, v, cotangent, *, block_size: int, topk: int,
                               levels: int, enrich_levels: int | None = None,
                               reweight: bool = True):
    """(out, (dq, dk, dv)) of `causal_llsa_oracle` at `cotangent`: the same math as eager
    `jax.vjp(causal_llsa_oracle, ...)`, one compile per (shapes, B, L) rather than one per
    call site (the selection is an input, so it is shared by every K, Le, reweight)."""
    tokens = q.shape[1]
    check_config(tokens, block_size, topk, levels, enrich_levels)
    selections = select(q, k, block_size=block_size, topk=topk, levels=levels)
    bias = selection_bias(selections, tokens, enrich_levels, reweight).astype(np.float32)
    return attend_forward_and_vjp(q, k, v, bias, cotangent, block_size=block_size,
                                  levels=levels)


def selection_margin(q, k, *, block_size: int, topk: int, levels: int) -> float:
    """Smallest kept-vs-dropped score gap of the causal selection on (q, k)."""
    selections = select(q, k, block_size=block_size, topk=topk, levels=levels)
    return min(s.margin for row in selections for s in row)
