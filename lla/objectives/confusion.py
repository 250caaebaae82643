"""Confusion matrices of a classifier: the counts, and a picture of them drawn with PIL.

    matrix = confusion_matrix(labels, predictions, num_classes=10)   # int64 [10, 10]
    image = draw_confusion(matrix, class_names)                      # uint8 [H, W, 3]

In the picture rows are true classes and columns predictions; each cell shows its count on a
colour from white (none of its row) to dark blue (all of its row), so a good classifier
draws a dark diagonal whatever the class frequencies.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

CELL = 40  # cell side in pixels (wider when a count needs it)
PAD = 6  # space around labels and the picture's edge
EMPTY, FULL = np.array([255, 255, 255]), np.array([8, 48, 107])  # row fraction 0 and 1
FONT_SIZE = 13


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray,
                     num_classes: int) -> np.ndarray:
    """Counts int64 [C, C]: entry [t, p] is the number of examples of true class t predicted
    as p, from labels and predictions int [n] in [0, C).

    Raises:
      ValueError: shapes that differ or are not 1-D, or a value outside [0, num_classes).
    """
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    if labels.ndim != 1 or labels.shape != predictions.shape:
        raise ValueError(f"confusion_matrix: labels and predictions must both be [n]; got "
                         f"{labels.shape} and {predictions.shape}")
    for name, values in (("labels", labels), ("predictions", predictions)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"confusion_matrix: {name} range over [{values.min()}, "
                             f"{values.max()}], outside the {num_classes} classes "
                             f"[0, {num_classes})")
    flat = labels.astype(np.int64) * num_classes + predictions
    return np.bincount(flat, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def row_fractions(matrix: np.ndarray) -> np.ndarray:
    """float [C, C]: each count's fraction of its row (0 in an empty row)."""
    return matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)


def draw_confusion(matrix: np.ndarray, class_names: Sequence[str] | None = None) -> np.ndarray:
    """The picture of a confusion matrix: uint8 [H, W, 3].

    Args:
      matrix: int [C, C] counts, rows true classes, columns predictions.
      class_names: C names; rows are labelled "index: name", columns by index.

    Cell colours go linearly from EMPTY to FULL with the count's fraction of its row
    (`row_fractions`); counts are white on cells of at least half a row, else black. The
    grid is C cells of max(CELL, widest count + 2 PAD) pixels per side, below two header
    lines ("predicted", the column indices) and right of the row labels (headed "true"),
    with PAD pixels of margin.
    """
    matrix = np.asarray(matrix)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"draw_confusion: matrix must be square [C, C]; got {matrix.shape}")
    classes = matrix.shape[0]
    if class_names is not None and len(class_names) != classes:
        raise ValueError(f"draw_confusion: {len(class_names)} class names for {classes} "
                         f"classes")
    font = ImageFont.load_default(size=FONT_SIZE)

    def width_of(text: str) -> int:
        return int(np.ceil(font.getlength(text)))

    row_labels = [f"{i}: {class_names[i]}" if class_names is not None else str(i)
                  for i in range(classes)]
    cell = max(CELL, max(width_of(str(n)) for n in matrix.ravel()) + 2 * PAD)
    left = max(width_of(label) for label in [*row_labels, "true"]) + 2 * PAD
    top = 2 * FONT_SIZE + 3 * PAD
    grid = classes * cell
    width = max(left + grid, left + width_of("predicted")) + PAD
    image = Image.new("RGB", (width, top + grid + PAD), tuple(EMPTY))
    draw = ImageDraw.Draw(image)
    draw.text((left + grid // 2, PAD), "predicted", fill="black", font=font, anchor="mt")
    draw.text((PAD, top - PAD), "true", fill="black", font=font, anchor="ls")
    fractions = row_fractions(matrix)
    colours = np.round(EMPTY + fractions[..., None] * (FULL - EMPTY)).astype(np.uint8)
    for i in range(classes):
        draw.text((PAD, top + i * cell + cell // 2), row_labels[i], fill="black", font=font,
                  anchor="lm")
        draw.text((left + i * cell + cell // 2, top - PAD), str(i), fill="black", font=font,
                  anchor="ms")
        for j in range(classes):
            x, y = left + j * cell, top + i * cell
            draw.rectangle((x, y, x + cell - 1, y + cell - 1), fill=tuple(colours[i, j]),
                           outline=(200, 200, 200))
            draw.text((x + cell // 2, y + cell // 2), str(matrix[i, j]), font=font,
                      anchor="mm", fill="white" if fractions[i, j] >= 0.5 else "black")
    return np.asarray(image, np.uint8)
