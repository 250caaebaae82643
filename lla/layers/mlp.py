"""Transformer feed-forward blocks: the GELU MLP and SwiGLU."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


class Mlp(nn.Module):
    """[..., width] -> [..., width]: Dense(ratio·width), GELU (tanh), Dense(width)."""

    width: int
    ratio: float = 4.0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.Dense(int(self.width * self.ratio), dtype=self.dtype, name="fc1")(x)
        x = nn.gelu(x, approximate=True)
        return nn.Dense(self.width, dtype=self.dtype, name="fc2")(x)


class SwiGLU(nn.Module):
    """[..., width] -> [..., width]: Dense(hidden) for a SiLU gate and for a value, their
    product, Dense(width); no biases (Shazeer 2020, as in LLaMA).

    Attributes:
      width: input and output features.
      hidden: features of the gate and of the value.
      kernel_init: initialiser of the gate and value kernels (None: LeCun normal).
      out_init: initialiser of the output kernel, e.g. scaled down for deep residual stacks
        (None: LeCun normal).
      dtype: computation dtype (parameters stay float32).
    """

    width: int
    hidden: int
    kernel_init: nn.initializers.Initializer | None = None
    out_init: nn.initializers.Initializer | None = None
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        def dense(features, init, name):
            return nn.Dense(features, use_bias=False, dtype=self.dtype, name=name,
                            kernel_init=init or nn.initializers.lecun_normal())

        gate = dense(self.hidden, self.kernel_init, "gate")(x)
        value = dense(self.hidden, self.kernel_init, "value")(x)
        return dense(self.width, self.out_init, "out")(nn.silu(gate) * value)
