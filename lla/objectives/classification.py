"""Image classification with softmax cross-entropy: the objective "classification".

The model is called as `model.apply(params, images [B, H, W, C] in [-1, 1], train=...,
rngs={"dropout": ...}) -> logits float32 [B, K]` and has the fields resolution, channels and
num_classes (K), which this objective fills from the data (e.g. `lla.models.vit`).

    training     mean softmax cross-entropy against the labels, optionally label-smoothed
                 (target (1 - a) one_hot + a / K), on images optionally augmented on the
                 device (`augment_images`: random left-right mirror, random translation by
                 up to `max_shift` pixels); the batch accuracy is logged with it.
    evaluation   accuracy, plain cross-entropy and a confusion-matrix picture over a fixed
                 set of examples, every `config.eval_every` steps on the EMA weights:
                 - `config.eval_data` given: its first `eval_count` examples (all of a
                   smaller finite source), reported as "test/accuracy", "test/loss";
                 - no eval data, an infinite training source (procedural): `eval_count`
                   examples of the stream of seed `EVAL_SEED`, which no training run with
                   another seed reads (`eval_indices`), also "test/...";
                 - no eval data, a finite training source: its first `eval_count`
                   examples, which training reads too, so the accuracy is on training data
                   and named "train/accuracy", "train/loss".
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from lla.data.base import batch_indices, fill_rows
from lla.objectives.base import Evaluation
from lla.objectives.confusion import confusion_matrix, draw_confusion

# The seed whose example stream evaluations read from infinite sources; training runs use
# small seeds (config.seed), whose streams are disjoint from it (lla.data.base).
EVAL_SEED = 2**32


def cross_entropy(logits: jax.Array, labels: jax.Array,
                  label_smoothing: float = 0.0) -> jax.Array:
    """Softmax cross-entropy float32 [B] of logits [B, K] against int labels [B], with the
    target (1 - a) one_hot(label) + a / K for label smoothing a."""
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def augment_images(images: jax.Array, key: jax.Array, *, flip: bool,
                   max_shift: int) -> jax.Array:
    """images [B, H, W, C] -> [B, H, W, C]: each image mirrored left-right with probability
    1/2 (`flip`), then translated by integer offsets drawn uniformly from
    [-max_shift, max_shift] on each axis, the border pixels extended into the gap."""
    flip_key, shift_key = jax.random.split(key)
    batch, height, width, channels = images.shape
    if flip:
        mirrored = jax.random.bernoulli(flip_key, 0.5, (batch,))
        images = jnp.where(mirrored[:, None, None, None], images[:, :, ::-1], images)
    if max_shift:
        padded = jnp.pad(images, ((0, 0), (max_shift,) * 2, (max_shift,) * 2, (0, 0)),
                         mode="edge")
        corners = jax.random.randint(shift_key, (batch, 2), 0, 2 * max_shift + 1)
        images = jax.vmap(lambda image, corner: jax.lax.dynamic_slice(
            image, (corner[0], corner[1], 0), (height, width, channels)))(padded, corners)
    return images


def eval_indices(num_examples: int | None, count: int) -> list[int]:
    """The example indices an evaluation reads: the first min(count, N) of a finite source
    of N examples; of an infinite source, the first `count` positions of the stream of seed
    `EVAL_SEED` (indices EVAL_SEED·2^64 + p, never read by training with another seed)."""
    if num_examples is not None:
        return list(range(min(count, num_examples)))
    return batch_indices(None, batch_size=count, seed=EVAL_SEED, step=0)


def read_batches(source, indices: list[int],
                 batch_size: int) -> list[tuple[dict[str, np.ndarray], int]]:
    """Examples `indices` of `source` as (batch, rows used) pairs, each batch {"image":
    float32 [batch_size, H, W, C] in [-1, 1], "label": int32 [batch_size]}; the last one is
    zero-padded to batch_size, so a jitted function compiles once."""
    shape = (batch_size, source.resolution, source.resolution, source.channels)
    batches = []
    for first in range(0, len(indices), batch_size):
        chunk = indices[first:first + batch_size]
        batch = {"image": np.zeros(shape, np.float32), "label": np.zeros(batch_size, np.int32)}
        fill_rows(source, chunk, batch, 0)
        batches.append((batch, len(chunk)))
    return batches


@dataclasses.dataclass(frozen=True)
class Objective:
    """Softmax cross-entropy classification of images (see the module docstring).

    Attributes:
      label_smoothing: a in [0, 1); training targets (1 - a) one_hot + a / K.
      flip: mirror training images left-right at random (`augment_images`).
      max_shift: translate training images by up to this many pixels per axis (0: off).
      eval_count: examples per evaluation (all of a smaller finite source).
      eval_batch_size: examples per jitted forward pass in evaluation.
    """

    # Fields a resumed run may not change: none changes the model's parameters.
    STRUCTURAL_FIELDS: ClassVar[tuple[str, ...]] = ()

    label_smoothing: float = 0.0
    flip: bool = False
    max_shift: int = 0
    eval_count: int = 10_000
    eval_batch_size: int = 256

    def __post_init__(self):
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"classification: label_smoothing must be in [0, 1) (e.g. 0.1); "
                             f"got {self.label_smoothing!r}")
        if not isinstance(self.flip, bool):
            raise ValueError(f"classification: flip must be True or False; got {self.flip!r}")
        if isinstance(self.max_shift, bool) or not isinstance(self.max_shift, int) \
                or self.max_shift < 0:
            raise ValueError(f"classification: max_shift must be an int >= 0 (pixels, e.g. "
                             f"2; 0 turns translation off); got {self.max_shift!r}")
        for name in ("eval_count", "eval_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"classification: {name} must be a positive int; got "
                                 f"{value!r}")

    def model_fields(self, source) -> dict[str, Any]:
        """resolution, channels and num_classes of `source` (a labelled one)."""
        if source.num_classes < 2:
            raise ValueError(f"classification needs labelled data with at least 2 classes; "
                             f"{type(source).__name__} has num_classes={source.num_classes}. "
                             f"Use a labelled source, e.g. procedural or fashion_mnist")
        return {"resolution": source.resolution, "channels": source.channels,
                "num_classes": source.num_classes}

    def init(self, model: nn.Module, key: jax.Array):
        """Parameters of `model` initialised on one zero image with `key`."""
        return jax.jit(model.init)(
            key, jnp.zeros((1, model.resolution, model.resolution, model.channels)))

    def loss(self, model: nn.Module, params, batch, key: jax.Array):
        """(mean cross-entropy, {"accuracy": fraction of the batch predicted right}) of batch
        {"image": [B, H, W, C] in [-1, 1], "label": int32 [B]}; `key` drives dropout and,
        folded with 1, the augmentation."""
        images = batch["image"]
        if self.flip or self.max_shift:
            images = augment_images(images, jax.random.fold_in(key, 1), flip=self.flip,
                                    max_shift=self.max_shift)
        logits = model.apply(params, images, train=True, rngs={"dropout": key})
        value = cross_entropy(logits, batch["label"], self.label_smoothing).mean()
        accuracy = (logits.argmax(-1) == batch["label"]).mean(dtype=jnp.float32)
        return value, {"accuracy": accuracy}

    def evaluator(self, model: nn.Module, source, eval_source=None):
        """`evaluate(params, key) -> Evaluation` with scalars {"<split>/accuracy",
        "<split>/loss"} (split "test", or "train" when the examples are training data: see
        the module docstring) and images {"confusion": uint8 [H, W, 3]} (rows true classes,
        columns predictions; `class_names` of the data source label the rows when it has
        them). The loss is plain cross-entropy, without label smoothing. The examples are
        read once, at the first evaluation; `key` is not used.

        Raises:
          ValueError: `eval_source` serves images or classes other than the model's.
        """
        data = source if eval_source is None else eval_source
        split = "test" if eval_source is not None or source.num_examples is None else "train"
        served = (data.resolution, data.channels, data.num_classes)
        expected = (model.resolution, model.channels, model.num_classes)
        if served != expected:
            raise ValueError(f"classification: the eval data serves (resolution, channels, "
                             f"num_classes) = {served}, the model takes {expected} (from the "
                             f"training data); give config.eval_data the same resolution and "
                             f"channels as config.data")
        indices = eval_indices(data.num_examples, self.eval_count)
        batch_size = min(self.eval_batch_size, len(indices))
        class_names = getattr(data, "class_names", None)

        @jax.jit
        def forward(params, images, labels):
            logits = model.apply(params, images)
            return cross_entropy(logits, labels), logits.argmax(-1)

        batches = []

        def evaluate(params, key):
            del key  # the evaluation is deterministic
            if not batches:
                batches.extend(read_batches(data, indices, batch_size))
            losses, predictions = [], []
            for batch, rows in batches:
                loss, predicted = forward(params, batch["image"], batch["label"])
                losses.append(np.asarray(loss)[:rows])
                predictions.append(np.asarray(predicted)[:rows])
            labels = np.concatenate([batch["label"][:rows] for batch, rows in batches])
            matrix = confusion_matrix(labels, np.concatenate(predictions), model.num_classes)
            scalars = {f"{split}/accuracy": float(np.trace(matrix) / len(labels)),
                       f"{split}/loss": float(np.concatenate(losses).mean())}
            return Evaluation(scalars, {"confusion": draw_confusion(matrix, class_names)})

        return evaluate
