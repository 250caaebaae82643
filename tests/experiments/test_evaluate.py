"""experiments/evaluate.py on a tiny grey flow-matching run (16 x 16, 2 steps): FID/KID of the
EMA samples against the source's own images, equal to the scores recomputed from the restored
weights and the Inception network; the JSON and the metrics rows; the reference features
cached once and read by the next evaluation; and the refusals (count < 2, an objective
without a sampler, missing weights naming the fetch script). The FID of 2048-d features
costs seconds on a CPU (two eigendecompositions), so the scenario is one test.
--memorisation runs on a run over a folder of 8 such images with 5 more as its eval data:
each sample's nearest training image and the held-out baseline against brute force."""

from __future__ import annotations

import json
import math
import os
import pathlib
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest
from absl.testing import flagsaver
from PIL import Image

from configs import vit_fashion_mnist
from experiments import evaluate
from experiments.checkpoints import restore
from lla.data import ImageFolder, ProceduralShapes
from lla.data.imaging import save_png
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


def folder_data(path, indices):
    """The config of an image folder at `path` holding ProceduralShapes(16, 1) `indices`."""
    for index in indices:
        save_png(ProceduralShapes(16, 1).example(index)[0], path / f"{index:02d}.png")
    return ml_collections.ConfigDict(dict(name="image_folder", kwargs=dict(
        path=str(path), resolution=16, channels=1)))


@pytest.fixture(scope="module")
def folder_workdir(tmp_path_factory):
    """A 2-step run of `tiny_config` on a folder of 8 images, 5 others its eval data."""
    root = tmp_path_factory.mktemp("folders")
    config = tiny_config()
    config.data = folder_data(root / "train", range(8))
    config.eval_data = folder_data(root / "held_out", range(8, 13))
    loop.train(config, root / "run", handle_signals=False)
    return root / "run"


def nearest(queries, keys):
    """(distance, index) of the nearest row of keys [M, D] to each of queries [N, D]."""
    distance = np.linalg.norm(queries[:, None].astype(np.float64) - keys[None], axis=-1)
    return distance.min(1), distance.argmin(1)


@needs_weights
def test_memorisation_finds_each_sample_s_nearest_training_image(folder_workdir, cache,
                                                                 capsys, monkeypatch):
    # FID's two 2048-d eigendecompositions cost seconds; the scenario above checks them.
    monkeypatch.setattr(fid, "frechet_distance", lambda a, b: 0.0)
    with flagsaver.flagsaver(workdir=str(folder_workdir), count=4, steps=2, batch_size=4,
                             seed=5, memorisation=True):
        evaluate.main([])
    assert "memorisation: " in capsys.readouterr().out
    path = folder_workdir / "eval" / "fid_0000002_n4_s2_g1.json"
    record = json.loads(path.read_text())
    check = record["memorisation"]
    assert {key: check[key] for key in ("baseline", "samples", "train", "reference_images",
                                        "threshold", "per_sample", "grid")} == {
        "baseline": "held_out", "samples": 4, "train": 8, "reference_images": 4,
        "threshold": pytest.approx(1 / 3), "per_sample": "fid_0000002_n4_s2_g1_memorisation.npz",
        "grid": "fid_0000002_n4_s2_g1_memorisation.png"}
    assert metrics_rows(folder_workdir)[-1] == {
        "step": 2, "samples/fid": record["fid"], "samples/kid_mean": record["kid_mean"],
        "samples/kid_std": record["kid_std"]}

    # The grid: one row per sample, most suspicious first: it, and its nearest training
    # images in pixels and in Inception features (checked below).
    grid = np.asarray(Image.open(path.with_name(check["grid"])))
    assert grid.shape == (4 * 16, 3 * 16)
    rows = [entry["sample"] for entry in check["most_suspicious"]]
    assert sorted(rows) == [0, 1, 2, 3]
    tiles = grid.reshape(4, 16, 3, 16).transpose(0, 2, 1, 3)[..., None]  # [row, column, ...]
    images = np.empty((4, 16, 16, 1), np.uint8)
    images[rows] = tiles[:, 0]

    # Pixel space: against the 8 training images, named by their example indices; the
    # baseline from the 4 held-out images of the eval source's reference draw.
    train_source = ImageFolder(folder_workdir.parent / "train", 16, 1)
    held_out_source = ImageFolder(folder_workdir.parent / "held_out", 16, 1)
    train = np.stack([train_source.example(i)[0] for i in range(8)])
    held_out = np.stack([held_out_source.example(int(i))[0] for i in
                         sample_quality.reference_indices(held_out_source, 4)])
    arrays = np.load(path.with_name(check["per_sample"]))
    distance, index = nearest(images.reshape(4, -1), train.reshape(8, -1))
    np.testing.assert_array_equal(arrays["pixel_train"], index)
    np.testing.assert_allclose(arrays["pixel_distance"], distance / 127.5, rtol=1e-5)
    baseline = np.median(nearest(held_out.reshape(4, -1), train.reshape(8, -1))[0]) / 127.5
    assert check["pixel"]["baseline_distance"] == pytest.approx(baseline, rel=1e-5)
    np.testing.assert_allclose(arrays["pixel_ratio"], distance / 127.5 / baseline, rtol=1e-5)
    np.testing.assert_array_equal(tiles[:, 1], train[arrays["pixel_train"][rows]])

    # Inception space: the training features are FID's cached reference of the whole source
    # (in its draw order), the samples' those of the same images.
    files = sorted(file.name for file in cache.iterdir())
    assert files == sorted({sample_quality.reference_file(source, count).name for source, count
                            in ((train_source, 4), (train_source, 8), (held_out_source, 4))})
    draw = sample_quality.reference_indices(train_source, 8)
    cached = np.load(sample_quality.reference_file(train_source, 8))["features"]
    train_features = np.empty_like(cached)
    train_features[draw] = cached
    fake = inception.features(images, batch_size=4, progress=False)
    distance, index = nearest(fake, train_features)
    np.testing.assert_array_equal(arrays["inception_train"], index)
    np.testing.assert_allclose(arrays["inception_distance"], distance, rtol=1e-3)
    np.testing.assert_array_equal(tiles[:, 2], train[arrays["inception_train"][rows]])
    assert [entry["ratio"] for entry in check["most_suspicious"]] == sorted(arrays["ratio"])


@needs_weights
def test_memorisation_refuses_an_infinite_training_source(tmp_path):
    run = recorded_workdir(tmp_path / "run", tiny_config())
    with pytest.raises(SystemExit, match=r"--memorisation needs a finite training set; .* "
                                         r"ProceduralShapes, which never repeats"):
        evaluate.evaluate(run, step=2, count=4, memorisation_check=True)
    assert not (run / "eval").exists()
