"""The jitted training step: the objective's loss, the optimizer update, EMA, and what to do
with a non-finite loss or gradient."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from lla.objectives import Objective
from lla.training.optim import ema_decay, update_ema
from lla.training.state import TrainState

NONFINITE = ("stop", "skip")


def make_train_step(model: nn.Module, objective: Objective,
                    optimizer: optax.GradientTransformation, *, seed: int,
                    ema: dict | None = None, nonfinite: str = "stop"):
    """Returns `step(state, batch) -> (state, metrics)`.

    The step's randomness is `fold_in(key(seed), state.step)`, passed to the objective's loss,
    so a resumed run draws exactly what an uninterrupted one would. Metrics: the objective's
    own, "loss", "grad_norm" and "nonfinite" (1.0 when the loss or the gradient norm is not
    finite). With `nonfinite="skip"` such a step leaves parameters, EMA and optimizer state
    as they were (the step count still advances, so the data stream stays aligned); with
    "stop" the update is applied and the caller stops the run (`lla.training.loop`).
    """
    if nonfinite not in NONFINITE:
        raise ValueError(f"nonfinite must be one of {NONFINITE}; got {nonfinite!r}")
    ema = ema or {}
    base_key = jax.random.key(seed)

    def step(state: TrainState, batch):
        key = jax.random.fold_in(base_key, state.step)

        def loss_fn(params):
            return objective.loss(model, params, batch, key)

        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema_params = update_ema(state.ema_params, params, ema_decay(state.step, **ema))
        new = (params, ema_params, opt_state)
        if nonfinite == "skip":
            old = (state.params, state.ema_params, state.opt_state)
            new = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
        params, ema_params, opt_state = new
        new_state = state.replace(step=state.step + 1, params=params, ema_params=ema_params,
                                  opt_state=opt_state)
        return new_state, {**metrics, "loss": loss, "grad_norm": grad_norm,
                           "nonfinite": 1.0 - finite.astype(jnp.float32)}

    return step
