"""The shared test suite every attention op and implementation runs (DESIGN §5).

Subclass `AttentionOpTestBase` once per (op, implementation) and set:
  op_name          registered name, e.g. "dense"
  implementation   passed as `implementation=` (None = dispatch's choice)
  op_kwargs        static keyword arguments for the op (default: its `example_kwargs`)
  tuning           `lla.attention.tuning` fields for the implementation (small tiles, ...)
  shapes           (B, Nq, Nk, H, Hkv, D) cases; odd and non-power-of-two sizes by default
  boundary_shape   a case on which the implementation's config (default or `tuning`) runs
                   several chunks / tiles along its loops, the last ones partial where the
                   op allows; `crossed_boundaries` names what it crosses (required for
                   tunable implementations), and every name must hold. Required: a new
                   implementation has to say how it is covered.
  dtypes           dtypes the implementation takes (low precision compared at looser bounds)
and override `reference(q, k, v, **kwargs)`: the oracle, computed in float32 at
Precision.HIGHEST. Feature tests (causal, segment_ids, GQA, backward) follow the op's
capability flags: a feature the op declares is tested, one it does not is skipped.

Errors are relative L2: ‖a − b‖ / ‖b‖, bounded per dtype by `FORWARD_BOUND`/`GRAD_BOUND`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lla.attention as attention

FORWARD_BOUND = {jnp.float32: 1e-5, jnp.bfloat16: 1e-2, jnp.float16: 2e-3}
GRAD_BOUND = {jnp.float32: 1e-5, jnp.bfloat16: 2e-2, jnp.float16: 4e-3}


def relative_error(actual: jax.Array, expected: jax.Array) -> float:
    """‖actual − expected‖ / ‖expected‖ in float64 (0 when both are 0)."""
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    denominator = np.linalg.norm(expected)
    difference = np.linalg.norm(actual - expected)
    return float(difference / denominator) if denominator else float(difference)


def random_qkv(shape, dtype=jnp.float32, seed=0):
    """q [B, Nq, H, D], k, v [B, Nk, Hkv, D] with unit-normal entries, in `dtype`."""
    batch, q_tokens, kv_tokens, heads, kv_heads, head_dim = shape
    keys = jax.random.split(jax.random.key(seed), 3)
    q = jax.random.normal(keys[0], (batch, q_tokens, heads, head_dim))
    k = jax.random.normal(keys[1], (batch, kv_tokens, kv_heads, head_dim))
    v = jax.random.normal(keys[2], (batch, kv_tokens, kv_heads, head_dim))
    return q.astype(dtype), k.astype(dtype), v.astype(dtype)


def segment_ids_for(batch: int, tokens: int, segments: int = 3, seed: int = 1) -> jax.Array:
    """Sorted int32 segment ids [batch, tokens] with `segments` non-empty runs per row."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(batch):
        cuts = np.sort(rng.choice(np.arange(1, tokens), size=segments - 1, replace=False))
        rows.append(np.searchsorted(cuts, np.arange(tokens), side="right"))
    return jnp.asarray(np.stack(rows), jnp.int32)


