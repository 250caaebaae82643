"""The jitted training step: the objective's loss, the optimizer update, EMA."""

from __future__ import annotations

import flax.linen as nn
import jax
import optax

from lla.objectives import Objective
from lla.training.optim import ema_decay, update_ema
from lla.training.state import TrainState


def make_train_step(model: nn.Module, objective: Objective,
                    optimizer: optax.GradientTransformation, *, seed: int,
                    ema: dict | None = None):
    """Returns `step(state, batch) -> (state, metrics)`.

    The step's randomness is `fold_in(key(seed), state.step)`, passed to the objective's loss,
    so a resumed run draws exactly what an uninterrupted one would. Metrics: "loss",
    "grad_norm" and the objective's own.
    """
    ema = ema or {}
    base_key = jax.random.key(seed)

    def step(state: TrainState, batch):
        key = jax.random.fold_in(base_key, state.step)

        def loss_fn(params):
            return objective.loss(model, params, batch, key)

        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema_params = update_ema(state.ema_params, params, ema_decay(state.step, **ema))
        new_state = state.replace(step=state.step + 1, params=params, ema_params=ema_params,
                                  opt_state=opt_state)
        return new_state, {**metrics, "loss": loss, "grad_norm": optax.global_norm(grads)}

    return step
