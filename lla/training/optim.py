"""Optimizer and parameter EMA of the training loop (the LLSA paper's recipe, arXiv 2512.16615),
with an optional cosine learning-rate decay."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def learning_rate_schedule(learning_rate: float, *, warmup_steps: int = 0,
                           decay_steps: int = 0, end_fraction: float = 0.0) -> optax.Schedule:
    """Linear rise from 0 over `warmup_steps`, then constant, or with `decay_steps` >
    warmup_steps a cosine from `learning_rate` at the end of the warm-up to
    `end_fraction · learning_rate` at step `decay_steps` (and constant after)."""
    if decay_steps and decay_steps <= warmup_steps:
        raise ValueError(f"decay_steps {decay_steps} must exceed warmup_steps {warmup_steps} "
                         f"(or be 0 for a constant learning rate)")
    if decay_steps:
        return optax.warmup_cosine_decay_schedule(
            0.0, learning_rate, warmup_steps, decay_steps, learning_rate * end_fraction)
    if warmup_steps:
        return optax.linear_schedule(0.0, learning_rate, warmup_steps)
    return optax.constant_schedule(learning_rate)


def make_optimizer(learning_rate: float, *, weight_decay: float = 0.01, b1: float = 0.9,
                   b2: float = 0.999, eps: float = 1e-8, clip_norm: float = 1.0,
                   warmup_steps: int = 0, decay_steps: int = 0,
                   end_fraction: float = 0.0) -> optax.GradientTransformation:
    """Global-norm clipping then AdamW with `learning_rate_schedule`. Always a schedule, so
    the optimizer state has the same structure whatever the schedule (a resumed run may
    change it)."""
    schedule = learning_rate_schedule(learning_rate, warmup_steps=warmup_steps,
                                      decay_steps=decay_steps, end_fraction=end_fraction)
    return optax.chain(optax.clip_by_global_norm(clip_norm),
                       optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay))


def ema_decay(step: jax.Array, *, max_decay: float = 0.9999, inv_gamma: float = 1.0,
              power: float = 0.75) -> jax.Array:
    """Warm-up EMA decay min(max_decay, 1 - (1 + step / inv_gamma)^-power); 0 at step 0."""
    step = jnp.asarray(step, jnp.float32)
    return jnp.minimum(max_decay, 1.0 - (1.0 + step / inv_gamma) ** -power)


def update_ema(ema, params, decay: jax.Array):
    """ema <- decay·ema + (1 - decay)·params, leaf by leaf."""
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)
