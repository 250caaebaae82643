"""asa and asa_gt: every implementation against the brute-force oracle (`oracle.py`) through
the shared op suite, the prober's lists, the tau = 1 identity and errors."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import lla.attention as attention
from lla.attention.asa import prober
from tests.attention.asa.oracle import asa_gt_oracle, asa_mask, asa_oracle
from tests.attention.block_sparse_cases import SparseFlashGpuCase
from tests.attention.op_test_base import AttentionOpTestBase, random_qkv, relative_error
from tests.attention.topk_block.oracle import masked_dense_attention


class AsaTestBase(AttentionOpTestBase):
    op_name = "asa"
    shapes = ((2, 77, 77, 3, 3, 24), (1, 64, 96, 4, 2, 16))

    def reference(self, q, k, v):
        static = {key: value for key, value in self.kwargs.items() if key != "interpret"}
        oracle = asa_gt_oracle if self.op_name == "asa_gt" else asa_oracle
        return oracle(q, k, v, **static)


class TestAsaXla(AsaTestBase):
    implementation = "xla"
    boundary_shape = (1, 45, 45, 2, 1, 8)  # 12 blocks of 4, the last partial


class TestAsaGtXla(TestAsaXla):
    op_name = "asa_gt"


class TestAsaPallasGpu(SparseFlashGpuCase, AsaTestBase):
    op_kwargs = dict(block_size=64)  # noqa: RUF012


@pytest.mark.parametrize(("op", "implementation", "shape", "tuning"), [
    ("asa", "pallas_gpu", (2, 45, 45, 4, 2, 8), dict(chunk=1)),
    ("asa_gt", "pallas_gpu", (2, 45, 45, 4, 2, 8), dict(chunk=1, summary_tile=5)),
    ("asa", "pallas_tpu", (1, 22, 22, 2, 1, 8), None),
    ("asa_gt", "pallas_tpu", (1, 22, 22, 2, 1, 8), None),
])
def test_pallas_interpret_matches_oracle(op, implementation, shape, tuning):
    """The kernels in interpret mode (TPU: NaN-poisoned buffers): lists of varying length,
    GQA, a partial last block; asa_gt's global tokens over windows of 3 (a partial last
    window), in three summary tiles on GPU and two summary blocks on TPU."""
    q, k, v = random_qkv(shape)
    static = dict(block_size=4, samples=2, tau=0.6, max_keep=0.5)
    oracle_static = dict(static)
    if op == "asa_gt":
        static["pool"] = oracle_static["pool"] = 3
    oracle = asa_gt_oracle if op == "asa_gt" else asa_oracle
    cotangent = jax.random.normal(jax.random.key(5), q.shape)

    def run(*x):
        call = lambda: attention.get(op)(*x, implementation=implementation,  # noqa: E731
                                          interpret=True, **static)
        if tuning is None:
            return call()
        with attention.tuning(op, implementation, **tuning):
            return call()

    with jax.default_matmul_precision("highest"):
        out, vjp = jax.vjp(run, q, k, v)
        expected, expected_vjp = jax.vjp(lambda *x: oracle(*x, **oracle_static), q, k, v)
    assert relative_error(out, expected) < 1e-5
    for grad, expected_grad in zip(vjp(cotangent), expected_vjp(cotangent), strict=True):
        assert relative_error(grad, expected_grad) < 1e-5


@pytest.mark.parametrize("static", [dict(tau=0.6, min_keep=0.0, max_keep=0.5),
                                    dict(tau=0.3, min_keep=0.4, max_keep=0.6),
                                    dict(tau=0.99, min_keep=0.0, max_keep=0.25)])
def test_prober_keeps_what_the_oracle_keeps(static):
    """The lists (mass cut, both clamps), -1 past each list's end."""
    q, k, _ = random_qkv((2, 45, 45, 3, 1, 8))
    picks = np.asarray(prober.select(q, k, block_size=4, samples=3, seed=2, **static))
    mask = asa_mask(q, k, 4, 3, seed=2, **static)
    for b, h, p in np.ndindex(*picks.shape[:3]):
        kept = picks[b, h, p][picks[b, h, p] >= 0]
        assert (picks[b, h, p][len(kept):] == -1).all()
        assert kept.tolist() == np.flatnonzero(mask[b, h, p * 4, ::4]).tolist()


def test_tau_one_keeping_every_block_is_dense():
    q, k, v = random_qkv((1, 30, 30, 2, 1, 8))
    with jax.default_matmul_precision("highest"):
        dense = masked_dense_attention(q, k, v, np.ones((30, 30), bool))
        for implementation in ("xla", "pallas_gpu"):
            out = attention.asa(q, k, v, block_size=4, samples=2, tau=1.0, max_keep=1.0,
                                implementation=implementation, interpret=True)
            assert relative_error(out, dense) < 1e-5


def test_bad_arguments_say_what_would_work():
    q, k, v = random_qkv((1, 40, 40, 2, 2, 8))
    with pytest.raises(ValueError, match=r"tau must be a number in \(0, 1\]; got 0"):
        attention.asa(q, k, v, tau=0)
    with pytest.raises(ValueError, match=r"min_keep 0\.6 exceeds max_keep 0\.5"):
        attention.asa(q, k, v, min_keep=0.6, max_keep=0.5)
    with pytest.raises(ValueError, match="pool must be an int >= 1"):
        attention.asa_gt(q, k, v, pool=0)
