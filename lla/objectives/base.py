"""The interface between an objective and the generic training loop (`lla.training`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

import flax.linen as nn
import jax
import numpy as np

# scalars {name: float} and images {name: uint8 [H, W, C]} of one periodic evaluation
Evaluation = tuple[Mapping[str, float], Mapping[str, np.ndarray]]


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

    def evaluator(self, model: nn.Module, source) -> Callable[[Any, jax.Array], Evaluation] | None:
        """`evaluate(params, key) -> (scalars, images)` run every `config.eval_every` steps
        on the EMA weights, or None when the objective has no periodic evaluation."""
        ...
