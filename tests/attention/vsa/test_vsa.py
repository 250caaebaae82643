"""vsa: every implementation against the brute-force oracle (`oracle.py`) through the shared
op suite, the exact identity of one tile per token, and errors."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import lla.attention as attention
from tests.attention.block_sparse_cases import SparseFlashGpuCase
from tests.attention.op_test_base import AttentionOpTestBase, random_qkv, relative_error
from tests.attention.topk_block.oracle import masked_dense_attention
from tests.attention.vsa.oracle import vsa_oracle


class VsaTestBase(AttentionOpTestBase):
    op_name = "vsa"

    def reference(self, q, k, v):
        return vsa_oracle(q, k, v, block_size=self.kwargs["block_size"],
                          topk=self.kwargs["topk"])


class TestVsaXla(VsaTestBase):
    implementation = "xla"
    boundary_shape = (1, 45, 45, 2, 1, 8)  # 12 tiles of 4, the last partial


class TestVsaPallasGpu(SparseFlashGpuCase, VsaTestBase):
    pass


@pytest.mark.parametrize(("implementation", "shape"), [("pallas_gpu", (2, 45, 45, 4, 2, 8)),
                                                       ("pallas_tpu", (1, 22, 22, 2, 1, 8))])
def test_pallas_interpret_matches_oracle(implementation, shape):
    """The kernels in interpret mode (TPU: NaN-poisoned buffers), GQA, a partial last tile;
    the fine branch runs the sparse-flash kernels the topk_block suite covers in full."""
    q, k, v = random_qkv(shape)
    cotangent = jax.random.normal(jax.random.key(5), q.shape)
    with jax.default_matmul_precision("highest"):
        out, vjp = jax.vjp(lambda *x: attention.vsa(
            *x, block_size=4, topk=3, implementation=implementation, interpret=True), q, k, v)
        expected, expected_vjp = jax.vjp(
            lambda *x: vsa_oracle(*x, block_size=4, topk=3), q, k, v)
    assert relative_error(out, expected) < 1e-5
    for grad, expected_grad in zip(vjp(cotangent), expected_vjp(cotangent), strict=True):
        assert relative_error(grad, expected_grad) < 1e-5


def test_one_token_tiles_with_every_tile_kept_are_twice_dense():
    """With B = 1 the coarse branch is dense attention over the tokens themselves and the fine
    branch keeps every tile: both equal dense attention."""
    q, k, v = random_qkv((1, 12, 12, 2, 1, 8))
    with jax.default_matmul_precision("highest"):
        dense = masked_dense_attention(q, k, v, np.ones((12, 12), bool))
        out = attention.vsa(q, k, v, block_size=1, topk=12, implementation="xla")
    assert relative_error(out, 2 * dense) < 1e-5


def test_bad_arguments_say_what_would_work():
    q, k, v = random_qkv((1, 40, 40, 2, 2, 8))
    with pytest.raises(ValueError, match=r"topk=11 exceeds the 10 key blocks .* topk <= 10"):
        attention.vsa(q, k, v, block_size=4, topk=11)
    with pytest.raises(ValueError, match="block_size must be an int >= 1"):
        attention.vsa(q, k, v, block_size=0)
