"""The train state: step, float32 parameters, their EMA and the optimizer state."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import optax


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer steps taken (= batches consumed)
    params: Any
    ema_params: Any
    opt_state: Any  # optax.OptState of the optimizer


def create(params, optimizer: optax.GradientTransformation) -> TrainState:
    """A step-0 state whose EMA starts at (a copy of) the initial parameters."""
    return TrainState(step=jax.numpy.zeros((), jax.numpy.int32), params=params,
                      ema_params=jax.tree.map(jax.numpy.copy, params),
                      opt_state=optimizer.init(params))
