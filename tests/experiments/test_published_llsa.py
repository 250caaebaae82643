"""experiments/published_llsa.py (bench_published_llsa's pieces) without torch: the
published kernels' call as the script composes it (against a stand-in that records its
arguments) and the gate against lla's reference. Timing them needs their GPU."""

from __future__ import annotations

import types

import jax
import numpy as np

import lla.attention as attention
from experiments import published_llsa as bench


def stand_in_kernels(calls):
    """A `llsa.kernel` look-alike: pooling tags its input, the ops record their arguments."""
    def pool(x, size):
        return ("pooled", x, size)

    def op(*args):
        calls.append(args)
        return "out"

    return types.SimpleNamespace(
        triton=types.SimpleNamespace(mean_pool=types.SimpleNamespace(mean_pool1d=pool)),
        torch_op=types.SimpleNamespace(
            flash_sparse_attention_res_1=types.SimpleNamespace(
                flash_sparse_residual_attention_l1_op=op),
            flash_sparse_attention_res_2=types.SimpleNamespace(
                flash_sparse_residual_attention_l2_op=op)))


def test_published_call_pools_each_level_and_passes_k_and_token_weights():
    calls = []
    kernels = stand_in_kernels(calls)
    assert bench.published_call(kernels, 2, 8, 16)("q", "k", "v") == "out"
    pooled = [("pooled", x, 16) for x in "qkv"]
    assert calls[-1] == ("q", "k", "v", *pooled, *(("pooled", x, 16) for x in pooled),
                         8, 8, 16, 256, 16)
    bench.published_call(kernels, 1, 4, 16)("q", "k", "v")
    assert calls[-1] == ("q", "k", "v", *pooled, 4, 16, 16)


def test_gate_passes_the_reference_and_fails_a_wrong_output(tmp_path):
    q, k, v = (np.asarray(x) for x in jax.random.normal(jax.random.key(0), (3, 1, 1024, 2, 16)))
    with jax.default_matmul_precision("highest"):
        out = np.asarray(attention.llsa(q, k, v, block_size=16, topk=2, levels=2,
                                        implementation="xla"))
    np.savez(tmp_path / "right.npz", q=q, k=k, v=v, out=out)
    np.savez(tmp_path / "wrong.npz", q=q, k=k, v=v, out=out[:, ::-1])  # rows swapped
    right = bench.gate(str(tmp_path / "right.npz"), 2, 2, 16)
    assert right["passed"] and right["error"] < 1e-6 and right["shape"] == [1, 1024, 2, 16]
    assert not bench.gate(str(tmp_path / "wrong.npz"), 2, 2, 16)["passed"]
