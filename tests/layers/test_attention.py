"""The attention layer: grid-shaped inputs get the op's token order and spatial arguments
(RoPE rows moving with the tokens); input errors say what the layer expects."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lla.attention import token_order
from lla.layers import Attention, rope_2d
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
