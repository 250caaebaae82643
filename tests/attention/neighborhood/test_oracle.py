"""Neighborhood attention: the brute-force oracle's self checks, and every implementation
against it (fixed cases plus a NATTEN-style seeded random sweep).

The oracle (tests/attention/neighborhood/oracle.py) is written from the spec, not the library.
Sweep size: env var LLA_NEIGHBORHOOD_SWEEP (cases per implementation, default 3).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lla.attention as attention
from tests.attention.neighborhood.oracle import neighborhood_mask, neighborhood_oracle
from tests.attention.op_test_base import relative_error

BOUND = 1e-5  # float32 relative L2 bound, forward and gradients
IMPLEMENTATIONS = ("xla", "pallas_gpu", "pallas_tpu")
SWEEP_CASES = int(os.environ.get("LLA_NEIGHBORHOOD_SWEEP", "3"))


def normal(shape, seed):
    """Unit-normal float32 (numpy draws: a jax.random draw compiles for seconds per shape)."""
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def random_qkv(batch, tokens, heads, kv_heads, head_dim, seed=0):
    """q [batch, tokens, heads, head_dim], k, v [..., kv_heads, head_dim]."""
    return (normal((batch, tokens, heads, head_dim), seed),
            normal((batch, tokens, kv_heads, head_dim), seed + 1),
            normal((batch, tokens, kv_heads, head_dim), seed + 2))


def keys_of(mask, query):
    return set(np.flatnonzero(mask[query]).tolist())


# ---- oracle self checks (no library) ------------------------------------------------------


@pytest.mark.parametrize(("query", "expected"), [(0, {0, 1, 2}), (6, {4, 5, 6}), (3, {2, 3, 4})])
def test_mask_1d_window_shifts_at_borders(query, expected):
    assert keys_of(neighborhood_mask((7,), 3), query) == expected


def test_mask_hand_examples():
    assert keys_of(neighborhood_mask((7,), 3, dilation=2), 1) == {1, 3, 5}
    assert keys_of(neighborhood_mask((7,), 3, dilation=2), 6) == {2, 4, 6}
    assert keys_of(neighborhood_mask((7,), 3, causal=True), 4) == {2, 3, 4}
    assert keys_of(neighborhood_mask((7,), 3, causal=True), 1) == {0, 1}
    assert keys_of(neighborhood_mask((8,), 4), 4) == {2, 3, 4, 5}
    assert keys_of(neighborhood_mask((9,), 2, dilation=3, causal=True), 7) == {4, 7}
    # 2-D (3, 4), kernel (2, 3): query (2, 0) sees rows {1, 2} x columns {0, 1, 2}.
    assert keys_of(neighborhood_mask((3, 4), (2, 3)), 8) == {4, 5, 6, 8, 9, 10}


@pytest.mark.parametrize(("shape", "kernel", "dilation"), [
    ((13,), 4, 1), ((11,), 3, 3), ((7, 11), (3, 5), (2, 2)), ((3, 5, 6), (3, 2, 3), (1, 2, 2)),
])
def test_mask_rows_have_prod_kernel_keys_in_the_query_group(shape, kernel, dilation):
    mask = neighborhood_mask(shape, kernel, dilation)
    kernels = kernel if isinstance(kernel, tuple) else (kernel,)
    dilations = dilation if isinstance(dilation, tuple) else (dilation,) * len(shape)
    np.testing.assert_array_equal(mask.sum(axis=1), math.prod(kernels))
    assert mask.diagonal().all()
    coords = np.stack(np.unravel_index(np.arange(math.prod(shape)), shape), axis=1)
    for query, key in zip(*np.nonzero(mask), strict=True):
        np.testing.assert_array_equal(coords[query] % dilations, coords[key] % dilations)


def test_mask_causal_only_looks_back():
    shape, kernel, causal = (5, 6, 4), (3, 2, 4), (True, False, True)
    mask = neighborhood_mask(shape, kernel, (1, 3, 1), causal)
    coords = np.stack(np.unravel_index(np.arange(mask.shape[0]), shape), axis=1)
    for query, key in zip(*np.nonzero(mask), strict=True):
        assert coords[key][0] <= coords[query][0] and coords[key][2] <= coords[query][2]
    expected = [min(c[0] + 1, 3) * 2 * min(c[2] + 1, 4) for c in coords]
    np.testing.assert_array_equal(mask.sum(axis=1), expected)


def test_mask_is_row_major_product_of_axis_masks():
    shape, kernel, dilation, causal = (5, 7, 4), (2, 3, 2), (2, 2, 1), (False, True, False)
    axes = [neighborhood_mask((n,), k, d, c)
            for n, k, d, c in zip(shape, kernel, dilation, causal, strict=True)]
    expected = functools.reduce(np.kron, axes).astype(bool)
    np.testing.assert_array_equal(neighborhood_mask(shape, kernel, dilation, causal), expected)


@pytest.mark.parametrize("shape", [(9,), (4, 5), (2, 3, 4)])
def test_oracle_full_kernel_is_dense_attention(shape):
    mask = neighborhood_mask(shape, shape)
    assert mask.all()
    q, k, v = random_qkv(2, math.prod(shape), 4, 2, 8)
    with jax.default_matmul_precision("highest"):
        expected = jax.nn.dot_product_attention(q, k, v)
        error = relative_error(neighborhood_oracle(q, k, v, mask), expected)
    assert error < BOUND


@pytest.mark.parametrize(("shape", "dilation", "causal"),
                         [((10,), 3, False), ((4, 5), (2, 1), (True, False)), ((3, 4, 2), 1, True)])
def test_oracle_kernel_one_returns_v(shape, dilation, causal):
    mask = neighborhood_mask(shape, 1, dilation, causal)
    np.testing.assert_array_equal(mask, np.eye(math.prod(shape), dtype=bool))
    q, k, v = random_qkv(2, math.prod(shape), 4, 2, 8)
    out = neighborhood_oracle(q, k, v, mask)
    np.testing.assert_allclose(out, jnp.repeat(v, 2, axis=2), rtol=1e-6, atol=1e-6)


def test_oracle_matches_per_query_numpy_loop_with_gqa():
    shape, heads, kv_heads = (4, 5), 6, 2
    mask = neighborhood_mask(shape, (3, 2), (1, 2), (True, False))
    q, k, v = random_qkv(2, 20, heads, kv_heads, 8)
    out = neighborhood_oracle(q, k, v, mask)
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    expected = np.zeros(q.shape)
    for b, query, h in np.ndindex(2, 20, heads):
        keys = np.flatnonzero(mask[query])
        kv = h // (heads // kv_heads)
        logits = k[b, keys, kv] @ q[b, query, h] / math.sqrt(8)
        weights = np.exp(logits - logits.max())
        expected[b, query, h] = weights @ v[b, keys, kv] / weights.sum()
    assert relative_error(out, expected) < BOUND


# ---- implementations against the oracle ---------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
    spatial_shape: tuple[int, ...]
    kernel_size: int | tuple[int, ...]
    dilation: int | tuple[int, ...] = 1
    causal: bool | tuple[bool, ...] = False
    batch: int = 1
    heads: int = 1
    kv_heads: int = 1
    head_dim: int = 8

    @property
    def id(self) -> str:
        def axes(value):
            values = value if isinstance(value, tuple) else (value,)
            return "x".join(str(int(x)) for x in values)
        return (f"s{axes(self.spatial_shape)}-k{axes(self.kernel_size)}-d{axes(self.dilation)}"
                f"-c{axes(self.causal)}-b{self.batch}h{self.heads}kv{self.kv_heads}"
                f"d{self.head_dim}")

    @property
    def statics(self) -> dict:
        return {"spatial_shape": self.spatial_shape, "kernel_size": self.kernel_size,
                "dilation": self.dilation, "causal": self.causal}

    @property
    def tokens(self) -> int:
        return math.prod(self.spatial_shape)


FIXED_CASES = (
    Case((13,), 4, batch=2, head_dim=16),
    Case((11,), 3, dilation=3, heads=4, kv_heads=2),
    Case((16,), 5, dilation=3, causal=True),
    Case((7, 11), (7, 5), heads=2, kv_heads=2, head_dim=16),
    Case((7, 11), (2, 4), dilation=(1, 2), causal=(True, False), heads=2, kv_heads=1),
    Case((3, 5, 6), (3, 3, 2), batch=2, head_dim=16),
    Case((3, 5, 6), (1, 2, 3), dilation=(2, 1, 2), causal=(True, False, True),
         heads=2, kv_heads=1),
)


def draw_cases(count: int, seed: int = 0) -> tuple[Case, ...]:
    """NATTEN-style random configurations, N <= 300, from one seeded generator."""
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(count):
        rank = int(rng.integers(1, 4))
        high = {1: 300, 2: 17, 3: 6}[rank]
        shape = tuple(int(n) for n in rng.integers(2, high + 1, size=rank))
        kernel = tuple(int(rng.integers(1, min(n, 16) + 1)) for n in shape)
        dilation = tuple(int(rng.integers(1, n // k + 1)) for n, k in zip(shape, kernel,
                                                                             strict=True))
        causal = tuple(bool(c) for c in rng.integers(0, 2, size=rank))
        heads = int(rng.choice([1, 2]))
        kv_heads = int(rng.choice([d for d in (1, 2) if heads % d == 0]))
        batch = int(rng.integers(1, 3)) if heads == 1 else 1  # Pallas interpret time ~ B * H
        cases.append(Case(shape, kernel, dilation, causal, batch=batch, heads=heads,
                          kv_heads=kv_heads, head_dim=int(rng.choice([8, 16, 32]))))
    return tuple(cases)


def inputs(case: Case):
    q, k, v = random_qkv(case.batch, case.tokens, case.heads, case.kv_heads, case.head_dim)
    cotangent = normal(q.shape, seed=7)
    return q, k, v, cotangent


def forward_and_vjp(fn, case: Case):
    """fn(q, k, v) and its VJP (dq, dk, dv) at a fixed cotangent, in one jit at HIGHEST."""
    q, k, v, cotangent = inputs(case)

    @jax.jit
    def run(q, k, v, cotangent):
        out, vjp = jax.vjp(fn, q, k, v)
        return out, vjp(cotangent)

    with jax.default_matmul_precision("highest"):
        return run(q, k, v, cotangent)


@functools.cache
def oracle_forward_and_vjp(case: Case):
    mask = neighborhood_mask(**case.statics)
    return forward_and_vjp(lambda *x: neighborhood_oracle(*x, mask), case)


def check_against_oracle(implementation: str, case: Case):
    call = functools.partial(attention.neighborhood, implementation=implementation,
                             interpret=implementation != "xla", **case.statics)
    out, grads = forward_and_vjp(call, case)
    expected, expected_grads = oracle_forward_and_vjp(case)
    assert out.shape == expected.shape and out.dtype == jnp.float32
    errors = {"out": relative_error(out, expected)}
    for name, grad, expected_grad in zip(("dq", "dk", "dv"), grads, expected_grads, strict=True):
        errors[name] = relative_error(grad, expected_grad)
    assert max(errors.values()) < BOUND, {name: f"{e:.2e}" for name, e in errors.items()}


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in FIXED_CASES])
def test_matches_oracle(case, implementation):
    check_against_oracle(implementation, case)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("case", [pytest.param(c, id=f"sweep{i}-{c.id}")
                                  for i, c in enumerate(draw_cases(SWEEP_CASES))])
def test_random_sweep_matches_oracle(case, implementation):
    check_against_oracle(implementation, case)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_output_keeps_bfloat16(implementation):
    case = Case((12,), 3, dilation=2, causal=True)
    q, k, v, _ = inputs(case)
    out = attention.neighborhood(*(x.astype(jnp.bfloat16) for x in (q, k, v)),
                                 implementation=implementation,
                                 interpret=implementation != "xla", **case.statics)
    assert out.dtype == jnp.bfloat16
    expected = neighborhood_oracle(q, k, v, neighborhood_mask(**case.statics))
    assert relative_error(out, expected) < 2e-2


# ---- argument errors ----------------------------------------------------------------------


def test_kernel_times_dilation_larger_than_axis_names_the_length():
    q, k, v = random_qkv(1, 91, 2, 2, 8)
    with pytest.raises(ValueError, match="13"):
        attention.neighborhood(q, k, v, spatial_shape=(7, 13), kernel_size=(3, 5), dilation=(1, 3),
           implementation="xla")


@pytest.mark.parametrize("kwargs", [
    {"spatial_shape": (4, 6), "kernel_size": 3},                    # prod 24 != N = 20
    {"spatial_shape": (4, 5), "kernel_size": 0},
    {"spatial_shape": (4, 5), "kernel_size": 3, "dilation": 0},
    {"spatial_shape": (4, 5), "kernel_size": (3, 3, 3)},
    {"spatial_shape": (4, 5), "kernel_size": 3, "dilation": (1, 1, 1)},
    {"spatial_shape": (4, 5), "kernel_size": 3, "causal": (True,) * 3},
], ids=["tokens", "kernel0", "dilation0", "kernel_axes", "dilation_axes", "causal_axes"])
def test_invalid_arguments_raise(kwargs):
    q, k, v = random_qkv(1, 20, 2, 2, 8)
    with pytest.raises(ValueError):  # noqa: PT011 - the message varies per argument
        attention.neighborhood(q, k, v, implementation="xla", **kwargs)
