"""DiT: shapes, parameter counts, adaLN-Zero start, token orders from the op, every registered
attention inside the model, SSA alignment (`full_mode`) against the dense and the sparse
model."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lla.attention as attention
from lla import models
from lla.models.dit import PRESETS, DiT, patchify, unpatchify
from lla.objectives.alignment import layer_outputs, mean_alignment_loss
from tests.attention.toy import TOY_HIERARCHY, TOY_SEQUENCE


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


def test_hierarchy_order_is_invisible_when_the_op_is_dense():
    """A registered toy op that computes dense attention but asks for the hierarchy order:
    the DiT feeds it Z-order tokens, with RoPE positions moved with them, and must give the
    dense DiT's output (attention is permutation-equivariant)."""
    hierarchy = DiT(resolution=8, attention=TOY_HIERARCHY, **PRESETS["tiny"])
    raster = DiT(resolution=8, **PRESETS["tiny"])
    assert hierarchy.token_order().permutation is not None
    assert raster.token_order().permutation is None
    params, images, timesteps, _ = init(raster)
    params = perturbed(params)
    np.testing.assert_allclose(hierarchy.apply(params, images, timesteps),
                               raster.apply(params, images, timesteps), rtol=2e-5, atol=2e-6)


def run_inside_the_dit(name: str) -> jax.Array:
    """The op `name` with its `example_kwargs` inside a tiny DiT on 8 x 8 images."""
    op = attention.get(name)
    model = DiT(resolution=8, attention=name, attention_kwargs=op.example_kwargs,
                **PRESETS["tiny"])
    params, images, timesteps, _ = init(model)
    out = model.apply(perturbed(params), images, timesteps)
    assert out.shape == images.shape and bool(jnp.isfinite(out).all())
    return out


@pytest.mark.parametrize("name", attention.names())
def test_every_registered_attention_runs_inside_the_dit(name):
    if 2 not in attention.get(name).capabilities.spatial_dims:
        pytest.skip(f"{name} does not take 2-D token grids")
    run_inside_the_dit(name)


def test_models_are_found_by_name():
    assert "dit" in models.names()
    assert models.get("dit").Model is DiT and models.get("dit").PRESETS is PRESETS
    model = models.build("dit", preset="S", resolution=16, depth=1)
    assert (model.width, model.depth, model.resolution) == (384, 1, 16)
    with pytest.raises(ValueError, match=r"unknown model family 'vit2'; families: .*dit"):
        models.get("vit2")
    with pytest.raises(ValueError, match="unknown preset 'XL'; presets: tiny, S, B"):
        models.build("dit", preset="XL", resolution=16)


def test_grid_ops_get_raster_tokens_and_spatial_shape():
    """A neighbourhood as large as the grid is dense attention: with raster order and
    spatial_shape passed by the model, the DiT must match the dense one."""
    dense = DiT(resolution=8, patch_size=2, **PRESETS["tiny"])
    grid_op = DiT(resolution=8, patch_size=2, attention="neighborhood",
                  attention_kwargs=dict(kernel_size=4), **PRESETS["tiny"])
    assert grid_op.op_kwargs() == {"kernel_size": 4, "spatial_shape": (4, 4)}
    assert grid_op.token_order().permutation is None
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


def test_rejects_ops_that_do_not_take_images():
    model = DiT(resolution=8, attention=TOY_SEQUENCE, **PRESETS["tiny"])
    with pytest.raises(ValueError, match=f"'{TOY_SEQUENCE}' takes 1-D token grids, not the "
                                         "2-D grid"):
        init(model)


def test_raster_order_ablation_feeds_hierarchical_ops_raster_tokens():
    kwargs = dict(resolution=8, attention="llsa",
                  attention_kwargs=attention.get("llsa").example_kwargs, **PRESETS["tiny"])
    zorder, raster = DiT(**kwargs), DiT(**kwargs, raster_order=True)
    assert zorder.token_order().permutation is not None
    assert raster.token_order().permutation is None
    params, images, timesteps, _ = init(zorder)
    params = perturbed(params)
    assert not np.allclose(zorder.apply(params, images, timesteps),
                           raster.apply(params, images, timesteps), atol=1e-4)


