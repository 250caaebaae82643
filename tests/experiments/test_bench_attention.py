"""Smoke test of the benchmark harness on CPU: gate, timing, ratios and the JSON it writes."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import flagsaver

from experiments import bench_attention, benchmarking


@pytest.fixture(autouse=True)
def _parsed_flags():
    if not bench_attention.FLAGS.is_parsed():
        bench_attention.FLAGS(["bench_attention"])


def test_writes_results_with_gate_times_and_ratios(tmp_path):
    with flagsaver.flagsaver(ops="dense:xla,dense/causal=True", shapes=["tiny", "1x96x3x16"],
                             dtype="float32", samples=2, warmup=1, sample_seconds=0.0,
                             results_dir=str(tmp_path), name="smoke"):
        assert bench_attention.main([]) == 0
    report = json.loads((tmp_path / "cpu" / "smoke.json").read_text())
    assert report["platform"] == "cpu" and report["jax_version"]
    rows = report["rows"]
    assert [row["entry"] for row in rows] == ["dense:xla", "dense/causal=True"] * 2
    assert rows[2]["shape"] == [1, 96, 3, 16]
    for row in rows:
        assert row["gate"]["passed"] and row["gate"]["errors"]["fwd"] < 1e-4
        assert row["baseline"]["entry"] == "dense:xla"  # no cuDNN on CPU
        assert row["fwd_s"] > 0 and row["fwd_bwd_s"] > 0
        assert row["speedup_fwd"] == pytest.approx(row["baseline"]["fwd_s"] / row["fwd_s"])
        assert row["fwd_bwd_compiled_bytes"] > 0


def test_entry_parsing_and_errors():
    entry = bench_attention.Entry.parse("dense:xla/causal=True/scale=0.5")
    assert entry == bench_attention.Entry("dense", "xla", (("causal", True), ("scale", 0.5)))
    assert str(entry) == "dense:xla/causal=True/scale=0.5"
    with pytest.raises(KeyError, match="registered"):
        bench_attention.Entry.parse("nope")
    with pytest.raises(ValueError, match="key=value"):
        bench_attention.Entry.parse("dense/causal")
    with pytest.raises(ValueError, match="BxNxHxD"):
        benchmarking.parse_shape("huge")
    assert benchmarking.parse_shape("dit256") == (1, 65536, 6, 64)


def test_grid_arguments_and_ratios_over_the_reference(tmp_path):
    ops = ("neighborhood:xla/spatial_shape=8x12/kernel_size=3x5,"
           "neighborhood/spatial_shape=8x12/kernel_size=3x5")
    with flagsaver.flagsaver(ops=ops, shapes=["1x96x2x16"], dtype="float32", samples=2,
                             warmup=1, sample_seconds=0.0, results_dir=str(tmp_path),
                             name="grid", baseline="none"):
        assert bench_attention.main([]) == 0
    rows = json.loads((tmp_path / "cpu" / "grid.json").read_text())["rows"]
    assert rows[0]["entry"] == "neighborhood:xla/spatial_shape=8x12/kernel_size=3x5"
    assert "speedup_fwd_vs_xla" not in rows[0]
    assert rows[1]["speedup_fwd_vs_xla"] == pytest.approx(rows[0]["fwd_s"] / rows[1]["fwd_s"])
    assert bench_attention.Entry.parse(rows[1]["entry"]).kwargs == (
        ("spatial_shape", (8, 12)), ("kernel_size", (3, 5)))


def test_sparse_ops_report_density_and_the_ideal_and_profiles_when_asked(tmp_path):
    """topk_block with 2 of 8 blocks of 12 keys: 24 of 96 keys per query, ideal x4, bar x2;
    the profile section is there (empty on CPU, which has no device timeline)."""
    with flagsaver.flagsaver(ops="topk_block:xla/block_size=12/topk=2", shapes=["1x96x2x16"],
                             dtype="float32", samples=2, warmup=1, sample_seconds=0.0,
                             results_dir=str(tmp_path), name="sparse", profile_calls=1):
        assert bench_attention.main([]) == 0
    (row,) = json.loads((tmp_path / "cpu" / "sparse.json").read_text())["rows"]
    assert row["keys_per_query"] == 24 and row["density"] == pytest.approx(0.25)
    assert row["ideal_speedup"] == pytest.approx(4) and row["speedup_bar"] == pytest.approx(2)
    assert set(row["profile"]) == {"fwd", "fwd_bwd"}
    assert "top_kernels" in row["profile"]["fwd"]
    # 4 flops per (query, head, dim, key): 96 queries x 2 heads x 16 x 24 keys
    assert row["roofline"]["fwd"]["flops"] == 4 * 96 * 2 * 16 * 24
    assert row["roofline"]["fwd"]["tflops_per_s"] == pytest.approx(
        4 * 96 * 2 * 16 * 24 / row["fwd_s"] / 1e12)
    assert row["roofline"]["fwd"]["compute_fraction"] is None  # a CPU has no ceilings


def test_roofline_counts_model_flops_and_compulsory_bytes():
    """q [1, 1024, 2, 16] over k/v [1, 1024, 1, 16] (GQA), 64 keys per query, bf16."""
    place = benchmarking.attention_roofline(
        (1, 1024, 2, 16), (1, 1024, 1, 16), 64, 2, {"fwd": 1e-3, "fwd_bwd": 4e-3},
        benchmarking.Ceilings(tflops=100.0, hbm_tb_per_s=1.0))
    # q and out 32,768 elements, k and v 16,384 each, lse 2,048 float32 rows
    forward_bytes = 2 * (32768 + 32768 + 16384 + 16384) + 4 * 2048        # 204,800
    backward_bytes = 2 * (4 * 32768 + 4 * 16384) + 4 * 2048               # 401,408
    assert place["fwd"]["flops"] == 4 * 32768 * 64 == 8_388_608
    assert place["fwd"]["bytes"] == forward_bytes == 204_800
    assert place["fwd_bwd"]["flops"] == 3.5 * 8_388_608
    assert place["fwd_bwd"]["bytes"] == forward_bytes + backward_bytes == 606_208
    assert place["fwd"]["tflops_per_s"] == pytest.approx(8.388608e-3)
    assert place["fwd"]["compute_fraction"] == pytest.approx(8.388608e-5)
    assert place["fwd_bwd"]["tb_per_s"] == pytest.approx(606_208 / 4e-3 / 1e12)
    assert place["fwd_bwd"]["memory_fraction"] == pytest.approx(606_208 / 4e-3 / 1e12)


class _Doubling:
    """A fake entry: the reference doubles q; the entry doubles q, then `perturb`s it."""

    def __init__(self, perturb, implementation="pallas_gpu"):
        self.perturb, self.implementation = perturb, implementation

    def function(self, *, reference=False):
        return (lambda q, k, v: 2 * q) if reference else (lambda q, k, v: self.perturb(2 * q))


def _qkv(tokens=1024):
    (q, k, v), _ = benchmarking.inputs((1, tokens, 2, 8), jnp.float32)
    return q, k, v


def test_worst_chunk_error_finds_the_one_wrong_run_of_tokens():
    expected = jnp.ones((1, 150, 2, 4))
    actual = expected.at[:, 128:].multiply(1.1)  # the last, partial, chunk of 22 tokens
    assert benchmarking.relative_error(actual, expected) < 0.04
    assert benchmarking.worst_chunk_error(actual, expected, 64) == pytest.approx(0.1, rel=1e-5)
    assert benchmarking.worst_chunk_error(expected, expected, 64) == 0.0


def test_gate_fails_a_few_wrong_query_blocks_that_the_whole_error_hides():
    """One 64-token block of 1,024 off by 10 %: 0.025 overall passes the bf16 bound of 0.03,
    the worst chunk (0.1 > 0.05) does not."""
    entry = _Doubling(lambda out: out.at[:, 64:128].multiply(1.1))
    result = bench_attention.gate(entry, _qkv(), None, backward=False, dtype="bfloat16")
    assert result["errors"]["fwd"] < result["bound"]
    assert result["worst_chunk_errors"]["fwd"] == pytest.approx(0.1, rel=1e-4)
    assert not result["passed"]
    exact = bench_attention.gate(_Doubling(lambda out: out), _qkv(), None, backward=False,
                                 dtype="bfloat16")
    assert exact["passed"] and exact["bit_identical_rerun"]


def test_gate_fails_a_pallas_kernel_whose_rerun_gives_other_bits():
    """Noise far below every error bound, different on each call (a race): a Pallas kernel
    promises identical bits, so it fails; an XLA entry is only reported."""
    rng = np.random.default_rng(0)

    def noisy(out):
        noise = lambda: rng.normal(0, 1e-9, out.shape).astype(np.float32)  # noqa: E731
        return out + jax.pure_callback(noise, jax.ShapeDtypeStruct(out.shape, out.dtype))

    racy = bench_attention.gate(_Doubling(noisy), _qkv(), None, backward=False,
                                dtype="bfloat16")
    assert racy["errors"]["fwd"] < 1e-6 and not racy["bit_identical_rerun"]
    assert not racy["passed"]
    reported = bench_attention.gate(_Doubling(noisy, "xla"), _qkv(), None, backward=False,
                                    dtype="bfloat16")
    assert reported["passed"] and not reported["bit_identical_rerun"]
