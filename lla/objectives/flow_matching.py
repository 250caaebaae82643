"""Rectified-flow matching on images (LLSA paper §3.2): the objective "flow_matching".

The model is a callable `apply_fn(x [B, H, W, C], timesteps f32 [B], labels int [B] | None)
-> velocity [B, H, W, C]`; images are NHWC in [-1, 1]. Noise level sigma in (0, 1]; the
model sees timesteps = sigma * T with T = `num_train_timesteps` (1000). The noise is
rescaled by s = `noise_scale(resolution)`:

    noise rescale  s = max(1, resolution / 64): 1 at <= 64, 2 at 128, 4 at 256.
    training       sigma uniform over {1/T, ..., 1} (no shift, no logit-normal);
                   x_t = (1 - sigma) * x0 + sigma * s * eps,  eps ~ N(0, I);
                   target v = d x_t / d sigma = s * eps - x0; plain MSE (mean).
    sampling       Euler (`flow_sampling`), 20 steps from x = s * eps; optional
                   classifier-free guidance.

`Objective` wraps this for the training loop: model fields from the data, initialisation,
the loss of a batch, and sample grids (with the data source's `sample_statistics`, when it
has them) as the periodic evaluation; with `fid_count` > 0 that evaluation also reports FID
and KID of `fid_count` samples against as many real images of the source
(`lla.evaluation.sample_quality`, the code behind `experiments/evaluate.py`). With
`alignment_weight` > 0 the loss adds SSA's alignment of the model's sparse attention with
dense attention (`lla.objectives.alignment`); sampling runs the sparse op alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lla.data.imaging import image_grid
from lla.evaluation import inception, sample_quality
from lla.objectives import flow_sampling
from lla.objectives.alignment import AlignedObjective
from lla.objectives.base import Evaluation
from lla.objectives.flow_sampling import VelocityFn

# The periodic FID samples from fold_in(evaluation key, FID_STREAM), leaving the grid's key.
FID_STREAM = 0xF1D


def noise_scale(resolution: int) -> float:
    """Resolution noise rescale s = max(1, resolution / 64): 1 at <= 64, 2 at 128, 4 at 256."""
    if resolution <= 0:
        raise ValueError(f"resolution must be positive, got {resolution}")
    return max(1.0, resolution / 64)


def sample_sigma(key: jax.Array, batch: int, num_train_timesteps: int = 1000) -> jax.Array:
    """f32 [batch], uniform over the discrete noise levels {1/T, 2/T, ..., 1}."""
    steps = jax.random.randint(key, (batch,), 1, num_train_timesteps + 1)
    return steps.astype(jnp.float32) / num_train_timesteps


def _per_example(sigma: jax.Array, x: jax.Array) -> jax.Array:
    """Reshapes sigma [B] (or a scalar) to broadcast over x [B, ...]."""
    sigma = jnp.asarray(sigma, jnp.float32)
    return sigma.reshape(sigma.shape + (1,) * (x.ndim - sigma.ndim))


def interpolate(x0: jax.Array, noise: jax.Array, sigma: jax.Array, scale: float) -> jax.Array:
    """x_t = (1 - sigma) * x0 + sigma * scale * noise; x0, noise [B, H, W, C], sigma [B]."""
    sigma = _per_example(sigma, x0)
    return (1.0 - sigma) * x0 + sigma * scale * noise


def velocity_target(x0: jax.Array, noise: jax.Array, scale: float) -> jax.Array:
    """The flow's velocity d x_t / d sigma = scale * noise - x0, shape of x0."""
    return scale * noise - x0