def aligned(model, params, images, timesteps, full_mode):
    """(velocity, the layers' mean alignment term, their AlignedOutputs), jitted."""
    velocity, state = jax.jit(partial(model.apply, mutable=["alignment"]))(
        params, images, timesteps, full_mode=full_mode)
    return velocity, mean_alignment_loss(state["alignment"]), layer_outputs(state["alignment"])


def test_alignment_with_an_op_that_keeps_every_block_is_zero():
    """Top-K with K·B = N is dense attention: in a real DiT forward (Z-order, RoPE) O_s = O_f
    in every layer, the term is 0 to float32 rounding and both modes pass on the same."""
    model = DiT(resolution=8, attention="topk_block",
                attention_kwargs={"block_size": 4, "topk": 16}, **PRESETS["tiny"])
    params, images, timesteps, _ = init(DiT(resolution=8, **PRESETS["tiny"]))  # same params
    params = perturbed(params)
    full, term, layers = aligned(model, params, images, timesteps, True)
    sparse, _, _ = aligned(model, params, images, timesteps, False)
    assert len(layers) == model.depth and float(term) < 1e-10
    for layer in layers:
        np.testing.assert_allclose(layer.sparse, layer.full, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(full, sparse, rtol=1e-5, atol=1e-6)


def test_alignment_modes_pass_on_the_dense_and_the_sparse_models_outputs():
    """LLSA at block 4, top-2: the term is positive, the modes differ, full mode is the dense
    DiT's velocity and sparse mode the LLSA DiT's (same parameters, alignment off)."""
    kwargs = dict(resolution=8, **PRESETS["tiny"])
    model = DiT(attention="llsa", attention_kwargs={"block_size": 4, "topk": 2}, **kwargs)
    dense = DiT(**kwargs)
    params, images, timesteps, _ = init(dense)  # the op does not change the parameters
    params = perturbed(params)
    full, term, layers = aligned(model, params, images, timesteps, jnp.bool_(True))
    sparse, _, sparse_layers = aligned(model, params, images, timesteps, jnp.bool_(False))
    assert len(layers) == model.depth
    assert 1e-4 < float(term) < np.inf
    for name in ("full", "sparse"):  # block 0 sees the same input in both modes
        np.testing.assert_allclose(getattr(sparse_layers[0], name), getattr(layers[0], name),
                                   rtol=1e-6, atol=1e-7)
    assert not np.allclose(full, sparse, atol=1e-4)
    np.testing.assert_allclose(full, jax.jit(dense.apply)(params, images, timesteps),
                               rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(sparse, jax.jit(model.apply)(params, images, timesteps),
                               rtol=1e-6, atol=1e-7)


def test_remat_recomputes_blocks_with_the_same_params_values_and_gradients():
    """`remat=True` (the 1024² recipe) keeps the parameter tree and gives the same loss and
    gradients; its backward really recomputes (a checkpoint in the gradient's jaxpr)."""
    plain = DiT(resolution=8, attention="llsa", attention_kwargs={"block_size": 4, "topk": 2},
                **PRESETS["tiny"])
    remat = plain.clone(remat=True)
    params, images, timesteps, _ = init(plain)
    params = perturbed(params)
    assert jax.tree.structure(params) == jax.tree.structure(init(remat)[0])

    def loss(model, p):
        return jnp.mean(model.apply(p, images, timesteps) ** 2)

    value, grads = jax.value_and_grad(partial(loss, plain))(params)
    remat_value, remat_grads = jax.value_and_grad(partial(loss, remat))(params)
    np.testing.assert_allclose(remat_value, value, rtol=1e-6)
    for got, want in zip(jax.tree.leaves(remat_grads), jax.tree.leaves(grads), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    jaxpr = str(jax.make_jaxpr(jax.grad(partial(loss, remat)))(params))
    assert "checkpoint" in jaxpr or "remat" in jaxpr
    assert "checkpoint" not in str(jax.make_jaxpr(jax.grad(partial(loss, plain)))(params))
