"""Causal LLSA: the brute-force oracle's self checks, and the library against it.

The oracle (tests/attention/llsa/causal_oracle.py) is written from docs/llsa_causal.md
alone. The first part checks the oracle with nothing from the library: exact identities
(one block = dense causal, full selection = dense over every complete token), coverage of
the past by every query's key set, strict causality of values and gradients, a hand-worked
selection, and an independent per-query gather of the attention. The second part compares
`lla.attention.llsa(..., causal=True)` ("xla", and "pallas_gpu" in interpret mode) with the
oracle, forward and VJP at float32, on inputs whose selections carry signal.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lla.attention as attention
from tests.attention.llsa import causal_oracle as oracle
from tests.attention.llsa.inputs import with_level_structure
from tests.attention.op_test_base import relative_error

BOUND = 1e-5        # float32 relative L2 bound, forward and gradients
MIN_MARGIN = 1e-3   # selection score gaps below this could flip between float orders


def normal(shape, seed):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def unit_qkv(batch, tokens, heads, kv_heads, d, seed=0):
    """Unit-normal q [batch, tokens, heads, d], k, v [..., kv_heads, d]."""
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((batch, tokens, heads, d))
    k = rng.standard_normal((batch, tokens, kv_heads, d))
    v = rng.standard_normal((batch, tokens, kv_heads, d))
    return tuple(jnp.asarray(x, jnp.float32) for x in (q, k, v))


def structured_qkv(batch, tokens, heads, kv_heads, d, block_size, levels, seed=0):
    """`unit_qkv` plus `inputs.with_level_structure`: every level's scores carry signal."""
    return with_level_structure(unit_qkv(batch, tokens, heads, kv_heads, d, seed),
                                block_size, levels, seed)


def decisive_qkv(batch, tokens, heads, kv_heads, d, block_size, topk, levels, seed=12):
    """`structured_qkv` at the first seed >= `seed` whose causal selection has no score gap
    below MIN_MARGIN (so float32 and float64 selections agree)."""
    for attempt in range(seed, seed + 50):
        q, k, v = structured_qkv(batch, tokens, heads, kv_heads, d, block_size, levels,
                                 seed=attempt)
        if oracle.selection_margin(q, k, block_size=block_size, topk=topk,
                                   levels=levels) > MIN_MARGIN:
            return q, k, v
    raise AssertionError("no decisive inputs found")


# Shapes (batch, N, H, Hkv, D) shared by the tests, so each (shape, B, L) compiles once.
B4L2 = (1, 48, 4, 2, 8)   # B = 4, L = 2
B3L2 = (1, 36, 4, 2, 8)   # B = 3, L = 2
B3L1 = (1, 36, 2, 1, 8)   # B = 3, L = 1
B3L3 = (2, 54, 4, 2, 8)   # B = 3, L = 3


def oracle_forward_and_vjp(q, k, v, cotangent, **kwargs):
    with jax.default_matmul_precision("highest"):
        return oracle.causal_llsa_oracle_and_vjp(q, k, v, cotangent, **kwargs)


def dense_causal(q, k, v):
    """Plain causal softmax attention with GQA (query head h reads kv head h // group)."""
    tokens, heads, d = q.shape[1:]
    group = heads // k.shape[2]
    k = jnp.repeat(k, group, axis=2)
    v = jnp.repeat(v, group, axis=2)
    logits = jnp.einsum("bnhd,bmhd->bhnm", q, k) / math.sqrt(d)
    mask = jnp.arange(tokens)[:, None] >= jnp.arange(tokens)[None, :]
    logits = jnp.where(mask, logits, -jnp.inf)
    return jnp.einsum("bhnm,bmhd->bnhd", jax.nn.softmax(logits, axis=-1), v)


