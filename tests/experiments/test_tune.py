"""Smoke test of the generic tuning sweep on CPU: configs as dispatch saw them, errors against
the default, times, and a bad variant reported instead of stopping the sweep."""

from __future__ import annotations

import json

import pytest
from absl import app
from absl.testing import flagsaver

from experiments import tune


@pytest.fixture(autouse=True)
def _parsed_flags():
    if not tune.FLAGS.is_parsed():
        tune.FLAGS(["tune"])


def test_sweeps_variants_and_reports_failures(tmp_path):
    op = "neighborhood:pallas_gpu/spatial_shape=8x12/kernel_size=3/interpret=True"
    with flagsaver.flagsaver(op=op, shape="1x96x2x16", dtype="float32", samples=2, warmup=1,
                             sample_seconds=0.0, variants="q_tile=2x4,kv_tile=4x2;q_tile=3",
                             results_dir=str(tmp_path), name="sweep"):
        tune.main([])
    report = json.loads((tmp_path / "cpu" / "sweep.json").read_text())
    default, small, bad = report["variants"]
    assert default["config"]["q_tile"] == [8, 8] and default["errors_vs_default"]["out"] == 0
    assert small["config"]["q_tile"] == [2, 4] and small["config"]["kv_tile"] == [4, 2]
    assert small["passed"] and max(small["errors_vs_default"].values()) < 1e-5
    assert small["fwd_s"] > 0 and small["fwd_bwd_s"] > 0
    assert "q_tile must be one int per spatial axis" in bad["error"]


def test_rejects_implementations_without_knobs():
    with flagsaver.flagsaver(op="dense:cudnn", shape="tiny"), \
            pytest.raises(app.UsageError, match="dense:xla"):
        tune.main([])
