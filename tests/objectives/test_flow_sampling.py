"""Euler sampler (exactness, step rule, guidance) and the uint8 conversion."""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lla.objectives.flow_sampling import euler_sample, to_uint8

T = 1000
SHAPE = (2, 4, 4, 3)
LABELS = jnp.array([3, 5])
NULL = 10


def toy_model(x, timesteps, labels):
    """A nonlinear, time- and label-dependent velocity field."""
    sigma = (timesteps / T)[:, None, None, None]
    return jnp.tanh(x) * sigma + 0.1 * labels[:, None, None, None].astype(jnp.float32)


def reference_euler(velocity, key, *, scale, steps, sigma_min=0.001):
    """Written-out Euler loop: x = s * eps, sigmas linspace(1, sigma_min, steps) then 0."""
    x = scale * jax.random.normal(key, SHAPE, jnp.float32)
    sigmas = np.append(np.linspace(1.0, sigma_min, steps, dtype=np.float32), 0.0)
    for sigma, sigma_next in itertools.pairwise(sigmas):
        x = x + (sigma_next - sigma) * velocity(x, jnp.full((SHAPE[0],), sigma * T))
    return x


def point_mass_field(center):
    """The exact velocity of data = {center}: x_t = (1-sigma) c + sigma s eps gives
    eps = (x_t - (1-sigma) c) / (sigma s), so v = s eps - c = (x_t - c) / sigma."""
    return lambda x, timesteps, labels: (x - center) / (timesteps / T)[:, None, None, None]


@pytest.mark.parametrize("steps", [20, 3])
def test_euler_transports_noise_to_a_point_mass(steps):
    center = jax.random.uniform(jax.random.key(1), SHAPE, jnp.float32, -1.0, 1.0)
    sample = euler_sample(point_mass_field(center), jax.random.key(2), SHAPE, scale=2.0,
                          steps=steps)
    np.testing.assert_allclose(sample, center, atol=1e-5)


@pytest.mark.parametrize("steps", [1, 4])
def test_euler_step_rule_matches_written_out_loop(steps):
    key = jax.random.key(3)
    sample = euler_sample(toy_model, key, SHAPE, scale=2.0, steps=steps, labels=LABELS,
                          sigma_min=0.01)
    expected = reference_euler(lambda x, t: toy_model(x, t, LABELS), key, scale=2.0,
                               steps=steps, sigma_min=0.01)
    np.testing.assert_allclose(sample, expected, rtol=1e-5, atol=1e-5)


def test_initial_noise_is_scaled_and_output_is_not_clipped():
    key = jax.random.key(4)
    sample = euler_sample(lambda x, t, y: jnp.zeros_like(x), key, SHAPE, scale=4.0, steps=2)
    np.testing.assert_array_equal(sample, 4.0 * jax.random.normal(key, SHAPE, jnp.float32))
    assert np.abs(sample).max() > 1.0


def test_guidance_one_is_the_conditional_sampler():
    key, shapes = jax.random.key(6), []

    def model(x, timesteps, labels):
        shapes.append((x.shape, labels.shape))
        return toy_model(x, timesteps, labels)

    sample = euler_sample(model, key, SHAPE, scale=2.0, steps=3, labels=LABELS,
                          guidance_scale=1.0, null_label=NULL)
    expected = reference_euler(lambda x, t: toy_model(x, t, LABELS), key, scale=2.0, steps=3)
    np.testing.assert_allclose(sample, expected, rtol=1e-5, atol=1e-5)
    assert set(shapes) == {(SHAPE, (SHAPE[0],))}


def test_guidance_combines_conditional_and_null_label_velocities():
    key, g = jax.random.key(7), 3.0
    sample = euler_sample(toy_model, key, SHAPE, scale=2.0, steps=3, labels=LABELS,
                          guidance_scale=g, null_label=NULL)

    def guided(x, t):
        v_uncond = toy_model(x, t, jnp.full_like(LABELS, NULL))
        return v_uncond + g * (toy_model(x, t, LABELS) - v_uncond)

    expected = reference_euler(guided, key, scale=2.0, steps=3)
    np.testing.assert_allclose(sample, expected, rtol=1e-5, atol=1e-5)


def test_guidance_makes_one_batched_call_per_step_on_the_sigma_grid():
    calls = []

    def record(timesteps, labels):
        calls.append((np.asarray(timesteps), np.asarray(labels).tolist()))

    def model(x, timesteps, labels):
        assert x.shape == (2 * SHAPE[0], *SHAPE[1:])
        jax.debug.callback(record, timesteps, labels, ordered=True)
        return toy_model(x, timesteps, labels)

    euler_sample(model, jax.random.key(8), SHAPE, scale=1.0, steps=4, labels=LABELS,
                 guidance_scale=2.0, null_label=NULL).block_until_ready()
    assert [call[1] for call in calls] == [[3, 5, NULL, NULL]] * 4
    grid = np.linspace(1.0, 0.001, 4) * T
    np.testing.assert_allclose(np.stack([call[0] for call in calls]),
                               np.repeat(grid[:, None], 2 * SHAPE[0], 1), rtol=1e-5)


@pytest.mark.parametrize(("arguments", "message"), [
    ({"labels": LABELS, "guidance_scale": 2.0}, "null_label"),
    ({"guidance_scale": 2.0, "null_label": NULL}, "labels"),
    ({"steps": 0}, "steps"),
    ({"labels": jnp.array([1, 2, 3])}, "labels must have shape"),
])
def test_rejects_bad_arguments(arguments, message):
    with pytest.raises(ValueError, match=message):
        euler_sample(toy_model, jax.random.key(0), SHAPE, scale=1.0, **arguments)


def test_sampler_jits():
    sample = functools.partial(euler_sample, toy_model, shape=SHAPE, scale=2.0, steps=3,
                               labels=LABELS, guidance_scale=1.5, null_label=NULL)
    key = jax.random.key(9)
    np.testing.assert_allclose(jax.jit(sample)(key), sample(key), rtol=1e-5, atol=1e-5)


def test_to_uint8_clips_and_maps_to_0_255():
    values = jnp.array([-5.0, -1.0, 0.0, 0.5, 1.0, 5.0]).reshape(1, 1, 6, 1)
    pixels = to_uint8(values)
    assert pixels.dtype == jnp.uint8
    assert pixels.shape == values.shape
    np.testing.assert_array_equal(pixels.ravel(), [0, 0, 128, 191, 255, 255])
    batch = to_uint8(3 * jax.random.normal(jax.random.key(0), SHAPE))
    assert batch.shape == SHAPE
    assert batch.dtype == jnp.uint8
    assert batch.min() == 0
    assert batch.max() == 255