def dense_causal_np(q, k, v):
    """`dense_causal` in float64 numpy, with explicit loops over rows."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    group = q.shape[2] // k.shape[2]
    out = np.zeros_like(q)
    for n in range(q.shape[0]):
        for h in range(q.shape[2]):
            for t in range(q.shape[1]):
                logits = k[n, :t + 1, h // group] @ q[n, t, h] / math.sqrt(q.shape[3])
                p = np.exp(logits - logits.max())
                out[n, t, h] = p @ v[n, :t + 1, h // group] / p.sum()
    return out


@jax.jit
def dense_causal_forward_and_vjp(q, k, v, cotangent):
    out, vjp = jax.vjp(dense_causal, q, k, v)
    return out, vjp(cotangent)


def dense_causal_and_vjp(q, k, v, cotangent):
    with jax.default_matmul_precision("highest"):
        return dense_causal_forward_and_vjp(q, k, v, cotangent)


def assert_close(actual, expected):
    """Relative L2 below BOUND for (out, (dq, dk, dv)) pairs."""
    (out, grads), (expected_out, expected_grads) = actual, expected
    error = relative_error(out, expected_out)
    assert error < BOUND, f"forward relative error {error:.2e}"
    for name, grad, expected_grad in zip("qkv", grads, expected_grads, strict=True):
        error = relative_error(grad, expected_grad)
        assert error < BOUND, f"d{name} relative error {error:.2e}"


# ---- (a) one block: dense causal attention -----------------------------------------------


@pytest.mark.parametrize("extra", [
    {"topk": 1}, {"topk": 2, "reweight": False}, {"topk": 3, "enrich_levels": 0}])
def test_one_block_is_dense_causal(extra):
    """N = B = 7 (odd), GQA, batch 2: block 0 is all there is, and it sees only itself."""
    q, k, v = unit_qkv(2, 7, 4, 2, 8, seed=1)
    cotangent = normal(q.shape, seed=5)
    assert_close(oracle_forward_and_vjp(q, k, v, cotangent, block_size=7, levels=1, **extra),
                 dense_causal_and_vjp(q, k, v, cotangent))


def test_eager_vjp_of_the_oracle_matches_the_compiled_helper():
    """The documented use, jax.vjp straight through `causal_llsa_oracle`, gives the same
    as `causal_llsa_oracle_and_vjp`, which the other tests use for speed."""
    q, k, v = structured_qkv(2, 18, 2, 1, 8, 3, 2, seed=3)
    cotangent = normal(q.shape, seed=5)
    kwargs = dict(block_size=3, topk=2, levels=2)
    with jax.default_matmul_precision("highest"):
        out, vjp = jax.vjp(lambda *x: oracle.causal_llsa_oracle(*x, **kwargs), q, k, v)
        eager = (out, vjp(cotangent))
    assert_close(eager, oracle_forward_and_vjp(q, k, v, cotangent, **kwargs))


def test_block_zero_is_dense_causal_over_its_own_tokens():
    q, k, v = structured_qkv(*B4L2, 4, 2, seed=4)
    cotangent = normal(q.shape, seed=5)
    out, _ = oracle_forward_and_vjp(q, k, v, cotangent, block_size=4, topk=2, levels=2)
    assert relative_error(out[:, :4], dense_causal_np(q[:, :4], k[:, :4], v[:, :4])) < BOUND


# ---- (b) every past position is represented, none after the query ------------------------


COVERAGE_CASES = [  # (N, B, K, L)
    (48, 4, 1, 2), (48, 4, 3, 2), (64, 4, 1, 3), (64, 4, 2, 3), (36, 3, 2, 2),
    (36, 3, 4, 1), (16, 2, 2, 3), (54, 3, 2, 3), (32, 2, 3, 4), (24, 2, 1, 1),
]


def skeleton(position, block_size, levels):
    """The page's cover of 0..t without the picks: all complete level-L tokens, the open
    parent's complete children at each level L-1..1, the own block up to t."""
    b_, block = block_size, position // block_size
    keys = [(levels, j) for j in range(oracle.complete_count(block, levels, b_))]
    for level in range(levels - 1, 0, -1):
        start = oracle.complete_count(block, level + 1, b_) * b_
        keys += [(level, j) for j in range(start, oracle.complete_count(block, level, b_))]
    return keys + [(0, p) for p in range(block * b_, position + 1)]


