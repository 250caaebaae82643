"""Neighbourhood attention: every implementation against the brute-force mask oracle (the
shared op suite), edge tilings, full windows == dense, errors, memory. `test_oracle.py` holds
the oracle's own checks and the randomized sweep; the tiled layout and tile lists are tested
in tests/pallas_kernels/neighborhood/test_tiling.py."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lla.attention as attention
from lla.pallas_kernels.neighborhood.tiling import make_plan
from tests.attention.neighborhood.oracle import neighborhood_mask, neighborhood_oracle
from tests.attention.op_test_base import AttentionOpTestBase, random_qkv, relative_error

ON_GPU = jax.default_backend() == "gpu"


class NeighborhoodTestBase(AttentionOpTestBase):
    op_name = "neighborhood"
    geometry = dict(spatial_shape=(7, 11), kernel_size=(3, 5), dilation=(2, 1))  # noqa: RUF012
    interpret = False
    shapes = ((2, 77, 77, 3, 3, 24), (1, 77, 77, 2, 2, 32), (1, 77, 77, 4, 2, 16))
    boundary_shape = (1, 77, 77, 2, 1, 16)

    @property
    def kwargs(self):
        return {**self.geometry, "interpret": self.interpret}

    def reference(self, q, k, v, causal=False):
        mask = neighborhood_mask(self.geometry["spatial_shape"], self.geometry["kernel_size"],
                                 self.geometry["dilation"], causal)
        return neighborhood_oracle(q, k, v, mask)

    def crossed_boundaries(self, config, shape):
        """Pallas configs: several query and kv tiles per dilation group, the last partial
        on some axis."""
        plan = make_plan(self.geometry["spatial_shape"], self.geometry["kernel_size"],
                         self.geometry["dilation"], (False,) * 2, shape[3], shape[4],
                         shape[5], config.q_tile, config.kv_tile)
        crossed = {}
        for name, tile in (("query", plan.q_tile), ("kv", plan.kv_tile)):
            grid = plan.tile_grid(tile)
            crossed[f"several {name} tiles"] = math.prod(grid) > 1
            crossed[f"a partial {name} tile"] = any(
                plan.group_slots(a) % tile[a] for a in range(plan.rank))
        return crossed


class TestNeighborhoodXla(NeighborhoodTestBase):
    implementation = "xla"
    tuning = dict(chunk=16)  # noqa: RUF012 - 77 queries: 4 chunks and a partial one
    # On a GPU the gathers' gradients are scatter-adds with atomics: forward-only there.
    deterministic_backward = not ON_GPU

    def crossed_boundaries(self, config, shape):
        return {"several query chunks, the last partial":
                shape[1] > config.chunk and shape[1] % config.chunk > 0}


@pytest.mark.skipif(ON_GPU, reason="interpret mode on a GPU host runs the Triton dots in "
                    "TF32, above the float32 bounds; TestNeighborhoodPallasGpu covers GPUs")
class TestNeighborhoodPallasInterpret(NeighborhoodTestBase):
    """The GPU kernels in interpret mode, tiles small enough that every query tile reads
    several kv tiles, some of them partly outside the grid."""

    implementation = "pallas_gpu"
    interpret = True
    tuning = dict(q_tile=(2, 4), kv_tile=(4, 2))  # noqa: RUF012


class TestNeighborhoodPallasTpuInterpret(NeighborhoodTestBase):
    """The TPU kernels in TPU interpret mode (uninitialised buffers NaN-poisoned; every grid
    step runs on the host, so tiles are few)."""

    implementation = "pallas_tpu"
    interpret = True
    tuning = dict(q_tile=(4, 8), kv_tile=(4, 4))  # noqa: RUF012
    shapes = ((1, 77, 77, 2, 2, 16), (2, 77, 77, 2, 1, 8))


@pytest.mark.parametrize("implementation", ["pallas_gpu", "pallas_tpu"])
@pytest.mark.parametrize(("geometry", "tiles", "feature"), [
    (dict(spatial_shape=(24,), kernel_size=9), dict(q_tile=(4,), kv_tile=(4,)), "full"),
    (dict(spatial_shape=(10, 12), kernel_size=(7, 5), causal=(False, True)),
     dict(q_tile=(2, 2), kv_tile=(2, 2)), "full"),
    (dict(spatial_shape=(13,), kernel_size=4, dilation=2, causal=True),
     dict(q_tile=(2,), kv_tile=(2,)), "padding"),
])
def test_kernels_on_edge_tilings(implementation, geometry, tiles, feature):
    """"full": windows much larger than the tiles, so some kv tiles are visited without a
    mask; "padding": a dilation group one token short, so its last tiles hold no token."""
    rank = len(geometry["spatial_shape"])
    plan = make_plan(geometry["spatial_shape"], _per_axis(geometry["kernel_size"], rank),
                     _per_axis(geometry.get("dilation", 1), rank),
                     _per_axis(geometry.get("causal", False), rank), 2, 1, 8,
                     tiles["q_tile"], tiles["kv_tile"])
    if feature == "full":
        assert plan.kv_lists().counts[..., 0].max() > 0
    else:
        assert plan.query_lists().counts[..., 1].min() == 0  # an unvisited kv tile
    tokens = math.prod(geometry["spatial_shape"])
    q, k, v = random_qkv((1, tokens, tokens, 2, 1, 8))
    cotangent = jax.random.normal(jax.random.key(3), q.shape)
    results = {}
    with jax.default_matmul_precision("highest"), attention.tuning(
            "neighborhood", implementation, **tiles):
        for name in (implementation, "xla"):
            op = functools.partial(attention.neighborhood, implementation=name,
                                   interpret=True, **geometry)
            out, vjp = jax.vjp(op, q, k, v)
            results[name] = (out, *vjp(cotangent))
    for label, got, expected in zip(("out", "dq", "dk", "dv"), results[implementation],
                                    results["xla"], strict=True):
        assert relative_error(got, expected) < 1e-5, label


def _per_axis(value, rank):
    return tuple(value) if isinstance(value, tuple) else (value,) * rank


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="compiled Pallas kernels need a GPU")
class TestNeighborhoodPallasGpu(NeighborhoodTestBase):
    implementation = "pallas_gpu"
    geometry = dict(spatial_shape=(40, 52), kernel_size=(7, 13), dilation=(1, 2))  # noqa: RUF012
    shapes = ((1, 2080, 2080, 2, 2, 64), (2, 2080, 2080, 3, 3, 32), (1, 2080, 2080, 4, 2, 16))
    boundary_shape = (1, 2080, 2080, 2, 1, 64)  # default 8 x 8 tiles over groups of 40 x 26
    dtypes = (jnp.bfloat16, jnp.float16)


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="compiled Pallas kernels need a GPU")
@pytest.mark.parametrize("geometry", [
    dict(spatial_shape=(300,), kernel_size=31, causal=True),
    dict(spatial_shape=(6, 20, 24), kernel_size=(3, 7, 7), dilation=(1, 2, 1)),
    dict(spatial_shape=(64, 64), kernel_size=(15, 31), causal=(True, False)),
])
def test_compiled_gpu_kernels_match_the_reference(geometry):
    tokens = math.prod(geometry["spatial_shape"])
    q, k, v = random_qkv((1, tokens, tokens, 4, 2, 64), jnp.bfloat16)
    cotangent = jax.random.normal(jax.random.key(5), q.shape, jnp.bfloat16)
    results = {}
    for implementation in ("pallas_gpu", "xla"):
        op = functools.partial(attention.neighborhood, implementation=implementation,
                               **geometry)
        out, vjp = jax.vjp(op, q, k, v)
        results[implementation] = (out, *vjp(cotangent))
    for name, got, expected in zip(("out", "dq", "dk", "dv"), results["pallas_gpu"],
                                   results["xla"], strict=True):
        assert relative_error(got, expected) < 2e-2, name


# ---- semantics --------------------------------------------------------------------------------

@pytest.mark.parametrize("implementation", ["xla", "pallas_gpu"])
@pytest.mark.parametrize("spatial_shape", [(12,), (5, 9), (3, 4, 5)])
def test_full_kernel_equals_dense_attention(implementation, spatial_shape):
    tokens = math.prod(spatial_shape)
    q, k, v = random_qkv((2, tokens, tokens, 4, 2, 16))
    with jax.default_matmul_precision("highest"):
        out = attention.neighborhood(q, k, v, spatial_shape=spatial_shape,
                                     kernel_size=spatial_shape, implementation=implementation,
                                     interpret=True)
        dense = attention.dot_product_attention(q, k, v, implementation="xla")
    assert relative_error(out, dense) < 1e-5


def test_kernel_size_one_returns_the_values():
    q, k, v = (jax.random.normal(jax.random.key(i), (1, 30, 2, 8)) for i in range(3))
    out = attention.neighborhood(q, k, v, spatial_shape=(5, 6), kernel_size=1)
    np.testing.assert_allclose(out, v, rtol=1e-6)


# ---- errors, dispatch, memory -------------------------------------------------------------------

@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(spatial_shape=(4, 4), kernel_size=5), r"kernel_size 5 x dilation 1 = 5 exceeds axis 0"),
    (dict(spatial_shape=(4, 4), kernel_size=2, dilation=(1, 3)), r"= 6 exceeds axis 1.*length 4"),
    (dict(spatial_shape=(4, 5), kernel_size=3), r"product is the number of tokens 16"),
    (dict(spatial_shape=(4, 4), kernel_size=(3, 3, 3)), r"kernel_size has 3 values"),
    (dict(spatial_shape=(4, 4), kernel_size=0), r"must be >= 1"),
    (dict(spatial_shape=(2, 2, 2, 2), kernel_size=1), r"1 to 3 positive axes"),
])
def test_rejects_bad_geometry(kwargs, message):
    q = k = v = jnp.zeros((1, 16, 2, 8))
    with pytest.raises(ValueError, match=message):
        attention.neighborhood(q, k, v, **kwargs)


def test_pallas_reasons():
    q = k = v = jnp.zeros((1, 8, 2, 24))
    geometry = dict(spatial_shape=(2, 4), kernel_size=1)
    if not ON_GPU:
        with pytest.raises(attention.NoImplementationError, match="pallas_gpu: needs a GPU"):
            attention.neighborhood(q, k, v, implementation="pallas_gpu", **geometry)
    with pytest.raises(attention.NoImplementationError,
                       match=r"head_dim 24 must be a power of two.*q_tile \(2, 4\) must be"):
        attention.neighborhood(q, k, v, implementation="pallas_gpu", **geometry)
    with attention.tuning("neighborhood", "pallas_gpu", q_tile=(4, 4, 4)), pytest.raises(
            attention.NoImplementationError, match=r"q_tile \(4, 4, 4\) needs one"):
        attention.neighborhood(q, k, v, implementation="pallas_gpu", interpret=True,
                               **geometry)
    with attention.dispatch_log() as log:  # the kernels decline head_dim 24: "xla" runs
        assert attention.neighborhood(q, k, v, **geometry).shape == q.shape
    assert [d.implementation for d in log] == ["xla"]


def test_reference_never_allocates_n_by_n():
    """Compiles (does not run) fwd+bwd of the reference at 256 x 256 tokens, kernel 7: an
    N x N f32 array alone would be 16 GiB; all of XLA's buffers must fit in 1 GiB."""
    shape = jax.ShapeDtypeStruct((1, 65536, 2, 32), jnp.float32)

    def loss(q, k, v):
        return attention.neighborhood(q, k, v, spatial_shape=(256, 256), kernel_size=7,
                                      implementation="xla").sum()

    compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(shape, shape, shape).compile()
    memory = compiled.memory_analysis()
    total = (memory.temp_size_in_bytes + memory.argument_size_in_bytes
             + memory.output_size_in_bytes)
    assert total < 2**30, f"{total / 2**20:.0f} MiB"


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(spatial_shape=(4, 4), kernel_size="13"), "kernel_size must be ints"),
    (dict(spatial_shape=(4, 4), kernel_size=3.7), "kernel_size must be ints"),
    (dict(spatial_shape=(4, 4), kernel_size=True), "kernel_size must be ints"),
    (dict(spatial_shape=(4, 4), kernel_size=3, causal=("False", "False")), "causal must be bools"),
    (dict(spatial_shape=(6.5, 6), kernel_size=3), "spatial_shape must be ints"),
])
def test_rejects_values_of_the_wrong_type(kwargs, message):
    q = k = v = jnp.zeros((1, 16, 2, 8))
    with pytest.raises(ValueError, match=message):
        attention.neighborhood(q, k, v, **kwargs)


def test_accepts_lists_arrays_and_numpy_scalars():
    q = k = v = jax.random.normal(jax.random.key(0), (1, 16, 2, 8))
    expected = attention.neighborhood(q, k, v, spatial_shape=(4, 4), kernel_size=(3, 3),
                                      causal=(True, False))
    got = attention.neighborhood(q, k, v, spatial_shape=np.array([4, 4]),
                                 kernel_size=np.int64(3), causal=[np.bool_(True), False])
    np.testing.assert_array_equal(got, expected)
