"""Procedural shapes: determinism, structure, resolution independence, and the statistic that
tells them from noise."""

from __future__ import annotations

import numpy as np
import pytest

from lla.data.procedural import (
    MIN_STATISTICS_RESOLUTION,
    NUM_CLASSES,
    SHAPES,
    ProceduralShapes,
    background_residual,
    frame_mask,
    rgb_hue,
    shape_statistics,
    signed_distance,
)


def sample(source, count, start=0):
    """Images float32 [count, R, R, C] in [-1, 1] and labels [count]."""
    images, labels = zip(*(source.example(i) for i in range(start, start + count)), strict=True)
    return np.stack(images).astype(np.float32) / 127.5 - 1, np.array(labels)


@pytest.mark.parametrize(("resolution", "channels"), [(32, 3), (48, 1), (17, 3)])
def test_example_is_a_pure_function_of_the_index(resolution, channels):
    source = ProceduralShapes(resolution, channels)
    image, label = source.example(5)
    assert image.dtype == np.uint8 and image.shape == (resolution, resolution, channels)
    assert 0 <= label < NUM_CLASSES
    again, label_again = ProceduralShapes(resolution, channels).example(5)
    np.testing.assert_array_equal(image, again)
    assert label == label_again
    assert not np.array_equal(image, source.example(6)[0])


def test_same_picture_at_every_resolution():
    small, _ = sample(ProceduralShapes(32), 8)
    large, _ = sample(ProceduralShapes(128), 8)
    pooled = large.reshape(8, 32, 4, 32, 4, 3).mean(axis=(2, 4))
    assert np.abs(pooled - small).mean() < 0.02


def test_edges_are_about_a_pixel_wide():
    images, _ = sample(ProceduralShapes(64), 32)
    residual, border = background_residual(images)
    distance = np.abs(residual).max(-1)
    assert distance[:, border].max() < 0.02  # the frame is pure background
    strength = distance / distance.max(1, keepdims=True)
    edge = ((strength > 0.25) & (strength < 0.75)).sum(1)
    solid = (strength >= 0.75).sum(1)
    assert np.median(edge / solid) < 0.5


def test_all_classes_appear_and_images_vary():
    images, labels = sample(ProceduralShapes(16), 200)
    assert set(labels.tolist()) == set(range(NUM_CLASSES))
    assert images.std(axis=0).mean() > 0.1


@pytest.mark.parametrize("resolution", [32, 64])
def test_statistic_accepts_data_and_rejects_noise(resolution):
    images, labels = sample(ProceduralShapes(resolution), 64)
    data = shape_statistics(images, labels)
    assert data["background_rmse"] < 0.01
    assert 0.03 < data["coverage"] < 0.15
    assert data["valid_fraction"] == 1.0
    assert data["label_accuracy"] == 1.0
    noise = np.random.default_rng(0).uniform(-1, 1, images.shape).astype(np.float32)
    rejected = shape_statistics(noise, labels)
    assert rejected["background_rmse"] > 0.5
    assert rejected["coverage"] > 0.5
    assert rejected["valid_fraction"] == 0.0
    assert rejected["label_accuracy"] < 0.3


@pytest.mark.parametrize("resolution", [8, 11, 12, 13])
def test_statistic_at_small_resolutions(resolution):
    # Regression: at <= 12 px no pixel centre lies beyond BORDER, so the background frame was
    # empty and the plane fit crashed; the frame is now the outermost pixel ring there.
    images, labels = sample(ProceduralShapes(resolution), 64)
    data = shape_statistics(images, labels)
    assert data["valid_fraction"] == 1.0 and data["label_accuracy"] == 1.0
    assert data["background_rmse"] < 0.01
    noise = np.random.default_rng(0).uniform(-1, 1, images.shape).astype(np.float32)
    assert shape_statistics(noise, labels)["valid_fraction"] == 0.0


def test_frame_is_beyond_the_border_or_else_the_outermost_ring():
    def ring(resolution, width):
        inside = np.zeros((resolution, resolution), bool)
        inside[width:resolution - width, width:resolution - width] = True
        return ~inside.reshape(-1)

    np.testing.assert_array_equal(frame_mask(12), ring(12, 1))
    np.testing.assert_array_equal(frame_mask(13), ring(13, 1))  # centre 12/13 > 0.92
    np.testing.assert_array_equal(frame_mask(64), ring(64, 3))  # |x| > 0.92: 2.56 pixels


def test_statistic_refuses_images_below_the_minimum_and_the_source_skips_them():
    images, _ = sample(ProceduralShapes(MIN_STATISTICS_RESOLUTION - 1), 4)
    with pytest.raises(ValueError, match=r"need images of >= 8 x 8 pixels.*got 7 x 7"):
        shape_statistics(images)
    assert ProceduralShapes.sample_statistics(images) == {}
    assert ProceduralShapes.sample_statistics(sample(ProceduralShapes(8), 4)[0])


def test_statistic_sees_residual_noise():
    images, labels = sample(ProceduralShapes(32), 64)
    noisy = images + np.random.default_rng(1).normal(0, 0.1, images.shape).astype(np.float32)
    stats = shape_statistics(noisy, labels)
    assert 0.08 < stats["background_rmse"] < 0.12
    assert stats["coverage"] < 0.3  # only the background test rejects these
    assert stats["valid_fraction"] == 0.0
    assert stats["label_accuracy"] == 1.0


def test_statistic_sees_wrong_labels_and_blank_images():
    images, labels = sample(ProceduralShapes(32), 64)
    assert shape_statistics(images, (labels + 1) % NUM_CLASSES)["label_accuracy"] == 0.0
    blank = shape_statistics(np.zeros_like(images))
    assert blank["coverage"] == 0.0 and blank["valid_fraction"] == 0.0
    assert "label_accuracy" not in blank


def test_grey_images_keep_the_shapes_visible():
    images, labels = sample(ProceduralShapes(32, channels=1), 64)
    stats = shape_statistics(images, labels)
    assert stats["valid_fraction"] == 1.0
    assert "label_accuracy" not in stats  # hue needs colour


@pytest.mark.parametrize("shape", SHAPES)
def test_signed_distance_inside_and_outside(shape):
    points = np.array([0.0, 0.75 * 0.4, 0.99])
    distance = signed_distance(shape, points, np.zeros(3), 0.4)
    assert distance[2] > 0  # far outside
    if shape == "ring":
        assert distance[0] > 0 > distance[1]  # hole, band
    else:
        assert distance[0] < 0


def test_hue_of_primary_colours():
    rgb = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 1]], np.float32)
    np.testing.assert_allclose(rgb_hue(rgb), [0, 1 / 3, 2 / 3, 5 / 6], atol=1e-6)


def test_errors():
    with pytest.raises(ValueError, match=r"channels must be 1 .* or 3"):
        ProceduralShapes(32, channels=4)
    with pytest.raises(ValueError, match="resolution must be a positive int"):
        ProceduralShapes(0)
    with pytest.raises(ValueError, match="unknown shape 'star'"):
        signed_distance("star", np.zeros(1), np.zeros(1), 0.3)
    with pytest.raises(ValueError, match="must be square"):
        shape_statistics(np.zeros((2, 8, 6, 3)))
