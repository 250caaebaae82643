"""DiT: shapes, parameter counts, adaLN-Zero start, Z-order invariance, every attention."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lla.attention as attention
from lla.models.dit import PRESETS, DiT, patchify, unpatchify


@pytest.fixture(autouse=True)
def _exact_matmuls():
    """float32 matmuls in full precision on every platform (a GPU's default is TF32), as the
    equality tolerances below assume."""
    with jax.default_matmul_precision("highest"):
        yield


def init(model, batch=2, seed=0):
    images = jax.random.normal(jax.random.key(seed), (batch, model.resolution,
                                                      model.resolution, model.channels))
    timesteps = jnp.linspace(1.0, 999.0, batch)
    labels = jnp.arange(batch) % max(model.num_classes, 1)
    params = model.init({"params": jax.random.key(1)}, images, timesteps,
                        labels if model.num_classes else None)
    return params, images, timesteps, labels


def perturbed(params, scale=0.05, seed=3):
    """Random non-zero parameters (a fresh adaLN-Zero model outputs exactly zero)."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(tree, [x + scale * jax.random.normal(key, x.shape)
                                     for x, key in zip(leaves, keys, strict=True)])


@pytest.mark.parametrize("patch_size", [1, 2])
def test_output_shape_and_zero_start(patch_size):
    model = DiT(resolution=16, patch_size=patch_size, **PRESETS["tiny"])
    params, images, timesteps, _ = init(model)
    out = model.apply(params, images, timesteps)
    assert out.shape == images.shape and out.dtype == jnp.float32
    np.testing.assert_array_equal(out, 0.0)  # adaLN-Zero + zero head
    assert np.abs(model.apply(perturbed(params), images, timesteps)).max() > 0


def test_patchify_round_trip():
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    np.testing.assert_array_equal(unpatchify(patchify(x, 2), 2, 4, 3), x)


def expected_parameter_count(depth, width, channels=3, patch=1, ratio=4, classes=0):
    def dense(fan_in, fan_out):
        return fan_in * fan_out + fan_out

    block = (4 * dense(width, width) + dense(width, ratio * width) + dense(ratio * width, width)
             + dense(width, 6 * width))
    return (dense(patch * patch * channels, width) + dense(256, width) + dense(width, width)
            + (classes + 1) * width * bool(classes)
            + depth * block + dense(width, 2 * width) + dense(width, patch * patch * channels))


def test_parameter_count_of_dit_s():
    model = DiT(resolution=32, **PRESETS["S"])
    shapes = jax.eval_shape(lambda: init(model, batch=1)[0])
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
    head_dim = 384 // 6
    norms = 12 * 2 * head_dim  # per-head RMS qk-norm scales, per block
    assert count == expected_parameter_count(12, 384) + norms
    assert 32e6 < count < 34e6  # DiT-S with one shared timestep embedder


def test_class_conditioning_and_label_dropout():
    model = DiT(resolution=8, num_classes=4, label_dropout=1.0, **PRESETS["tiny"])
    params, images, timesteps, labels = init(model)
    params = perturbed(params)
    conditional = model.apply(params, images, timesteps, labels)
    null = model.apply(params, images, timesteps, jnp.full_like(labels, 4))
    dropped = model.apply(params, images, timesteps, labels, train=True,
                          rngs={"label_dropout": jax.random.key(0)})
    np.testing.assert_allclose(dropped, null, rtol=1e-6)  # dropout 1.0: every label dropped
    assert not np.allclose(conditional, null)
    with pytest.raises(ValueError, match="needs labels"):
        model.apply(params, images, timesteps)


def test_zorder_is_invisible_with_dense_attention():
    """Dense attention is order-independent and RoPE positions move with the tokens, so the
    Z-order permutation must not change the output."""
    z_model = DiT(resolution=8, **PRESETS["tiny"])
    raster = DiT(resolution=8, zorder=False, **PRESETS["tiny"])
    params, images, timesteps, _ = init(z_model)
    params = perturbed(params)
    np.testing.assert_allclose(z_model.apply(params, images, timesteps),
                               raster.apply(params, images, timesteps), rtol=2e-5, atol=2e-6)


NON_CAUSAL_KWARGS = {"dense": {}, "llsa": dict(block_size=4, topk=2),
                     "neighborhood": dict(kernel_size=3)}


@pytest.mark.parametrize("name", attention.names())
def test_every_non_causal_attention_runs_inside_the_dit(name):
    op = attention.get(name)
    if op.capabilities.spatial_dims and 2 not in op.capabilities.spatial_dims:
        pytest.skip(f"{name} does not take 2-D token grids")
    assert name in NON_CAUSAL_KWARGS, f"add test kwargs for the new op {name!r}"
    model = DiT(resolution=8, attention=name, attention_kwargs=NON_CAUSAL_KWARGS[name],
                **PRESETS["tiny"])
    params, images, timesteps, _ = init(model)
    out = model.apply(perturbed(params), images, timesteps)
    assert out.shape == images.shape and bool(jnp.isfinite(out).all())


def test_grid_ops_get_raster_tokens_and_spatial_shape():
    """A neighbourhood as large as the grid is dense attention: with raster order and
    spatial_shape passed by the model, the DiT must match the dense one."""
    dense = DiT(resolution=8, patch_size=2, **PRESETS["tiny"])
    grid_op = DiT(resolution=8, patch_size=2, attention="neighborhood",
                  attention_kwargs=dict(kernel_size=4), **PRESETS["tiny"])
    assert grid_op.op_kwargs()["spatial_shape"] == (4, 4)
    np.testing.assert_array_equal(grid_op.token_order(), np.arange(16))
    params, images, timesteps, _ = init(dense)
    params = perturbed(params)
    np.testing.assert_allclose(grid_op.apply(params, images, timesteps),
                               dense.apply(params, images, timesteps), rtol=2e-5, atol=2e-6)
    local = DiT(resolution=8, patch_size=2, attention="neighborhood",
                attention_kwargs=dict(kernel_size=3), **PRESETS["tiny"])
    assert not np.allclose(local.apply(params, images, timesteps),
                           dense.apply(params, images, timesteps), atol=1e-4)


def test_rejects_wrong_image_shape():
    model = DiT(resolution=8, **PRESETS["tiny"])
    params, images, timesteps, _ = init(model)
    with pytest.raises(ValueError, match=r"expected \[B, 8, 8, 3\]"):
        model.apply(params, images[:, :4], timesteps)
