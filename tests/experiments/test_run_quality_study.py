"""scripts/run_quality_study.sh: the study's runs in parallel slots, retried and resumed, then
its table — driven here with a stand-in for `experiments.train` (training is tested
elsewhere; this holds the queue, the retries, the skips and the table to what they say)."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import textwrap

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]

# Stands in for `python -m experiments.train`: counts its calls per workdir, fails the first
# call of every variant named in $FAIL_FIRST and every call of those in $FAIL_ALWAYS, else
# writes a finished study run (config, losses, its own logged FID, a sample grid).
FAKE_TRAIN = textwrap.dedent("""\
    import json, os, pathlib, sys
    import numpy as np
    from PIL import Image
    from configs import quality_study
    args = dict(a[2:].split("=", 1) for a in sys.argv[1:])
    config_arg = args["config"].split(":", 1)[1]
    variant = quality_study.common.parse(config_arg, quality_study.DEFAULTS)["variant"]
    workdir = pathlib.Path(args["workdir"])
    workdir.mkdir(parents=True, exist_ok=True)
    calls = workdir / "calls"
    calls.write_text(calls.read_text() + config_arg + "\\n" if calls.exists() else
                     config_arg + "\\n")
    tries = len(calls.read_text().splitlines())
    if variant in os.environ.get("FAIL_ALWAYS", "").split() or (
            tries == 1 and variant in os.environ.get("FAIL_FIRST", "").split()):
        sys.exit("fake train: crashed")
    config = quality_study.get_config(config_arg).copy_and_resolve_references()
    (workdir / "config.json").write_text(config.to_json())
    fid = {"dense": 100.0, "topk": 130.0, "llsa": 104.0}[variant]
    rows = [{"step": 100 * i, "loss": 0.1, "steps_per_s": 3.0} for i in range(1, 6)]
    rows.append({"step": 500, "samples/fid": fid, "samples/kid_mean": fid / 1e3,
                 "samples/kid_std": 1e-3})
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\\n" for r in rows))
    (workdir / "samples").mkdir(exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(
        workdir / "samples" / "step_0000500.png")
    """)


@pytest.fixture
def fake_python(tmp_path):
    """An interpreter for the script: `-m experiments.train` runs FAKE_TRAIN, anything else
    the real Python (the config module, the table tool, jax's device kind)."""
    (tmp_path / "fake_train.py").write_text(FAKE_TRAIN)
    wrapper = tmp_path / "python"
    wrapper.write_text(textwrap.dedent(f"""\
        #!/usr/bin/env bash
        export PYTHONPATH={REPO} JAX_PLATFORMS=cpu
        if [ "$1" = -m ] && [ "$2" = experiments.train ]; then
          shift 2; exec {sys.executable} {tmp_path / 'fake_train.py'} "$@"
        fi
        exec {sys.executable} "$@"
        """))
    wrapper.chmod(0o755)
    return wrapper


def run_study(fake_python, root, results, *args, **env):
    return subprocess.run(
        ["bash", str(REPO / "scripts" / "run_quality_study.sh"), "-j", "2", "-o", str(root),
         *args],
        env={"PATH": "/usr/bin:/bin", "PYTHON": str(fake_python), "RESULTS": str(results),
             **env},
        capture_output=True, text=True, check=False)


def test_retries_a_crashed_run_skips_finished_ones_and_writes_the_table(fake_python, tmp_path):
    root, results = tmp_path / "runs", tmp_path / "results"
    done = run_study(fake_python, root, results, "-a", "res=128", "dense", "topk", "llsa",
                     FAIL_FIRST="topk")
    assert done.returncode == 0, done.stderr
    calls = {v: (root / f"openmoji128_{v}" / "calls").read_text().splitlines()
             for v in ("dense", "topk", "llsa")}
    assert calls == {"dense": ["variant=dense,res=128"],
                     "topk": ["variant=topk,res=128"] * 2,  # crashed once, resumed once
                     "llsa": ["variant=llsa,res=128"]}
    assert "try 2 of 3" in (root / "openmoji128_topk.log").read_text()
    table = json.loads((results / "cpu" / "quality_study_openmoji128.json").read_text())
    assert [(row["variant"], row["fid"]) for row in table["rows"]] == [
        ("dense", 100.0), ("topk", 130.0), ("llsa", 104.0)]
    again = run_study(fake_python, root, results, "-a", "res=128", "dense", "topk", "llsa")
    assert again.returncode == 0, again.stderr
    assert len((root / "openmoji128_topk" / "calls").read_text().splitlines()) == 2


def test_a_run_failing_every_try_stops_the_table_and_says_so(fake_python, tmp_path):
    root, results = tmp_path / "runs", tmp_path / "results"
    done = run_study(fake_python, root, results, "dense", "llsa", FAIL_ALWAYS="llsa",
                     TRIES="2")
    assert done.returncode == 1
    assert "llsa failed 2 times" in done.stderr and "no table written" in done.stderr
    assert (root / "openmoji64_llsa.status").read_text().strip() == "failed"
    assert len((root / "openmoji64_llsa" / "calls").read_text().splitlines()) == 2
    assert not results.exists()


def test_refuses_an_unknown_variant(fake_python, tmp_path):
    done = run_study(fake_python, tmp_path / "runs", tmp_path / "results", "llsa", "flash")
    assert done.returncode == 2
    assert "unknown variant 'flash'" in done.stderr and "neighborhood" in done.stderr


def test_pretraining_then_fine_tuning_in_one_root(fake_python, tmp_path):
    """The fine-tuned dense run is not skipped for the pre-training run's "ok" (status files
    are per workdir), a fid=0 call writes no table, and the fine-tuned table is its own."""
    root, results = tmp_path / "runs", tmp_path / "results"
    pre = run_study(fake_python, root, results, "-a", "res=32,fid=0", "dense")
    assert pre.returncode == 0, pre.stderr
    assert "fid=0, so no table" in pre.stdout and not results.exists()
    tuned = run_study(fake_python, root, results, "-a",
                      f"res=128,init={root / 'openmoji32_dense'}", "dense", "llsa")
    assert tuned.returncode == 0, tuned.stderr
    assert (root / "openmoji128ft_dense" / "calls").exists()
    table = json.loads((results / "cpu" / "quality_study_openmoji128ft.json").read_text())
    assert [(row["variant"], row["pretrained"]) for row in table["rows"]] == [
        ("dense", "openmoji32_dense"), ("llsa", "openmoji32_dense")]
