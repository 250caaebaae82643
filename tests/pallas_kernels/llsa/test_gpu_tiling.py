"""Every tiling of the LLSA kernels computes the same attention and gradients (interpret mode).

The default tiling is held to the reference by tests/attention/llsa/test_llsa.py; here other
`Config`s (query tiles of several blocks with masked fine tiles, other pick chunks, other
dK/dV row counts and coarsest splits) are compared with it."""

from __future__ import annotations

import jax
import pytest

from lla.attention.llsa.pallas_gpu import attend, prepare
from lla.pallas_kernels.llsa import gpu
from tests.attention.op_test_base import random_qkv, relative_error

STATIC = dict(block_size=4, topk=4, levels=2)


@pytest.mark.parametrize(
    "overrides",
    [
        dict(query_blocks=1, fine_chunk=2),
        dict(query_blocks=2, fine_chunk=1),
        dict(query_blocks=4, fine_chunk=2, pick_chunk=1),
        dict(query_blocks=2, fine_chunk=4, coarse_tile=4, dkv_rows=8, coarse_splits=2),
    ],
)
def test_tilings_agree_forward_and_backward(overrides):
    q, k, v = random_qkv((1, 128, 128, 4, 2, 16))
    shape = dict(heads=4, kv_heads=2, tokens=128, head_dim=16, interpret=True)
    default = gpu.make_config(**STATIC, **shape)
    variant = gpu.make_config(**STATIC, **shape, **overrides)
    inputs = (q, *prepare(q, k, v, default))
    cotangent = jax.random.normal(jax.random.key(2), inputs[0].shape)
    with jax.default_matmul_precision("highest"):
        out, vjp = jax.vjp(lambda *x: attend(*x, inputs[3], variant), *inputs[:3])
        expected, expected_vjp = jax.vjp(lambda *x: attend(*x, inputs[3], default), *inputs[:3])
    assert relative_error(out, expected) < 1e-6
    grads, expected_grads = vjp(cotangent), expected_vjp(cotangent)
    for grad, expected_grad in zip(jax.tree.leaves(grads), jax.tree.leaves(expected_grads),
                                   strict=True):
        assert relative_error(grad, expected_grad) < 1e-6


def test_make_config_rejects_tilings_that_do_not_divide():
    with pytest.raises(ValueError, match="query_blocks 3 must divide block_size 4"):
        gpu.make_config(4, 4, 2, 2, 2, 128, 16, query_blocks=3)
