"""Diffusion transformer (DiT) on pixels or patches, with any registered attention.

    model = Model(resolution=256, **PRESETS["S"], attention="llsa")
    velocity = model.apply(params, images, timesteps, labels)   # [B, H, W, C] each

As in the LLSA paper's pixel DiT (arXiv 2512.16615): patchify (patch size 1 = one token per
pixel) and a linear projection; tokens permuted once at the input and back once at the output
into the order the attention op asks for (`lla.attention.token_order`: Z-order for
hierarchical ops such as LLSA and a Gilbert curve for ASA, so consecutive tokens are
spatially close; raster order plus `spatial_shape` for ops on token grids such as
"neighborhood"), so no layer permutes;
blocks of adaLN-Zero self-attention (q, k, v, out with bias; per-head RMS qk-norm; 2-D RoPE,
half of each head's dims per axis, positions permuted with the tokens) and a GELU-tanh MLP;
a final adaLN-modulated, zero-initialised projection. Timesteps (and optional class labels,
with label dropout for classifier-free guidance) condition every block through one shared
embedder (the published model gives each block its own timestep embedder).

SSA alignment training (`lla.objectives.alignment`): with `full_mode` (a bool scalar, drawn
once per step) every attention layer also runs dense attention on its q, k, v, sows both
outputs into the "alignment" collection and passes on the dense one in full mode, the op's in
sparse mode:

    velocity, sown = model.apply(params, images, timesteps, full_mode=full,
                                 mutable=["alignment"])

Sequence parallelism (`sequence_axis`, default "sequence"): under a mesh with that axis
(`jax.set_mesh(mesh)`, e.g. `lla.training.sharding.make_mesh` with `config.mesh.sequence`
= P > 1) every image's N tokens are sharded over it, N / P consecutive tokens of the op's
order (Z-order for LLSA: a contiguous Morton range, whole pooled windows) per device, the
batch over the other axes. The activations [B, N, C] are constrained to that sharding after
the embedding and after every block, so adaLN, the MLP, the norms and RoPE run on each
device's tokens; the attention runs the op's sequence-parallel form ("dense": a ring,
"llsa": gathered pyramid; `lla.attention.parallel`). The permutation into the op's order
(input) and back (output) act on the small pixel/patch arrays. docs/sequence_parallel.md.

    mesh = jax.make_mesh((4,), ("sequence",), axis_types=(jax.sharding.AxisType.Auto,))
    with jax.set_mesh(mesh):
        velocity = jax.jit(model.apply)(params, images, timesteps)   # same as on one device
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lla.attention import parallel, token_order
from lla.layers.adaln import AdaLNModulation, layer_norm, modulate
from lla.layers.attention import Attention
from lla.layers.embeddings import LabelEmbedder, TimestepEmbedder
from lla.layers.mlp import Mlp
from lla.layers.rope import rope_2d

PRESETS = {
    "tiny": dict(depth=2, width=64, num_heads=2),
    "S": dict(depth=12, width=384, num_heads=6),
    "B": dict(depth=12, width=768, num_heads=12),
}


class DiTBlock(nn.Module):
    """x [B, N, C], condition [B, C] -> [B, N, C]: adaLN-Zero attention and MLP."""

    width: int
    num_heads: int
    attention: str
    attention_kwargs: Mapping[str, Any] | None
    mlp_ratio: float = 4.0
    sequence_axis: str | None = None
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, condition, rope, full_mode=None):
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = AdaLNModulation(
            self.width, 6, dtype=self.dtype, name="modulation")(condition)
        attended = Attention(self.num_heads, self.attention, self.attention_kwargs,
                             sequence_axis=self.sequence_axis, dtype=self.dtype,
                             name="attention")(
            modulate(layer_norm(x), shift_a, scale_a), rope, full_mode)
        x = x + gate_a[:, None] * attended
        mlp = Mlp(self.width, self.mlp_ratio, dtype=self.dtype, name="mlp")
        return x + gate_m[:, None] * mlp(modulate(layer_norm(x), shift_m, scale_m))


def patchify(images: jax.Array, patch: int) -> jax.Array:
    """[B, H, W, C] -> [B, (H/p)·(W/p), p·p·C] in raster order of patches."""
    batch, height, width, channels = images.shape
    x = images.reshape(batch, height // patch, patch, width // patch, patch, channels)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(batch, -1, patch * patch * channels)


def unpatchify(tokens: jax.Array, patch: int, grid: int, channels: int) -> jax.Array:
    """[B, grid·grid, p·p·C] (raster order) -> [B, grid·p, grid·p, C]."""
    batch = tokens.shape[0]
    x = tokens.reshape(batch, grid, grid, patch, patch, channels)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(batch, grid * patch, grid * patch, channels)


class DiT(nn.Module):
    """Predicts the flow-matching velocity of square images.

    Attributes:
      resolution: image side H = W (a multiple of patch_size).
      channels, patch_size: C and p; N = (H / p)^2 tokens.
      depth, width, num_heads, mlp_ratio: transformer size (see PRESETS).
      num_classes: 0 for unconditional, else labels in [0, num_classes) are required
        (num_classes itself is the "no label" id for guidance).
      label_dropout: probability of dropping a label in training (rng "label_dropout").
      attention, attention_kwargs: a registered op name and its static keyword arguments;
        the token order and spatial arguments come from the op (`token_order.for_op`).
      raster_order: feed raster-order tokens even to hierarchy and Gilbert ops (an
        ablation).
      remat: recompute each block's activations in the backward pass (`nn.remat`), so
        training holds one block's activations instead of all `depth` (what 1024² images,
        a million tokens, need on one GPU); same values, one more forward per block.
      sequence_axis: the mesh axis the tokens are sharded over when the mesh in context
        has it with more than one device (module docstring); None: never sharded.
      dtype: compute dtype (parameters stay float32).
    """

    resolution: int
    channels: int = 3
    patch_size: int = 1
    depth: int = 2
    width: int = 64
    num_heads: int = 2
    mlp_ratio: float = 4.0
    num_classes: int = 0
    label_dropout: float = 0.1
    attention: str = "dense"
    attention_kwargs: Mapping[str, Any] | None = None
    raster_order: bool = False
    remat: bool = False
    sequence_axis: str | None = "sequence"
    rope_theta: float = 10000.0
    dtype: jnp.dtype = jnp.float32

    @property
    def grid(self) -> int:
        """Tokens per image side, H / p."""
        return self.resolution // self.patch_size

    @property
    def tokens_per_example(self) -> int:
        return self.grid ** 2

    def token_order(self) -> token_order.TokenOrder:
        """How the (H / p) x (W / p) tokens are fed to the attention op."""
        return token_order.for_op(self.attention, (self.grid, self.grid),
                                  natural_order=self.raster_order)

    def op_kwargs(self, order: token_order.TokenOrder | None = None) -> dict[str, Any]:
        """The attention op's keyword arguments, spatial ones from the token order."""
        return (order or self.token_order()).op_arguments(self.attention_kwargs)

    @nn.compact
    def __call__(self, images: jax.Array, timesteps: jax.Array,
                 labels: jax.Array | None = None, *, train: bool = False,
                 full_mode: jax.Array | bool | None = None) -> jax.Array:
        """images [B, H, W, C], timesteps f32 [B], labels int [B] (class-conditional models)
        -> velocity float32 [B, H, W, C].

        train: drop labels (rng "label_dropout"). full_mode: None runs the configured op
        alone; a bool scalar turns on SSA alignment (`lla.layers.attention.align_with_dense`
        in every block; the dense output passed on where true, the op's where false).
        """
        self._check(images, timesteps, labels)
        order = self.token_order()
        rope = rope_2d(order.positions.astype(np.float64), self.width // self.num_heads,
                       self.rope_theta)

        tokens = order.to_op(patchify(images, self.patch_size))
        x = nn.Dense(self.width, dtype=self.dtype, name="embed")(tokens.astype(self.dtype))
        x = parallel.shard_tokens(x, self.sequence_axis)
        condition = TimestepEmbedder(self.width, dtype=self.dtype, name="timesteps")(timesteps)
        if self.num_classes:
            condition = condition + LabelEmbedder(
                self.num_classes, self.width, self.label_dropout, dtype=self.dtype,
                name="labels")(labels, train=train)
        op_kwargs = self.op_kwargs(order)
        block = nn.remat(DiTBlock) if self.remat else DiTBlock
        for index in range(self.depth):
            x = block(self.width, self.num_heads, self.attention, op_kwargs, self.mlp_ratio,
                      sequence_axis=self.sequence_axis, dtype=self.dtype,
                      name=f"block{index}")(x, condition, rope, full_mode)
            x = parallel.shard_tokens(x, self.sequence_axis)
        shift, scale = AdaLNModulation(self.width, 2, dtype=self.dtype,
                                       name="final_modulation")(condition)
        x = modulate(layer_norm(x), shift, scale)
        x = nn.Dense(self.patch_size ** 2 * self.channels, dtype=self.dtype, name="head",
                     kernel_init=nn.initializers.zeros)(x)
        x = order.from_op(x)
        return unpatchify(x, self.patch_size, self.grid, self.channels).astype(jnp.float32)

    def _check(self, images, timesteps, labels) -> None:
        expected = (self.resolution, self.resolution, self.channels)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"DiT: images have shape {tuple(images.shape)}; expected "
                             f"[B, {expected[0]}, {expected[1]}, {expected[2]}]")
        if self.resolution % self.patch_size:
            raise ValueError(f"DiT: resolution {self.resolution} is not a multiple of "
                             f"patch_size {self.patch_size}")
        if tuple(timesteps.shape) != images.shape[:1]:
            raise ValueError(f"DiT: timesteps have shape {tuple(timesteps.shape)}; expected "
                             f"({images.shape[0]},)")
        if self.num_classes and (labels is None or tuple(labels.shape) != images.shape[:1]):
            raise ValueError(f"DiT: a class-conditional model (num_classes="
                             f"{self.num_classes}) needs labels of shape ({images.shape[0]},)")


Model = DiT