def loss(
    apply_fn: VelocityFn,
    x0: jax.Array,
    key: jax.Array,
    *,
    scale: float,
    labels: jax.Array | None = None,
    num_train_timesteps: int = 1000,
) -> tuple[jax.Array, dict[str, Any]]:
    """Flow-matching loss: plain mean-squared error of the predicted velocity, in float32.

    Args:
      apply_fn: the model, `apply_fn(x_t, timesteps, labels) -> velocity [B, H, W, C]`.
      x0: clean images [B, H, W, C] in [-1, 1].
      key: split as `sigma_key, noise_key = jax.random.split(key)`; then
        `sigma = sample_sigma(sigma_key, B, num_train_timesteps)` and
        `noise = jax.random.normal(noise_key, x0.shape, jnp.float32)`.
      scale: the noise rescale s (`noise_scale(resolution)`).
      labels: optional int [B] class labels, passed to `apply_fn` unchanged.
      num_train_timesteps: T; the model's timesteps are sigma * T (f32 [B]).

    Returns:
      (scalar mean over all elements, {"sigma": f32 [B], "per_example_loss": f32 [B]}).
    """
    sigma_key, noise_key = jax.random.split(key)
    x0 = x0.astype(jnp.float32)
    sigma = sample_sigma(sigma_key, x0.shape[0], num_train_timesteps)
    noise = jax.random.normal(noise_key, x0.shape, jnp.float32)
    x_t = interpolate(x0, noise, sigma, scale)
    prediction = apply_fn(x_t, sigma * num_train_timesteps, labels)
    squared_error = jnp.square(prediction.astype(jnp.float32) - velocity_target(x0, noise, scale))
    per_example = jnp.mean(squared_error, axis=tuple(range(1, x0.ndim)))
    return jnp.mean(squared_error), {"sigma": sigma, "per_example_loss": per_example}


