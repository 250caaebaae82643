"""The optimizer's EMA: the decay schedule written out, and which weights the train step
averages (the updated parameters, starting from the initial ones)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lla.training import optim
from lla.training import state as train_state
from lla.training.step import make_train_step


@pytest.mark.parametrize(("step", "expected"), [
    (0, 0.0),                       # the first update copies the new parameters
    (1, 1 - 2 ** -0.75),            # 1 - (1 + step)^-0.75
    (10, 1 - 11 ** -0.75),
    (10 ** 9, 0.9999),              # capped at max_decay
])
def test_ema_decay_schedule(step, expected):
    assert float(optim.ema_decay(step)) == pytest.approx(expected, rel=1e-6)


def test_ema_decay_arguments():
    assert float(optim.ema_decay(3, max_decay=0.5)) == pytest.approx(0.5)
    assert float(optim.ema_decay(3, inv_gamma=2.0, power=1.0)) == pytest.approx(1 - 1 / 2.5)


class Quadratic:
    """A stand-in objective: loss = sum((w - target)^2), so updates are easy to predict."""

    def loss(self, model, params, batch, key):
        del model, key
        return jnp.sum((params["w"] - batch["target"]) ** 2), {}


def test_train_step_averages_the_updated_parameters():
    optimizer = optim.make_optimizer(0.1, weight_decay=0.0, clip_norm=1e9)
    params = {"w": jnp.asarray([1.0, -2.0, 3.0])}
    state = train_state.create(params, optimizer)
    step = jax.jit(make_train_step(None, Quadratic(), optimizer, seed=0))
    batch = {"target": jnp.zeros(3)}
    history = [np.asarray(state.params["w"])]
    ema = np.asarray(state.ema_params["w"])
    np.testing.assert_array_equal(ema, history[0])  # starts at the initial parameters
    for index in range(4):
        state, _ = step(state, batch)
        history.append(np.asarray(state.params["w"]))
        decay = float(optim.ema_decay(index))
        ema = decay * ema + (1 - decay) * history[-1]
        np.testing.assert_allclose(np.asarray(state.ema_params["w"]), ema, rtol=1e-6)
    assert not np.allclose(history[-1], history[-2])  # the parameters did move
    assert int(state.step) == 4


@pytest.mark.parametrize(("kwargs", "points"), [
    ({}, {0: 1.0, 500: 1.0}),
    ({"warmup_steps": 10}, {0: 0.0, 5: 0.5, 10: 1.0, 1000: 1.0}),
    ({"warmup_steps": 10, "decay_steps": 110, "end_fraction": 0.1},
     {5: 0.5, 10: 1.0, 60: 0.55, 110: 0.1, 5000: 0.1}),  # half-way down the cosine
])
def test_learning_rate_schedule(kwargs, points):
    schedule = optim.learning_rate_schedule(2.0, **kwargs)
    for step, fraction in points.items():
        assert float(schedule(step)) == pytest.approx(2.0 * fraction, abs=1e-6), step


def test_decay_must_end_after_the_warmup():
    with pytest.raises(ValueError, match="decay_steps 10 must exceed warmup_steps 10"):
        optim.learning_rate_schedule(1.0, warmup_steps=10, decay_steps=10)
