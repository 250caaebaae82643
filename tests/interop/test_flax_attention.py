"""lla ops inside Flax's attention modules (linen and NNX) and the lla layer in NNX: what maps
equals Flax's own result; what cannot be honoured raises, naming the argument."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import lla.attention as attention
from lla.interop import causal_ops, flax_attention_fn, nnx_attention
from lla.layers import Attention
from tests.attention.op_test_base import random_qkv, relative_error
from tests.attention.toy import TOY_HIERARCHY


@pytest.fixture(autouse=True)
def _exact_matmuls():
    with jax.default_matmul_precision("highest"):
        yield


def tokens(shape=(2, 16, 32), seed=0):
    return jax.random.normal(jax.random.key(seed), shape)


@pytest.mark.parametrize("causal", [False, True])
def test_linen_module_with_the_adapter_equals_flax_attention(causal):
    x = tokens()
    ours = nn.MultiHeadDotProductAttention(num_heads=4,
                                           attention_fn=flax_attention_fn(causal=causal))
    flax_own = nn.MultiHeadDotProductAttention(num_heads=4)
    params = ours.init(jax.random.key(1), x)
    mask = nn.make_causal_mask(jnp.ones(x.shape[:2])) if causal else None
    expected = flax_own.apply(params, x, mask=mask)
    assert relative_error(ours.apply(params, x), expected) < 1e-5
    if causal:  # and it really is causal: not the unmasked result
        assert relative_error(ours.apply(params, x), flax_own.apply(params, x)) > 1e-2


def test_nnx_module_with_the_adapter_equals_nnx_attention_and_maps_is_causal():
    x = tokens()
    module = nnx.MultiHeadAttention(4, 32, rngs=nnx.Rngs(0), decode=False)
    mask = nnx.make_causal_mask(jnp.ones(x.shape[:2]))
    expected_causal, expected = module(x, mask=mask), module(x)
    module.attention_fn = flax_attention_fn("dense")
    assert relative_error(module(x, is_causal=True), expected_causal) < 1e-5
    assert relative_error(module(x), expected) < 1e-5
    with pytest.raises(ValueError, match=r"arbitrary `mask` cannot be honoured.*is_causal=True"):
        module(x, mask=mask)


def test_what_cannot_be_honoured_raises_naming_it():
    x = tokens()
    fn = flax_attention_fn("llsa", block_size=4, topk=2)
    q = k = v = x.reshape(2, 16, 4, 8)
    cases = [
        (dict(mask=jnp.ones((2, 1, 16, 16), bool)), "arbitrary `mask`"),
        (dict(bias=jnp.zeros((2, 4, 16, 16))), "additive `bias`"),
        (dict(dropout_rate=0.1, deterministic=False), r"attention dropout \(dropout_rate=0.1"),
        (dict(module=object()), "cannot be sown"),
        (dict(qk_attn_weights_einsum=jnp.einsum), "custom einsums"),
        (dict(input_positions=jnp.arange(16)), r"unsupported arguments \['input_positions'\]"),
        (dict(precision=(1, 2)), "precision must be None"),
        (dict(promote_dtype=lambda *x: x), r"unsupported arguments \['promote_dtype'\]"),
    ]
    for arguments, message in cases:
        with pytest.raises(ValueError, match=message):
            fn(q, k, v, **arguments)
    assert fn(q, k, v, dropout_rate=0.1, deterministic=True).shape == q.shape  # eval: fine
    not_causal = r"op 'toy_hierarchy' has no causal form; causal ops: .*dense.*llsa"
    with pytest.raises(ValueError, match=not_causal):
        flax_attention_fn(TOY_HIERARCHY)(q, k, v, is_causal=True)
    with pytest.raises(ValueError, match=not_causal):
        flax_attention_fn(TOY_HIERARCHY, causal=True)
    module = nn.MultiHeadDotProductAttention(num_heads=4, dropout_rate=0.1,
                                             attention_fn=flax_attention_fn())
    params = module.init(jax.random.key(0), x, deterministic=True)
    with pytest.raises(ValueError, match="attention dropout"):
        module.apply(params, x, deterministic=False, rngs={"dropout": jax.random.key(1)})


def test_segment_ids_dtype_precision_and_batch_dimensions_map_through():
    q, k, v = random_qkv((2, 12, 12, 4, 2, 8))
    ids = jnp.asarray([[0] * 5 + [1] * 7, [0] * 12], jnp.int32)
    fn = flax_attention_fn()
    expected = attention.dot_product_attention(q, k, v, segment_ids=ids)
    np.testing.assert_allclose(fn(q, k, v, segment_ids=ids), expected, rtol=1e-6)
    low = fn(q, k, v, dtype=jnp.bfloat16, precision=jax.lax.Precision.HIGHEST)
    assert low.dtype == jnp.bfloat16 and relative_error(low, fn(q, k, v)) < 2e-2
    stacked = fn(*(x.reshape(1, 2, *x.shape[1:]) for x in (q, k, v)),  # two batch dims
                 segment_ids=ids.reshape(1, 2, 12))
    np.testing.assert_allclose(stacked.reshape(q.shape), expected, rtol=1e-6)
    mixed = fn(q, k.astype(jnp.bfloat16), v)  # promoted, as Flax does
    assert mixed.dtype == jnp.float32
    assert "dense" in causal_ops()


def test_nnx_attention_equals_the_linen_layer_with_the_same_parameters():
    x = tokens((2, 4, 4, 32))
    fields = dict(num_heads=4, op="neighborhood", op_kwargs={"kernel_size": 3})
    layer = nnx_attention(rngs=nnx.Rngs(0), example=x, **fields)
    params = nnx.to_pure_dict(nnx.state(layer, nnx.Param))
    np.testing.assert_array_equal(layer(x), Attention(**fields).apply({"params": params}, x))
