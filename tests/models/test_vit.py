"""ViT: parameter counts, what the logits depend on (every pixel for dense attention, a window
for neighbourhood attention), pooling, positions, token orders from the op, every registered
attention inside the model, training, bad inputs."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lla.attention as attention
from lla import models
from lla.models.dit import patchify
from lla.models.vit import PRESETS, ViT
from lla.objectives.classification import Objective
from tests.attention.toy import TOY_HIERARCHY, TOY_SEQUENCE

TINY = dict(resolution=8, num_classes=5, patch_size=2, **PRESETS["tiny"])


@pytest.fixture(autouse=True)
def _exact_matmuls():
    """float32 matmuls in full precision on every platform (a GPU's default is TF32), as the
    equality tolerances below assume."""
    with jax.default_matmul_precision("highest"):
        yield


def jitted(model, **kwargs):
    """`f(params, images) = model.apply(params, images, **kwargs)`, jitted: compiled once
    per test, much faster than op by op on CPU."""
    return jax.jit(functools.partial(model.apply, **kwargs))


def images_for(model, batch=2, seed=0):
    return jax.random.normal(jax.random.key(seed), (batch, model.resolution, model.resolution,
                                                    model.channels))


def random_params(model, seed=1):
    """Parameters of `model` drawn from N(0, 0.2²) (norm scales from N(1, 0.2²)), without
    compiling its init: nothing is zero, so the logits depend on everything they can (a
    fresh head is zero)."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), images_for(model))
    rng = np.random.default_rng(seed)

    def draw(path, x):
        mean = 1.0 if path[-1].key == "scale" else 0.0
        return jnp.asarray(mean + 0.2 * rng.normal(size=x.shape), x.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def parameter_count(model):
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(
        (1, model.resolution, model.resolution, model.channels)))
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))


