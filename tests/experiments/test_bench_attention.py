"""Smoke test of the benchmark harness on CPU: gate, timing, ratios and the JSON it writes."""

from __future__ import annotations

import json

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
