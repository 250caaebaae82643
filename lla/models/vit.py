"""Vision transformer (ViT) classifier on pixels or patches, with any registered attention.

    model = Model(resolution=32, channels=1, num_classes=10, patch_size=4, **PRESETS["S"])
    logits = model.apply(params, images)                 # [B, H, W, C] -> f32 [B, classes]

Patchify (patch size 1 = one token per pixel) and a linear projection; learned absolute
position embeddings are added here, in raster order ("learned"), or 2-D RoPE rotates q and k
in every layer ("rope": half of each head's dims per axis, the positions permuted with the
tokens). The tokens are then permuted once into the order the attention op asks for
(`lla.attention.token_order`: Z-order for hierarchical ops such as LLSA, raster order plus
`spatial_shape` for ops on token grids such as "neighborhood"), so no layer permutes; no
output needs the order back, since pooling does not depend on it. Pre-LN blocks: LayerNorm,
self-attention (q, k, v, out with bias; per-head RMS qk-norm), residual; LayerNorm, GELU-tanh
MLP, residual; dropout (off by default) on both branches. A final LayerNorm, pooling and a
zero-initialised linear head (so a fresh model predicts the uniform distribution).

Pooling: "gap" averages the image tokens; "cls" prepends a learned class token and reads it
out. The class token is no pixel: it has no place in an LLSA hierarchy or a neighbourhood
grid, so "cls" needs an op whose token order is "any" (dense attention); other ops raise an
error that suggests "gap". With RoPE the class token is not rotated (it has no position).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import lla.attention
from lla.attention import token_order
from lla.layers.attention import Attention
from lla.layers.mlp import Mlp
from lla.layers.rope import rope_2d
from lla.models.dit import patchify

PRESETS = {
    "tiny": dict(depth=2, width=64, num_heads=2),
    "S": dict(depth=12, width=384, num_heads=6),
    "B": dict(depth=12, width=768, num_heads=12),
}
POOLINGS = ("gap", "cls")
POSITIONS = ("rope", "learned")


# LayerNorm with learnable scale and bias (statistics in float32), as in ViT.
LayerNorm = functools.partial(nn.LayerNorm, epsilon=1e-6)


class ViTBlock(nn.Module):
    """x [B, N, C] -> [B, N, C]: pre-LN self-attention and MLP, each a residual branch."""

    width: int
    num_heads: int
    attention: str
    attention_kwargs: Mapping[str, Any] | None
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, rope, *, train: bool):
        attended = Attention(self.num_heads, self.attention, self.attention_kwargs,
                             dtype=self.dtype, name="attention")(
            LayerNorm(dtype=self.dtype, name="attention_norm")(x), rope)
        x = x + nn.Dropout(self.dropout, deterministic=not train)(attended)
        mlp = Mlp(self.width, self.mlp_ratio, dtype=self.dtype, name="mlp")
        return x + nn.Dropout(self.dropout, deterministic=not train)(
            mlp(LayerNorm(dtype=self.dtype, name="mlp_norm")(x)))


class ViT(nn.Module):
    """Classifies square images; logits f32 [B, num_classes].

    Attributes:
      resolution: image side H = W (a multiple of patch_size).
      num_classes: K >= 1, the number of logits.
      channels, patch_size: C and p; N = (H / p)^2 image tokens.
      depth, width, num_heads, mlp_ratio: transformer size (see PRESETS).
      pooling: "gap" (mean of the image tokens) or "cls" (a class token; dense-like ops
        only, see the module docstring).
      positions: "rope" (2-D RoPE in every attention layer) or "learned" (absolute position
        embeddings [N, width], added once to the patch embeddings).
      attention, attention_kwargs: a registered op taking 2-D grids and its static keyword
        arguments; the token order and spatial arguments come from the op
        (`token_order.for_op`).
      dropout: rate on both residual branches of every block, in training (rng "dropout").
      rope_theta: RoPE base.
      dtype: compute dtype (parameters and logits stay float32).
    """

    resolution: int
    num_classes: int
    channels: int = 3
    patch_size: int = 4
    depth: int = 2
    width: int = 64
    num_heads: int = 2
    mlp_ratio: float = 4.0
    pooling: str = "gap"
    positions: str = "rope"
    attention: str = "dense"
    attention_kwargs: Mapping[str, Any] | None = None
    dropout: float = 0.0
    rope_theta: float = 10000.0
    dtype: jnp.dtype = jnp.float32

    @property
    def grid(self) -> int:
        """Tokens per image side, H / p."""
        return self.resolution // self.patch_size

    @property
    def tokens_per_example(self) -> int:
        """Tokens each attention layer sees per image: N, plus one with the class token."""
        return self.grid ** 2 + (self.pooling == "cls")

    def token_order(self) -> token_order.TokenOrder:
        """How the (H / p) x (W / p) image tokens are fed to the attention op."""
        return token_order.for_op(self.attention, (self.grid, self.grid))

    def op_kwargs(self, order: token_order.TokenOrder | None = None) -> dict[str, Any]:
        """The attention op's keyword arguments, spatial ones from the token order."""
        return (order or self.token_order()).op_arguments(self.attention_kwargs)

    def rope(self, order: token_order.TokenOrder | None = None
             ) -> tuple[jax.Array, jax.Array] | None:
        """RoPE angles (cos, sin), each float32 [T, D / 2], one row per token attention sees
        (T = tokens_per_example): the class token's first with pooling="cls" (cos 1, sin 0:
        not rotated), then the image tokens in the op's order; None with learned
        positions."""
        if self.positions != "rope":
            return None
        order = order or self.token_order()
        cos, sin = rope_2d(order.positions.astype(np.float64), self.width // self.num_heads,
                           self.rope_theta)
        if self.pooling == "cls":
            cos, sin = (jnp.pad(cos, ((1, 0), (0, 0)), constant_values=1.0),
                        jnp.pad(sin, ((1, 0), (0, 0))))
        return cos, sin

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
        """images float [B, H, W, C] (e.g. in [-1, 1]) -> logits float32 [B, num_classes]."""
        self._check(images)
        order = self.token_order()
        tokens = patchify(images, self.patch_size).astype(self.dtype)
        x = nn.Dense(self.width, dtype=self.dtype, name="embed")(tokens)
        if self.positions == "learned":
            x = x + self.param("position_embedding", nn.initializers.normal(0.02),
                               (self.grid ** 2, self.width)).astype(self.dtype)
        x = order.to_op(x)
        if self.pooling == "cls":
            cls = self.param("cls_token", nn.initializers.normal(0.02), (self.width,))
            x = jnp.concatenate([jnp.broadcast_to(cls.astype(self.dtype),
                                                  (x.shape[0], 1, self.width)), x], axis=1)
        rope = self.rope(order)
        op_kwargs = self.op_kwargs(order)
        for index in range(self.depth):
            x = ViTBlock(self.width, self.num_heads, self.attention, op_kwargs,
                         self.mlp_ratio, self.dropout, dtype=self.dtype,
                         name=f"block{index}")(x, rope, train=train)
        x = LayerNorm(dtype=self.dtype, name="final_norm")(x)
        pooled = x[:, 0] if self.pooling == "cls" else x.mean(axis=1)
        logits = nn.Dense(self.num_classes, dtype=self.dtype, name="head",
                          kernel_init=nn.initializers.zeros)(pooled)
        return logits.astype(jnp.float32)

    def _check(self, images) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(f"ViT: pooling {self.pooling!r}; choose one of {POOLINGS}")
        if self.positions not in POSITIONS:
            raise ValueError(f"ViT: positions {self.positions!r}; choose one of {POSITIONS}")
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or \
                self.num_classes < 1:
            raise ValueError(f"ViT: num_classes must be a positive int (the number of "
                             f"logits); got {self.num_classes!r}")
        expected = (self.resolution, self.resolution, self.channels)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"ViT: images have shape {tuple(images.shape)}; expected "
                             f"[B, {expected[0]}, {expected[1]}, {expected[2]}]")
        if not jnp.issubdtype(images.dtype, jnp.floating):
            raise ValueError(f"ViT: images are {images.dtype}; expected floats (uint8 pixels "
                             f"scaled to [-1, 1]: x / 127.5 - 1)")
        if self.resolution % self.patch_size:
            divisors = [p for p in range(1, self.resolution + 1) if self.resolution % p == 0]
            raise ValueError(f"ViT: resolution {self.resolution} is not a multiple of "
                             f"patch_size {self.patch_size}; patch sizes that fit: {divisors}")
        head_dim, remainder = divmod(self.width, self.num_heads)
        if self.positions == "rope" and (remainder or head_dim % 4):
            raise ValueError(f"ViT: positions='rope' needs width / num_heads divisible by 4 "
                             f"(2-D RoPE); got width {self.width}, num_heads "
                             f"{self.num_heads}. Change them, or use positions='learned'")
        op_order = lla.attention.get(self.attention).capabilities.token_order
        if self.pooling == "cls" and op_order != "any":
            raise ValueError(
                f"ViT: pooling='cls' adds a class token, which has no place in the token "
                f"order {op_order!r} of attention {self.attention!r} (it attends over image "
                f"tokens only); use pooling='gap', or an op whose token order is 'any' such as "
                f"'dense'")


Model = ViT
