"""The classification objective: the loss and accuracy against hand-written ones, dropout
keys, the confusion matrix and its picture, evaluation on held-out examples."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lla import objectives
from lla.data import ArraySource, ProceduralShapes, batch_indices
from lla.data.base import INFINITE_SEED_STRIDE
from lla.models.vit import PRESETS, ViT
from lla.objectives.classification import EVAL_SEED, Objective, augment_images, eval_indices
from lla.objectives.confusion import CELL, FULL, confusion_matrix, draw_confusion

LOGITS = np.array([[2.0, -1.0, 0.5], [0.1, 0.2, 3.0], [1.0, 1.0, -2.0], [-0.5, 0.0, 0.4]],
                  np.float32)
LABELS = np.array([0, 1, 1, 2], np.int32)


@pytest.fixture(autouse=True)
def _exact_matmuls():
    with jax.default_matmul_precision("highest"):
        yield


class FixedLogits(nn.Module):
    """Returns LOGITS whatever the images, with dropout (rng "dropout") in training."""

    dropout: float = 0.0

    @nn.compact
    def __call__(self, images, *, train=False):
        return nn.Dropout(self.dropout, deterministic=not train)(jnp.asarray(LOGITS))


def hand_written_cross_entropy(logits, labels, smoothing):
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    classes = logits.shape[-1]
    per_example = [-(1 - smoothing) * log_p[i, y] - smoothing / classes * log_p[i].sum()
                   for i, y in enumerate(labels)]
    return float(np.mean(per_example))


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_loss_is_the_mean_cross_entropy_and_accuracy_the_fraction_right(smoothing):
    batch = {"image": jnp.zeros((4, 2, 2, 1)), "label": jnp.asarray(LABELS)}
    loss, metrics = Objective(label_smoothing=smoothing).loss(FixedLogits(), {}, batch,
                                                              jax.random.key(0))
    assert float(loss) == pytest.approx(hand_written_cross_entropy(LOGITS, LABELS, smoothing),
                                        rel=1e-6)
    assert float(metrics["accuracy"]) == 0.5  # examples 0 and 3 (argmax 0 and 2) are right


def test_the_key_drives_dropout():
    batch = {"image": jnp.zeros((4, 2, 2, 1)), "label": jnp.asarray(LABELS)}
    objective = Objective()
    losses = [float(objective.loss(FixedLogits(dropout=0.5), {}, batch, jax.random.key(k))[0])
              for k in (0, 0, 1)]
    assert losses[0] == losses[1] != losses[2]


def shifted_with_edges(image: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """image [H, W, C] moved by (dy, dx) pixels, border pixels extended, by index clamping."""
    height, width = image.shape[:2]
    rows = np.clip(np.arange(height) - dy, 0, height - 1)
    columns = np.clip(np.arange(width) - dx, 0, width - 1)
    return image[rows][:, columns]


def test_augmentation_mirrors_and_translates_each_image_within_bounds():
    images = np.random.default_rng(0).normal(size=(64, 5, 7, 2)).astype(np.float32)
    out = np.asarray(augment_images(jnp.asarray(images), jax.random.key(3), flip=True,
                                    max_shift=2))
    mirrored, offsets = [], set()
    for image, augmented in zip(images, out, strict=True):
        matches = [(flip, dy, dx) for flip in (False, True)
                   for dy in range(-2, 3) for dx in range(-2, 3)
                   if np.array_equal(shifted_with_edges(image[:, ::-1] if flip else image,
                                                        dy, dx), augmented)]
        assert matches, "an augmented image is no mirror/translation of its input"
        mirrored.append(matches[0][0])
        offsets.add(matches[0][1:])
    assert 16 < sum(mirrored) < 48  # about half are mirrored
    assert len(offsets) > 15 and {(-2, -2), (2, 2)} & offsets  # offsets fill the range
    plain = augment_images(jnp.asarray(images), jax.random.key(3), flip=False, max_shift=0)
    np.testing.assert_array_equal(plain, images)


def test_augmentation_applies_to_the_training_images_only_when_asked():
    seen = []

    class Recorder(nn.Module):
        @nn.compact
        def __call__(self, images, *, train=False):
            seen.append(images)
            return jnp.zeros((images.shape[0], 3))

    images = jnp.asarray(np.random.default_rng(1).normal(size=(8, 4, 4, 1)), jnp.float32)
    batch = {"image": images, "label": jnp.zeros(8, jnp.int32)}
    Objective().loss(Recorder(), {}, batch, jax.random.key(0))
    Objective(flip=True, max_shift=1).loss(Recorder(), {}, batch, jax.random.key(0))
    np.testing.assert_array_equal(seen[0], images)
    np.testing.assert_array_equal(seen[1], augment_images(
        images, jax.random.fold_in(jax.random.key(0), 1), flip=True, max_shift=1))
    assert not np.array_equal(seen[1], images)


def test_confusion_matrix_counts_true_rows_and_predicted_columns():
    matrix = confusion_matrix(np.array([0, 0, 1, 2, 2, 2]), np.array([0, 1, 1, 2, 0, 2]), 3)
    np.testing.assert_array_equal(matrix, [[1, 1, 0], [0, 1, 0], [1, 0, 2]])
    assert matrix.dtype == np.int64
    with pytest.raises(ValueError, match=r"predictions range over \[0, 3\], outside the 3 "
                                         r"classes \[0, 3\)"):
        confusion_matrix(np.array([0, 1]), np.array([0, 3]), 3)
    with pytest.raises(ValueError, match="must both be"):
        confusion_matrix(np.array([0, 1]), np.array([0]), 3)


def full_cells(image):
    """bool [H, W]: the pixels of the colour of a whole row (fraction 1)."""
    return np.all(image == FULL, axis=-1)


def test_picture_grows_by_one_cell_per_class_and_marks_where_the_counts_are():
    small, large = (draw_confusion(np.eye(n, dtype=np.int64) * 5) for n in (3, 6))
    assert small.dtype == np.uint8 and small.shape[-1] == 3
    assert large.shape[0] - small.shape[0] == large.shape[1] - small.shape[1] == 3 * CELL
    # every example of class 0 predicted as 2: the one full cell is the top row's right end
    matrix = np.zeros((3, 3), np.int64)
    matrix[0, 2] = 7
    image = draw_confusion(matrix)
    ys, xs = np.nonzero(full_cells(image))
    assert len(ys) > CELL * CELL // 2
    assert ys.max() - ys.min() < CELL and xs.max() - xs.min() < CELL  # one cell
    assert ys.mean() < image.shape[0] / 2 < xs.mean()  # top, right
    inside = image[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    assert inside.min(axis=-1).max() > 200  # the count, in white on the full cell
    # the diagonal matrix: three full cells along the top-left to bottom-right diagonal
    ys, xs = np.nonzero(full_cells(small))
    assert np.corrcoef(ys, xs)[0, 1] > 0.8


def test_picture_labels_rows_with_class_names():
    plain = draw_confusion(np.eye(2, dtype=np.int64))
    named = draw_confusion(np.eye(2, dtype=np.int64), ["t-shirt/top", "ankle boot"])
    assert named.shape[0] == plain.shape[0] and named.shape[1] > plain.shape[1]
    with pytest.raises(ValueError, match="3 class names for 2 classes"):
        draw_confusion(np.eye(2, dtype=np.int64), ["a", "b", "c"])


class AlwaysClassZero(nn.Module):
    """A classifier of 8 x 8 RGB images that always predicts class 0 (logit 1, others 0)."""

    resolution: int = 8
    channels: int = 3
    num_classes: int = 10

    @nn.compact
    def __call__(self, images, *, train=False):
        return jnp.broadcast_to(jax.nn.one_hot(0, self.num_classes), (len(images),
                                                                      self.num_classes))


def test_evaluation_counts_every_held_out_example_once():
    """20 procedural examples in batches of 8 (the last one padded with zeros, labels 0):
    the accuracy of always answering 0 is the fraction of label 0 among the 20, and the
    loss is the cross-entropy of logits (1, 0, ..., 0)."""
    source = ProceduralShapes(resolution=8)
    evaluate = Objective(eval_count=20, eval_batch_size=8).evaluator(AlwaysClassZero(), source)
    evaluation = evaluate({}, jax.random.key(0))
    labels = np.array([source.example(i)[1] for i in eval_indices(None, 20)])
    assert evaluation.scalars["test/accuracy"] == pytest.approx(np.mean(labels == 0))
    log_p = np.log(np.e / (np.e + 9))
    expected_loss = np.mean(np.where(labels == 0, -log_p, 1 - log_p))
    assert evaluation.scalars["test/loss"] == pytest.approx(expected_loss, rel=1e-6)
    assert set(evaluation.images) == {"confusion"} and evaluation.images["confusion"].ndim == 3


def test_evaluation_of_a_vit_on_procedural_shapes():
    model = ViT(resolution=8, num_classes=10, patch_size=2, **PRESETS["tiny"])
    objective = Objective(eval_count=16, eval_batch_size=16)
    params = objective.init(model, jax.random.key(0))
    evaluation = objective.evaluator(model, ProceduralShapes(resolution=8))(
        params, jax.random.key(1))
    assert set(evaluation.scalars) == {"test/accuracy", "test/loss"}
    assert 0.0 <= evaluation.scalars["test/accuracy"] <= 1.0
    assert evaluation.scalars["test/loss"] == pytest.approx(np.log(10), rel=1e-5)  # zero head
    image = evaluation.images["confusion"]
    assert image.dtype == np.uint8 and image.shape[-1] == 3


def test_eval_indices_are_never_training_indices():
    held_out = set(eval_indices(None, 1000))
    assert len(held_out) == 1000
    for seed in (0, 1, 2**31 - 1, EVAL_SEED + 1):
        for step in (0, 5, 10**9):
            assert held_out.isdisjoint(batch_indices(None, batch_size=64, seed=seed, step=step))
    assert min(held_out) >= EVAL_SEED * INFINITE_SEED_STRIDE
    assert eval_indices(50, 1000) == list(range(50)) and eval_indices(50, 7) == list(range(7))


def array_source(count, num_classes=3, class_names=None):
    rng = np.random.default_rng(0)
    source = ArraySource(rng.integers(0, 256, (count, 8, 8), dtype=np.uint8),
                         np.arange(count) % max(num_classes, 1), resolution=8, channels=3,
                         num_classes=num_classes)
    if class_names is not None:
        source.class_names = class_names
    return source


def test_finite_sources_report_test_or_train_accuracy():
    model = AlwaysClassZero(num_classes=3)
    objective = Objective(eval_count=100, eval_batch_size=64)
    held_out = objective.evaluator(model, array_source(30), array_source(12))({}, None)
    assert held_out.scalars["test/accuracy"] == pytest.approx(4 / 12)  # all 12, 4 of class 0
    on_training_data = objective.evaluator(model, array_source(30))({}, None)
    assert on_training_data.scalars == {"train/accuracy": pytest.approx(10 / 30),
                                        "train/loss": pytest.approx(
                                            -np.log(np.e / (np.e + 2)) / 3
                                            + 2 / 3 * (1 - np.log(np.e / (np.e + 2))))}
    named = objective.evaluator(model, array_source(30), array_source(
        12, class_names=["t-shirt/top", "trouser", "pullover"]))({}, None)
    assert named.images["confusion"].shape[1] > held_out.images["confusion"].shape[1]


def test_eval_data_must_match_the_model():
    with pytest.raises(ValueError, match=r"eval data serves \(resolution, channels, "
                                         r"num_classes\) = \(8, 3, 3\), the model takes "
                                         r"\(8, 3, 10\)"):
        Objective().evaluator(AlwaysClassZero(), ProceduralShapes(resolution=8),
                              array_source(12))


def test_found_by_name_with_fields_from_the_data():
    assert "classification" in objectives.names()
    objective = objectives.build("classification", label_smoothing=0.1)
    assert objective.STRUCTURAL_FIELDS == ()
    assert objective.model_fields(ProceduralShapes(resolution=16, channels=1)) == {
        "resolution": 16, "channels": 1, "num_classes": 10}
    with pytest.raises(ValueError, match="needs labelled data with at least 2 classes; "
                                         "ArraySource has num_classes=0"):
        objective.model_fields(array_source(4, num_classes=0))


@pytest.mark.parametrize(("fields", "message"), [
    ({"label_smoothing": 1.0}, r"label_smoothing must be in \[0, 1\)"),
    ({"eval_count": 0}, "eval_count must be a positive int"),
    ({"eval_batch_size": 2.5}, "eval_batch_size must be a positive int"),
    ({"max_shift": -1}, "max_shift must be an int >= 0"),
    ({"flip": 1}, "flip must be True or False"),
])
def test_bad_fields_say_what_would_work(fields, message):
    with pytest.raises(ValueError, match=message):
        Objective(**fields)
