"""The attention layer: grid-shaped inputs get the op's token order and spatial arguments
(RoPE rows moving with the tokens); input errors say what the layer expects; SSA alignment
(`full_mode`) runs dense attention with the op's masking on the same q, k, v, and nothing of it
without `full_mode`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lla.attention as attention
from lla.attention import token_order
from lla.layers import Attention, rope_2d
from lla.layers.attention import ALIGNMENT, AlignedOutputs
from tests.attention.toy import TOY_HIERARCHY


@pytest.fixture(autouse=True)
def _exact_matmuls():
    with jax.default_matmul_precision("highest"):
        yield


def grid_input(shape=(2, 4, 6, 16)):
    return jax.random.normal(jax.random.key(0), shape)


def test_a_grid_op_takes_grid_input_or_tokens_with_spatial_shape():
    x = grid_input()
    grid_layer = Attention(num_heads=2, op="neighborhood", op_kwargs={"kernel_size": 3})
    params = grid_layer.init(jax.random.key(1), x)
    out = grid_layer.apply(params, x)
    assert out.shape == x.shape
    tokens = Attention(num_heads=2, op="neighborhood",
                       op_kwargs={"kernel_size": 3, "spatial_shape": (4, 6)})
    np.testing.assert_allclose(out.reshape(2, 24, 16),
                               tokens.apply(params, x.reshape(2, 24, 16)), rtol=1e-6)


def test_a_hierarchy_op_gets_zorder_tokens_and_rope_rows_move_with_them():
    """The toy op is dense attention asking for Z-order: fed Z-ordered tokens and RoPE rows,
    the layer must give the dense layer's output on the raster grid."""
    x = grid_input((2, 8, 8, 16))
    positions = np.stack(np.meshgrid(np.arange(8), np.arange(8), indexing="ij"), -1)
    rope = rope_2d(positions.reshape(-1, 2).astype(np.float64), 8)
    dense = Attention(num_heads=2)
    params = dense.init(jax.random.key(1), x, rope)
    zordered = Attention(num_heads=2, op=TOY_HIERARCHY)
    assert token_order.for_op(TOY_HIERARCHY, (8, 8)).permutation is not None
    np.testing.assert_allclose(zordered.apply(params, x, rope), dense.apply(params, x, rope),
                               rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize(("layer", "x", "message"), [
    (Attention(num_heads=2, op="neighborhood", op_kwargs={"kernel_size": 3}),
     jnp.zeros((2, 24, 16)), r"'neighborhood' attends over a token grid and needs "
                              r"spatial_shape=\(H, W\).*N=24"),
    (Attention(num_heads=2), jnp.zeros((24, 16)), r"x must be tokens \[B, N, C\] or a grid"),
    (Attention(num_heads=2), jnp.zeros((1, 2, 2, 2, 2, 16)), r"got shape \(1, 2, 2, 2, 2, 16\)"),
    (Attention(num_heads=3), jnp.zeros((2, 24, 16)), "width 16 is not divisible by num_heads 3"),
])
def test_input_errors_say_what_is_expected(layer, x, message):
    with pytest.raises(ValueError, match=message):
        layer.init(jax.random.key(0), x)


def test_op_kwargs_add_to_the_op_defaults():
    """kernel_size comes from neighborhood's default_kwargs (13), dilation from op_kwargs."""
    x = grid_input((1, 16, 16, 16))
    layer = Attention(num_heads=2, op="neighborhood", op_kwargs={"dilation": 1})
    explicit = Attention(num_heads=2, op="neighborhood", op_kwargs={"kernel_size": 13})
    params = layer.init(jax.random.key(1), x)
    np.testing.assert_array_equal(layer.apply(params, x), explicit.apply(params, x))


def aligned(layer, params, x, full_mode):
    """(output, the layer's one AlignedOutputs) of an aligned forward (jitted)."""
    out, state = jax.jit(lambda params, x, full_mode: layer.apply(
        params, x, full_mode=full_mode, mutable=[ALIGNMENT]))(params, x, full_mode)
    (outputs,) = state[ALIGNMENT]["outputs"]
    assert isinstance(outputs, AlignedOutputs)
    return out, outputs


def test_alignment_runs_dense_on_the_same_inputs_with_the_ops_causal_mask():
    """Causal top-K keeping every block is causal dense attention: the sown outputs agree
    (a dense branch without the op's causal mask would not), and the layer passes on the
    dense output in full mode, the op's in sparse mode."""
    x = grid_input((2, 24, 16))
    exact = Attention(num_heads=2, op="topk_block",
                      op_kwargs={"block_size": 4, "topk": 6, "causal": True})
    params = exact.init(jax.random.key(1), x)
    out, outputs = aligned(exact, params, x, True)
    np.testing.assert_allclose(outputs.sparse, outputs.full, rtol=1e-5, atol=1e-6)
    causal_dense = Attention(num_heads=2, op="dense", op_kwargs={"causal": True})
    dense_out = jax.jit(causal_dense.apply)(params, x)
    np.testing.assert_allclose(out, dense_out, rtol=1e-5, atol=1e-6)

    sparse = Attention(num_heads=2, op="topk_block",
                       op_kwargs={"block_size": 4, "topk": 2, "causal": True})
    full_out, outputs = aligned(sparse, params, x, jnp.bool_(True))
    sparse_out, _ = aligned(sparse, params, x, jnp.bool_(False))
    assert not np.allclose(outputs.full, outputs.sparse, atol=1e-3)
    np.testing.assert_allclose(full_out, dense_out, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sparse_out, jax.jit(sparse.apply)(params, x), rtol=1e-6,
                               atol=1e-7)


def test_without_full_mode_no_dense_attention_runs_and_nothing_is_sown():
    x = grid_input((2, 8, 8, 16))
    layer = Attention(num_heads=2, op="llsa", op_kwargs={"block_size": 4, "topk": 2})
    params = layer.init(jax.random.key(1), x)
    with attention.dispatch_log() as log:
        _, state = layer.apply(params, x, mutable=True)
    assert [entry.op for entry in log] == ["llsa"] and set(state) == {"params"}
    with attention.dispatch_log() as log:
        _, state = layer.apply(params, x, full_mode=False, mutable=True)
    assert [entry.op for entry in log] == ["llsa", "dense"]
    assert set(state) == {"params", ALIGNMENT}


def test_alignment_refuses_per_axis_causality_dense_cannot_express():
    x = grid_input()
    layer = Attention(num_heads=2, op="neighborhood",
                      op_kwargs={"kernel_size": 3, "causal": (True, False)})
    params = layer.init(jax.random.key(1), x)
    with pytest.raises(ValueError, match=r"causal=\(True, False\) \(per grid axis\)"):
        layer.apply(params, x, full_mode=True, mutable=[ALIGNMENT])
