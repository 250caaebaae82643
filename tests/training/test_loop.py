"""The training loop: loss falls, several devices match one, files appear (interruptions and
exact resumes: test_faults.py)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import llsa_pixel
from lla import data
from lla.objectives import flow_matching
from lla.training import loop
from lla.training.experiment import Experiment

ROOT = pathlib.Path(__file__).resolve().parents[2]


def small_config(**overrides):
    config = llsa_pixel.get_config()
    config.total_steps = 6
    config.batch_size = 4
    config.log_every = 1
    config.checkpoint_every = 3
    config.eval_every = 0
    config.objective.sample_count = 4
    config.objective.sample_steps = 2
    config.model.attention_kwargs.topk = 2
    for key, value in overrides.items():
        config[key] = value
    return config


def test_one_step_lowers_the_loss_on_a_fixed_batch():
    config = small_config()
    config.optimizer.warmup_steps = 0
    experiment = Experiment.from_config(config)
    model, source = experiment.model, experiment.source
    state = experiment.initial_state(loop.sharding.data_mesh())
    batch = {key: jnp.asarray(value) for key, value in
             next(data.batches(source, batch_size=8, seed=0)).items()}
    step = jax.jit(experiment.train_step())

    def loss(params):
        def apply(x, t, labels):
            return model.apply(params, x, t, labels)
        return flow_matching.loss(apply, batch["image"], jax.random.key(5), scale=1.0)[0]

    before = float(loss(state.params))
    state, metrics = step(state, batch)
    assert float(loss(state.params)) < before
    assert int(state.step) == 1 and np.isfinite(float(metrics["grad_norm"]))


def test_workdir_holds_metrics_samples_tensorboard_and_config_and_sample_reads_it(tmp_path):
    config = small_config(total_steps=2, eval_every=2)
    loop.train(config, tmp_path)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [line for line in lines if "loss" in line]
    assert [line["step"] for line in losses] == [1, 2]
    assert all(line["tokens_per_s"] > 0 for line in losses)
    assert any("samples/valid_fraction" in line for line in lines)
    assert (tmp_path / "samples" / "step_0000002.png").exists()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert json.loads((tmp_path / "config.json").read_text())["total_steps"] == 2
    out = tmp_path / "from_checkpoint.png"
    run = subprocess.run([sys.executable, "-m", "experiments.sample", f"--workdir={tmp_path}",
                          "--count=2", "--steps=2", f"--out={out}"], cwd=ROOT,
                         env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert out.exists() and f"wrote {out}" in run.stdout


FINAL_PARAMS = """
import sys, numpy as np, jax
from tests.training.test_loop import small_config
from lla.training import loop
state = loop.train(small_config(total_steps=3, checkpoint_every=100), sys.argv[1])
np.savez(sys.argv[2], *[np.asarray(x) for x in jax.tree.leaves(state.params)])
print("devices", jax.device_count())
"""


def test_four_devices_match_one_device(tmp_path):
    results = {}
    for devices in (1, 4):
        env = dict(os.environ, JAX_PLATFORMS="cpu",
                   XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
        out = tmp_path / f"params{devices}.npz"
        run = subprocess.run([sys.executable, "-c", FINAL_PARAMS, str(tmp_path / str(devices)),
                              str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
        assert f"devices {devices}" in run.stdout
        results[devices] = np.load(out)
    for name in results[1].files:
        np.testing.assert_allclose(results[4][name], results[1][name], rtol=1e-5, atol=1e-6)


def test_init_from_starts_from_another_runs_ema_then_resumes_its_own(tmp_path):
    """A run with `init_from` and no checkpoint of its own (or with --restart) starts at step
    0 from the source's EMA weights, as params and EMA (learning rate 0 keeps them, so they
    come out as they went in), with another attention op; once it has a checkpoint it
    resumes from that and never reads the source again (here deleted)."""
    source = loop.train(small_config(total_steps=2, checkpoint_every=2), tmp_path / "a")
    assert not all(np.array_equal(a, b) for a, b in zip(
        jax.tree.leaves(source.params), jax.tree.leaves(source.ema_params), strict=True))
    config = small_config(total_steps=1, checkpoint_every=1, init_from=str(tmp_path / "a"))
    config.model.attention, config.model.attention_kwargs = "dense", {}
    config.optimizer.learning_rate = 0.0

    def assert_started_from_source(state):
        assert int(state.step) == 1
        for tree in (state.params, state.ema_params):
            for got, want in zip(jax.tree.leaves(tree), jax.tree.leaves(source.ema_params),
                                 strict=True):
                np.testing.assert_array_equal(got, want)

    assert_started_from_source(loop.train(config, tmp_path / "b"))
    scratch = small_config(total_steps=1, checkpoint_every=1)
    loop.train(scratch, tmp_path / "c")  # a run of its own, then --restart with init_from
    assert_started_from_source(loop.train(config, tmp_path / "c", restart=True))
    for path in sorted((tmp_path / "a").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    config.total_steps = 2
    assert int(loop.train(config, tmp_path / "b").step) == 2


def test_init_from_errors_say_what_would_work(tmp_path):
    """A source without checkpoints and one of another model are refused before anything
    is left in the new workdir; the source is only read."""
    (tmp_path / "empty").mkdir()
    with pytest.raises(loop.ConfigError, match=r"init_from='.*empty': no checkpoint in"):
        loop.train(small_config(init_from=str(tmp_path / "empty")), tmp_path / "new")
    assert not (tmp_path / "new").exists() and not any((tmp_path / "empty").iterdir())
    loop.train(small_config(total_steps=1, checkpoint_every=1), tmp_path / "a")
    before = sorted(str(path) for path in (tmp_path / "a").rglob("*"))
    deeper = small_config(total_steps=1, init_from=str(tmp_path / "a"))
    deeper.model.depth = 3  # the tiny preset has 2 blocks
    with pytest.raises(loop.ConfigError, match="holds another model or optimizer"):
        loop.train(deeper, tmp_path / "b")
    assert not (tmp_path / "b").exists()
    assert sorted(str(path) for path in (tmp_path / "a").rglob("*")) == before
