"""sla: every implementation against the brute-force oracle (`oracle.py`) through the shared
op suite, the kernels in interpret mode with gradients into the projection, the exact
identities (every block critical = dense; no marginal block = the sparse branch plus the
bias), the feature maps, the layer form, and errors."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lla.attention as attention
from lla.layers import Attention, SparseLinearAttention
from tests.attention.block_sparse_cases import SparseFlashGpuCase
from tests.attention.op_test_base import AttentionOpTestBase, random_qkv, relative_error
from tests.attention.sla.oracle import sla_oracle
from tests.attention.topk_block.oracle import masked_dense_attention


class SlaTestBase(AttentionOpTestBase):
    op_name = "sla"

    def reference(self, q, k, v):
        return sla_oracle(q, k, v, **self.kwargs)


class TestSlaXla(SlaTestBase):
    implementation = "xla"
    boundary_shape = (1, 45, 45, 2, 1, 8)  # 12 blocks of 4, the last partial


class TestSlaPallasGpu(SparseFlashGpuCase, SlaTestBase):
    op_kwargs = dict(block_size=64, critical=0.25, negligible=0.25)  # noqa: RUF012

    def reference(self, q, k, v):
        kwargs = {key: value for key, value in self.kwargs.items() if key != "interpret"}
        return sla_oracle(q, k, v, **kwargs)


def _projection(dim, seed=3):
    keys = jax.random.split(jax.random.key(seed))
    return (jax.random.normal(keys[0], (dim, dim)) / np.sqrt(dim),
            jax.random.normal(keys[1], (dim,)))


@pytest.mark.parametrize(("implementation", "shape"), [("pallas_gpu", (2, 45, 45, 4, 2, 8)),
                                                       ("pallas_tpu", (1, 22, 22, 2, 1, 8)),
                                                       ("xla", (2, 45, 45, 4, 2, 8))])
def test_matches_oracle_with_a_learned_projection_and_its_gradients(implementation, shape):
    """Interpret-mode kernels (TPU: NaN-poisoned buffers), GQA, a partial last block, all
    three classes present; gradients into q, k, v, W and c."""
    q, k, v = random_qkv(shape)
    kernel, bias = _projection(shape[-1])
    kwargs = dict(block_size=4, critical=0.25, negligible=0.25)
    cotangent = jax.random.normal(jax.random.key(5), q.shape)
    with jax.default_matmul_precision("highest"):
        out, vjp = jax.vjp(lambda *x: attention.sla(
            *x[:3], linear_kernel=x[3], linear_bias=x[4], implementation=implementation,
            interpret=implementation != "xla", **kwargs), q, k, v, kernel, bias)
        expected, expected_vjp = jax.vjp(lambda *x: sla_oracle(*x, **kwargs),
                                         q, k, v, kernel, bias)
    assert relative_error(out, expected) < 1e-5
    for name, grad, expected_grad in zip(("q", "k", "v", "W", "c"), vjp(cotangent),
                                         expected_vjp(cotangent), strict=True):
        assert relative_error(grad, expected_grad) < 1e-5, name


@pytest.mark.parametrize("feature_map", ["softmax", "elu", "relu"])
def test_each_feature_map_matches_the_oracle(feature_map):
    q, k, v = random_qkv((1, 40, 40, 2, 2, 8), seed=2)
    with jax.default_matmul_precision("highest"):
        out = attention.sla(q, k, v, block_size=4, critical=0.2, feature_map=feature_map,
                            implementation="xla")
        expected = sla_oracle(q, k, v, block_size=4, critical=0.2, feature_map=feature_map)
    assert relative_error(out, expected) < 1e-5


def test_every_block_critical_is_dense_attention():
    q, k, v = random_qkv((1, 45, 45, 2, 1, 8))
    kernel, bias = _projection(8)
    with jax.default_matmul_precision("highest"):
        dense = masked_dense_attention(q, k, v, np.ones((45, 45), bool))
        out = attention.sla(q, k, v, block_size=4, critical=1.0, linear_kernel=kernel,
                            linear_bias=jnp.zeros(8), implementation="xla")
        with_bias = attention.sla(q, k, v, block_size=4, critical=1.0, linear_kernel=kernel,
                                  linear_bias=bias, implementation="xla")
    assert relative_error(out, dense) < 1e-5
    assert relative_error(with_bias, dense + bias) < 1e-5  # the bias of an empty branch


def test_with_a_zero_projection_the_linear_branch_drops_out():
    """W = 0, c = 0 (the layer at init): exactly attention over the critical blocks, whatever
    the linear branch holds; its gradient into W is not zero (marginal blocks exist)."""
    q, k, v = random_qkv((1, 40, 40, 2, 2, 8), seed=4)
    zero_kernel, zero_bias = jnp.zeros((8, 8)), jnp.zeros(8)
    with jax.default_matmul_precision("highest"):
        sparse_only = sla_oracle(q, k, v, zero_kernel, zero_bias, block_size=4, critical=0.3)
        out, vjp = jax.vjp(lambda w: attention.sla(
            q, k, v, block_size=4, critical=0.3, linear_kernel=w, linear_bias=zero_bias,
            implementation="xla"), zero_kernel)
        identity = attention.sla(q, k, v, block_size=4, critical=0.3, implementation="xla")
    assert relative_error(out, sparse_only) < 1e-5
    assert relative_error(identity, out) > 1e-2  # the identity default adds the branch
    assert float(jnp.abs(vjp(jnp.ones_like(out))[0]).max()) > 0


def test_block_fractions_round_down_with_at_least_one_critical_block():
    """10 key blocks: critical 0.05 -> 1 block (not 0), 0.29 -> 2; with critical + negligible
    = all blocks the linear branch is empty."""
    q, k, v = random_qkv((1, 40, 40, 2, 2, 8), seed=6)
    with jax.default_matmul_precision("highest"):
        for critical in (0.05, 0.29):
            out = attention.sla(q, k, v, block_size=4, critical=critical, negligible=0.5,
                                implementation="xla")
            expected = sla_oracle(q, k, v, block_size=4, critical=critical, negligible=0.5)
            assert relative_error(out, expected) < 1e-5, critical
        none_marginal = attention.sla(q, k, v, block_size=4, critical=0.3, negligible=0.7,
                                      implementation="xla")
        critical_only = sla_oracle(q, k, v, jnp.zeros((8, 8)), block_size=4, critical=0.3)
    assert relative_error(none_marginal, critical_only) < 1e-5


def test_the_layer_form_starts_at_zero_and_plugs_into_attention():
    q, k, v = random_qkv((1, 32, 32, 2, 2, 8))
    module = SparseLinearAttention()
    params = module.init(jax.random.key(0), q, k, v, block_size=4)
    assert set(params["params"]) == {"linear_kernel", "linear_bias"}
    assert not any(jnp.any(x) for x in jax.tree.leaves(params))
    with jax.default_matmul_precision("highest"):
        out = module.apply(params, q, k, v, block_size=4, implementation="xla")
        sparse_only = sla_oracle(q, k, v, jnp.zeros((8, 8)), block_size=4, critical=0.2)
    assert relative_error(out, sparse_only) < 1e-5
    layer = Attention(num_heads=2, op="sla", op_kwargs={"block_size": 4})
    x = jax.random.normal(jax.random.key(1), (1, 8, 8, 16))
    variables = layer.init(jax.random.key(2), x)
    assert variables["params"]["sla"]["linear_kernel"].shape == (8, 8)
    grads = jax.grad(lambda p: jnp.sum(layer.apply({"params": p}, x) ** 2))(
        variables["params"])
    assert float(jnp.abs(grads["sla"]["linear_kernel"]).max()) > 0
    assert isinstance(layer, nn.Module)


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(critical=0.0), r"critical must be a fraction of the key blocks in \(0, 1\]; got 0.0"),
    (dict(critical=1.5), r"critical must be a fraction .* got 1.5"),
    (dict(negligible=1.0), r"negligible must be a fraction of the key blocks in \[0, 1\)"),
    (dict(critical=0.6, negligible=0.5), r"take 6 \+ 5 of the 10 key blocks"),
    (dict(feature_map="cosine"), r"feature_map must be one of \('softmax', 'elu', 'relu'\)"),
    (dict(linear_kernel=jnp.zeros((4, 4))), r"linear_kernel must have shape \(8, 8\)"),
    (dict(block_size=0), "block_size must be an int >= 1"),
])
def test_bad_arguments_say_what_would_work(kwargs, message):
    q, k, v = random_qkv((1, 40, 40, 2, 2, 8))
    with pytest.raises(ValueError, match=message):
        attention.sla(q, k, v, **{"block_size": 4, **kwargs})


def test_a_key_offset_shared_by_all_keys_does_not_change_the_selection():
    """An offset shared by all keys moves every pooled score of a row and every logit of a
    query by the same amount (why SLA's smooth-k is left out): with no marginal blocks the
    output does not change."""
    q, k, v = random_qkv((1, 40, 40, 2, 2, 8), seed=8)
    offset = 4.0 * jax.random.normal(jax.random.key(9), (8,))
    kwargs = dict(block_size=4, critical=0.3, negligible=0.7, implementation="xla")
    with jax.default_matmul_precision("highest"):
        out = attention.sla(q, k, v, **kwargs)
        shifted = attention.sla(q, k + offset, v, **kwargs)
    assert relative_error(shifted, out) < 1e-5
