"""Video transformer: next-frame prediction over any attention op that can be causal in time.

    model = Model(resolution=64, channels=1, frames=20, **PRESETS["S"], attention="dense")
    predictions = model.apply(params, video)     # [B, T, R, R, C] -> f32 [B, T, R, R, C]
    future = model.apply(params, video[:, :10], 10, method=model.generate)  # [B, 10, R, R, C]

predictions[:, t] is the model's guess of video[:, t + 1], from video[:, :t + 1] only.

The attention baseline next to ConvS5 (`lla.models.convssm`). Every frame is patchified
(`lla.models.dit.patchify`, patch p) and linearly embedded; the clip's tokens form a
(T, R/p, R/p) grid, fed to the op in the order it asks for (`token_order.for_op`) with the
arguments that make it causal over frames (`token_order.frame_causal_arguments`: block-causal
dense attention with one block per frame, neighbourhood attention with a causal time axis,
...). A token of frame t thus sees tokens of frames <= t only (all of them for dense
attention, a window for windowed ops) and every token of its own frame within reach; every
other layer acts per token, so out[:, t] depends on frames[:, :t + 1] only. The blocks are the
ViT's (`lla.models.vit.ViTBlock`: pre-LN attention with per-head RMS qk-norm, GELU-tanh MLP,
dropout on both branches). A final LayerNorm and a zero-initialised linear head per token
un-patchify into the next frame (a fresh model predicts zeros).

Positions: 3-D RoPE in every attention layer (`rope_3d`), nothing added to the embeddings:
each head's rotary pairs are split between time, rows and columns as in Wan (2·⌊D/6⌋ dims for
each spatial axis, the other D − 4·⌊D/6⌋ for time), with 1-D RoPE frequencies per axis. RoPE
is relative, so clips of any length T run (`frames` only sets the shapes of `init` and
`tokens_per_example`); there is no learned per-frame table to outgrow. T must still suit the
op, e.g. a neighbourhood's time kernel may not exceed T.

Generation (`generate`) recomputes, with one compiled forward: the clip lives in a buffer of
a fixed Tc + horizon − 1 frames, the context followed by zeros. Step i runs the forward on the
whole buffer and writes its out[:, Tc − 1 + i] into frame Tc + i; frames not yet written are
invisible to that output by causality. So each step is the same program, looped with
`nn.while_loop`, and the last step's input is exactly concat(context, g[:, :-1]). The price:
horizon forwards of Tc + horizon − 1 frames each (Tc = horizon = 10: 190 frame-forwards, 145
for a clip that grows), and no KV cache.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from lla.attention import token_order
from lla.layers.rope import rope_3d
from lla.models.dit import patchify, unpatchify
from lla.models.vit import LayerNorm, ViTBlock

PRESETS = {
    "tiny": dict(depth=2, width=64, num_heads=2, patch_size=8),
    "S": dict(depth=12, width=384, num_heads=6, patch_size=4),
}
# Attention arguments the model sets itself (causality over frames).
RESERVED_KWARGS = ("causal", "causal_block_size")


class VideoTransformer(nn.Module):
    """Predicts the next frame of every frame of a clip; f32 [B, T, R, R, C].

    Attributes:
      resolution: frame side R (a multiple of patch_size).
      channels: C.
      frames: the training clip length (shapes for `init`, `tokens_per_example`); calls take
        any T >= 1.
      patch_size: p; (R / p)^2 tokens per frame.
      depth, width, num_heads, mlp_ratio: transformer size (see PRESETS).
      attention, attention_kwargs: a registered op that can be causal over the first axis
        of a 3-D grid (`token_order.frame_causal_ops(3)`) and its static keyword arguments
        (without causal ones: the model sets those); token order and spatial arguments come
        from the op.
      dropout: rate on both residual branches of every block, in training (rng "dropout").
      rope_theta: RoPE base.
      dtype: compute dtype (parameters and outputs stay float32).
    """

    resolution: int = 64
    channels: int = 1
    frames: int = 20
    patch_size: int = 4
    depth: int = 2
    width: int = 64
    num_heads: int = 2
    mlp_ratio: float = 4.0
    attention: str = "dense"
    attention_kwargs: Mapping[str, Any] | None = None
    dropout: float = 0.0
    rope_theta: float = 10000.0
    dtype: jnp.dtype = jnp.float32

    @property
    def grid(self) -> int:
        """Tokens per frame side, R / p."""
        return self.resolution // self.patch_size

    @property
    def tokens_per_example(self) -> int:
        """Tokens each attention layer sees per clip of `frames` frames."""
        return self.frames * self.grid ** 2

    def token_order(self, frames: int) -> token_order.TokenOrder:
        """How the tokens of a clip of `frames` frames, a (T, R/p, R/p) grid, are fed to the
        op."""
        return token_order.for_op(self.attention, (frames, self.grid, self.grid))

    def op_kwargs(self, order: token_order.TokenOrder) -> dict[str, Any]:
        """The op's keyword arguments: `attention_kwargs`, causality over frames and the
        spatial arguments of the token order."""
        return order.op_arguments({**(self.attention_kwargs or {}),
                                   **token_order.frame_causal_arguments(self.attention,
                                                                        order.grid)})

    def rope(self, order: token_order.TokenOrder) -> tuple[jax.Array, jax.Array]:
        """3-D RoPE angles (cos, sin), each float32 [N, D / 2], one row per token in the op's
        order."""
        return rope_3d(order.positions, self.width // self.num_heads, self.rope_theta)

    @nn.compact
    def __call__(self, video: jax.Array, *, train: bool = False) -> jax.Array:
        """video float [B, T, R, R, C] -> f32 [B, T, R, R, C]: out[:, t] predicts
        video[:, t + 1] from video[:, :t + 1]."""
        self._check(video)
        batch, frames = video.shape[:2]
        order = self.token_order(frames)
        per_frame = video.reshape(batch * frames, *video.shape[2:])
        tokens = patchify(per_frame, self.patch_size).reshape(batch, frames * self.grid ** 2, -1)
        x = nn.Dense(self.width, dtype=self.dtype, name="embed")(tokens.astype(self.dtype))
        x = order.to_op(x)
        rope, op_kwargs = self.rope(order), self.op_kwargs(order)
        for index in range(self.depth):
            x = ViTBlock(self.width, self.num_heads, self.attention, op_kwargs,
                         self.mlp_ratio, self.dropout, dtype=self.dtype,
                         name=f"block{index}")(x, rope, train=train)
        x = LayerNorm(dtype=self.dtype, name="final_norm")(x)
        x = nn.Dense(self.patch_size ** 2 * self.channels, dtype=self.dtype, name="head",
                     kernel_init=nn.initializers.zeros)(x)
        x = order.from_op(x).reshape(batch * frames, self.grid ** 2, -1)
        out = unpatchify(x, self.patch_size, self.grid, self.channels)
        return out.reshape(video.shape).astype(jnp.float32)

    def generate(self, context: jax.Array, horizon: int) -> jax.Array:
        """Autoregressive frames after `context`: frame i is the prediction from the context
        and frames 0..i-1 (see the module docstring for the fixed buffer).

        Args:
          context: float [B, Tc, R, R, C], Tc >= 1.
          horizon: frames to generate, a static int >= 1.

        Returns:
          f32 [B, horizon, R, R, C], equal to `self(concat(context, g[:, :-1]))[:, Tc - 1:]`.
        """
        if isinstance(horizon, bool) or not isinstance(horizon, numbers.Integral) \
                or horizon < 1:
            raise ValueError(f"VideoTransformer.generate: horizon must be a static int >= 1 "
                             f"(frames to generate); got {horizon!r}")
        self._check(context)
        batch, context_frames, *frame_shape = context.shape
        length = context_frames + horizon - 1
        clip = jnp.concatenate([context.astype(jnp.float32),
                                jnp.zeros((batch, horizon - 1, *frame_shape), jnp.float32)], 1)
        generated = jnp.zeros((batch, horizon, *frame_shape), jnp.float32)

        def step(model, carry):
            index, clip, generated = carry
            frame = lax.dynamic_slice_in_dim(model(clip), context_frames - 1 + index, 1, 1)
            generated = lax.dynamic_update_slice_in_dim(generated, frame, index, 1)
            # The last step's frame needs no slot: the clip is not read after it.
            slot = jnp.minimum(context_frames + index, length - 1)
            return index + 1, lax.dynamic_update_slice_in_dim(clip, frame, slot, 1), generated

        _, _, generated = nn.while_loop(lambda model, carry: carry[0] < horizon, step, self,
                                        (jnp.int32(0), clip, generated))
        return generated

    def _check(self, video) -> None:
        expected = (self.resolution, self.resolution, self.channels)
        if video.ndim != 5 or tuple(video.shape[2:]) != expected or video.shape[1] < 1:
            raise ValueError(f"VideoTransformer: video has shape {tuple(video.shape)}; "
                             f"expected [B, T >= 1, {expected[0]}, {expected[1]}, "
                             f"{expected[2]}]")
        if not jnp.issubdtype(video.dtype, jnp.floating):
            raise ValueError(f"VideoTransformer: video is {video.dtype}; expected floats "
                             f"(uint8 pixels scaled to [-1, 1]: x / 127.5 - 1)")
        if self.resolution % self.patch_size:
            divisors = [p for p in range(1, self.resolution + 1) if self.resolution % p == 0]
            raise ValueError(f"VideoTransformer: resolution {self.resolution} is not a "
                             f"multiple of patch_size {self.patch_size}; patch sizes that "
                             f"fit: {divisors}")
        head_dim, remainder = divmod(self.width, self.num_heads)
        if remainder or head_dim % 2 or head_dim < 6:
            raise ValueError(f"VideoTransformer: 3-D RoPE needs width / num_heads to be an "
                             f"even head_dim >= 6; got width {self.width}, num_heads "
                             f"{self.num_heads}")
        reserved = sorted(set(self.attention_kwargs or {}) & set(RESERVED_KWARGS))
        if reserved:
            raise ValueError(f"VideoTransformer: attention_kwargs sets {reserved}, which the "
                             f"model passes itself (causal over frames); leave it out")


Model = VideoTransformer
