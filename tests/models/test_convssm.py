"""ConvS5: the scan against sequential recurrences, the S5 special case, HiPPO initialisation
and discretisation, generation against the parallel forward, causality, sizes, training."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lla.models.convssm import PRESETS, ConvS5, ConvSSM, linear_recurrence
from lla.models.convssm_init import diagonal_hippo, hippo_legs, normal_hippo

# Two encoder stages (one strided conv, one upsampling) and 2x2 patches: latent 4 x 4.
SMALL = dict(resolution=16, depth=2, d_model=8, state_size=8, encoder_widths=(4, 8),
             patch_size=2)


@pytest.fixture(autouse=True)
def _exact_matmuls():
    """float32 convolutions in full precision on every platform, as the tolerances assume."""
    with jax.default_matmul_precision("highest"):
        yield


def key(seed):
    """An "rbg" key: on XLA CPU, jax 0.11's default partitionable threefry takes seconds to
    compile per random call, rbg a fraction of one (the initialisers are the same)."""
    return jax.random.key(seed, impl="rbg")


@pytest.fixture(scope="module")
def layer():
    """A 3x3-kernel layer (U = 4, P = 6) and its parameters."""
    module = ConvS5(features=4, state_size=6, dt_min=1e-3, dt_max=1e-1)
    return module, jax.jit(module.init)(key(1), jnp.zeros((1, 1, 5, 5, 4)))


@pytest.fixture(scope="module")
def pointwise_layer():
    """A layer with 1x1 kernels (U = 3, P = 8) and its parameters, one eigenvalue pushed to a
    positive real part (so the clipping to -1e-4 matters)."""
    module = ConvS5(features=3, state_size=8, b_kernel=1, c_kernel=1, d_kernel=1)
    params = jax.jit(module.init)(key(2), jnp.zeros((1, 1, 1, 1, 3)))
    params["params"]["lambda_re"] = params["params"]["lambda_re"].at[1].set(0.3)
    return module, params


@pytest.fixture(scope="module")
def small():
    """The SMALL model and its parameters."""
    model = ConvSSM(**SMALL)
    return model, jax.jit(model.init)(key(0), jnp.zeros((1, 1, 16, 16, 1)))


def relative_error(a, b):
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


def video(shape, seed=0):
    """Uniform float32 in [-1, 1) (numpy's generator: no compilation)."""
    return jnp.asarray(np.random.default_rng(seed).uniform(-1.0, 1.0, shape), jnp.float32)


@pytest.mark.parametrize("length", [7, 13])
def test_linear_recurrence_matches_sequential_loop(length):
    rng = np.random.default_rng(length)
    lambda_bar = jnp.asarray(rng.uniform(0.5, 0.99, 5) * np.exp(1j * rng.uniform(-3, 3, 5)),
                             jnp.complex64)
    shape = (2, length, 3, 2, 5)
    inputs = jnp.asarray(rng.normal(size=shape) + 1j * rng.normal(size=shape), jnp.complex64)
    expected = np.zeros(inputs.shape, np.complex128)
    state = np.zeros((2, 3, 2, 5), np.complex128)
    for t in range(length):
        state = np.asarray(lambda_bar, np.complex128) * state + np.asarray(inputs[:, t])
        expected[:, t] = state
    assert relative_error(jax.jit(linear_recurrence)(lambda_bar, inputs), expected) < 1e-5


@pytest.mark.parametrize("length", [7, 13])
def test_layer_parallel_form_matches_recurrent_steps(layer, length):
    module, params = layer
    u = video((2, length, 5, 5, 4), seed=length)
    y, last = jax.jit(module.apply)(params, u)

    def step(state, u_t):
        return module.apply(params, state, u_t, method=ConvS5.step)

    first = jnp.zeros((2, 5, 5, 3), jnp.complex64)
    last_steps, y_steps = jax.jit(lambda u: jax.lax.scan(step, first, jnp.moveaxis(u, 1, 0)))(u)
    assert y.shape == u.shape and last.shape == first.shape
    assert relative_error(y, jnp.moveaxis(y_steps, 0, 1)) < 1e-5
    assert relative_error(last, last_steps) < 1e-5


def test_one_pixel_one_by_one_kernels_is_s5(pointwise_layer):
    """x_t = Λ̄ x_{t-1} + B̄ u_t, y_t = 2 Re(C x_t) + D u_t + d, written out with the layer's
    own parameters."""
    module, params = pointwise_layer
    length = 9
    u = video((2, length, 1, 1, 3), seed=4)
    p = jax.tree.map(lambda x: np.asarray(x, np.float64), params["params"])
    eigenvalues = np.minimum(p["lambda_re"], -1e-4) + 1j * p["lambda_im"]
    lambda_bar = np.exp(eigenvalues * np.exp(p["log_step"]))
    b = (p["B"][0, 0, ..., 0] + 1j * p["B"][0, 0, ..., 1]).T  # [N, U]
    b_bar = ((lambda_bar - 1) / eigenvalues)[:, None] * b
    c = (p["C"][0, 0, ..., 0] + 1j * p["C"][0, 0, ..., 1]).T  # [U, N]
    d, bias = p["D"]["kernel"][0, 0].T, p["D"]["bias"]
    expected = np.zeros(u.shape)
    for batch in range(2):
        x = np.zeros(4, np.complex128)
        for t in range(length):
            u_t = np.asarray(u[batch, t, 0, 0], np.float64)
            x = lambda_bar * x + b_bar @ u_t
            expected[batch, t, 0, 0] = 2 * (c @ x).real + d @ u_t + bias
    assert relative_error(jax.jit(module.apply)(params, u)[0], expected) < 1e-5


def test_hippo_legs_matrix():
    r3, r5, r15 = np.sqrt(3), np.sqrt(5), np.sqrt(15)
    np.testing.assert_allclose(hippo_legs(3), -np.array([[1, 0, 0], [r3, 2, 0], [r5, r15, 3]]))


@pytest.mark.parametrize("size", [8, 16])
def test_diagonal_hippo_is_half_the_normal_spectrum(size):
    eigenvalues, vectors = diagonal_hippo(size)
    assert eigenvalues.shape == (size // 2,) and vectors.shape == (size, size // 2)
    assert np.all(eigenvalues.real < 0) and np.all(eigenvalues.imag < 0)
    normal = normal_hippo(size)
    np.testing.assert_allclose(normal @ vectors, vectors * eigenvalues, atol=1e-10)
    np.testing.assert_allclose(vectors.conj().T @ vectors, np.eye(size // 2), atol=1e-10)
    spectrum = np.linalg.eigvals(normal)
    np.testing.assert_allclose(spectrum.real, -0.5, atol=1e-8)
    np.testing.assert_allclose(np.sort(np.concatenate([eigenvalues.imag, -eigenvalues.imag])),
                               np.sort(spectrum.imag), atol=1e-8)


def test_layer_initialisation(layer):
    params = layer[1]["params"]
    eigenvalues, _ = diagonal_hippo(6)
    np.testing.assert_allclose(params["lambda_re"] + 1j * params["lambda_im"], eigenvalues,
                               rtol=1e-6)
    assert params["B"].shape == (3, 3, 4, 3, 2) and params["C"].shape == (3, 3, 3, 4, 2)
    step = np.exp(params["log_step"])
    assert step.shape == (3,) and np.all((step >= 1e-3) & (step <= 1e-1))


def test_discretization_is_zero_order_hold(pointwise_layer):
    module, params = pointwise_layer
    lambda_bar, b_bar = module.apply(params, method=ConvS5.discretized)
    p = jax.tree.map(lambda x: np.asarray(x, np.float64), params["params"])
    eigenvalues = np.minimum(p["lambda_re"], -1e-4) + 1j * p["lambda_im"]
    np.testing.assert_allclose(module.apply(params, method=ConvS5.eigenvalues).real[1], -1e-4)
    step = np.exp(p["log_step"])
    np.testing.assert_allclose(lambda_bar, np.exp(eigenvalues * step), rtol=1e-6)
    # B̄ = ∫_0^Δ exp(Λ s) ds · B̃, by the trapezoid rule.
    s = np.linspace(0.0, 1.0, 2001)[:, None] * step
    integral = np.trapezoid(np.exp(eigenvalues * s), s, axis=0)
    b_tilde = p["B"][..., 0] + 1j * p["B"][..., 1]
    np.testing.assert_allclose(b_bar, integral * b_tilde, rtol=1e-5)


def test_generate_matches_parallel_forward(small):
    model, params = small
    context = video((2, 3, 16, 16, 1), seed=5)
    generate = jax.jit(model.apply, static_argnums=2, static_argnames="method")
    generated = generate(params, context, 4, method=model.generate)
    assert generated.shape == (2, 4, 16, 16, 1) and generated.dtype == jnp.float32
    replayed = jax.jit(model.apply)(params, jnp.concatenate([context, generated[:, :-1]], 1))
    assert relative_error(generated, replayed[:, context.shape[1] - 1:]) < 1e-5
    first = generate(params, context, 1, method=model.generate)  # no recurrent step
    assert relative_error(first, generated[:, :1]) < 1e-6


def test_causal_over_time(small):
    model, params = small
    frames = video((2, 6, 16, 16, 1), seed=6)
    forward = jax.jit(model.apply)
    out = forward(params, frames)
    changed = forward(params, frames.at[:, 3].set(video((2, 16, 16, 1), seed=7)))
    np.testing.assert_array_equal(out[:, :3], changed[:, :3])
    assert np.all(np.abs(out[:, 3:] - changed[:, 3:]).max(axis=(2, 3, 4)) > 1e-4)


def expected_parameter_count(depth, d_model, state_size, encoder_widths, patch_size,
                             channels=1, kernel=3):
    def conv(k, fan_in, fan_out):
        return k * k * fan_in * fan_out + fan_out

    states, pixels = state_size // 2, patch_size ** 2 * channels
    ssm = 3 * states + 2 * 2 * kernel ** 2 * d_model * states + conv(kernel, d_model, d_model)
    block = ssm + 2 * (2 * d_model + conv(kernel, d_model, d_model)) + 2 * d_model
    stages = sum(conv(3, a, b) + 2 * b for a, b in itertools.pairwise(encoder_widths))
    encoder = (conv(3, pixels, encoder_widths[0]) + 2 * encoder_widths[0] + stages
               + conv(1, encoder_widths[-1], d_model))
    decoder = (conv(1, d_model, encoder_widths[-1]) + 2 * encoder_widths[-1]
               + sum(conv(3, b, a) + 2 * a for a, b in itertools.pairwise(encoder_widths))
               + conv(3, encoder_widths[0], pixels))
    return depth * block + encoder + decoder


@pytest.mark.parametrize("preset", ["tiny", "moving_mnist"])
def test_presets_sizes(preset):
    model = ConvSSM(resolution=64, channels=1, frames=20, **PRESETS[preset])
    assert model.latent_size == 16 and model.tokens_per_example == 20 * 16 * 16
    shapes = jax.eval_shape(lambda: model.init(key(0),
                                               jnp.zeros((1, 2, 64, 64, 1))))["params"]
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
    assert count == expected_parameter_count(**PRESETS[preset])
    ssm = shapes["block0"]["ssm"]
    states, width = model.state_size // 2, model.d_model
    assert ssm["B"].shape == (3, 3, width, states, 2) and ssm["lambda_re"].shape == (states,)
    assert len([name for name in shapes if name.startswith("block")]) == model.depth
    if preset == "moving_mnist":
        assert model.depth == 8 and width == 128 and model.state_size == 128
        assert 6e6 < count < 7e6


def test_train_step_lowers_the_loss(small):
    model, params = small
    frames = video((2, 6, 16, 16, 1), seed=8)
    optimizer = optax.adam(1e-3)

    def loss(params):
        out = model.apply(params, frames, train=True)
        return jnp.mean((out[:, :-1] - frames[:, 1:]) ** 2)

    @jax.jit
    def losses_around_one_step(params):
        before, grads = jax.value_and_grad(loss)(params)
        updates, _ = optimizer.update(grads, optimizer.init(params), params)
        return before, loss(optax.apply_updates(params, updates))

    before, after = losses_around_one_step(params)
    assert after < before


def test_bfloat16_compute_keeps_float32_outputs(small):
    model, params = small
    frames = video((2, 6, 16, 16, 1), seed=9)
    out = jax.jit(ConvSSM(**SMALL, dtype=jnp.bfloat16).apply)(params, frames)
    assert out.dtype == jnp.float32
    assert relative_error(out, jax.jit(model.apply)(params, frames)) < 5e-2


@pytest.mark.parametrize(("fields", "shape", "match"), [
    ({}, (2, 3, 16, 16, 3), "expected"),
    ({}, (2, 16, 16, 1), "expected"),
    ({"resolution": 18}, (2, 3, 18, 18, 1), "multiple of 4"),
    ({"state_size": 7}, (2, 3, 16, 16, 1), "even"),
])
def test_rejects_bad_inputs(fields, shape, match):
    model = ConvSSM(**{**SMALL, **fields})
    with pytest.raises(ValueError, match=match):
        model.init(key(0), jnp.zeros(shape))
