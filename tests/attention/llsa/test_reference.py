"""LLSA: the brute-force oracle's self checks, and the library's "xla" reference against it.

The oracle (tests/attention/llsa/oracle.py) is written from the spec (shared/papers/llsa.md
§1.2–1.7): numpy selection with explicit loops, then one dense softmax over all tokens of
every level with -inf / log(weight) biases, differentiated by jax autodiff.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lla.attention as attention
from tests.attention.llsa import oracle
from tests.attention.llsa.inputs import with_level_structure
from tests.attention.op_test_base import random_qkv, relative_error

BOUND = 1e-5        # float32 relative L2 bound, forward and gradients
MIN_MARGIN = 1e-3   # selection score gaps below this could flip between float orders


def normal(shape, seed):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


@functools.cache
def unit_normal_pool(seed):
    """One large random_qkv draw (a single compile for all tests), as numpy, to slice from."""
    return tuple(np.asarray(x) for x in random_qkv((2, 256, 256, 4, 4, 32), seed=seed))


def unit_qkv(batch, tokens, heads, kv_heads, head_dim, seed=0):
    """Unit-normal q [batch, tokens, heads, D], k, v [..., kv_heads, D] from random_qkv."""
    q, k, v = unit_normal_pool(seed)
    return (jnp.asarray(q[:batch, :tokens, :heads, :head_dim]),
            jnp.asarray(k[:batch, :tokens, :kv_heads, :head_dim]),
            jnp.asarray(v[:batch, :tokens, :kv_heads, :head_dim]))


def structured_qkv(batch, tokens, heads, kv_heads, head_dim, block_size, levels, seed=0):
    """`unit_qkv` with `inputs.with_level_structure`: every level's scores carry signal."""
    return with_level_structure(unit_qkv(batch, tokens, heads, kv_heads, head_dim, seed),
                                block_size, levels, seed)


def oracle_forward_and_vjp(q, k, v, cotangent, **kwargs):
    with jax.default_matmul_precision("highest"):
        out, vjp = jax.vjp(lambda *x: oracle.llsa_oracle(*x, **kwargs), q, k, v)
        return out, vjp(cotangent)


def library_forward_and_vjp(q, k, v, cotangent, implementation="xla", **kwargs):
    # Jitted: one compile per configuration instead of op-by-op dispatch (3x faster on CPU).
    interpret = {} if implementation == "xla" else {"interpret": True}
    op = jax.jit(functools.partial(attention.llsa, implementation=implementation, **kwargs,
                                   **interpret))
    with jax.default_matmul_precision("highest"):
        out, vjp = jax.vjp(op, q, k, v)
        return out, vjp(cotangent)


# ---- oracle self checks (no library) ------------------------------------------------------


