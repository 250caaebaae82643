"""The jitted training step: flow-matching loss, AdamW update, EMA."""

from __future__ import annotations

import flax.linen as nn
import jax
import optax

from lla.diffusion import flow_matching
from lla.training.optim import ema_decay, update_ema
from lla.training.state import TrainState


def make_train_step(model: nn.Module, optimizer: optax.GradientTransformation, *,
                    scale: float, seed: int, ema: dict | None = None):
    """Returns `step(state, batch) -> (state, metrics)`.

    The step's randomness (noise levels, noise, label dropout) is `fold_in(key(seed),
    state.step)`, so a resumed run draws exactly what an uninterrupted one would.
    `batch` is {"image": [B, H, W, C] in [-1, 1], "label": int32 [B]}.
    """
    ema = ema or {}
    base_key = jax.random.key(seed)

    def step(state: TrainState, batch):
        loss_key, dropout_key = jax.random.split(jax.random.fold_in(base_key, state.step))
        labels = batch["label"] if model.num_classes else None

        def loss_fn(params):
            def apply(x, timesteps, labels):
                return model.apply(params, x, timesteps, labels, train=True,
                                   rngs={"label_dropout": dropout_key})
            return flow_matching.loss(apply, batch["image"], loss_key, scale=scale,
                                      labels=labels)

        (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema_params = update_ema(state.ema_params, params, ema_decay(state.step, **ema))
        new_state = state.replace(step=state.step + 1, params=params, ema_params=ema_params,
                                  opt_state=opt_state)
        return new_state, {"loss": loss, "grad_norm": optax.global_norm(grads)}

    return step
