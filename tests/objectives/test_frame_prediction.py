"""The frame-prediction objective: its loss and evaluation against direct computations with
stand-in models, the strip picture, and its checks."""

from __future__ import annotations

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lla import objectives
from lla.data import ArraySource
from lla.data.moving_mnist import MovingMNIST
from lla.evaluation import frames
from lla.objectives.frame_prediction import Objective, draw_strips


class Persistence(nn.Module):
    """Predicts that nothing moves: output t is frame t (times a learnable gain); generate
    repeats the last context frame."""

    resolution: int = 64
    channels: int = 1
    frames: int = 20

    def setup(self):
        self.gain = self.param("gain", nn.initializers.ones, ())

    def __call__(self, video, *, train=False):
        return video * self.gain

    def generate(self, context, horizon):
        return jnp.repeat(context[:, -1:] * self.gain, horizon, axis=1)


def test_loss_is_the_teacher_forced_mse_of_the_next_frames():
    video = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 5, 8, 8, 1)), jnp.float32)
    model = Persistence(resolution=8, frames=5)
    params = {"params": {"gain": jnp.asarray(0.5)}}
    loss, metrics = Objective().loss(model, params, {"video": video}, jax.random.key(0))
    expected = np.mean((0.5 * np.asarray(video)[:, :-1] - np.asarray(video)[:, 1:]) ** 2)
    assert float(loss) == pytest.approx(expected, rel=1e-6) and metrics == {}


def test_evaluation_scores_the_generated_frames_of_the_fixed_clips():
    source = MovingMNIST(split="test", frames=8, test_size=6)
    objective = Objective(context_frames=3, horizon=4, eval_count=5, eval_batch_size=2,
                          strip_count=2)
    model = Persistence(frames=8)
    params = objective.init(model, jax.random.key(0))
    evaluation = objective.evaluator(model, source, source)(params, jax.random.key(1))

    clips = source.videos(list(range(5)))  # a finite source: its first eval_count
    truth, last_context = clips[:, 3:7], clips[:, 2:3]
    generated = np.repeat(last_context, 4, axis=1)
    for name in ("mse", "psnr", "ssim"):
        curve = np.asarray(getattr(frames, name)(jnp.asarray(generated), jnp.asarray(truth)))
        assert evaluation.scalars[f"test/{name}"] == pytest.approx(curve.mean(), rel=1e-5)
        assert evaluation.scalars[f"test/{name}_last"] == pytest.approx(
            curve[:, -1].mean(), rel=1e-5)
        assert json.loads(evaluation.texts["per_frame"])[name] == pytest.approx(
            curve.mean(0), rel=1e-4)
    # Frames drift away from the last context frame: errors grow along the horizon.
    per_frame = json.loads(evaluation.texts["per_frame"])["mse"]
    assert per_frame[-1] > per_frame[0]
    strips = evaluation.images["strips"]
    assert strips.shape == (2 * (2 * 64 + 2) + 6, 7 * 66 - 2, 3)
    np.testing.assert_array_equal(strips, draw_strips(clips[:2, :7], generated[:2], 3))


def test_strips_put_the_truth_above_and_the_dimmed_context_then_predictions_below():
    truth = np.full((1, 3, 4, 4, 1), 1.0, np.float32)
    generated = np.full((1, 1, 4, 4, 1), -1.0, np.float32)
    picture = draw_strips(truth, generated, context=2)
    assert picture.shape == (10, 16, 3)
    assert (picture[:4, :4] == 255).all() and (picture[:4, 12:] == 255).all()  # truth row
    assert (picture[6:, :4] == 127).all()  # context frame, dimmed to the middle grey
    assert (picture[6:, 12:] == 0).all()  # the generated frame
    assert (picture[4:6] == 64).all()  # the gap


def test_checks_name_what_would_work():
    with pytest.raises(ValueError, match="horizon must be a positive int"):
        Objective(horizon=0)
    with pytest.raises(ValueError, match="exceed the 8-frame clips"):
        Objective(context_frames=5, horizon=4).model_fields(MovingMNIST(frames=8))
    images = ArraySource(np.zeros((2, 8, 8, 1), np.uint8), np.zeros(2, np.int64),
                         resolution=8)
    with pytest.raises(ValueError, match="needs a video source"):
        Objective().model_fields(images)
    assert Objective().model_fields(MovingMNIST(frames=20)) == {
        "resolution": 64, "channels": 1, "frames": 20}


def test_found_by_name():
    assert "frame_prediction" in objectives.names()
    assert objectives.build("frame_prediction", horizon=5).horizon == 5
