"""configs/lm_shakespeare.py: its variants build, and a short run learns and evaluates."""

import json
import math

import jax
import pytest

from configs import lm_shakespeare
from lla.training import loop
from lla.training.experiment import Experiment
from tests.attention.toy import TOY_HIERARCHY


@pytest.mark.parametrize("arg", ["", "dd=true", "attention=neighborhood", "attention=llsa",
                                 "model=S,context=512",
                                 "vocab=50304,model=gpt2_small,context=2048",
                                 "attention=llsa,alignment=10"])
def test_variants_build(arg):
    config = lm_shakespeare.get_config(arg)
    experiment = Experiment.from_config(config)
    assert experiment.objective.alignment_weight == (10.0 if "alignment" in arg else 0.0)
    assert experiment.model.context == config.data.kwargs.sequence_length
    assert experiment.model.vocab_size == config.data.kwargs.get("vocab_size", 256)
    assert experiment.eval_source.num_tokens < experiment.source.num_tokens
    if "dd" in arg:
        assert experiment.source.decomposition == (5, 8)


def test_gpt2_small_has_124m_parameters():
    experiment = Experiment.from_config(
        lm_shakespeare.get_config("vocab=50304,model=gpt2_small,context=2048"))
    shapes = jax.eval_shape(lambda key: experiment.objective.init(experiment.model, key),
                            jax.random.key(0))
    count = sum(math.prod(x.shape) for x in jax.tree.leaves(shapes))
    blocks = 12 * (4 * 768 * 768 + 3 * 768 * 2048 + 2 * 768)  # attention, SwiGLU, 2 norms
    assert count == blocks + 50304 * 768 + 768  # + tied embedding, final norm
    assert 123e6 < count < 125e6


@pytest.mark.parametrize(("arg", "match"), [
    ("dd=true,context=100", "power-of-two context"),
    (f"attention={TOY_HIERARCHY}", "choose one of dense"),  # an op without causal
    ("data=shakespeare,vocab=1000", "Shakespeare is read as bytes"),
    ("alignment=10", "attention=dense is dense already"),  # the default op
])
def test_bad_variants_say_what_would_work(arg, match):
    with pytest.raises(ValueError, match=match):
        lm_shakespeare.get_config(arg)


def test_shakespeare_without_files_names_the_fetch_script(tmp_path):
    config = lm_shakespeare.get_config("data=shakespeare")
    config.data.kwargs.directory = str(tmp_path)
    with pytest.raises(loop.ConfigError, match="fetch_shakespeare"):
        loop.train(config, tmp_path / "run", handle_signals=False)


def test_a_short_run_lowers_the_loss_and_writes_validation_and_samples(tmp_path):
    config = lm_shakespeare.get_config("context=64")
    config.total_steps, config.log_every, config.eval_every = 40, 10, 40
    config.objective.eval_windows, config.objective.sample_length = 8, 20
    loop.train(config, tmp_path, handle_signals=False)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in rows if "loss" in row]
    assert losses[-1] < 0.7 * losses[0], losses
    assert [row["step"] for row in rows if "val/nats_per_byte" in row] == [40]
    samples = (tmp_path / "samples" / "step_0000040.txt").read_text()
    assert samples.startswith("\n") and len(samples) > 40
