"""TFDS datasets by name, read by random access when tensorflow-datasets is installed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from lla.data.base import check_geometry
from lla.data.imaging import square_array

INSTALL_HINT = "pip install -e '.[tfds]'"


class TfdsSource:
    """Records of a TFDS data source (`builder.as_data_source(split)`): centre-cropped and
    resized (bicubic) `image_key` images with `label_key` labels (None: unlabelled).

    Shapes: `example` -> (uint8 `[resolution, resolution, channels]`, label).
    """

    def __init__(self, records: Sequence[dict[str, Any]], *, resolution: int, channels: int,
                 num_classes: int, image_key: str, label_key: str | None):
        check_geometry(resolution, channels)
        self.records = records
        self.num_examples = len(records)
        self.resolution, self.channels, self.num_classes = resolution, channels, num_classes
        self.image_key, self.label_key = image_key, label_key

    def example(self, index: int) -> tuple[np.ndarray, int]:
        """(image uint8 [R, R, C], label) of record `index`."""
        record = self.records[index]
        image = np.asarray(record[self.image_key])
        if image.ndim == 3 and image.shape[-1] == 1:
            image = image[..., 0]
        label = int(record[self.label_key]) if self.label_key else 0
        return square_array(Image.fromarray(image), self.resolution, self.channels), label


def tfds_source(name: str, split: str = "train", *, resolution: int, channels: int = 3,
                image_key: str = "image", label_key: str | None = "label",
                data_dir: str | None = None) -> TfdsSource:
    """TFDS dataset `name` (e.g. "celeb_a", "cifar10:3.0.2"), `split` (slices like
    "train[:90%]" work), prepared in ArrayRecord format under `data_dir` (default TFDS dir).

    Nothing is downloaded: prepare the dataset beforehand where there is network, with
    `tfds build NAME --file_format=array_record`, and copy the data directory over.
    """
    try:
        import tensorflow_datasets as tfds
    except ImportError as error:
        raise ImportError(f"TFDS datasets need tensorflow-datasets, which is not installed: "
                          f"run `{INSTALL_HINT}`") from error
    try:
        builder = tfds.builder(name, data_dir=data_dir)
        records = builder.as_data_source(split=split)
    except Exception as error:  # TFDS raises many types for missing/unprepared datasets
        raise RuntimeError(
            f"cannot open TFDS dataset {name!r} split {split!r} for random access: {error}. "
            f"lla reads TFDS through data sources, which need the dataset prepared locally in "
            f"ArrayRecord format: `tfds build {name} --file_format=array_record`") from error
    features = builder.info.features
    if image_key not in features:
        raise ValueError(f"TFDS dataset {name!r} has no feature {image_key!r}; features: "
                         f"{', '.join(features)}")
    if label_key and label_key not in features:
        raise ValueError(f"TFDS dataset {name!r} has no feature {label_key!r} (pass "
                         f"label_key=None for unlabelled use); features: {', '.join(features)}")
    num_classes = getattr(features[label_key], "num_classes", 0) if label_key else 0
    return TfdsSource(records, resolution=resolution, channels=channels,
                      num_classes=num_classes, image_key=image_key, label_key=label_key)
