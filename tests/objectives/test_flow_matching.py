"""Flow-matching training path: noise rescale, sigma sampling, x_t, target and loss; the
objective the training loop finds by name."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lla import data, objectives
from lla.models.dit import PRESETS, DiT
from lla.objectives.flow_matching import (
    Objective,
    interpolate,
    loss,
    noise_scale,
    sample_sigma,
    velocity_target,
)

SHAPE = (3, 4, 4, 2)


def images(seed: int = 0) -> jax.Array:
    return jax.random.uniform(jax.random.key(seed), SHAPE, jnp.float32, -1.0, 1.0)


def loss_noise(key: jax.Array, x0: jax.Array, num_train_timesteps: int = 1000):
    """Reproduces `loss`'s key split: (sigma [B], noise [B, H, W, C])."""
    sigma_key, noise_key = jax.random.split(key)
    sigma = sample_sigma(sigma_key, x0.shape[0], num_train_timesteps)
    return sigma, jax.random.normal(noise_key, x0.shape, jnp.float32)


@pytest.mark.parametrize(("resolution", "scale"),
                         [(32, 1.0), (64, 1.0), (128, 2.0), (256, 4.0), (512, 8.0)])
def test_noise_scale(resolution, scale):
    assert noise_scale(resolution) == scale


def test_noise_scale_rejects_nonpositive_resolution():
    with pytest.raises(ValueError, match="positive"):
        noise_scale(0)


def test_sigma_support_and_both_ends():
    sigma = sample_sigma(jax.random.key(1), 200_000, 1000)
    assert sigma.shape == (200_000,)
    assert sigma.dtype == jnp.float32
    steps = np.asarray(sigma, np.float64) * 1000
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-4)
    assert set(np.round(steps).astype(int)) == set(range(1, 1001))


def test_sigma_is_uniform_over_the_levels():
    sigma = sample_sigma(jax.random.key(2), 100_000, num_train_timesteps=10)
    levels, counts = np.unique(np.asarray(sigma), return_counts=True)
    np.testing.assert_allclose(levels, np.arange(1, 11) / 10, rtol=1e-6)
    np.testing.assert_allclose(counts, 10_000, rtol=0.05)


def test_interpolation_endpoints_per_example():
    x0, noise = images(0), images(1)
    x_t = interpolate(x0, noise, jnp.array([0.0, 1.0, 0.25]), 2.0)
    np.testing.assert_array_equal(x_t[0], x0[0])
    np.testing.assert_allclose(x_t[1], 2.0 * noise[1], rtol=1e-6)
    np.testing.assert_allclose(x_t[2], 0.75 * x0[2] + 0.5 * noise[2], rtol=1e-6)


def test_velocity_target_is_the_path_derivative():
    x0, noise, scale = images(0), images(1), 4.0
    sigma, h = jnp.full((SHAPE[0],), 0.3), 1e-2
    x_t, x_later = (interpolate(x0, noise, s, scale) for s in (sigma, sigma + h))
    derivative = (x_later - x_t) / h
    np.testing.assert_allclose(velocity_target(x0, noise, scale), derivative, atol=1e-4)


def test_loss_is_zero_for_the_oracle_and_feeds_the_model_x_t():
    x0, key, scale, labels = images(), jax.random.key(3), 2.0, jnp.array([4, 0, 7])
    sigma, noise = loss_noise(key, x0)
    seen = {}

    def oracle(x_t, timesteps, model_labels):
        seen.update(x_t=x_t, timesteps=timesteps, labels=model_labels)
        return scale * noise - x0

    value, aux = loss(oracle, x0, key, scale=scale, labels=labels)
    assert value == 0.0
    np.testing.assert_array_equal(aux["per_example_loss"], np.zeros(SHAPE[0]))
    np.testing.assert_array_equal(aux["sigma"], sigma)
    level = sigma[:, None, None, None]
    np.testing.assert_allclose(seen["x_t"], (1 - level) * x0 + level * scale * noise, rtol=1e-6)
    assert seen["timesteps"].dtype == jnp.float32
    np.testing.assert_allclose(seen["timesteps"], sigma * 1000, rtol=1e-6)
    np.testing.assert_array_equal(seen["labels"], labels)


def test_loss_is_the_plain_mean_squared_error():
    x0, key, scale = images(), jax.random.key(4), 4.0
    _, noise = loss_noise(key, x0, num_train_timesteps=50)
    target = scale * noise - x0

    def off_by_ramp(x_t, timesteps, labels):
        return target + jnp.arange(SHAPE[0], dtype=jnp.float32)[:, None, None, None]

    value, aux = loss(off_by_ramp, x0, key, scale=scale, num_train_timesteps=50)
    np.testing.assert_allclose(value, (0 + 1 + 4) / 3, rtol=1e-5)
    np.testing.assert_allclose(aux["per_example_loss"], [0.0, 1.0, 4.0], atol=1e-5)

    zero_value, _ = loss(lambda x, t, y: jnp.zeros_like(x), x0, key, scale=scale,
                         num_train_timesteps=50)
    np.testing.assert_allclose(zero_value, jnp.mean(target**2), rtol=1e-6)
    assert zero_value > 0


def test_loss_jits_and_differentiates():
    x0, key, scale = images(), jax.random.key(5), 2.0
    sigma, noise = loss_noise(key, x0)
    x_t = interpolate(x0, noise, sigma, scale)
    bias = sigma[:, None, None, None]

    def objective(weight):
        return loss(lambda x, timesteps, labels: weight * x + timesteps[:, None, None, None] / 1e3,
                    x0, key, scale=scale)[0]

    value, grad = jax.jit(jax.value_and_grad(objective))(jnp.float32(0.5))
    residual = 0.5 * x_t + bias - (scale * noise - x0)
    np.testing.assert_allclose(value, jnp.mean(residual**2), rtol=1e-5)
    np.testing.assert_allclose(grad, jnp.mean(2 * residual * x_t), rtol=1e-4)


def test_objectives_are_found_by_name():
    assert "flow_matching" in objectives.names()
    objective = objectives.build("flow_matching", noise_scale=2.0, sample_count=4)
    assert (objective.noise_scale, objective.sample_count) == (2.0, 4)
    with pytest.raises(ValueError, match="unknown objective 'diffusion'; objectives: "
                                         "classification, flow_matching, frame_prediction, "
                                         "next_token"):
        objectives.build("diffusion")
    with pytest.raises(ValueError, match=r"objective 'flow_matching': .*'sampling'"):
        objectives.build("flow_matching", sampling={})


def test_objective_loss_is_the_flow_matching_loss_of_the_model():
    """The objective's batch loss equals `loss` of the model with the step key split into
    (loss key, label-dropout key), and its model fields follow the data source."""
    source = data.get_source("procedural", resolution=8)
    objective = Objective(class_conditional=True)
    fields = objective.model_fields(source)
    assert fields == {"resolution": 8, "channels": 3, "num_classes": 10}
    model = DiT(**fields, **PRESETS["tiny"], label_dropout=0.5)
    params = objective.init(model, jax.random.key(0))
    batch = next(data.batches(source, batch_size=4, seed=0))
    key = jax.random.key(3)
    value, metrics = objective.loss(model, params, batch, key)
    loss_key, dropout_key = jax.random.split(key)

    def apply(x, t, labels):
        return model.apply(params, x, t, labels, train=True, rngs={"label_dropout": dropout_key})

    expected, _ = loss(apply, batch["image"], loss_key, scale=1.0, labels=batch["label"])
    assert metrics == {} and float(value) == float(expected)
    assert objective.scale(DiT(resolution=256)) == 4.0
