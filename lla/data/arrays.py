"""Images held in memory as one uint8 array (IDX files, small datasets)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from lla.data.base import check_geometry
from lla.data.imaging import square_array


class ArraySource:
    """Images uint8 `[N, h, w]` or `[N, h, w, c]` (c in 1, 3, 4) with labels int `[N]`, served at
    `resolution` (centre crop + `resample`) and `channels` (grey is repeated for RGB).

    Shapes: `example` -> (uint8 `[resolution, resolution, channels]`, label). `class_names`
    (optional) label the classes in evaluations (e.g. confusion matrices). Resized images are
    kept after their first use while all of them fit in `cache_bytes` (default 1 GiB;
    Fashion-MNIST at 32 x 32 x 3 needs 184 MB), so later epochs skip the resize.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, *, resolution: int,
                 channels: int = 3, num_classes: int = 0,
                 class_names: tuple[str, ...] | None = None,
                 resample: Image.Resampling = Image.Resampling.BICUBIC,
                 cache_bytes: int = 2 ** 30):
        check_geometry(resolution, channels)
        images, labels = np.asarray(images), np.asarray(labels)
        grey_or_colour = images.ndim == 3 or (images.ndim == 4 and images.shape[-1] in (1, 3, 4))
        if images.dtype != np.uint8 or not grey_or_colour:
            raise ValueError(f"images must be uint8 [N, h, w] or [N, h, w, 1|3|4], got "
                             f"{images.dtype} {images.shape}")
        if labels.shape != images.shape[:1]:
            raise ValueError(f"{len(images)} images but labels of shape {labels.shape}")
        self.images, self.labels = images, labels.astype(np.int32)
        self.num_examples = len(images)
        self.resolution, self.channels = resolution, channels
        self.num_classes = num_classes
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        self.class_names = class_names
        self.resample = resample
        shape = (self.num_examples, resolution, resolution, channels)
        # Rows are written by the batching threads; each row once, before `cached` flips.
        self._cache = np.empty(shape, np.uint8) if np.prod(shape) <= cache_bytes else None
        self._cached = np.zeros(self.num_examples, bool)

    def example(self, index: int) -> tuple[np.ndarray, int]:
        """(image uint8 [R, R, C], label) of example `index`."""
        label = int(self.labels[index])
        if self._cache is not None and self._cached[index]:
            view = self._cache[index].view()
            view.flags.writeable = False
            return view, label
        image = self.images[index]
        if image.ndim == 3 and image.shape[-1] == 1:
            image = image[..., 0]
        resized = square_array(Image.fromarray(image), self.resolution, self.channels,
                               self.resample)
        if self._cache is not None:
            self._cache[index] = resized
            self._cached[index] = True
        return resized, label
