"""configs/vit_fashion_mnist.py: every variant builds an Experiment whose model traces; the
Fashion-MNIST variant reads train and test splits, and names the fetch script without them."""

from __future__ import annotations

import jax
import pytest

from configs import vit_fashion_mnist
from lla.training.experiment import Experiment
from tests.data.test_idx import write_fashion_mnist


def built(config) -> Experiment:
    """The Experiment of `config`, after tracing its model's initialisation."""
    experiment = Experiment.from_config(config)
    jax.eval_shape(lambda key: experiment.objective.init(experiment.model, key),
                   jax.random.key(0))
    return experiment


def test_the_cpu_default_classifies_procedural_shapes():
    experiment = built(vit_fashion_mnist.get_config())
    model = experiment.model
    assert (model.resolution, model.channels, model.num_classes) == (32, 3, 10)
    assert (model.width, model.depth, model.patch_size, model.attention) == (64, 2, 4, "dense")
    assert experiment.source.num_examples is None and experiment.eval_source is None
    assert experiment.tokens_per_step() == 64 * 64


@pytest.mark.parametrize(("arg", "fields"), [
    ("attention=llsa,patch=2", {"attention": "llsa", "grid": 16}),
    ("attention=neighborhood,patch=2", {"attention": "neighborhood", "grid": 16}),
    ("patch=1,positions=learned", {"grid": 32, "positions": "learned"}),
    ("pooling=cls", {"pooling": "cls", "tokens_per_example": 65}),
    ("model=B", {"width": 768}),
])
def test_variants(arg, fields):
    model = built(vit_fashion_mnist.get_config(arg)).model
    assert {name: getattr(model, name) for name in fields} == fields


def fashion_mnist_config(directory):
    config = vit_fashion_mnist.get_config("data=fashion_mnist")
    config.data.kwargs.directory = config.eval_data.kwargs.directory = str(directory)
    return config


def test_fashion_mnist_trains_on_train_and_evaluates_on_test(tmp_path):
    write_fashion_mnist(tmp_path, count=6, split="train")
    write_fashion_mnist(tmp_path, count=4, split="test")
    experiment = built(fashion_mnist_config(tmp_path))
    assert (experiment.source.num_examples, experiment.eval_source.num_examples) == (6, 4)
    model = experiment.model
    assert (model.resolution, model.channels, model.width, model.dtype) == (32, 1, 384,
                                                                            "bfloat16")
    assert experiment.objective.label_smoothing == 0.1


def test_fashion_mnist_without_files_names_the_fetch_script(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"Fashion-MNIST train files not found .*"
                                                r"bash scripts/fetch_fashion_mnist.sh"):
        Experiment.from_config(fashion_mnist_config(tmp_path / "missing"))


@pytest.mark.parametrize(("arg", "message"), [
    ("patch=3", "patch=3: choose one of 1, 2, 4, 8"),
    ("pooling=mean", "pooling=mean: choose one of gap, cls"),
    ("data=mnist", "data=mnist: choose one of procedural, fashion_mnist"),
    ("model=XL", "model=XL: choose one of tiny, S, B"),
])
def test_bad_options_say_what_would_work(arg, message):
    with pytest.raises(ValueError, match=message):
        vit_fashion_mnist.get_config(arg)
