"""Input pipelines: embedded procedural data by default, image folders, IDX files, TFDS.

A source (`ImageSource`) serves `example(index) -> (uint8 [R, R, C], label)`; `batches` turns
any source into deterministic, resumable, host-sharded float32 batches in [-1, 1]. Sources by
name, through `get_source(name, **kwargs)`:

  "procedural"     `ProceduralShapes(resolution=64, channels=3)`: 10 classes of coloured
                   shapes, infinite, no files (the default); judge samples with
                   `shape_statistics`.
  "image_folder"   `ImageFolder(path, resolution, channels=3, verify=True, on_error="skip")`:
                   any image files below `path` (required; e.g. FFHQ); subfolder = class;
                   images that fail to decode are skipped with a counted warning.
  "fashion_mnist"  `fashion_mnist(directory="data/fashion-mnist", split="train",
                   resolution=32, channels=3)`: local IDX files, fetched once with
                   `bash scripts/fetch_fashion_mnist.sh`.
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

from collections.abc import Callable

from lla.data.arrays import ArraySource
from lla.data.base import ImageSource, batch_indices, batches
from lla.data.idx import fashion_mnist, read_idx
from lla.data.image_folder import ImageFolder
from lla.data.procedural import ProceduralShapes, shape_statistics
from lla.data.tfds_source import tfds_source

SOURCES: dict[str, Callable[..., ImageSource]] = {
    "procedural": ProceduralShapes,
    "image_folder": ImageFolder,
    "fashion_mnist": fashion_mnist,
}
TFDS_PREFIX = "tfds:"


def get_source(name: str = "procedural", **kwargs) -> ImageSource:
    """The source called `name` (see the module docstring), built with `kwargs`."""
    if name.startswith(TFDS_PREFIX) and len(name) > len(TFDS_PREFIX):
        return tfds_source(name[len(TFDS_PREFIX):], **kwargs)
    if name not in SOURCES:
        raise ValueError(f"unknown data source {name!r}; known: {', '.join(SOURCES)}, "
                         f"{TFDS_PREFIX}<tfds dataset name>")
    return SOURCES[name](**kwargs)


__all__ = [
    "SOURCES",
    "ArraySource",
    "ImageFolder",
    "ImageSource",
    "ProceduralShapes",
    "batch_indices",
    "batches",
    "fashion_mnist",
    "get_source",
    "read_idx",
    "shape_statistics",
    "tfds_source",
]