@pytest.mark.parametrize(("tokens", "block_size", "topk", "levels"), COVERAGE_CASES)
def test_key_sets_cover_exactly_the_past(tokens, block_size, topk, levels):
    q, k, _ = unit_qkv(1, tokens, 2, 2, 6, seed=tokens + topk)
    b_ = block_size
    for head in range(2):
        selection = oracle.select_head(q[0, :, head], k[0, :, head], block_size=b_,
                                       topk=topk, levels=levels)
        for t in range(tokens):
            block = t // b_
            keys = oracle.key_set(selection, t)
            # The spans of the attended tokens cover 0..t exactly: no gap, nothing later.
            assert set(oracle.covered_positions(keys, b_)) == set(range(t + 1)), t
            # The unselected part tiles 0..t (each position once) and is always attended.
            base = skeleton(t, b_, levels)
            assert oracle.covered_positions(base, b_) == list(range(t + 1)), t
            assert set(base) <= keys
            # What remains is refinement: children of the picks one level up.
            for level, token in keys - set(base):
                assert level < levels
                assert token // b_ in selection.picks[level + 1][block], (t, level, token)
            # Per level: min(K, |C_{l+1}|) picks' children plus the open-parent part.
            for level in range(levels):
                expected = (len(selection.picks[level + 1][block]) * b_
                            + sum(1 for lv, _ in base if lv == level))
                assert sum(1 for lv, _ in keys if lv == level) == expected
            # Every pooled key is complete for the block; every pick is a candidate.
            for level, token in keys:
                assert level == 0 or (token + 1) * b_**level <= block * b_
            for level in range(1, levels + 1):
                picks = selection.picks[level][block]
                assert len(picks) == min(topk, len(selection.candidates[level][block]))
                assert set(picks) <= set(selection.candidates[level][block])
            # enrich_levels only drops the coarser levels' parts.
            for enrich in range(levels + 1):
                assert oracle.key_set(selection, t, enrich) == {
                    (lv, j) for lv, j in keys if lv <= enrich}


# ---- (c) strict causality of values and gradients ----------------------------------------


CAUSALITY_CASES = [  # (shape, B, K, L, extra)
    (B4L2, 4, 2, 2, {}),
    (B3L2, 3, 2, 2, {"enrich_levels": 1}),
    (B3L3, 3, 1, 3, {"reweight": False}),
]


def perturbed_after(arrays, position, seed):
    """Each array with every token after `position` replaced by fresh, larger values."""
    rng = np.random.default_rng(seed)
    out = []
    for x in arrays:
        fresh = 3.0 * rng.standard_normal(x.shape) + rng.standard_normal(x.shape[2:])
        later = (np.arange(x.shape[1]) > position)[None, :, None, None]
        out.append(jnp.asarray(np.where(later, fresh, np.asarray(x)), jnp.float32))
    return tuple(out)


def assert_causal(forward_and_vjp, q, k, v, positions):
    """For each t: outputs <= t and gradients of sum(R * out[:, :t+1]) at tokens <= t do not
    change when every token after t (q, k and v) changes; gradients after t are zero.
    `forward_and_vjp(q, k, v, cotangent)` returns (out, (dq, dk, dv))."""
    projection = normal(q.shape, seed=11)
    for t in positions:
        keep = (jnp.arange(q.shape[1]) <= t)[None, :, None, None]
        cotangent = jnp.where(keep, projection, 0.0)
        out, grads = forward_and_vjp(q, k, v, cotangent)
        q2, k2, v2 = perturbed_after((q, k, v), t, seed=100 + t)
        out2, grads2 = forward_and_vjp(q2, k2, v2, cotangent)
        np.testing.assert_allclose(out2[:, :t + 1], out[:, :t + 1], rtol=0, atol=1e-6,
                                   err_msg=f"output at <= {t}")
        if t + 1 < q.shape[1]:   # the perturbation is real
            assert not np.allclose(out2[:, t + 1:], out[:, t + 1:])
        for name, grad, grad2 in zip("qkv", grads, grads2, strict=True):
            np.testing.assert_allclose(grad2[:, :t + 1], grad[:, :t + 1], rtol=0, atol=1e-6,
                                       err_msg=f"d{name} at <= {t}")
            assert not np.any(np.asarray(grad[:, t + 1:])), f"d{name} after {t}"
            assert not np.any(np.asarray(grad2[:, t + 1:])), f"d{name} after {t}"


