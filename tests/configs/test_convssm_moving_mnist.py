"""configs/convssm_moving_mnist.py: every variant builds an Experiment whose model traces, a
few training steps of the CPU default lower the loss, and bad options say what would work."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from configs import convssm_moving_mnist
from lla import data
from lla.training.experiment import Experiment
from tests.configs.test_vit_fashion_mnist import built
from tests.data.test_idx import idx_bytes


def write_mnist(directory) -> str:
    """Tiny MNIST image files (train and test, 3 random digits each) in `directory`."""
    digits = np.random.default_rng(0).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    for name in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte"):
        (directory / name).write_bytes(idx_bytes(digits))
    return str(directory)


def test_the_cpu_default_is_a_tiny_convs5_on_procedural_digits():
    experiment = built(convssm_moving_mnist.get_config())
    model = experiment.model
    assert (type(model).__module__, model.depth, model.d_model) == ("lla.models.convssm", 2, 16)
    assert (model.resolution, model.channels, model.frames) == (64, 1, 20)
    assert experiment.source.num_examples is None and experiment.eval_source.split == "test"
    assert (experiment.objective.context_frames, experiment.objective.horizon) == (10, 10)


@pytest.mark.parametrize(("arg", "module", "fields"), [
    ("model=video_transformer", "video_transformer", {"attention": "dense"}),
    ("model=video_transformer,attention=neighborhood", "video_transformer",
     {"attention": "neighborhood", "attention_kwargs": {"kernel_size": (5, 7, 7)}}),
    ("digits=mnist", "convssm", {"depth": 8, "d_model": 128, "dtype": "bfloat16"}),
    ("digits=mnist,model=video_transformer", "video_transformer", {"depth": 12}),
    ("frames=12,context=4,horizon=8", "convssm", {"frames": 12}),
])
def test_variants(arg, module, fields, tmp_path):
    config = convssm_moving_mnist.get_config(arg)
    if "directory" in config.data.kwargs:
        config.data.kwargs.directory = config.eval_data.kwargs.directory = write_mnist(
            tmp_path)
    model = Experiment.from_config(config).model
    assert type(model).__module__ == f"lla.models.{module}"
    assert {name: getattr(model, name) for name in fields} == fields


def test_a_few_steps_of_the_cpu_default_lower_the_loss():
    config = convssm_moving_mnist.get_config()
    experiment = Experiment.from_config(config)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    state = experiment.initial_state(mesh)
    step = jax.jit(experiment.train_step())
    batch = next(data.batches(experiment.source, batch_size=4, seed=0))
    losses = []
    for _ in range(6):  # the same batch: the loss must fall
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < losses[0]


@pytest.mark.parametrize(("arg", "message"), [
    ("context=15", "exceed frames=20"),
    ("model=convlstm", "model=convlstm: choose one of convssm, video_transformer"),
    ("digits=emnist", "digits=emnist: choose one of procedural, mnist"),
    ("preset=huge", "preset=huge: choose one of"),
])
def test_bad_options_say_what_would_work(arg, message):
    with pytest.raises(ValueError, match=message):
        convssm_moving_mnist.get_config(arg)
