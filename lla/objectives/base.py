"""The interface between an objective and the generic training loop (`lla.training`)."""

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, Protocol

import flax.linen as nn
import jax
import numpy as np


class Evaluation(NamedTuple):
    """What one periodic evaluation reports; the loop writes scalars to the metrics, each
    image to `<workdir>/<name>/step_<step>.png` and each text to
    `<workdir>/<name>/step_<step>.txt`.

    Attributes:
      scalars: {name: float}, e.g. {"test/accuracy": 0.91}.
      images: {name: uint8 [H, W, C]}, e.g. a sample grid or a confusion matrix.
      texts: {name: str}, e.g. generated text.
    """

    scalars: Mapping[str, float]
    images: Mapping[str, np.ndarray] = {}
    texts: Mapping[str, str] = {}


class Objective(Protocol):
    """What the training loop needs from an objective; implementations are frozen dataclasses
    whose fields come from `config.objective`."""

    def model_fields(self, source) -> dict[str, Any]:
        """The model constructor fields that follow from the data `source` (e.g. resolution,
        channels, number of classes)."""
        ...

    def init(self, model: nn.Module, key: jax.Array) -> Any:
        """Initial parameters of `model` (from example inputs of one element)."""
        ...

    def loss(self, model: nn.Module, params, batch: Mapping[str, jax.Array],
             key: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        """(scalar loss, extra scalar metrics) of one training batch; traced inside the jitted
        train step, `key` is the step's randomness."""
        ...

    def evaluator(self, model: nn.Module, source,
                  eval_source=None) -> Callable[[Any, jax.Array], Evaluation] | None:
        """`evaluate(params, key) -> Evaluation` run every `config.eval_every` steps on the
        EMA weights, or None when the objective has no periodic evaluation. `eval_source` is
        the held-out data of `config.eval_data` (None when the config has none)."""
        ...
