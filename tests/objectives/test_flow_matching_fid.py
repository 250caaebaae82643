"""Flow matching's optional periodic FID (`fid_count`): checked fields, off by default, the
weights required before training starts, and a tiny grey run whose evaluation logs the FID
and KID that `sample_quality.score` (tested in tests/evaluation and
tests/experiments/test_evaluate.py) gives for the sampler of that step's EMA weights."""

from __future__ import annotations

import json
import math

import jax
import numpy as np
import pytest

from configs import llsa_pixel
from experiments.checkpoints import restore
from lla import objectives
from lla.evaluation import inception, sample_quality
from lla.objectives import flow_matching
from lla.training import loop
from lla.training.experiment import Experiment

WEIGHTS = inception.cache_dir() / inception.WEIGHTS_FILE
needs_weights = pytest.mark.skipif(not WEIGHTS.is_file(), reason=f"no FID weights at {WEIGHTS}"
                                   "; run: bash scripts/fetch_fid_weights.sh")
FID_KEYS = {"samples/fid", "samples/kid_mean", "samples/kid_std"}


def tiny_config(**objective):
    """configs/llsa_pixel.py on 16 x 16 grey procedural shapes, LLSA block 4, top-2, 2 steps
    with an evaluation (4 samples of 2 Euler steps) at step 2."""
    config = llsa_pixel.get_config()
    config.data.kwargs.resolution = 16
    config.data.kwargs.channels = 1
    config.model.attention_kwargs.block_size = 4
    config.model.attention_kwargs.topk = 2
    config.total_steps, config.checkpoint_every, config.log_every = 2, 2, 1
    config.batch_size, config.eval_every = 4, 2
    config.objective.sample_count, config.objective.sample_steps = 4, 2
    config.objective.update(objective)
    return config


@pytest.mark.parametrize(("fields", "message"), [
    ({"fid_count": 1}, r"fid_count must be 0 .* or >= 2"),
    ({"fid_count": -2}, r"fid_count must be 0 .* or >= 2"),
    ({"fid_count": 4, "fid_batch_size": 0}, r"fid_batch_size must be >= 1"),
])
def test_fid_fields_are_checked(fields, message):
    with pytest.raises(ValueError, match=message):
        objectives.build("flow_matching", **fields)
    assert objectives.build("flow_matching").fid_count == 0


def test_fid_is_off_by_default_and_needs_the_weights_when_on(monkeypatch):
    def missing():
        raise FileNotFoundError("fetch them once with `bash scripts/fetch_fid_weights.sh`")

    monkeypatch.setattr(inception, "load_params", missing)
    experiment = Experiment.from_config(tiny_config())
    evaluate = experiment.objective.evaluator(experiment.model, experiment.source)
    scalars = evaluate(experiment.initial_state(loop.sharding.data_mesh()).ema_params,
                       jax.random.key(0)).scalars
    assert not FID_KEYS & set(scalars)
    on = Experiment.from_config(tiny_config(fid_count=4))
    with pytest.raises(FileNotFoundError, match=r"fetch_fid_weights\.sh"):
        on.objective.evaluator(on.model, on.source)


@needs_weights
def test_training_logs_the_fid_of_the_ema_weights(tmp_path, monkeypatch):
    (tmp_path / "cache" / "fid").mkdir(parents=True)
    (tmp_path / "cache" / "fid" / inception.WEIGHTS_FILE).symlink_to(WEIGHTS)
    monkeypatch.setenv("LLA_CACHE", str(tmp_path / "cache"))
    calls, score = [], sample_quality.score

    def recorded_score(sample, source, **kwargs):
        calls.append((sample, source, kwargs, score(sample, source, **kwargs)))
        return calls[-1][-1]

    monkeypatch.setattr(sample_quality, "score", recorded_score)
    config = tiny_config(fid_count=6, fid_batch_size=4)
    loop.train(config, tmp_path / "run", handle_signals=False)
    rows = [json.loads(line) for line in
            (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    logged = [row for row in rows if FID_KEYS & set(row)]
    assert len(logged) == 1 and logged[0]["step"] == 2 and len(calls) == 1
    sample, source, kwargs, scores = calls[0]
    assert {key: logged[0][key] for key in FID_KEYS} == scores.metrics()
    assert all(math.isfinite(logged[0][key]) for key in FID_KEYS)
    assert (kwargs["count"], kwargs["batch_size"], source.channels) == (6, 4, 1)
    key = jax.random.fold_in(jax.random.key(config.seed + 1), flow_matching.FID_STREAM)
    assert (jax.random.key_data(kwargs["key"]) == jax.random.key_data(key)).all()
    # The scored sampler is that of the step's EMA weights, with sample_steps Euler steps.
    experiment, state, _ = restore(tmp_path / "run")
    expected = experiment.objective.sampler(experiment.model, count=4, steps=2)
    batch_key = jax.random.fold_in(key, 0)
    np.testing.assert_array_equal(np.asarray(sample(batch_key)),
                                  np.asarray(expected(state.ema_params, batch_key)))
    assert len(list((tmp_path / "cache" / "fid" / "stats").iterdir())) == 1
