"""experiments/generate.py end to end: a short lm_shakespeare run, then the script's greedy
continuation equals KV-cache generation from the restored EMA weights, printed and written to
<workdir>/generated/; a prompt plus steps beyond the context is refused with the reason."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import lm_shakespeare
from experiments.checkpoints import restore
from lla.models.lm_decoding import generate
from lla.training import loop

ROOT = pathlib.Path(__file__).resolve().parents[2]
PROMPT = "ROMILDA:"


def run_generate(workdir, *flags):
    return subprocess.run([sys.executable, "-m", "experiments.generate", f"--workdir={workdir}",
                           f"--prompt={PROMPT}", *flags], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env=dict(os.environ, JAX_PLATFORMS="cpu"))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A 4-step run of the default LM config at context 32, checkpointed at step 4."""
    path = tmp_path_factory.mktemp("lm")
    config = lm_shakespeare.get_config("context=32")
    config.total_steps, config.checkpoint_every, config.log_every = 4, 4, 2
    config.eval_every, config.batch_size = 0, 4
    loop.train(config, path, handle_signals=False)
    return path


def test_greedy_text_is_the_restored_models_continuation(workdir):
    run = run_generate(workdir, "--steps=12", "--temperature=0")
    assert run.returncode == 0, run.stderr[-3000:]
    experiment, state, step = restore(workdir)
    assert step == 4
    prompt = np.frombuffer(PROMPT.encode(), np.uint8).astype(np.int32)[None]
    tokens = generate(experiment.model, state.ema_params, prompt, jax.random.key(1), steps=12,
                      temperature=0.0)
    expected = bytes(np.asarray(tokens[0], np.uint8).tolist()).decode("utf-8", "replace")
    assert run.stdout == expected + "\n"
    written = list((workdir / "generated").glob("*.txt"))
    assert len(written) == 1 and written[0].read_text() == expected
    assert f"wrote {written[0]}" in run.stderr


def test_a_prompt_plus_steps_beyond_the_context_is_refused(workdir):
    run = run_generate(workdir, "--steps=30")  # 8 + 30 > 32
    assert run.returncode != 0
    assert "needs 38 positions; the cache has 32" in run.stderr
