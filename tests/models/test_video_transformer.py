"""Video transformer: causality over frames with dense and neighbourhood attention (and tokens
of a frame seeing each other), generation equal to the forward on the generated clip, every
op that can be causal over frames plugged in, 3-D RoPE, presets and parameter counts, a
training step, bad inputs."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lla.attention as attention
from lla import models
from lla.attention import token_order
from lla.layers.rope import rope_2d, rope_3d
from lla.models.video_transformer import PRESETS, VideoTransformer
from tests.attention.op_test_base import relative_error

# 16 x 16 frames in 4 x 4 patches: 16 tokens per frame.
TINY = dict(resolution=16, channels=1, frames=4, **{**PRESETS["tiny"], "patch_size": 4})
NEIGHBORHOOD = dict(attention="neighborhood", attention_kwargs={"kernel_size": (3, 3, 3)})


@pytest.fixture(autouse=True)
def _exact_matmuls():
    """float32 matmuls in full precision on every platform (a GPU's default is TF32)."""
    with jax.default_matmul_precision("highest"):
        yield


def video_for(model, frames=None, batch=2, seed=0):
    frames = model.frames if frames is None else frames
    return jax.random.normal(jax.random.key(seed), (batch, frames, model.resolution,
                                                    model.resolution, model.channels))


def random_params(model, seed=1):
    """Parameters drawn from N(0, 0.2²) (norm scales from N(1, 0.2²)), without compiling the
    init: nothing is zero (a fresh head is), so outputs depend on all they can."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), video_for(model))
    rng = np.random.default_rng(seed)

    def draw(path, x):
        mean = 1.0 if path[-1].key == "scale" else 0.0
        return jnp.asarray(mean + 0.2 * rng.normal(size=x.shape), x.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def generate(model):
    return jax.jit(lambda params, context, horizon: model.apply(
        params, context, horizon, method=model.generate), static_argnums=2)


@pytest.mark.parametrize("fields", [{}, NEIGHBORHOOD], ids=["dense", "neighborhood"])
def test_outputs_depend_on_the_past_and_on_the_whole_current_frame(fields):
    """Changing the top-left patch of frame t leaves out[:, :t] exactly as it was and changes
    every patch of out[:, t]: causal over frames, yet within a frame tokens see each other
    (dense directly; a 3 x 3 neighbourhood through 2 layers on a 4 x 4 patch grid). Clips of
    5 frames, longer than the training length."""
    model = VideoTransformer(**TINY, **fields)
    params, video = random_params(model), video_for(model, frames=5)
    forward = jax.jit(model.apply)
    before = forward(params, video)
    for t in range(5):
        after = forward(params, video.at[:, t, :4, :4].add(1.0))
        np.testing.assert_array_equal(after[:, :t], before[:, :t])
        changed = np.abs(after[:, t] - before[:, t]).reshape(2, 4, 4, 4, 4).max(axis=(2, 4))
        assert np.all(changed > 0), changed  # every patch, in both clips


@pytest.mark.parametrize("fields", [{}, NEIGHBORHOOD], ids=["dense", "neighborhood"])
def test_generate_equals_the_forward_on_the_generated_clip(fields):
    model = VideoTransformer(**TINY, **fields)
    params, context = random_params(model), video_for(model, frames=2)
    generated = generate(model)(params, context, 3)
    assert generated.shape == (2, 3, 16, 16, 1) and generated.dtype == jnp.float32
    clip = jnp.concatenate([context, generated[:, :-1]], axis=1)
    expected = jax.jit(model.apply)(params, clip)[:, 1:]
    assert relative_error(generated, expected) < 1e-5
    assert not np.allclose(generated[:, 1], generated[:, 2], atol=1e-3)


def test_generating_one_frame_predicts_from_the_context():
    model = VideoTransformer(**TINY)
    params, context = random_params(model), video_for(model, frames=3)
    generated = generate(model)(params, context, 1)
    expected = jax.jit(model.apply)(params, context)[:, -1:]
    assert relative_error(generated, expected) < 1e-5


@pytest.mark.parametrize("name", token_order.frame_causal_ops(3))
def test_every_op_that_can_be_causal_over_frames_plugs_in(name):
    op = attention.get(name)
    model = VideoTransformer(**TINY, attention=name, attention_kwargs=op.example_kwargs)
    params, video = random_params(model), video_for(model, frames=3)
    forward = jax.jit(model.apply)
    out = forward(params, video)
    assert out.shape == video.shape and bool(jnp.isfinite(out).all())
    changed = forward(params, video.at[:, 1].add(1.0))
    np.testing.assert_array_equal(changed[:, 0], out[:, 0])
    assert np.abs(changed[:, 1] - out[:, 1]).max() > 1e-4


def test_rope_3d_splits_pairs_between_time_rows_and_columns():
    """head_dim 32: 12 dims (6 pairs) for time, 10 each for rows and columns; the spatial
    pairs are 2-D RoPE of a 20-dim head."""
    positions = np.stack(np.unravel_index(np.arange(60), (3, 4, 5)), axis=-1)
    cos, sin = rope_3d(positions, 32)
    assert cos.shape == sin.shape == (60, 16)
    spatial_cos, spatial_sin = rope_2d(positions[:, 1:].astype(np.float64), 20)
    np.testing.assert_allclose(cos[:, 6:], spatial_cos, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(sin[:, 6:], spatial_sin, rtol=1e-6, atol=1e-6)
    same_frame = positions[:, 0] == 1
    np.testing.assert_array_equal(np.ptp(np.asarray(cos[same_frame, :6]), axis=0), 0.0)
    assert np.ptp(np.asarray(cos[:, 0])) > 0.5  # time's fastest pair turns by 1 rad a frame
    with pytest.raises(ValueError, match="even head_dim >= 6"):
        rope_3d(positions, 4)


def test_positions_tell_the_frames_apart():
    """Swapping the first two of three identical-but-one frames changes the prediction from
    frame 1, which sees both: only positions can tell their order."""
    model = VideoTransformer(**TINY)
    params, video = random_params(model), video_for(model, frames=3)
    out = jax.jit(model.apply)(params, video)
    swapped = jax.jit(model.apply)(params, video[:, jnp.asarray([1, 0, 2])])
    assert not np.allclose(out[:, 2], swapped[:, 2], atol=1e-4)


def parameter_count(model):
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(
        (1, model.frames, model.resolution, model.resolution, model.channels)))
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))


def expected_parameter_count(depth, width, heads, *, patch, channels, ratio=4):
    def dense(fan_in, fan_out):
        return fan_in * fan_out + fan_out

    block = (2 * 2 * width + 4 * dense(width, width) + 2 * (width // heads)  # norms, qkv+out
             + dense(width, ratio * width) + dense(ratio * width, width))
    pixels = patch * patch * channels
    return dense(pixels, width) + depth * block + 2 * width + dense(width, pixels)


@pytest.mark.parametrize(("preset", "tokens"), [("tiny", 20 * 64), ("S", 20 * 256)])
def test_presets_on_moving_mnist_clips(preset, tokens):
    model = VideoTransformer(resolution=64, channels=1, frames=20, **PRESETS[preset])
    assert model.tokens_per_example == tokens
    config = PRESETS[preset]
    assert parameter_count(model) == expected_parameter_count(
        config["depth"], config["width"], config["num_heads"], patch=config["patch_size"],
        channels=1)
    video = jax.ShapeDtypeStruct((2, 20, 64, 64, 1), jnp.float32)
    params = jax.eval_shape(model.init, jax.random.key(0), video)
    out = jax.eval_shape(model.apply, params, video)
    assert (out.shape, out.dtype) == ((2, 20, 64, 64, 1), jnp.float32)


def test_one_adam_step_lowers_the_next_frame_error():
    """Clips of a pattern moving one pixel per frame: the next frame is predictable."""
    model = VideoTransformer(**{**TINY, "depth": 1})
    pattern = jax.random.normal(jax.random.key(3), (4, 1, 16, 16, 1))
    video = jnp.concatenate([jnp.roll(pattern, t, axis=3) for t in range(4)], axis=1)
    params = model.init(jax.random.key(0), video)
    optimizer = optax.adam(3e-3)

    def loss(params):
        return jnp.mean((model.apply(params, video)[:, :-1] - video[:, 1:]) ** 2)

    @jax.jit
    def step(params):
        value, grads = jax.value_and_grad(loss)(params)
        updates, _ = optimizer.update(grads, optimizer.init(params))
        return value, optax.apply_updates(params, updates)

    before, params = step(params)
    after, _ = step(params)
    assert before == pytest.approx(float(jnp.mean(video[:, 1:] ** 2)), rel=1e-5)  # zero head
    assert after < before - 0.01


def test_bfloat16_computation_returns_float32():
    model = VideoTransformer(**TINY, dtype=jnp.bfloat16)
    params, video = random_params(model), video_for(model)
    out = jax.jit(model.apply)(params, video)
    reference = jax.jit(VideoTransformer(**TINY).apply)(params, video)
    assert out.dtype == jnp.float32
    error = float(jnp.abs(out - reference).max())
    assert 0 < error < 0.05 * float(jnp.abs(reference).max())


def test_found_by_name():
    assert "video_transformer" in models.names()
    family = models.get("video_transformer")
    assert family.Model is VideoTransformer and family.PRESETS is PRESETS
    model = models.build("video_transformer", preset="S", resolution=32, frames=8)
    assert (model.width, model.num_heads, model.patch_size, model.depth) == (384, 6, 4, 12)


@pytest.mark.parametrize(("fields", "shape", "message"), [
    ({}, (2, 4, 16, 8, 1), r"video has shape \(2, 4, 16, 8, 1\); expected \[B, T >= 1, 16, "
                           r"16, 1\]"),
    ({}, (2, 16, 16, 1), "video has shape"),
    ({"patch_size": 3}, (2, 4, 16, 16, 1), r"not a multiple of patch_size 3; patch sizes "
                                           r"that fit: \[1, 2, 4, 8, 16\]"),
    ({"num_heads": 16}, (2, 4, 16, 16, 1), r"even head_dim >= 6; got width 64, num_heads 16"),
    ({"attention_kwargs": {"causal": True}}, (2, 4, 16, 16, 1),
     r"attention_kwargs sets \['causal'\], which the model passes itself"),
    ({"attention": "llsa"}, (2, 4, 16, 16, 1),
     r"'llsa' cannot be causal over the first axis .* ops that can: .*dense"),
    ({"attention": "neighborhood", "attention_kwargs": {"kernel_size": 3}}, (2, 2, 16, 16, 1),
     r"kernel_size 3 x dilation 1 = 3 exceeds axis 0"),
])
def test_bad_inputs_say_what_would_work(fields, shape, message):
    model = VideoTransformer(**{**TINY, **fields})
    with pytest.raises(ValueError, match=message):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(shape))


def test_bad_horizons_and_integer_video_are_rejected():
    model = VideoTransformer(**TINY)
    params = random_params(model)
    run = functools.partial(model.apply, params, method=model.generate)
    for horizon in (0, 2.0, True):
        with pytest.raises(ValueError, match="horizon must be a static int >= 1"):
            jax.eval_shape(lambda context, horizon=horizon: run(context, horizon),
                           video_for(model, frames=2))
    with pytest.raises(ValueError, match=r"video is uint8; expected floats"):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 2, 16, 16, 1), jnp.uint8))
