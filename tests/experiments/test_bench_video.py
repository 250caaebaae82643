"""experiments/bench_video.py on CPU with tiny presets: the JSON rows, the gate, ratios over
ConvS5 and the skipped op; and a model whose generate disagrees with its forward stops the run.

The script runs in a subprocess: its flags (--samples, --dtype, ...) share names with other
benchmark scripts', which absl refuses to define twice in one process."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
FLAGS = ["--models=convssm:tiny,video_transformer:tiny", "--context=2", "--horizons=3,2",
         "--batch_size=1", "--dtype=float32", "--samples=1"]


def run_bench(results_dir, *flags, code="from experiments import bench_video"):
    """Runs bench_video's main in a fresh CPU process after `code` (which may patch it)."""
    script = f"{code}\nfrom absl import app\napp.run(bench_video.main)"
    return subprocess.run([sys.executable, "-c", script, f"--results_dir={results_dir}", *flags],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))


def test_rows_per_model_attention_and_horizon_with_gate_and_ratios(tmp_path):
    run = run_bench(tmp_path, *FLAGS, "--attentions=dense,neighborhood,llsa",
                    '--attention_kwargs={"neighborhood": {"kernel_size": [3, 3, 3]}}',
                    "--name=smoke")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "skip video_transformer:tiny attention=llsa" in run.stdout
    assert "compiling generate for horizon 2" in run.stdout
    report = json.loads((tmp_path / "cpu" / "smoke.json").read_text())
    assert report["platform"] == "cpu" and report["jax_version"]
    assert report["args"]["samples"] == 1 and report["args"]["horizons"] == ["3", "2"]
    assert [s["attention"] for s in report["skipped"]] == ["llsa"]
    rows = report["rows"]
    assert [(r["model"], r["attention"], r["horizon"]) for r in rows] == [
        ("convssm", None, 2), ("convssm", None, 3),
        ("video_transformer", "dense", 2), ("video_transformer", "dense", 3),
        ("video_transformer", "neighborhood", 2), ("video_transformer", "neighborhood", 3)]
    assert rows[4]["attention_kwargs"] == {"kernel_size": [3, 3, 3]}
    convssm = {r["horizon"]: r["seconds_per_frame"] for r in rows[:2]}
    for row in rows:
        assert row["preset"] == "tiny" and row["compile_s"] > 0
        assert row["gate"]["passed"] and row["gate"]["horizon"] == 2
        assert row["gate"]["max_abs_difference"] <= row["gate"]["bound"] == 1e-4
        assert row["frames_per_s"] == pytest.approx(1 / row["seconds_per_frame"])
        assert row["ratio_vs_convssm"] == pytest.approx(
            row["seconds_per_frame"] / convssm[row["horizon"]])


def test_generation_that_disagrees_with_the_forward_fails_the_gate(tmp_path):
    patch = ("from experiments import bench_video\n"
             "from lla.models import video_transformer\n"
             "generate = video_transformer.Model.generate\n"
             "video_transformer.Model.generate = lambda self, c, h: generate(self, c, h) + 0.01")
    run = run_bench(tmp_path, "--models=video_transformer:tiny", "--attentions=dense",
                    *FLAGS[1:], code=patch)
    assert run.returncode != 0
    assert ("video_transformer:tiny attention=dense: generate(context, 2) differs from the "
            "forward") in run.stderr
    assert "> 0.0001 (float32)" in run.stderr
    assert not (tmp_path / "cpu").exists()


def test_a_run_stopped_mid_model_keeps_the_horizons_it_timed(tmp_path):
    """The transformer's horizon 3 dies (as a time limit would stop it): ConvS5's rows and
    the transformer's horizon 2 are already in the JSON."""
    patch = ("from experiments import bench_video\n"
             "compile_generate = bench_video.compile_generate\n"
             "def stop_at_3(model, params, context, horizon):\n"
             "    if horizon == 3 and type(model).__module__.endswith('video_transformer'):\n"
             "        raise SystemExit('time limit')\n"
             "    return compile_generate(model, params, context, horizon)\n"
             "bench_video.compile_generate = stop_at_3")
    run = run_bench(tmp_path, *FLAGS, "--attentions=dense", "--name=cut", code=patch)
    assert run.returncode != 0
    rows = json.loads((tmp_path / "cpu" / "cut.json").read_text())["rows"]
    assert [(r["model"], r["horizon"]) for r in rows] == [
        ("convssm", 2), ("convssm", 3), ("video_transformer", 2)]