class AttentionOpTestBase:
    op_name: str = ""
    implementation: str | None = None
    op_kwargs: dict | None = None  # None: the op's example_kwargs
    tuning: dict = {}  # noqa: RUF012 - read-only class configuration
    shapes = (
        (2, 77, 77, 3, 3, 24),
        (1, 130, 130, 2, 2, 32),
        (1, 64, 96, 4, 2, 16),
    )
    boundary_shape: tuple | None = None
    dtypes = (jnp.float32, jnp.bfloat16)
    grad_bounds: dict = {}  # noqa: RUF012 - per-dtype overrides of GRAD_BOUND, with the reason
    deterministic_backward = True  # False only for vendor kernels that reduce with atomics

    # ---- hooks -------------------------------------------------------------------------
    def reference(self, q, k, v, **kwargs):
        """The oracle for `op(q, k, v, **kwargs)`; inputs arrive as float32."""
        raise NotImplementedError

    def random_inputs(self, shape, dtype):
        """q, k, v of the suite's checks (default: `random_qkv`)."""
        return random_qkv(shape, dtype)

    def crossed_boundaries(self, config, shape) -> dict[str, bool]:
        """{what: whether `boundary_shape` crosses it} for the implementation's `config`,
        e.g. {"several key chunks": N > config.chunk_k}. Required (non-empty) for tunable
        implementations; others (vendor kernels, `config` None) may return {}, and then
        only the size of `boundary_shape` says what it covers."""
        return {}

    @property
    def kwargs(self) -> dict:
        """The op's keyword arguments in every test (besides the test's own)."""
        op = attention.get(self.op_name)
        return dict(op.example_kwargs if self.op_kwargs is None else self.op_kwargs)

    def call(self, q, k, v, **kwargs):
        op = attention.get(self.op_name)
        if not self.tuning:
            return op(q, k, v, implementation=self.implementation, **self.kwargs, **kwargs)
        with attention.tuning(self.op_name, self.implementation, **self.tuning):
            return op(q, k, v, implementation=self.implementation, **self.kwargs, **kwargs)

    # ---- helpers -----------------------------------------------------------------------
    @property
    def capabilities(self) -> attention.Capabilities:
        return attention.get(self.op_name).capabilities

    def require(self, feature: str) -> None:
        if not getattr(self.capabilities, feature):
            pytest.skip(f"{self.op_name} does not declare {feature}")

    def oracle(self, q, k, v, **kwargs):
        with jax.default_matmul_precision("highest"):
            return self.reference(q.astype(jnp.float32), k.astype(jnp.float32),
                                  v.astype(jnp.float32), **kwargs)

    def check_forward_and_vjp(self, shape, dtype=jnp.float32, **kwargs):
        q, k, v = self.random_inputs(shape, dtype)
        out = self.call(q, k, v, **kwargs)
        expected = self.oracle(q, k, v, **kwargs)
        assert out.shape == (*q.shape[:3], v.shape[3])
        assert out.dtype == q.dtype
        error = relative_error(out, expected)
        assert error < FORWARD_BOUND[dtype], f"forward relative error {error:.2e}"
        if not self.capabilities.trainable:
            return
        cotangent = jax.random.normal(jax.random.key(7), out.shape).astype(dtype)
        grads = jax.vjp(lambda *x: self.call(*x, **kwargs), q, k, v)[1](cotangent)
        expected_grads = jax.vjp(lambda *x: self.oracle(*x, **kwargs), q, k, v)[1](
            cotangent.astype(jnp.float32))
        for name, grad, expected_grad, x in zip("qkv", grads, expected_grads, (q, k, v),
                                                strict=True):
            assert grad.shape == x.shape and grad.dtype == x.dtype, name
            error = relative_error(grad, expected_grad)
            bound = self.grad_bounds.get(dtype, GRAD_BOUND[dtype])
            assert error < bound, f"d{name} relative error {error:.2e}"

    @property
    def dtype(self):
        """The dtype feature tests run in: the implementation's first (most precise) one."""
        return self.dtypes[0]

    def square(self, shape):
        """The case with Nk = Nq (for features defined only on self-attention)."""
        batch, tokens, _, heads, kv_heads, head_dim = shape
        return (batch, tokens, tokens, heads, kv_heads, head_dim)

    # ---- the suite ---------------------------------------------------------------------
    def test_registered(self):
        op = attention.get(self.op_name)
        assert self.op_name in attention.names()
        assert "xla" in op.implementations
        assert self.implementation is None or self.implementation in op.implementations

    @pytest.mark.parametrize("case", range(3))
    def test_forward_and_vjp_float32(self, case):
        if jnp.float32 not in self.dtypes:
            pytest.skip("float32 not supported by this implementation")
        shape = self.shapes[case % len(self.shapes)]
        if shape[4] != shape[3] and not self.capabilities.gqa:
            pytest.skip(f"{self.op_name} has no GQA")
        self.check_forward_and_vjp(shape)

    def test_crosses_chunk_and_tile_boundaries(self):
        assert self.boundary_shape is not None, (
            f"{type(self).__name__}: set boundary_shape to a case that crosses the chunk and "
            f"tile boundaries of {self.implementation or 'the dispatched implementation'}")
        q, k, v = random_qkv(self.boundary_shape, self.dtype)
        with attention.dispatch_log() as log:
            jax.eval_shape(self.call, q, k, v)
        config = log[-1].config
        crossed = self.crossed_boundaries(config, self.boundary_shape)
        assert crossed or config is None, (
            f"{type(self).__name__}: {log[-1].implementation} has a tuning config; override "
            f"crossed_boundaries to say which of its loops boundary_shape runs more than once")
        assert all(crossed.values()), f"boundary_shape does not cross: {crossed}"
        self.check_forward_and_vjp(self.boundary_shape, self.dtype)
        if self.capabilities.causal and self.boundary_shape[1] == self.boundary_shape[2]:
            self.check_forward_and_vjp(self.boundary_shape, self.dtype, causal=True)

    def test_low_precision(self):
        low = [d for d in self.dtypes if d != jnp.float32]
        if not low:
            pytest.skip("float32 only")
        for dtype in low:
            self.check_forward_and_vjp(self.square(self.shapes[0]), dtype)

    def test_causal(self):
        self.require("causal")
        self.check_forward_and_vjp(self.square(self.shapes[0]), self.dtype, causal=True)

    def test_segment_ids(self):
        self.require("segments")
        shape = self.square(self.shapes[1])
        self.check_forward_and_vjp(shape, self.dtype,
                                   segment_ids=segment_ids_for(shape[0], shape[1]))

    def test_causal_with_segment_ids(self):
        self.require("segments")
        self.require("causal")
        shape = self.square(self.shapes[0])
        self.check_forward_and_vjp(shape, self.dtype, causal=True,
                                   segment_ids=segment_ids_for(shape[0], shape[1]))

    def test_grouped_query_heads(self):
        self.require("gqa")
        batch, tokens, _, _, _, head_dim = self.square(self.shapes[0])
        self.check_forward_and_vjp((batch, tokens, tokens, 6, 2, head_dim), self.dtype)

    def test_deterministic(self):
        q, k, v = random_qkv(self.square(self.shapes[0]), self.dtype)

        def run():
            out, vjp = jax.vjp(lambda *x: self.call(*x), q, k, v)
            if self.capabilities.trainable and self.deterministic_backward:
                return (out, *vjp(jnp.ones_like(out)))
            return (out,)

        for first, second in zip(run(), run(), strict=True):
            np.testing.assert_array_equal(np.asarray(first), np.asarray(second))

    @pytest.mark.parametrize(
        ("argument", "q_shape", "kv_shape"),
        [
            ("q", (2, 16, 4), (2, 16, 2, 8)),            # rank 3
            ("k", (2, 16, 4, 8), (3, 16, 2, 8)),         # batch mismatch
            ("k", (2, 16, 4, 8), (2, 16, 2, 16)),        # head_dim mismatch
            ("k", (2, 16, 4, 8), (2, 16, 3, 8)),         # kv heads do not divide q heads
        ],
    )
    def test_rejects_malformed_shapes(self, argument, q_shape, kv_shape):
        q = jnp.zeros(q_shape)
        k = v = jnp.zeros(kv_shape)
        with pytest.raises(ValueError, match=rf"\b{argument}\b.*\(") as error:
            self.call(q, k, v)
        assert str(tuple(q_shape if argument == "q" else kv_shape)) in str(error.value)

    def test_rejects_integer_inputs(self):
        q = k = v = jnp.zeros((1, 16, 2, 8), jnp.int32)
        with pytest.raises(ValueError, match="q must be a floating dtype"):
            self.call(q, k, v)

    def test_rejects_bad_segment_ids(self):
        self.require("segments")
        q = k = v = jnp.zeros((2, 16, 2, 8))
        with pytest.raises(ValueError, match=r"q_segment_ids has shape \(2, 15\); expected"):
            self.call(q, k, v, segment_ids=jnp.zeros((2, 15), jnp.int32))
        with pytest.raises(ValueError, match="must be an integer array"):
            self.call(q, k, v, segment_ids=jnp.zeros((2, 16)))
