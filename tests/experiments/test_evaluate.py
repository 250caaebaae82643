"""experiments/evaluate.py on a tiny grey flow-matching run (16 x 16, 2 steps): FID/KID of the
EMA samples against the source's own images, equal to the scores recomputed from the restored
weights and the Inception network; the JSON and the metrics rows; the reference features
cached once and read by the next evaluation; and the refusals (count < 2, an objective
without a sampler, missing weights naming the fetch script). The FID of 2048-d features
costs seconds on a CPU (two eigendecompositions), so the scenario is one test."""

from __future__ import annotations

import json
import math
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from absl.testing import flagsaver

from configs import vit_fashion_mnist
from experiments import evaluate
from experiments.checkpoints import restore
from lla.evaluation import fid, inception, sample_quality
from lla.training import loop
from lla.training import workdir as workdirs
from tests.objectives.test_flow_matching_fid import tiny_config as fid_tiny_config

ROOT = pathlib.Path(__file__).resolve().parents[2]
WEIGHTS = inception.cache_dir() / inception.WEIGHTS_FILE
needs_weights = pytest.mark.skipif(not WEIGHTS.is_file(), reason=f"no FID weights at {WEIGHTS}"
                                   "; run: bash scripts/fetch_fid_weights.sh")


@pytest.fixture(autouse=True)
def _parsed_flags():
    if not evaluate.FLAGS.is_parsed():
        evaluate.FLAGS(["evaluate", "--workdir=set-by-each-test"])


def tiny_config():
    """The periodic-FID tests' tiny run (16 x 16 grey shapes, LLSA block 4, top-2, 2 steps)
    without its evaluation."""
    config = fid_tiny_config()
    config.eval_every = 0
    return config


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A 2-step run of `tiny_config`, checkpointed at step 2."""
    path = tmp_path_factory.mktemp("run")
    loop.train(tiny_config(), path, handle_signals=False)
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh $LLA_CACHE holding (a link to) the Inception weights: reference features go
    to <cache>/fid/stats/."""
    (tmp_path / "fid").mkdir()
    (tmp_path / "fid" / inception.WEIGHTS_FILE).symlink_to(WEIGHTS)
    monkeypatch.setenv("LLA_CACHE", str(tmp_path))
    return tmp_path / "fid" / "stats"


