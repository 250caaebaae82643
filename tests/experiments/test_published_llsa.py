"""experiments/published_llsa.py (bench_published_llsa's pieces) without torch: the
published kernels' call as the script composes it (against a stand-in that records its
arguments) and the gate against lla's reference. Timing them needs their GPU."""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import numpy as np

import lla.attention as attention
from experiments import published_llsa as bench
from lla.attention.llsa import hierarchy, reference


def stand_in_kernels(calls):
    """A `llsa.kernel` look-alike: pooling tags its input, the ops record their arguments."""
    def pool(x, size):
        return ("pooled", x, size)

    def op(*args):
        calls.append(args)
        return "out"

    def coarsest(pq, pk, topk):
        return ("coarsest", pq, pk, topk)

    def children(pq, pk, parent, topk, parent_topk, size):
        return ("children", pq, pk, parent, topk, parent_topk, size)

    return types.SimpleNamespace(
        triton=types.SimpleNamespace(
            mean_pool=types.SimpleNamespace(mean_pool1d=pool),
            topk=types.SimpleNamespace(gen_sparse_indices=coarsest,
                                       compute_topk_indices_sparse=children)),
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


def test_published_picks_select_the_coarsest_level_then_its_children():
    kernels = stand_in_kernels([])
    q_pyramid, k_pyramid, _ = bench.published_pyramids(kernels, "q", "k", "v", 2, 16)
    assert k_pyramid == [("pooled", "k", 16), ("pooled", ("pooled", "k", 16), 16)]
    picks = bench.published_picks(kernels, q_pyramid, k_pyramid, 2, 8, 16)
    assert picks[2] == ("coarsest", q_pyramid[1], k_pyramid[1], 8)
    assert picks[1] == ("children", q_pyramid[0], k_pyramid[0], picks[2], 8, 8, 16)
    one = bench.published_pyramids(kernels, "q", "k", "v", 1, 16)
    assert bench.published_picks(kernels, one[0], one[1], 1, 4, 16) == {
        1: ("coarsest", one[0][0], one[1][0], 4)}


def _check_npz(path, q, k, v, out, picks, levels=2, block_size=16):
    """An npz as --check writes it, with lla's float32 pooling standing in for the published."""
    pooled = {f"{name}{level}": np.asarray(x[level]) for name, x in
              (("k", hierarchy.pyramid(k, block_size, levels)),
               ("v", hierarchy.pyramid(v, block_size, levels)))
              for level in range(1, levels + 1)}
    np.savez(path, q=q, k=k, v=v, out=np.asarray(out), **pooled,
             **{f"p{level}": np.asarray(x) for level, x in picks.items()})
    return str(path)


def _inputs():
    return [np.asarray(x) for x in jax.random.normal(jax.random.key(0), (3, 1, 1024, 2, 16))]


def _picks(q, k):
    return hierarchy.select(hierarchy.pyramid(q, 16, 2), hierarchy.pyramid(k, 16, 2), 16, 2)


def test_gate_passes_the_reference_and_fails_a_wrong_output(tmp_path):
    q, k, v = _inputs()
    with jax.default_matmul_precision("highest"):
        out = attention.llsa(q, k, v, block_size=16, topk=2, levels=2, implementation="xla")
    picks = _picks(q, k)
    right = bench.gate(_check_npz(tmp_path / "right.npz", q, k, v, out, picks), 2, 2, 16)
    assert right["passed"] and right["error"] < 1e-6 and right["error_reference"] < 1e-6
    assert right["shape"] == [1, 1024, 2, 16] and right["pick_agreement"] == {"1": 1.0, "2": 1.0}
    wrong = bench.gate(_check_npz(tmp_path / "wrong.npz", q, k, v, out[:, ::-1], picks),
                       2, 2, 16)  # rows swapped
    assert not wrong["passed"]


def test_gate_holds_the_output_to_the_published_picks_not_to_lla_s(tmp_path):
    """Another fine pick for the first query block: an output over it passes (its arithmetic
    is right), its reference error and pick agreement show the different selection."""
    q, k, v = _inputs()
    picks = _picks(q, k)
    first = np.asarray(picks[1])
    other = next(b for b in range(1024 // 16) if b not in first[0, 0, 0])
    changed = {2: picks[2], 1: jnp.asarray(first).at[0, 0, 0, 0].set(other)}
    with jax.default_matmul_precision("highest"):
        out = reference.attend(
            reference.query_blocks(q, 16), changed,
            reference.heads_major_levels([k, *hierarchy.pyramid(k, 16, 2)[1:]], 2),
            reference.heads_major_levels([v, *hierarchy.pyramid(v, 16, 2)[1:]], 2),
            block_size=16, enrich_levels=2, reweight=True)
    checked = bench.gate(_check_npz(tmp_path / "c.npz", q, k, v, out, changed), 2, 2, 16)
    assert checked["passed"] and checked["error"] < 1e-6
    assert checked["error_reference"] > 1e-3
    assert checked["pick_agreement"]["1"] == 1 - 1 / first.size
    assert checked["pick_agreement"]["2"] == 1.0
