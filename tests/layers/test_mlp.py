"""SwiGLU written out: out = (silu(x·W_gate) * (x·W_value))·W_out, no biases."""

from __future__ import annotations

import jax
import numpy as np

from lla.layers.mlp import SwiGLU


def test_swiglu_gates_the_value_with_silu_of_the_gate():
    """Swapping gate and value, or SiLU for another activation, fails here."""
    layer = SwiGLU(width=6, hidden=10)
    x = jax.random.normal(jax.random.key(0), (2, 3, 6))
    params = layer.init(jax.random.key(1), x)
    weights = {name: np.asarray(params["params"][name]["kernel"], np.float64)
               for name in ("gate", "value", "out")}
    assert set(params["params"]) == set(weights)  # no biases
    wide = np.asarray(x, np.float64)
    gate, value = wide @ weights["gate"], wide @ weights["value"]
    expected = (gate / (1 + np.exp(-gate)) * value) @ weights["out"]
    with jax.default_matmul_precision("highest"):
        np.testing.assert_allclose(layer.apply(params, x), expected, rtol=1e-5, atol=1e-6)