@functools.partial(jax.jit, static_argnums=3)
def dense_weighted_l1(q, k, v, block_size):
    """L=1 with every block selected: weight 1 on all level-0 keys, b on all level-1 keys.

    Written as the explicit ratio sum_j w_j e^{s_j} v_j / sum_j w_j e^{s_j}, not as a
    log-bias softmax, and with its own pooling.
    """
    _, tokens, heads, d = q.shape
    group = heads // k.shape[2]
    k = jnp.repeat(k, group, axis=2)
    v = jnp.repeat(v, group, axis=2)
    k1 = jnp.stack([k[:, i * block_size:(i + 1) * block_size].sum(1) / block_size
                    for i in range(tokens // block_size)], axis=1)
    v1 = jnp.stack([v[:, i * block_size:(i + 1) * block_size].sum(1) / block_size
                    for i in range(tokens // block_size)], axis=1)
    keys = jnp.concatenate([k, k1], axis=1)
    values = jnp.concatenate([v, v1], axis=1)
    weights = jnp.concatenate([jnp.ones(tokens), jnp.full(tokens // block_size, block_size)])
    scores = jnp.einsum("bnhd,bmhd->bhnm", q, keys) / math.sqrt(d)
    scores = scores - jax.lax.stop_gradient(scores.max(-1, keepdims=True))
    mass = weights * jnp.exp(scores)
    return jnp.einsum("bhnm,bmhd->bnhd", mass / mass.sum(-1, keepdims=True), values)


@pytest.mark.parametrize(("batch", "tokens", "heads", "kv_heads", "d", "b"),
                         [(1, 48, 4, 2, 12, 8), (2, 12, 3, 1, 5, 3)])
def test_oracle_l1_all_blocks_equals_dense_weighted(batch, tokens, heads, kv_heads, d, b):
    q, k, v = unit_qkv(batch, tokens, heads, kv_heads, d, seed=3)
    kwargs = dict(block_size=b, topk=tokens // b, levels=1)
    cotangent = normal(q.shape, seed=5)
    out, grads = oracle_forward_and_vjp(q, k, v, cotangent, **kwargs)
    with jax.default_matmul_precision("highest"):
        expected, vjp = jax.vjp(lambda *x: dense_weighted_l1(*x, b), q, k, v)
        expected_grads = vjp(cotangent)
    assert relative_error(out, expected) < BOUND
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        assert relative_error(grad, expected_grad) < BOUND


def gather_loop_forward(q, k, v, selections, block_size, levels):
    """float64 numpy forward following the spec's per-query-block pseudocode (§1.6)."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    batch, tokens, heads, d = q.shape
    b, group = block_size, heads // k.shape[2]
    out = np.zeros_like(q)
    for n in range(batch):
        for h in range(heads):
            ks, vs = [k[n, :, h // group]], [v[n, :, h // group]]
            for _ in range(levels):
                ks.append(ks[-1].reshape(-1, b, d).mean(1))
                vs.append(vs[-1].reshape(-1, b, d).mean(1))
            picks = selections[n][h].picks
            for qb in range(tokens // b):
                rows = [(np.concatenate([np.arange(j * b, j * b + b) for j in picks[1][qb]]),
                         0)]
                for level in range(1, levels):
                    parent = qb // b**level
                    rows.append((np.concatenate([np.arange(j * b, j * b + b)
                                                 for j in picks[level + 1][parent]]), level))
                rows.append((np.arange(tokens // b**levels), levels))
                key_all = np.concatenate([ks[lv][idx] for idx, lv in rows])
                value_all = np.concatenate([vs[lv][idx] for idx, lv in rows])
                log_w = np.concatenate([np.full(len(idx), lv * math.log(b)) for idx, lv in rows])
                logits = q[n, qb * b:(qb + 1) * b, h] @ key_all.T / math.sqrt(d) + log_w
                p = np.exp(logits - logits.max(-1, keepdims=True))
                out[n, qb * b:(qb + 1) * b, h] = (p / p.sum(-1, keepdims=True)) @ value_all
    return out


@pytest.mark.parametrize(("tokens", "heads", "kv_heads", "d", "b", "topk", "levels"),
                         [(64, 2, 1, 8, 4, 2, 2), (32, 3, 3, 6, 2, 2, 3), (48, 2, 2, 8, 2, 3, 3)])
def test_oracle_matches_per_block_gather_loop(tokens, heads, kv_heads, d, b, topk, levels):
    q, k, v = structured_qkv(1, tokens, heads, kv_heads, d, b, levels, seed=2)
    selections = oracle.select(q, k, b, topk, levels)
    with jax.default_matmul_precision("highest"):
        out = oracle.llsa_from_selection(q, k, v, selections, block_size=b, levels=levels)
    expected = gather_loop_forward(q, k, v, selections, b, levels)
    assert relative_error(out, expected) < BOUND


def test_oracle_coarsest_selection_is_plain_top_k():
    q, k, _ = unit_qkv(1, 64, 2, 2, 8, seed=4)
    selections = oracle.select(q, k, 4, 5, 1)
    q1 = np.asarray(q, np.float64).reshape(1, 16, 4, 2, 8).mean(2)
    k1 = np.asarray(k, np.float64).reshape(1, 16, 4, 2, 8).mean(2)
    for h in range(2):
        scores = q1[0, :, h] @ k1[0, :, h].T
        expected = np.argsort(-scores, axis=-1, kind="stable")[:, :5]
        np.testing.assert_array_equal(selections[0][h].picks[1], expected)


def test_oracle_ties_all_equal_keys_pick_lowest_indices():
    q = jnp.asarray(np.random.default_rng(0).integers(-2, 3, (1, 64, 1, 4)), jnp.float32)
    k = jnp.ones((1, 64, 1, 4))
    selection = oracle.select(q, k, 2, 3, 4)[0][0]   # levels 1..4: 32, 16, 8, 4 tokens
    for level in range(1, 5):
        np.testing.assert_array_equal(selection.picks[level], np.tile([0, 1, 2], (64 >> level, 1)))


def tie_case(d=4):
    """b=2, L=2, N=16, K=2 with an exact cross-parent tie at level 1.

    Every query is e1, so a key's score is its first coordinate. Level-1 key scores are
    [0, 0, 2, 1, 0, 0, 5, 2], level-2 scores [0, 1.5, 0, 3.5]: every level-2 query picks
    [3, 1] (in that rank order), so a level-1 query's candidates are [6, 7, 2, 3] with scores
    [5, 2, 2, 1]; the tie for the second place between 7 (earlier in candidate order) and 2
    (lower token index) must go to 2. Everything is exact in float32.
    """
    tokens = 16
    q = jnp.zeros((1, tokens, 1, d)).at[..., 0].set(1.0)
    level1 = np.array([0, 0, 2, 1, 0, 0, 5, 2], np.float32)
    k = jnp.zeros((1, tokens, 1, d)).at[0, :, 0, 0].set(np.repeat(level1, 2))
    v = normal((1, tokens, 1, d), seed=9)
    return q, k, v


def test_oracle_ties_go_to_lower_token_index_not_candidate_order():
    q, k, _ = tie_case()
    selection = oracle.select(q, k, 2, 2, 2)[0][0]
    np.testing.assert_array_equal(selection.picks[2], np.tile([3, 1], (4, 1)))
    np.testing.assert_array_equal(selection.picks[1], np.tile([6, 2], (8, 1)))
    assert selection.margin == 0.0


@pytest.mark.parametrize("levels", [1, 2, 3])
def test_oracle_parts_are_not_deduplicated(levels):
    """Each fine block j is also present pooled, as level-1 token j (in the level-1 part for
    L >= 2, since I^(1)[qb] is drawn from that candidate set; in the coarse part for L = 1):
    both columns stay, with weights 1 and b. Part sizes: K*b, K*b per middle level, N/b^L."""
    b, topk, tokens = 2, 2, 32
    q, k, _ = structured_qkv(1, tokens, 1, 1, 4, b, levels, seed=6)
    bias = oracle.selection_bias(oracle.select(q, k, b, topk, levels), tokens, b, levels)[0, 0]
    offsets = oracle.level_offsets(tokens, b, levels)
    for level in range(levels + 1):
        part = bias[:, offsets[level]:offsets[level + 1]]
        count = tokens // b**levels if level == levels else topk * b
        assert (np.isfinite(part).sum(-1) == count).all()
        np.testing.assert_allclose(part[np.isfinite(part)], level * math.log(b), atol=1e-12)
    fine, level1 = bias[:, :tokens], bias[:, offsets[1]:offsets[2]]
    for query in range(tokens):
        blocks = np.unique(np.flatnonzero(np.isfinite(fine[query])) // b)
        assert len(blocks) == topk and np.isfinite(level1[query, blocks]).all()


def test_oracle_rejects_bad_configs():
    assert oracle.resolve_levels(64, 4, None) == 2
    assert oracle.resolve_levels(63, 4, None) == 1
    assert oracle.resolve_levels(16, 16, None) == 1
    assert oracle.resolve_levels(64, 2, None) == 5
    for tokens, b, topk, levels, message in [(24, 4, 1, 2, "divisible"), (32, 4, 3, 2, "topk"),
                                             (32, 4, 1, 0, "levels")]:
        with pytest.raises(ValueError, match=message):
            oracle.check_config(tokens, b, topk, levels)


# ---- library reference ("xla") against the oracle ----------------------------------------

CASES = [
    # (batch, tokens, heads, kv_heads, head_dim, block_size, topk, levels)
    (2, 32, 2, 2, 16, 4, 2, 1),
    (1, 64, 3, 3, 24, 4, 2, 2),      # odd batch*heads, D not a power of two
    (1, 256, 2, 1, 8, 4, 3, 3),      # GQA 2:1
    (2, 32, 4, 2, 16, 2, 2, 3),      # GQA, b=2
    (1, 256, 4, 2, 16, 8, 4, 2),     # K = N / b^L: the whole top level selected
    (1, 256, 1, 1, 32, 16, 8, 1),    # the released L1 configuration
    (1, 48, 3, 1, 12, 2, 3, 2),      # N not a power of two, GQA 3:1
]


def check_against_oracle(q, k, v, seed=7, implementation="xla", **kwargs):
    cotangent = normal(q.shape, seed)
    out, grads = library_forward_and_vjp(q, k, v, cotangent, implementation, **kwargs)
    expected, expected_grads = oracle_forward_and_vjp(q, k, v, cotangent, **kwargs)
    assert out.shape == q.shape and out.dtype == q.dtype
    error = relative_error(out, expected)
    assert error < BOUND, f"forward relative error {error:.2e}"
    for name, grad, expected_grad in zip("qkv", grads, expected_grads, strict=True):
        error = relative_error(grad, expected_grad)
        assert error < BOUND, f"d{name} relative error {error:.2e}"


@pytest.mark.parametrize("case", CASES, ids=lambda c: "B{}N{}H{}x{}D{}-b{}K{}L{}".format(*c))
def test_xla_matches_oracle(case):
    batch, tokens, heads, kv_heads, d, b, topk, levels = case
    q, k, v = structured_qkv(batch, tokens, heads, kv_heads, d, b, levels)
    # Inputs must not be near-tied, or float order could flip a selection legitimately.
    assert oracle.selection_margin(q, k, block_size=b, topk=topk, levels=levels) > MIN_MARGIN
    check_against_oracle(q, k, v, block_size=b, topk=topk, levels=levels)


@pytest.mark.parametrize(("tokens", "b", "topk", "expected_levels"),
                         [(128, 4, 2, 2), (16, 16, 1, 1), (64, 2, 2, 5)])
def test_xla_default_levels(tokens, b, topk, expected_levels):
    """levels=None is the largest L with b^(L+1) <= N, at least 1: compared with the oracle
    at the explicit L."""
    assert oracle.resolve_levels(tokens, b, None) == expected_levels
    q, k, v = structured_qkv(1, tokens, 2, 1, 8, b, expected_levels)
    assert oracle.selection_margin(q, k, block_size=b, topk=topk,
                                   levels=expected_levels) > MIN_MARGIN
    cotangent = normal(q.shape, 7)
    out, grads = library_forward_and_vjp(q, k, v, cotangent, block_size=b, topk=topk)
    expected, expected_grads = oracle_forward_and_vjp(q, k, v, cotangent, block_size=b,
                                                      topk=topk, levels=expected_levels)
    assert relative_error(out, expected) < BOUND
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        assert relative_error(grad, expected_grad) < BOUND


def test_xla_exact_ties_go_to_lower_token_index():
    q, k, v = tie_case()
    check_against_oracle(q, k, v, block_size=2, topk=2, levels=2)


def coarsest_tie_case(d=4):
    """b=2, L=2, N=16, K=2 with an exact tie at the coarsest level that decides a pick.

    Every query is e1, so a key's score is its first coordinate. Level-1 key scores
    [1.5, 0.5, 3.5, 2.5, 1.25, 0.75, 1.75, 0.25] pool to coarsest scores [1, 3, 1, 1]: every
    coarsest query keeps token 1 and then, of the tied tokens 0, 2 and 3, token 0 (any other
    rule changes the level-1 candidates, children of the picks). Exact in float32.
    """
    tokens = 16
    q = jnp.zeros((1, tokens, 1, d)).at[..., 0].set(1.0)
    level1 = np.array([1.5, 0.5, 3.5, 2.5, 1.25, 0.75, 1.75, 0.25], np.float32)
    k = jnp.zeros((1, tokens, 1, d)).at[0, :, 0, 0].set(np.repeat(level1, 2))
    return q, k, normal((1, tokens, 1, d), seed=11)


def test_oracle_coarsest_tie_goes_to_lower_token_index():
    q, k, _ = coarsest_tie_case()
    selection = oracle.select(q, k, 2, 2, 2)[0][0]  # picks in rank order
    np.testing.assert_array_equal(selection.picks[2], np.tile([1, 0], (4, 1)))
    np.testing.assert_array_equal(selection.picks[1], np.tile([2, 3], (8, 1)))
    assert selection.margin == 0.0


@pytest.mark.parametrize("implementation", ["xla", "pallas_gpu", "pallas_tpu"])
def test_exact_coarsest_ties_go_to_lower_token_index(implementation):
    """Every implementation's coarsest top-K breaks the tie as the oracle does."""
    q, k, v = coarsest_tie_case()
    check_against_oracle(q, k, v, implementation=implementation, block_size=2, topk=2,
                         levels=2)


@pytest.mark.parametrize(
    ("tokens", "b", "topk", "levels", "message"),
    [
        (24, 4, 1, 2, "block_size"),   # N = 24 not divisible by 4**2
        (36, 2, 1, 3, "block_size"),   # N = 36 not divisible by 2**3
        (32, 4, 3, 2, "topk"),         # topk 3 > N / b**L = 2
        (64, 4, 17, 1, "topk"),        # topk 17 > 16 blocks
        (32, 4, 1, 0, "levels"),
        (32, 4, 1, -1, "levels"),
    ],
)
def test_xla_rejects_bad_configs(tokens, b, topk, levels, message):
    q = k = v = jnp.zeros((1, tokens, 2, 8))
    with pytest.raises(ValueError, match=message):
        attention.llsa(q, k, v, block_size=b, topk=topk, levels=levels, implementation="xla")
