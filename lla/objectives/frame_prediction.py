"""Next-frame video prediction: the objective "frame_prediction".

The model is a video family of `lla.models` (ConvS5 "convssm", "video_transformer"):
`model.apply(params, video [B, T, R, R, C] in [-1, 1], train=...) -> [B, T, R, R, C]`, where
output t predicts frame t + 1 from frames <= t, and `generate(context, horizon)` rolls the
prediction out on its own outputs. The model fields resolution, channels and frames (the
clip length) come from the data (`lla.data.moving_mnist.MovingMNIST`: batches
{"video": float32 [b, T, R, R, C]}).

    training     teacher-forced MSE: mean of (output[:, :-1] - video[:, 1:])^2 over all
                 predicted frames (as ConvS5 trains).
    evaluation   on `eval_count` fixed held-out clips (`config.eval_data`, e.g. the fixed
                 Moving-MNIST test split; else the stream of `EVAL_SEED` of an infinite
                 training source): condition on the first `context_frames`, generate the
                 next `horizon` and score them against the truth with `lla.evaluation.frames`
                 (per-pixel MSE, PSNR and SSIM on the [0, 1] scale): "test/mse",
                 "test/psnr", "test/ssim" (means over clips and generated frames),
                 "test/mse_last", ... (the last generated frame), the per-frame curves as
                 JSON text ("per_frame"), and a strip picture ("strips": per clip, the
                 true frames above, the context and the generated frames below).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lla.evaluation import frames as frame_metrics
from lla.objectives.base import Evaluation
from lla.objectives.classification import eval_indices

METRICS = ("mse", "psnr", "ssim")


def draw_strips(truth: np.ndarray, generated: np.ndarray, context: int) -> np.ndarray:
    """uint8 [H, W, 3] picture of clips truth [n, T, R, R, C] and generated [n, T - context,
    R, R, C] in [-1, 1]: per clip a row of the true frames, under it the context frames
    (dimmed) then the generated ones; 2-pixel gaps, a wider one between clips."""
    count, frames, size = truth.shape[:3]
    gap = 2
    below = np.concatenate([truth[:, :context] * 0.5 - 0.5, generated], axis=1)
    height = count * (2 * size + gap) + (count - 1) * 3 * gap
    picture = np.full((height, frames * (size + gap) - gap, 3), 64, np.uint8)
    for clip in range(count):
        for row, video in enumerate((truth[clip], below[clip])):
            top = clip * (2 * size + 4 * gap) + row * (size + gap)
            for t, frame in enumerate(video):
                tile = np.clip((frame + 1) * 127.5, 0, 255).astype(np.uint8)
                left = t * (size + gap)
                picture[top:top + size, left:left + size] = np.broadcast_to(
                    tile, (size, size, 3)) if tile.shape[-1] == 1 else tile
    return picture


@dataclasses.dataclass(frozen=True)
class Objective:
    """Next-frame prediction (see the module docstring).

    Attributes:
      context_frames: frames the evaluation conditions on (>= 1).
      horizon: frames it generates (>= 1); context_frames + horizon <= the clip length.
      eval_count: held-out clips per evaluation.
      eval_batch_size: clips per jitted generation.
      strip_count: clips drawn in the strip picture.
    """

    # Fields a resumed run may not change: none changes the model's parameters.
    STRUCTURAL_FIELDS: ClassVar[tuple[str, ...]] = ()

    context_frames: int = 10
    horizon: int = 10
    eval_count: int = 256
    eval_batch_size: int = 32
    strip_count: int = 4

    def __post_init__(self):
        for name in ("context_frames", "horizon", "eval_count", "eval_batch_size",
                     "strip_count"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"frame_prediction: {name} must be a positive int; got "
                                 f"{value!r}")

    def model_fields(self, source) -> dict[str, Any]:
        """resolution, channels and frames of a video source."""
        if not (hasattr(source, "frames") and hasattr(source, "videos")):
            raise ValueError(f"frame_prediction needs a video source (with `frames` and "
                             f"`videos(indices)`, e.g. "
                             f"moving_mnist); {type(source).__name__} serves images or text")
        if self.context_frames + self.horizon > source.frames:
            raise ValueError(f"frame_prediction: context_frames {self.context_frames} + "
                             f"horizon {self.horizon} exceed the {source.frames}-frame clips; "
                             f"lower them or use longer clips (data frames=...)")
        return {"resolution": source.resolution, "channels": source.channels,
                "frames": source.frames}

    def init(self, model: nn.Module, key: jax.Array):
        """Parameters of `model` initialised on one zero clip of its length."""
        return jax.jit(model.init)(key, jnp.zeros(
            (1, model.frames, model.resolution, model.resolution, model.channels)))

    def loss(self, model: nn.Module, params, batch, key: jax.Array):
        """(teacher-forced MSE, {}) of batch {"video": [B, T, R, R, C] in [-1, 1]}; `key`
        drives dropout where the model has it."""
        video = batch["video"]
        predicted = model.apply(params, video, train=True, rngs={"dropout": key})
        error = predicted[:, :-1].astype(jnp.float32) - video[:, 1:].astype(jnp.float32)
        return jnp.mean(error ** 2), {}

    def evaluator(self, model: nn.Module, source, eval_source=None):
        """`evaluate(params, key) -> Evaluation` (module docstring); the clips are read once,
        at the first evaluation; `key` is not used (generation is deterministic).

        Raises:
          ValueError: `eval_source` serves clips other than the model's or too short ones.
        """
        data = source if eval_source is None else eval_source
        served = (data.resolution, data.channels)
        if served != (model.resolution, model.channels):
            raise ValueError(f"frame_prediction: the eval data serves (resolution, channels) "
                             f"= {served}, the model takes {(model.resolution, model.channels)}")
        self.model_fields(data)
        indices = eval_indices(data.num_examples, self.eval_count)
        context, horizon = self.context_frames, self.horizon

        @jax.jit
        def score(params, clips):
            generated = model.apply(params, clips[:, :context], horizon,
                                    method=model.generate)
            truth = clips[:, context:context + horizon]
            values = {name: getattr(frame_metrics, name)(generated, truth) for name in METRICS}
            return generated, values

        clips = []

        def evaluate(params, key):
            del key
            if not clips:
                clips.append(data.videos(indices))
            per_frame = {name: [] for name in METRICS}
            strips = []
            for first in range(0, len(indices), self.eval_batch_size):
                batch = clips[0][first:first + self.eval_batch_size]
                generated, values = score(params, jnp.asarray(batch))
                for name in METRICS:
                    per_frame[name].append(np.asarray(values[name]))
                if first == 0:
                    strips.append(draw_strips(batch[:self.strip_count, :context + horizon],
                                              np.asarray(generated[:self.strip_count]),
                                              context))
            curves = {name: np.concatenate(v).mean(0) for name, v in per_frame.items()}
            scalars = {f"test/{name}": float(curve.mean()) for name, curve in curves.items()}
            scalars.update({f"test/{name}_last": float(curve[-1])
                            for name, curve in curves.items()})
            text = json.dumps({"context_frames": context, "clips": len(indices),
                               **{name: [round(float(v), 6) for v in curve]
                                  for name, curve in curves.items()}})
            return Evaluation(scalars, {"strips": strips[0]}, {"per_frame": text})

        return evaluate