def expected_parameter_count(depth, width, heads, *, channels, patch, tokens, classes,
                             cls=False, learned=False, ratio=4):
    def dense(fan_in, fan_out):
        return fan_in * fan_out + fan_out

    block = (2 * 2 * width + 4 * dense(width, width) + 2 * (width // heads)  # norms, qkv+out
             + dense(width, ratio * width) + dense(ratio * width, width))
    return (dense(patch * patch * channels, width) + cls * width + learned * tokens * width
            + depth * block + 2 * width + dense(width, classes))


def test_parameter_count_of_vit_s16():
    """ViT-S/16 at 224 px with a class token and learned positions: the published 22.05 M
    (whose class token also has a position), plus per-head qk-norm scales, minus that
    class-token position."""
    model = ViT(resolution=224, num_classes=1000, patch_size=16, pooling="cls",
                positions="learned", **PRESETS["S"])
    count = parameter_count(model)
    assert count == expected_parameter_count(12, 384, 6, channels=3, patch=16, tokens=196,
                                             classes=1000, cls=True, learned=True)
    assert count == 22_050_664 + 12 * 2 * 64 - 384


def test_parameter_count_of_the_fashion_mnist_vit_s():
    model = ViT(resolution=32, channels=1, num_classes=10, patch_size=4, **PRESETS["S"])
    assert parameter_count(model) == expected_parameter_count(
        12, 384, 6, channels=1, patch=4, tokens=64, classes=10)


@pytest.mark.parametrize("pooling", ["gap", "cls"])
def test_dense_logits_depend_on_every_pixel_of_their_own_image_only(pooling):
    model = ViT(**{**TINY, "patch_size": 1}, pooling=pooling)
    params, images = random_params(model), images_for(model)
    grad = jax.jit(jax.grad(lambda x: model.apply(params, x)[0, 1]))(images)
    assert np.all(np.abs(grad[0]).sum(-1) > 0)  # every pixel of image 0
    np.testing.assert_array_equal(grad[1], 0.0)  # none of image 1


@pytest.mark.parametrize("positions", ["rope", "learned"])
def test_neighborhood_layer_sees_only_the_window_of_its_pixel(positions):
    """Pixel tokens (patch 1) on an 8 x 8 grid, a 3 x 3 neighbourhood: the first block's
    output at pixel (y, x) depends on the pixels of its window (shifted inside the grid at
    the border) and on no other. Feeding the op tokens in another order than raster, or
    without the grid, would move the window."""
    model = ViT(**{**TINY, "patch_size": 1}, positions=positions, attention="neighborhood",
                attention_kwargs=dict(kernel_size=3))
    params, images = random_params(model), images_for(model)

    def block_output_at(images, token):
        _, state = model.apply(params, images,
                               capture_intermediates=lambda module, _: module.name == "block0")
        return state["intermediates"]["block0"]["__call__"][0][0, token].sum()

    gradient = jax.jit(jax.grad(block_output_at))
    for (y, x), (rows, columns) in {(4, 5): ((3, 6), (4, 7)), (0, 7): ((0, 3), (5, 8))}.items():
        window = np.zeros((8, 8), bool)
        window[rows[0]:rows[1], columns[0]:columns[1]] = True
        touched = np.abs(gradient(images, y * 8 + x)[0]).sum(-1) > 0
        np.testing.assert_array_equal(touched, window)


@pytest.mark.parametrize("positions", ["rope", "learned"])
def test_hierarchy_order_is_invisible_when_the_op_is_dense(positions):
    """A registered toy op that computes dense attention but asks for the hierarchy order:
    the ViT feeds it Z-order tokens, with their RoPE angles or position embeddings moved
    with them, and must give the dense ViT's logits (attention is permutation-equivariant,
    mean pooling invariant)."""
    hierarchy = ViT(**TINY, positions=positions, attention=TOY_HIERARCHY)
    raster = ViT(**TINY, positions=positions)
    assert hierarchy.token_order().permutation is not None
    params, images = random_params(raster), images_for(raster)
    np.testing.assert_allclose(jitted(hierarchy)(params, images),
                               jitted(raster)(params, images), rtol=2e-5, atol=2e-5)


def test_grid_ops_get_raster_tokens_and_spatial_shape():
    """A neighbourhood as large as the grid is dense attention."""
    grid_op = ViT(**TINY, attention="neighborhood", attention_kwargs=dict(kernel_size=4))
    assert grid_op.op_kwargs() == {"kernel_size": 4, "spatial_shape": (4, 4)}
    params, images = random_params(grid_op), images_for(grid_op)
    np.testing.assert_allclose(jitted(grid_op)(params, images),
                               jitted(ViT(**TINY))(params, images), rtol=2e-5, atol=2e-5)


def logits_and_final_tokens(model):
    """`f(params, images) -> (logits, the final LayerNorm's output [B, N (+1), C])`."""
    forward = jitted(model, capture_intermediates=lambda module, _: module.name == "final_norm")

    def run(params, images):
        logits, state = forward(params, images)
        return logits, state["intermediates"]["final_norm"]["__call__"][0]

    return run


def test_gap_pools_the_mean_of_the_image_tokens():
    model = ViT(**TINY, pooling="gap")
    params, images = random_params(model), images_for(model)
    logits, tokens = logits_and_final_tokens(model)(params, images)
    assert tokens.shape[1] == model.tokens_per_example == 16
    head = params["params"]["head"]
    np.testing.assert_allclose(logits, tokens.mean(axis=1) @ head["kernel"] + head["bias"],
                               rtol=1e-5, atol=1e-5)


def test_cls_reads_out_the_class_token():
    model = ViT(**TINY, pooling="cls")
    params, images = random_params(model), images_for(model)
    run = logits_and_final_tokens(model)
    logits, tokens = run(params, images)
    assert tokens.shape[1] == model.tokens_per_example == 17
    head = params["params"]["head"]
    np.testing.assert_allclose(logits, tokens[:, 0] @ head["kernel"] + head["bias"],
                               rtol=1e-5, atol=1e-5)
    other_token = jax.random.normal(jax.random.key(5), params["params"]["cls_token"].shape)
    moved = {"params": {**params["params"], "cls_token": other_token}}
    assert not np.allclose(run(moved, images)[0], logits, atol=1e-3)


def shuffled_patches(images, patch, seed=0):
    """The same patches at other places: [B, H, W, C] -> [B, H, W, C]."""
    batch, side, _, channels = images.shape
    grid = side // patch
    tokens = patchify(images, patch)
    tokens = tokens[:, np.random.default_rng(seed).permutation(grid * grid)]
    x = tokens.reshape(batch, grid, grid, patch, patch, channels).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(images.shape)


@pytest.mark.parametrize("positions", ["rope", "learned"])
def test_positions_make_the_logits_depend_on_where_patches_are(positions):
    """With mean pooling and dense attention only positions tell the patches' places apart:
    shuffling the patches changes the logits; without positions (learned ones set to zero)
    it does not."""
    model = ViT(**TINY, positions=positions)
    params, images = random_params(model), images_for(model)
    forward, shuffled = jitted(model), shuffled_patches(images, model.patch_size)
    assert not np.allclose(forward(params, shuffled), forward(params, images), atol=1e-3)
    if positions == "learned":
        assert params["params"]["position_embedding"].shape == (16, 64)
        params = {"params": {**params["params"], "position_embedding": jnp.zeros((16, 64))}}
        np.testing.assert_allclose(forward(params, shuffled), forward(params, images),
                                   rtol=1e-5, atol=1e-5)
    else:
        assert "position_embedding" not in params["params"]


def test_rope_rows_put_the_unrotated_class_token_first():
    cos, sin = ViT(**TINY, pooling="cls").rope()
    image_cos, image_sin = ViT(**TINY, pooling="gap").rope()
    assert cos.shape == (17, 16)  # 1 + 4 x 4 tokens; head_dim 32, one angle per pair
    np.testing.assert_array_equal(cos[0], 1.0)
    np.testing.assert_array_equal(sin[0], 0.0)
    np.testing.assert_array_equal(cos[1:], image_cos)
    np.testing.assert_array_equal(sin[1:], image_sin)
    assert ViT(**TINY, positions="learned").rope() is None


def test_dropout_acts_in_training_only():
    model = ViT(**TINY, dropout=0.5)
    params, images = random_params(model), images_for(model)
    evaluated = jitted(model)(params, images)
    train = jax.jit(lambda params, key: model.apply(params, images, train=True,
                                                    rngs={"dropout": key}))
    trained = [train(params, jax.random.key(k)) for k in (0, 1)]
    assert not np.allclose(trained[0], evaluated, atol=1e-3)
    assert not np.allclose(trained[0], trained[1], atol=1e-3)  # drops follow the key


def test_bfloat16_computation_returns_float32_logits():
    model = ViT(**TINY, dtype=jnp.bfloat16)
    params, images = random_params(model), images_for(model)
    logits = jitted(model)(params, images)
    assert logits.dtype == jnp.float32
    reference = jitted(ViT(**TINY))(params, images)
    error = float(jnp.abs(logits - reference).max())
    assert 0 < error < 0.05 * float(jnp.abs(reference).max())


def ops_on_2d_grids():
    return [name for name in attention.names()
            if 2 in attention.get(name).capabilities.spatial_dims]


@pytest.mark.parametrize("name", ops_on_2d_grids())
def test_every_registered_attention_runs_inside_the_vit(name):
    op = attention.get(name)
    pooling = "cls" if op.capabilities.token_order == "any" else "gap"
    model = ViT(**{**TINY, "patch_size": 1}, attention=name, attention_kwargs=op.example_kwargs,
                pooling=pooling)
    logits = jitted(model)(random_params(model), images_for(model))
    assert logits.shape == (2, 5) and bool(jnp.isfinite(logits).all())
    assert not np.allclose(logits[0], logits[1], atol=1e-3)  # the images tell apart


def test_one_training_step_lowers_the_loss_from_uniform():
    model = ViT(**{**TINY, "depth": 1}, dropout=0.1)
    objective = Objective()
    params = objective.init(model, jax.random.key(0))
    batch = {"image": images_for(model, batch=8), "label": jnp.arange(8) % 5}
    optimizer = optax.adam(3e-3)

    @jax.jit
    def step(params):
        (loss, _), grads = jax.value_and_grad(objective.loss, argnums=1, has_aux=True)(
            model, params, batch, jax.random.key(7))
        updates, _ = optimizer.update(grads, optimizer.init(params))
        return loss, optax.apply_updates(params, updates)

    before, params = step(params)
    after, _ = step(params)
    assert before == pytest.approx(np.log(5), rel=1e-5)  # zero head: uniform prediction
    assert after < before - 0.01


def test_models_are_found_by_name():
    assert "vit" in models.names()
    assert models.get("vit").Model is ViT and models.get("vit").PRESETS is PRESETS
    model = models.build("vit", preset="B", resolution=16, num_classes=3, depth=1)
    assert (model.width, model.num_heads, model.depth) == (768, 12, 1)
    assert models.ViT is ViT


@pytest.mark.parametrize(("fields", "shape", "message"), [
    ({}, (2, 8, 4, 3), r"images have shape \(2, 8, 4, 3\); expected \[B, 8, 8, 3\]"),
    ({}, (2, 8, 8, 1), r"expected \[B, 8, 8, 3\]"),
    ({"patch_size": 3}, (2, 8, 8, 3), r"resolution 8 is not a multiple of patch_size 3; "
                                      r"patch sizes that fit: \[1, 2, 4, 8\]"),
    ({"pooling": "mean"}, (2, 8, 8, 3), r"pooling 'mean'; choose one of \('gap', 'cls'\)"),
    ({"positions": "sincos"}, (2, 8, 8, 3), r"positions 'sincos'; choose one of"),
    ({"num_classes": 0}, (2, 8, 8, 3), "num_classes must be a positive int"),
    ({"width": 24, "num_heads": 4}, (2, 8, 8, 3), r"positions='rope' needs width / "
     r"num_heads divisible by 4 .*got width 24, num_heads 4.*positions='learned'"),
    ({"pooling": "cls", "attention": "neighborhood"}, (2, 8, 8, 3),
     r"pooling='cls' adds a class token, which has no place in the token order 'grid' of "
     r"attention 'neighborhood'.*use pooling='gap'"),
    ({"pooling": "cls", "attention": "llsa"}, (2, 8, 8, 3), r"token order 'hierarchy' of "
                                                            r"attention 'llsa'.*pooling='gap'"),
    ({"attention": TOY_SEQUENCE}, (2, 8, 8, 3), f"'{TOY_SEQUENCE}' takes 1-D token grids"),
])
def test_bad_inputs_say_what_would_work(fields, shape, message):
    model = ViT(**{**TINY, **fields})
    with pytest.raises(ValueError, match=message):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(shape))


def test_rejects_integer_pixels():
    model = ViT(**TINY)
    with pytest.raises(ValueError, match=r"images are uint8; expected floats .* x / 127.5 - 1"):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8, 8, 3), jnp.uint8))
