"""The quality study's collector: rows from workdirs, the acceptance checks, the plot."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from configs import quality_study as study_config
from experiments import study_table


def collect(*flags):
    """Runs `python -m experiments.quality_study` (in a subprocess: its flags share names
    with the other tools imported in this process); returns the completed process."""
    return subprocess.run([sys.executable, "-m", "experiments.quality_study", *flags],
                          capture_output=True, text=True, check=False)


def make_run(root, variant, fid, *, logged_only=False, rate=4.0, recipe=""):
    """A fake study workdir: config (`recipe`: more config arguments), 10 logged losses (the
    last 5 mean to 0.1 + fid/1e4), a sample grid and an evaluation record (or only the
    run's own logged FID)."""
    workdir = root / f"run_{variant}"
    (workdir / "samples").mkdir(parents=True)
    config = study_config.get_config(f"variant={variant}{recipe}").copy_and_resolve_references()
    (workdir / "config.json").write_text(config.to_json())
    lines = [{"step": 100 * i, "loss": 1.0 if i < 5 else 0.1 + fid / 1e4,
              "steps_per_s": rate} for i in range(1, 11)]
    if logged_only:
        lines.append({"step": 1000, "samples/fid": fid, "samples/kid_mean": fid / 1e3,
                      "samples/kid_std": 1e-3})
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(
        workdir / "samples" / "step_0001000.png")
    if not logged_only:
        (workdir / "eval").mkdir()
        record = {"fid": fid, "kid_mean": fid / 1e3, "kid_std": 1e-3, "count": 2000,
                  "reference_count": 2000, "steps": 20, "device": "NVIDIA H200",
                  "jax": "0.11.2", "step": 1000}
        (workdir / "eval" / "fid_0001000_n2000_s20_g1.json").write_text(json.dumps(record))
        stale = {**record, "fid": 999.0, "step": 500}  # an older step: not the newest
        (workdir / "eval" / "fid_0000500_n5000_s20_g1.json").write_text(json.dumps(stale))
    return workdir


def test_table_checks_and_plot(tmp_path):
    fids = {"dense": 20.0, "topk": 30.0, "llsa_topk": 28.0, "llsa_enrich": 25.0, "llsa": 21.5,
            "neighborhood": 40.0}
    for variant, fid in fids.items():
        make_run(tmp_path / "runs", variant, fid, logged_only=variant == "neighborhood")
    done = collect(f"--workdirs={tmp_path / 'runs' / 'run_*'}", "--name=study",
                   f"--results_dir={tmp_path / 'out'}")
    assert done.returncode == 0, done.stderr
    folder = tmp_path / "out" / "nvidia_h200"
    report = json.loads((folder / "study.json").read_text())
    rows = {row["variant"]: row for row in report["rows"]}
    assert list(rows) == list(study_config.VARIANTS)  # the config's order, not the glob's
    assert {v: row["fid"] for v, row in rows.items()} == fids
    assert rows["llsa"]["fid_vs_dense"] == pytest.approx(1.075)
    assert rows["llsa"]["loss_last"] == pytest.approx(0.1 + 21.5 / 1e4)
    assert rows["llsa"]["images_per_s"] == pytest.approx(4.0 * 32)
    assert rows["neighborhood"]["evaluated_step"] == 1000  # from the run's own metrics
    assert report["checks"] == {"llsa_fid_within_10_percent_of_dense": True,
                                "selection_only_worst_of_l2_column": True,
                                "full_llsa_best_of_l2_column": True,
                                "single_level_topk_worst_of_the_four": True}
    assert Image.open(folder / "study.png").size[1] > 6 * 100
    assert (folder / "study_llsa.png").is_file()


def test_checks_say_when_the_paper_ordering_fails():
    rows = {"dense": {"fid": 20.0}, "topk": {"fid": 24.0}, "llsa_topk": {"fid": 25.0},
            "llsa_enrich": {"fid": 23.0}, "llsa": {"fid": 23.5}, "neighborhood": {}}
    assert study_table.checks(rows) == {"llsa_fid_within_10_percent_of_dense": False,
                                          "selection_only_worst_of_l2_column": True,
                                          "full_llsa_best_of_l2_column": False,
                                          "single_level_topk_worst_of_the_four": False}
    assert study_table.checks({**rows, "llsa": {}}) == {  # what cannot be told is None
        "llsa_fid_within_10_percent_of_dense": None}


def test_refuses_runs_it_cannot_read(tmp_path):
    (tmp_path / "empty").mkdir()
    done = collect(f"--workdirs={tmp_path / 'empty'}")
    assert done.returncode != 0 and "no config.json" in done.stderr
    make_run(tmp_path, "dense", 20.0, logged_only=True)
    done = collect(f"--workdirs={tmp_path / 'run_dense'}", f"--results_dir={tmp_path / 'o'}")
    assert done.returncode != 0 and "pass --device" in done.stderr
    assert collect().returncode != 0


def test_refuses_runs_of_different_recipes(tmp_path):
    make_run(tmp_path, "dense", 20.0)
    make_run(tmp_path, "llsa", 21.0, recipe=",batch=16")
    done = collect(f"--workdirs={tmp_path / 'run_*'}", f"--results_dir={tmp_path / 'o'}")
    assert done.returncode != 0
    assert "do not share one recipe (dataset, resolution, pretrained, batch_size, " \
        "total_steps)" in done.stderr
    assert "16" in done.stderr and "32" in done.stderr


def test_refuses_fine_tuned_and_scratch_runs_in_one_table(tmp_path):
    make_run(tmp_path, "dense", 20.0, recipe=",init=/runs/pretrain32")
    make_run(tmp_path, "llsa", 21.0)
    done = collect(f"--workdirs={tmp_path / 'run_*'}", f"--results_dir={tmp_path / 'o'}")
    assert done.returncode != 0 and "pretrain32" in done.stderr and "None" in done.stderr