def causality_positions(tokens, block_size):
    """Block starts, block ends and mid-block positions, early, middle and late."""
    b_ = block_size
    return sorted({0, b_ - 1, b_, 2 * b_ + 1, tokens // 2 + b_ - 1, tokens - 2})


@pytest.mark.parametrize(("shape", "block_size", "topk", "levels", "extra"), CAUSALITY_CASES)
def test_oracle_is_strictly_causal(shape, block_size, topk, levels, extra):
    q, k, v = structured_qkv(*shape, block_size, levels, seed=6)
    tokens = shape[1]
    kwargs = dict(block_size=block_size, topk=topk, levels=levels, **extra)
    assert_causal(lambda *x: oracle_forward_and_vjp(*x, **kwargs), q, k, v,
                  causality_positions(tokens, block_size))


# ---- (d) everything selected: dense over every complete token ----------------------------


def dense_over_complete_tokens(q, k, v, level_weights, block_size):
    """Query t (block b) attends to every level-0 token <= t (weight level_weights[0]) and,
    for l = 1..L (L = len(level_weights) - 1), every level-l token j with
    (j+1)·B^l <= b·B (weight level_weights[l]; 0 leaves the level out).

    Own formulation: strided-sum pooling, an explicit 0/1 mask, the ratio
    sum_j w_j e^{s_j} v_j / sum_j w_j e^{s_j}.
    """
    tokens, heads, d = q.shape[1:]
    group = heads // k.shape[2]
    k = jnp.repeat(k, group, axis=2)
    v = jnp.repeat(v, group, axis=2)
    position = jnp.arange(tokens)[:, None]
    block_start = (position // block_size) * block_size
    keys, values = [k], [v]
    masks = [jnp.arange(tokens)[None, :] <= position]
    for level in range(1, level_weights.shape[0]):
        width = block_size**level
        keys.append(sum(k[:, c::width] for c in range(width)) / width)
        values.append(sum(v[:, c::width] for c in range(width)) / width)
        ends = (jnp.arange(tokens // width) + 1) * width
        masks.append(ends[None, :] <= block_start)
    scores = jnp.einsum("bnhd,bmhd->bhnm", q, jnp.concatenate(keys, axis=1)) / math.sqrt(d)
    scores = scores - jax.lax.stop_gradient(scores.max(-1, keepdims=True))
    w = jnp.concatenate([jnp.where(m, level_weights[level], 0.0)
                         for level, m in enumerate(masks)], axis=1)
    mass = w * jnp.exp(scores)
    return jnp.einsum("bhnm,bmhd->bnhd", mass / mass.sum(-1, keepdims=True),
                      jnp.concatenate(values, axis=1))


@functools.partial(jax.jit, static_argnames="block_size")
def dense_over_complete_tokens_and_vjp(q, k, v, cotangent, level_weights, *, block_size):
    out, vjp = jax.vjp(lambda *x: dense_over_complete_tokens(*x, level_weights, block_size),
                       q, k, v)
    return out, vjp(cotangent)


@pytest.mark.parametrize(("shape", "block_size", "levels"), [(B4L2, 4, 2), (B3L3, 3, 3)])
def test_full_selection_is_dense_over_complete_tokens(shape, block_size, levels):
    """topk = N / B exceeds every candidate set, so each level keeps all its candidates;
    then level l < L holds every complete level-l token, and with enrich_levels = 0 it is
    dense causal attention."""
    q, k, v = unit_qkv(*shape, seed=8)
    tokens = shape[1]
    topk = tokens // block_size
    for row in oracle.select(q, k, block_size=block_size, topk=topk, levels=levels):
        for selection in row:
            for level in range(1, levels + 1):
                for block in range(tokens // block_size):
                    complete = oracle.complete_count(block, level, block_size)
                    assert selection.candidates[level][block] == list(range(complete))
                    assert sorted(selection.picks[level][block]) == list(range(complete))
    cotangent = normal(q.shape, seed=5)
    base = dict(block_size=block_size, topk=topk, levels=levels)
    # attended = 0: level weights (1, 0, ..., 0), i.e. dense causal attention (the mask is
    # j <= t); a separate `dense_causal` compile per shape would cost more than it adds.
    for attended, reweight in [(0, True), (levels, True), (levels, False), (1, True)]:
        level_weights = jnp.asarray(
            [(block_size**level if reweight else 1.0) if level <= attended else 0.0
             for level in range(levels + 1)], jnp.float32)
        with jax.default_matmul_precision("highest"):
            expected = dense_over_complete_tokens_and_vjp(q, k, v, cotangent, level_weights,
                                                          block_size=block_size)
        assert_close(oracle_forward_and_vjp(q, k, v, cotangent, **base,
                                            enrich_levels=attended, reweight=reweight),
                     expected)


# ---- (e) a selection worked by hand --------------------------------------------------------

# N = 16, B = 2, L = 2, D = 1. Keys (one channel):
#   level 0: 1 3 | 0 0 | 5 5 | 5 5 | 1 1 | 4 4 | 0 0 | 0 0
#   level 1 (blocks 0..7): 2 0 5 5 1 4 0 0        level 2 (tokens 0..3): 1 5 2.5 0
# Queries are 1 except block 5 (positions 10, 11) = -1, so s_b = +1 for every b >= 1 except
# s_6 = -1 (block 6 selects with block 5's queries, not its own).
# c_2(b) = floor(b / 2), c_1(b) = b; C_1(b) = children of I_2(b) plus blocks 2·c_2(b)..b-1.
HAND_K = np.array([1, 3, 0, 0, 5, 5, 5, 5, 1, 1, 4, 4, 0, 0, 0, 0], np.float32)
HAND_Q = np.array([1] * 10 + [-1, -1] + [1] * 4, np.float32)

# block: (C_2, I_2, C_1, I_1), picks as sets.
HAND_K1 = {
    0: ([], [], [], []),
    1: ([], [], [0], [0]),
    2: ([0], [0], [0, 1], [0]),                 # scores 2, 0
    3: ([0], [0], [0, 1, 2], [2]),              # 2, 0, 5
    4: ([0, 1], [1], [2, 3], [2]),              # level 1: 5, 5 tie -> lower index 2
    5: ([0, 1], [1], [2, 3, 4], [2]),           # 5, 5, 1
    6: ([0, 1, 2], [0], [0, 1], [1]),           # s = -1: level 2 -1, -5, -2.5; level 1 -2, 0
    7: ([0, 1, 2], [1], [2, 3, 6], [2]),        # 5, 5, 0
}
HAND_K2 = {
    0: ([], [], [], []),
    1: ([], [], [0], [0]),
    2: ([0], [0], [0, 1], [0, 1]),
    3: ([0], [0], [0, 1, 2], [0, 2]),
    4: ([0, 1], [0, 1], [0, 1, 2, 3], [2, 3]),        # 2, 0, 5, 5
    5: ([0, 1], [0, 1], [0, 1, 2, 3, 4], [2, 3]),     # 2, 0, 5, 5, 1
    6: ([0, 1, 2], [0, 2], [0, 1, 4, 5], [1, 4]),     # -2, 0, -1, -4
    7: ([0, 1, 2], [1, 2], [2, 3, 4, 5, 6], [2, 3]),  # 5, 5, 1, 4, 0
}


@pytest.mark.parametrize(("topk", "expected"), [(1, HAND_K1), (2, HAND_K2)])
def test_hand_worked_selection(topk, expected):
    selection = oracle.select_head(HAND_Q[:, None], HAND_K[:, None], block_size=2, topk=topk,
                                   levels=2)
    for block, (c2, i2, c1, i1) in expected.items():
        assert selection.candidates[2][block] == c2, block
        assert sorted(selection.picks[2][block]) == i2, block
        assert selection.candidates[1][block] == c1, block
        assert sorted(selection.picks[1][block]) == i1, block


def test_hand_worked_key_sets():
    q = jnp.asarray(HAND_Q[None, :, None, None])
    k = jnp.asarray(HAND_K[None, :, None, None])
    kwargs = dict(block_size=2, topk=1, levels=2)
    # t = 13 (block 6): picks I_1 = {1} -> tokens 2, 3; own block 12, 13; C_1 = {0, 1};
    # all complete level-2 tokens {0, 1, 2}.
    full = {(0, 2), (0, 3), (0, 12), (0, 13), (1, 0), (1, 1), (2, 0), (2, 1), (2, 2)}
    assert oracle.attended_keys(q, k, 13, **kwargs) == full
    assert oracle.attended_keys(q, k, 13, **kwargs, enrich_levels=1) == {
        key for key in full if key[0] <= 1}
    assert oracle.attended_keys(q, k, 13, **kwargs, enrich_levels=0) == {
        (0, 2), (0, 3), (0, 12), (0, 13)}
    assert oracle.attended_keys(q, k, 12, **kwargs) == full - {(0, 13)}
    # Block 0 sees only its own tokens; t = 2 (block 1): block 0 picked, C_1 = {0}, no C_2.
    assert oracle.attended_keys(q, k, 1, **kwargs) == {(0, 0), (0, 1)}
    assert oracle.attended_keys(q, k, 2, **kwargs) == {(0, 0), (0, 1), (0, 2), (1, 0)}
    # t = 15 (block 7): I_1 = {2} -> 4, 5; C_1 = {2, 3, 6}; C_2 = {0, 1, 2}.
    assert oracle.attended_keys(q, k, 15, **kwargs) == {
        (0, 4), (0, 5), (0, 14), (0, 15), (1, 2), (1, 3), (1, 6), (2, 0), (2, 1), (2, 2)}


# ---- the attention step: a per-query gather in float64 ------------------------------------


def gather_forward(q, k, v, *, block_size, topk, levels, enrich_levels=None, reweight=True):
    """float64 numpy: for each (batch, head, query) gather its key set and take a softmax."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    batch, tokens, heads, d = q.shape
    group = heads // k.shape[2]
    out = np.zeros_like(q)
    for n in range(batch):
        for h in range(heads):
            ks = [k[n, :, h // group]]
            vs = [v[n, :, h // group]]
            for level in range(1, levels + 1):
                width = block_size**level
                ks.append(k[n, :, h // group].reshape(-1, width, d).mean(1))
                vs.append(v[n, :, h // group].reshape(-1, width, d).mean(1))
            selection = oracle.select_head(q[n, :, h], k[n, :, h // group],
                                           block_size=block_size, topk=topk, levels=levels)
            for t in range(tokens):
                keys = sorted(oracle.key_set(selection, t, enrich_levels))
                key_rows = np.stack([ks[lv][j] for lv, j in keys])
                value_rows = np.stack([vs[lv][j] for lv, j in keys])
                log_w = np.array([lv * math.log(block_size) if reweight else 0.0
                                  for lv, _ in keys])
                logits = key_rows @ q[n, t, h] / math.sqrt(d) + log_w
                p = np.exp(logits - logits.max())
                out[n, t, h] = p @ value_rows / p.sum()
    return out


@pytest.mark.parametrize(("shape", "block_size", "topk", "levels", "extra"), [
    (B4L2, 4, 2, 2, {}),
    (B3L2, 3, 3, 2, {"enrich_levels": 1, "reweight": False}),
    (B3L3, 3, 2, 3, {"enrich_levels": 2}),
])
def test_oracle_matches_per_query_gather(shape, block_size, topk, levels, extra):
    q, k, v = structured_qkv(*shape, block_size, levels, seed=9)
    kwargs = dict(block_size=block_size, topk=topk, levels=levels, **extra)
    out, _ = oracle_forward_and_vjp(q, k, v, normal(q.shape, seed=5), **kwargs)
    assert relative_error(out, gather_forward(q, k, v, **kwargs)) < BOUND


def test_gqa_equals_repeated_kv_heads():
    q, k, v = structured_qkv(*B4L2, 4, 2, seed=10)
    cotangent = normal(q.shape, seed=5)
    kwargs = dict(block_size=4, topk=2, levels=2)
    out, (dq, dk, dv) = oracle_forward_and_vjp(q, k, v, cotangent, **kwargs)
    expected, (dq2, dk2, dv2) = oracle_forward_and_vjp(
        q, jnp.repeat(k, 2, axis=2), jnp.repeat(v, 2, axis=2), cotangent, **kwargs)
    assert relative_error(out, expected) < BOUND
    assert relative_error(dq, dq2) < BOUND
    # kv head j serves query heads 2j, 2j+1: its gradient is the sum over both copies.
    assert relative_error(dk, dk2.reshape(*dk.shape[:3], 2, -1).sum(3)) < BOUND
    assert relative_error(dv, dv2.reshape(*dv.shape[:3], 2, -1).sum(3)) < BOUND


# ---- the library against the oracle --------------------------------------------------------


LIBRARY_CASES = [  # (shape, B, K, L, extra); K <= N / B^L, as the op requires
    (B4L2, 4, 2, 2, {}),
    (B3L2, 3, 3, 2, {"enrich_levels": 1, "reweight": False}),
    (B3L1, 3, 1, 1, {}),
    (B3L3, 3, 2, 3, {"enrich_levels": 0}),
]
PALLAS_CASES = LIBRARY_CASES[:1]   # Pallas interpret mode: ~9 s per configuration on CPU


def case_id(case):
    (batch, tokens, heads, kv_heads, d), b_, topk, levels, extra = case
    flags = "".join(f"-{key[0]}{int(value)}" for key, value in extra.items())
    return f"B{batch}N{tokens}H{heads}kv{kv_heads}D{d}b{b_}K{topk}L{levels}{flags}"


@functools.partial(jax.jit, static_argnames=("implementation", "static"))
def compiled_library_forward_and_vjp(q, k, v, cotangent, *, implementation, static):
    interpret = {} if implementation == "xla" else {"interpret": True}

    def op(*x):
        return attention.llsa(*x, causal=True, implementation=implementation,
                              **dict(static), **interpret)

    out, vjp = jax.vjp(op, q, k, v)
    return out, vjp(cotangent)


def library_forward_and_vjp(q, k, v, cotangent, implementation="xla", **kwargs):
    """(out, (dq, dk, dv)) of `attention.llsa(..., causal=True)`, one compile per config."""
    with jax.default_matmul_precision("highest"):
        return compiled_library_forward_and_vjp(q, k, v, cotangent,
                                                implementation=implementation,
                                                static=tuple(sorted(kwargs.items())))


def assert_library_matches_oracle(implementation, case):
    shape, b_, topk, levels, extra = case
    q, k, v = decisive_qkv(*shape, b_, topk, levels)
    kwargs = dict(block_size=b_, topk=topk, levels=levels, **extra)
    cotangent = normal(q.shape, seed=13)
    out, grads = library_forward_and_vjp(q, k, v, cotangent, implementation, **kwargs)
    expected, expected_grads = oracle_forward_and_vjp(q, k, v, cotangent, **kwargs)
    assert out.shape == expected.shape and out.dtype == jnp.float32
    error = relative_error(out, expected)
    assert error < BOUND, f"forward relative error {error:.2e}"
    for name, grad, expected_grad in zip("qkv", grads, expected_grads, strict=True):
        error = relative_error(grad, expected_grad)
        assert error < BOUND, f"d{name} relative error {error:.2e}"


@pytest.mark.parametrize("case", LIBRARY_CASES, ids=case_id)
def test_library_xla_matches_oracle(case):
    assert_library_matches_oracle("xla", case)


@pytest.mark.parametrize("case", PALLAS_CASES, ids=case_id)
def test_library_pallas_gpu_interpret_matches_oracle(case):
    assert_library_matches_oracle("pallas_gpu", case)


def test_library_xla_is_strictly_causal():
    q, k, v = decisive_qkv(*B4L2, 4, 2, 2, seed=14)
    assert_causal(lambda *x: library_forward_and_vjp(*x, block_size=4, topk=2, levels=2),
                  q, k, v, causality_positions(48, 4))
