"""Conditioning embeddings for diffusion models: timesteps and class labels."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp


def timestep_features(timesteps: jax.Array, dim: int = 256,
                      max_period: float = 10000.0) -> jax.Array:
    """Sinusoidal features [B, dim] (cos first, then sin) of float timesteps [B]."""
    half = dim // 2
    frequencies = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    angles = timesteps.astype(jnp.float32)[:, None] * frequencies[None]
    return jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1)


class TimestepEmbedder(nn.Module):
    """timesteps [B] -> [B, width]: sinusoidal features, then Dense-SiLU-Dense."""

    width: int
    features: int = 256
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, timesteps: jax.Array) -> jax.Array:
        x = timestep_features(timesteps, self.features).astype(self.dtype)
        x = nn.Dense(self.width, dtype=self.dtype, name="fc1")(x)
        return nn.Dense(self.width, dtype=self.dtype, name="fc2")(nn.silu(x))


class LabelEmbedder(nn.Module):
    """labels [B] -> [B, width]. Row `num_classes` is the "no label" embedding used for
    classifier-free guidance; with `dropout` > 0 and `train`, labels are replaced by it with
    that probability (rng stream "label_dropout")."""

    num_classes: int
    width: int
    dropout: float = 0.0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, labels: jax.Array, *, train: bool) -> jax.Array:
        if train and self.dropout > 0:
            drop = jax.random.bernoulli(self.make_rng("label_dropout"), self.dropout,
                                        labels.shape)
            labels = jnp.where(drop, self.num_classes, labels)
        table = nn.Embed(self.num_classes + 1, self.width, dtype=self.dtype, name="table")
        return table(labels)