@dataclasses.dataclass(frozen=True)
class Objective(AlignedObjective):
    """Flow matching for image models called as `model.apply(params, x, timesteps, labels,
    train=..., rngs={"label_dropout": ...})` with fields resolution, channels, num_classes.

    Attributes:
      noise_scale: s; 0 means the resolution rule `noise_scale(resolution)`.
      class_conditional: condition on the data's labels (else num_classes = 0).
      num_train_timesteps: T.
      sample_count, sample_steps, guidance_scale: the periodic sample grid: number of
        images, Euler steps, classifier-free guidance (1 = none).
      alignment_weight, alignment_full_probability: SSA alignment (`Alignment`): α (0 is
        off; SSA uses 10) and the probability p of a full-mode step; the model is called
        with `full_mode` and `mutable=["alignment"]` (e.g. `lla.models.dit`).
      fid_count: 0 (off) or the number (>= 2) of samples whose FID and KID every periodic
        evaluation reports (`samples/fid`, `samples/kid_mean`, `samples/kid_std`), with
        `sample_steps` and `guidance_scale`; needs the Inception weights
        (`bash scripts/fetch_fid_weights.sh`).
      fid_batch_size: images per sampler call and Inception batch of that FID.
    """

    # Fields a resumed run may not change (they change the model's parameters).
    STRUCTURAL_FIELDS: ClassVar[tuple[str, ...]] = ("class_conditional",)

    noise_scale: float = 0.0
    class_conditional: bool = False
    num_train_timesteps: int = 1000
    sample_count: int = 16
    sample_steps: int = 20
    guidance_scale: float = 1.0
    alignment_weight: float = 0.0
    alignment_full_probability: float = 0.5
    fid_count: int = 0
    fid_batch_size: int = 64

    def __post_init__(self):
        super().__post_init__()
        if self.fid_count < 0 or self.fid_count == 1:
            raise ValueError(f"fid_count must be 0 (off) or >= 2 (FID needs a covariance); "
                             f"got {self.fid_count}")
        if self.fid_batch_size < 1:
            raise ValueError(f"fid_batch_size must be >= 1; got {self.fid_batch_size}")

    def model_fields(self, source) -> dict[str, Any]:
        """resolution, channels and num_classes (0 unless class-conditional) of `source`."""
        return {"resolution": source.resolution, "channels": source.channels,
                "num_classes": source.num_classes if self.class_conditional else 0}

    def scale(self, model: nn.Module) -> float:
        """The noise rescale s used with `model`."""
        return self.noise_scale or noise_scale(model.resolution)

    def init(self, model: nn.Module, key: jax.Array):
        """Parameters of `model` initialised on one zero image (and label) with `key`."""
        images = jnp.zeros((1, model.resolution, model.resolution, model.channels))
        labels = jnp.zeros((1,), jnp.int32) if model.num_classes else None
        return jax.jit(model.init)(key, images, jnp.zeros((1,)), labels)

    def loss(self, model: nn.Module, params, batch, key: jax.Array):
        """Batch {"image": [B, H, W, C] in [-1, 1], "label": int32 [B]}; `key` splits into
        the loss's key (noise levels, noise) and the label-dropout key; with alignment, the
        loss adds α times the alignment term and the metrics report it (`Alignment.add`)."""
        loss_key, dropout_key = jax.random.split(key)
        labels = batch["label"] if model.num_classes else None
        terms = []

        def apply(x, timesteps, labels):
            velocity, term = self.alignment.apply(
                model, params, x, timesteps, labels, key=key, train=True,
                rngs={"label_dropout": dropout_key})
            terms.append(term)
            return velocity

        value, _ = loss(apply, batch["image"], loss_key, scale=self.scale(model),
                        labels=labels, num_train_timesteps=self.num_train_timesteps)
        return self.alignment.add(value, terms[0], {})

    def sampler(self, model: nn.Module, *, count: int, steps: int,
                guidance_scale: float = 1.0) -> Callable[[Any, jax.Array], jax.Array]:
        """Jitted `sample(params, key) -> uint8 [count, H, W, C]` (Euler, `steps` model
        evaluations; class-conditional models get labels 0, 1, 2, ... cycling)."""
        shape = (count, model.resolution, model.resolution, model.channels)
        labels = jnp.arange(count) % model.num_classes if model.num_classes else None
        scale = self.scale(model)

        @jax.jit
        def sample(params, key):
            def apply(x, timesteps, labels):
                return model.apply(params, x, timesteps, labels)
            images = flow_sampling.euler_sample(
                apply, key, shape, scale=scale, steps=steps, labels=labels,
                guidance_scale=guidance_scale,
                null_label=model.num_classes if model.num_classes else None,
                num_train_timesteps=self.num_train_timesteps)
            return flow_sampling.to_uint8(images)

        return sample

    def evaluator(self, model: nn.Module, source, eval_source=None):
        """Sample grid {"samples": uint8 image}, where the source scores samples
        {"samples/<statistic>": value} and, with `fid_count`, {"samples/fid",
        "samples/kid_mean", "samples/kid_std"} (`sample_quality.score`, its own key
        `fold_in(key, FID_STREAM)`); `eval_source` is not used (samples need no held-out
        data).

        Raises:
          FileNotFoundError: `fid_count` > 0 without the Inception weights (before training
            starts; the message names the fetch script).
        """
        del eval_source
        sample = self.sampler(model, count=self.sample_count, steps=self.sample_steps,
                              guidance_scale=self.guidance_scale)
        statistics = getattr(source, "sample_statistics", None)
        if self.fid_count:
            fid_params = inception.load_params()
            fid_batch = min(self.fid_batch_size, self.fid_count)
            fid_sample = self.sampler(model, count=fid_batch, steps=self.sample_steps,
                                      guidance_scale=self.guidance_scale)

        def evaluate(params, key):
            images = np.asarray(sample(params, key))
            scalars = {} if statistics is None else {
                f"samples/{name}": value for name, value in
                statistics(images.astype(np.float32) / 127.5 - 1.0).items()}
            if self.fid_count:
                scores = sample_quality.score(
                    lambda batch_key: fid_sample(params, batch_key), source,
                    count=self.fid_count, batch_size=fid_batch,
                    key=jax.random.fold_in(key, FID_STREAM), params=fid_params)
                scalars.update(scores.metrics())
            return Evaluation(scalars, {"samples": image_grid(images)})

        return evaluate
