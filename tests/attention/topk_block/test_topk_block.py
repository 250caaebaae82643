"""topk_block: the "xla" reference against the brute-force oracle (`oracle.py`), the Pallas
GPU kernels in interpret mode through the shared op suite, exact identities (every block kept
= dense), strict causality and errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lla.attention as attention
from lla.attention.topk_block import selection
from tests.attention.block_sparse_cases import (
    ON_GPU,
    SparseFlashGpuCase,
    SparseFlashInterpretCase,
)
from tests.attention.causality import assert_strictly_causal
from tests.attention.op_test_base import (
    FORWARD_BOUND,
    AttentionOpTestBase,
    random_qkv,
    relative_error,
)
from tests.attention.topk_block.oracle import (
    masked_dense_attention,
    topk_block_mask,
    topk_block_oracle,
)


class TopkBlockTestBase(AttentionOpTestBase):
    op_name = "topk_block"

    def reference(self, q, k, v, **kwargs):
        static = {key: value for key, value in self.kwargs.items() if key != "interpret"}
        return topk_block_oracle(q, k, v, **{**static, **kwargs})


class TestTopkBlockXla(TopkBlockTestBase):
    implementation = "xla"
    boundary_shape = (1, 45, 45, 2, 1, 8)  # 12 blocks of 4, the last partial


class TestTopkBlockPallasInterpret(SparseFlashInterpretCase, TopkBlockTestBase):
    pass


class TestTopkBlockPallasGpu(SparseFlashGpuCase, TopkBlockTestBase):
    pass


@pytest.mark.parametrize(
    ("shape", "static"),
    [
        ((2, 50, 50, 3, 3, 8), dict(block_size=4, topk=5)),
        ((1, 50, 70, 4, 2, 8), dict(block_size=8, topk=3)),  # cross-attention, GQA
        ((1, 50, 50, 2, 1, 8), dict(block_size=4, topk=4, local=True)),
        ((2, 61, 61, 2, 2, 8), dict(block_size=5, topk=4, causal=True)),
        ((1, 64, 64, 4, 2, 8), dict(block_size=4, topk=16, causal=True)),  # all past blocks
    ],
)
def test_reference_matches_oracle(shape, static):
    q, k, v = random_qkv(shape)
    cotangent = jax.random.normal(jax.random.key(5), q.shape)
    with jax.default_matmul_precision("highest"):
        out, vjp = jax.vjp(lambda *x: attention.topk_block(*x, implementation="xla", **static),
                           q, k, v)
        expected, expected_vjp = jax.vjp(lambda *x: topk_block_oracle(*x, **static), q, k, v)
    assert relative_error(out, expected) < FORWARD_BOUND[jnp.float32]
    for grad, expected_grad in zip(vjp(cotangent), expected_vjp(cotangent), strict=True):
        assert relative_error(grad, expected_grad) < 1e-5


@pytest.mark.parametrize("static", [dict(topk=3), dict(topk=3, causal=True)])
def test_pallas_tpu_interpret_matches_oracle(static):
    """The TPU kernels in TPU interpret mode (NaN-poisoned buffers; slow, so one small
    shape): GQA 2:1, a partial last block masked, empty causal slots skipped."""
    q, k, v = random_qkv((1, 22, 22, 2, 1, 8))
    cotangent = jax.random.normal(jax.random.key(5), q.shape)
    with jax.default_matmul_precision("highest"):
        out, vjp = jax.vjp(lambda *x: attention.topk_block(
            *x, block_size=4, implementation="pallas_tpu", interpret=True, **static), q, k, v)
        expected, expected_vjp = jax.vjp(
            lambda *x: topk_block_oracle(*x, block_size=4, **static), q, k, v)
    assert relative_error(out, expected) < 1e-5
    for grad, expected_grad in zip(vjp(cotangent), expected_vjp(cotangent), strict=True):
        assert relative_error(grad, expected_grad) < 1e-5


def test_selection_keeps_what_the_oracle_keeps():
    """The lists themselves, with empty causal slots at the end as -1."""
    q, k, _ = random_qkv((2, 42, 42, 3, 1, 8))
    for static in (dict(topk=3, local=False, causal=False), dict(topk=3, local=True,
                   causal=False), dict(topk=4, local=False, causal=True)):
        picks = np.asarray(selection.select(q, k, block_size=4, **static))
        mask = topk_block_mask(q, k, 4, static["topk"], static["local"], False)
        for b, h, p in np.ndindex(*picks.shape[:3]):
            kept = picks[b, h, p][picks[b, h, p] >= 0]
            assert list(kept) == sorted(kept) and (picks[b, h, p][len(kept):] == -1).all()
            if static["causal"]:
                assert len(kept) == min(4, p + 1) and p in kept and kept.max() == p
            else:
                expected = np.flatnonzero(mask[b, h, p * 4, ::4])
                assert kept.tolist() == expected.tolist()


@pytest.mark.parametrize("implementation", ["xla", "pallas_gpu"])
@pytest.mark.parametrize("causal", [False, True])
def test_every_block_kept_is_dense(implementation, causal):
    q, k, v = random_qkv((1, 30, 30, 2, 1, 8))
    out = attention.topk_block(q, k, v, block_size=4, topk=8, causal=causal,
                               implementation=implementation, interpret=True)
    mask = np.tril(np.ones((30, 30), bool)) if causal else np.ones((30, 30), bool)
    with jax.default_matmul_precision("highest"):
        dense = masked_dense_attention(q, k, v, mask)
    assert relative_error(out, dense) < 1e-5


@pytest.mark.parametrize("implementation", ["xla", "pallas_gpu"])
def test_strictly_causal(implementation):
    assert_strictly_causal(
        lambda *x: attention.topk_block(*x, block_size=4, topk=3, causal=True,
                                        implementation=implementation, interpret=True),
        (1, 48, 48, 2, 1, 8), t=21)  # t inside block 5


def test_bad_arguments_say_what_would_work():
    q, k, v = random_qkv((1, 40, 40, 2, 2, 8))
    with pytest.raises(ValueError, match=r"topk=11 exceeds the 10 key blocks .* topk <= 10"):
        attention.topk_block(q, k, v, block_size=4, topk=11)
    with pytest.raises(ValueError, match=r"causal=True needs self-attention"):
        attention.topk_block(q, k[:, :36], v[:, :36], block_size=4, topk=2, causal=True)
    with pytest.raises(ValueError, match="block_size must be an int >= 1"):
        attention.topk_block(q, k, v, block_size=0)
    with pytest.raises(ValueError, match="local must be True or False"):
        attention.topk_block(q, k, v, block_size=4, topk=2, local=1)


def test_pallas_gpu_reasons_on_cpu():
    q, k, v = random_qkv((1, 64, 64, 2, 2, 24))
    with pytest.raises(attention.NoImplementationError,
                       match=r"block_size 4 must be a power of two >= 16.*head_dim 24"):
        attention.topk_block(q, k, v, block_size=4, topk=2, implementation="pallas_gpu")
    if not ON_GPU:
        with pytest.raises(attention.NoImplementationError, match="needs a GPU"):
            attention.topk_block(q, k, v, block_size=16, topk=2, implementation="pallas_gpu")


def test_selection_tiling_is_tunable():
    """The selection kernel's tile and key chunk are "pallas_gpu" tuning fields: at 26 key
    blocks the heuristic streams them in one chunk of 32, a tuned chunk of 16 in two, and
    the picks stay the reference's; a tuned value reaches the kernel (a bad one is refused
    there, naming it)."""
    q, k, v = random_qkv((1, 104, 104, 2, 1, 8))
    static = dict(block_size=4, topk=5, interpret=True)
    expected = attention.topk_block(q, k, v, **static, implementation="xla")
    with attention.tuning("topk_block", "pallas_gpu", select_chunk=16, select_tile=32), \
            attention.dispatch_log() as log:
        out = attention.topk_block(q, k, v, **static, implementation="pallas_gpu")
    assert (log[0].config.select_chunk, log[0].config.select_tile) == (16, 32)
    assert relative_error(out, expected) < 1e-5
    with attention.tuning("topk_block", "pallas_gpu", select_chunk=24), \
            pytest.raises(ValueError, match="selection: chunk 24 must be a power of two"):
        attention.topk_block(q, k, v, **static, implementation="pallas_gpu")