def metrics_rows(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@needs_weights
def test_evaluate_scores_the_ema_samples_and_then_reads_the_cached_reference(
        workdir, cache, capsys, monkeypatch):
    distances, frechet_distance = [], fid.frechet_distance

    def recorded_distance(a, b):
        distances.append((a, b, frechet_distance(a, b)))
        return distances[-1][-1]

    monkeypatch.setattr(fid, "frechet_distance", recorded_distance)
    events = len(list((workdir / "tensorboard").glob("events.*")))
    with flagsaver.flagsaver(workdir=str(workdir), count=6, steps=2, batch_size=4, seed=5):
        evaluate.main([])
    path = workdir / "eval" / "fid_0000002_n6_s2_g1.json"
    assert f"wrote {path}" in capsys.readouterr().out
    record = json.loads(path.read_text())
    assert {key: record[key] for key in (
        "step", "weights", "count", "reference_count", "steps", "guidance_scale",
        "batch_size", "dataset", "resolution", "channels", "kid_subset_size")} == {
        "step": 2, "weights": "ema", "count": 6, "reference_count": 6, "steps": 2,
        "guidance_scale": 1.0, "batch_size": 4, "dataset": "procedural", "resolution": 16,
        "channels": 1, "kid_subset_size": 6}
    assert record["jax"] == jax.__version__ and record["device"] and record["seconds"] > 0
    assert all(math.isfinite(record[key]) for key in ("fid", "kid_mean", "kid_std"))
    row = metrics_rows(workdir)[-1]
    assert row == {"step": 2, "samples/fid": record["fid"],
                   "samples/kid_mean": record["kid_mean"], "samples/kid_std": record["kid_std"]}
    assert len(list((workdir / "tensorboard").glob("events.*"))) == events + 1

    # The same numbers from the restored EMA weights, sampled as documented (batch i with
    # fold_in(key(seed), i), the surplus of the last batch dropped), against the features of
    # the source's first 6 images, which the cache holds.
    experiment, state, _ = restore(workdir)
    assert any((a != b).any() for a, b in zip(jax.tree.leaves(state.params),
                                              jax.tree.leaves(state.ema_params), strict=True))
    sample = experiment.objective.sampler(experiment.model, count=4, steps=2)
    images = np.concatenate([np.asarray(sample(state.ema_params, jax.random.fold_in(
        jax.random.key(5), i))) for i in range(2)])[:6]
    assert images.shape == (6, 16, 16, 1)
    fake = inception.features(images, batch_size=4, progress=False)
    real_images = np.stack([experiment.source.example(i)[0] for i in range(6)])
    real = inception.features(real_images, batch_size=4, progress=False)
    files = list(cache.iterdir())
    assert files == [sample_quality.reference_file(experiment.source, 6)]
    assert files[0].name == f"{record['reference']}-16px-6.npz"
    np.testing.assert_allclose(np.load(files[0])["features"], real, rtol=1e-4, atol=1e-5)
    (fake_statistics, real_statistics, distance), = distances   # FID of these two sets
    assert record["fid"] == distance
    np.testing.assert_allclose(fake_statistics.mean, fake.mean(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(fake_statistics.cov, np.cov(fake, rowvar=False), rtol=1e-3,
                               atol=1e-6)
    np.testing.assert_allclose(real_statistics.mean, real.mean(0), rtol=1e-4, atol=1e-6)
    kid_mean, kid_std = fid.kid(fake, real)
    assert (record["kid_mean"], record["kid_std"]) == pytest.approx((kid_mean, kid_std),
                                                                    rel=1e-3, abs=1e-7)

    # A second evaluation (raw weights, another seed) reads the cached reference.
    stat = files[0].stat()

    def recomputed(*args, **kwargs):
        raise AssertionError("the reference features were computed again")

    monkeypatch.setattr(sample_quality, "real_images", recomputed)
    second, path = evaluate.evaluate(workdir, count=6, steps=2, batch_size=4, seed=1,
                                     raw_weights=True, progress=False)
    assert list(cache.iterdir()) == files
    assert (files[0].stat().st_mtime_ns, files[0].stat().st_ino) == (stat.st_mtime_ns,
                                                                    stat.st_ino)
    assert second["reference"] == record["reference"] and second["fid"] != record["fid"]
    assert path.name == "fid_0000002_n6_s2_g1_raw.json" and second["weights"] == "raw"
    assert metrics_rows(workdir)[-1] == {"step": 2, "samples_raw/fid": second["fid"],
                                         "samples_raw/kid_mean": second["kid_mean"],
                                         "samples_raw/kid_std": second["kid_std"]}


def recorded_workdir(path, config):
    """A workdir holding only the config history of a run started with `config`."""
    path.mkdir()
    workdirs.record_start(path, 0, json.loads(config.to_json_best_effort()))
    return path


def test_refuses_fewer_than_two_samples(tmp_path):
    with pytest.raises(SystemExit, match="--count must be >= 2"):
        evaluate.evaluate(tmp_path, count=1)


def test_refuses_an_objective_without_a_sampler(tmp_path):
    classifier = recorded_workdir(tmp_path / "vit", vit_fashion_mnist.get_config())
    with pytest.raises(SystemExit, match=r"'classification' .* has no sampler"):
        evaluate.evaluate(classifier, step=1, count=4)
    assert not (classifier / "eval").exists()


def test_missing_weights_name_the_fetch_script(tmp_path):
    run = recorded_workdir(tmp_path / "run", tiny_config())
    empty = tmp_path / "cache"
    result = subprocess.run([sys.executable, "-m", "experiments.evaluate", f"--workdir={run}",
                             "--step=2", "--count=4"], cwd=ROOT, capture_output=True,
                            text=True, timeout=600,
                            env=dict(os.environ, JAX_PLATFORMS="cpu", LLA_CACHE=str(empty)))
    assert result.returncode != 0
    assert "bash scripts/fetch_fid_weights.sh" in result.stderr
    assert str(empty / "fid" / inception.WEIGHTS_FILE) in result.stderr
    assert not (run / "eval").exists()
