"""ConvS5 (Smith et al., "Convolutional State Space Models for Long-Range Spatiotemporal
Modeling", 2023): video frame prediction with convolutional S5 layers.

    model = Model(resolution=64, channels=1, frames=20, **PRESETS["moving_mnist"])
    params = model.init(jax.random.key(0), video)     # video float [B, T, 64, 64, 1]
    predictions = model.apply(params, video)          # [B, T, 64, 64, 1]: frame t + 1 from :t + 1
    future = model.apply(params, video[:, :10], 10, method=model.generate)  # [B, 10, 64, 64, 1]

Pipeline. A per-frame convolutional encoder (p x p pixel patches as channels, a 3x3 conv, then
stride-2 3x3 convs, each with GroupNorm and GELU, and a 1x1 conv) maps every frame [R, R, C] to
a latent U_t [H', W', U] (H' = W' = R / (p · 2^(len(encoder_widths) - 1)), U = d_model);
`depth` ConvS5 blocks run over time on the latents; a per-frame decoder mirroring the encoder
(1x1 conv; nearest 2x upsampling + 3x3 conv, GroupNorm, GELU per stage; a 3x3 conv to p x p
patches of C channels; tanh) maps each output back to a frame in (-1, 1). Encoder and decoder
see one frame at a time and every block is causal over time, so out[:, t] depends only on
frames[:, :t + 1] by construction; training regresses out[:, :-1] on frames[:, 1:].

ConvS5 layer (one per block), with P = state_size (the paper's and NVlabs/ConvSSM's "ssm_size")
and N = P / 2 complex states:

    X_t = Λ̄ ⊙ X_{t-1} + B̄ ∗ U_t          X_t complex [B, H', W', N], X_{-1} = 0
    Y_t = 2 Re(C̃ ∗ X_t) + D ∗ U_t        Y_t real [B, H', W', U]

∗ is a 'SAME' 2-D convolution over (H', W'); ⊙ scales each state channel. Parameters:
Λ = min(Re λ, -1e-4) + i Im λ [N] (the real part clipped, so |Λ̄| < 1), log Δ [N], the complex
kernels B̃ [k_B, k_B, U, N] and C̃ [k_C, k_C, N, U] (stored as real/imaginary pairs [..., 2]) and
a real k_D x k_D conv D (U -> U, with bias). Zero-order hold: Λ̄ = exp(ΛΔ),
B̄ = ((Λ̄ - 1) / Λ) ⊙ B̃. Initialisation as S5 (`lla.models.convssm_init`): λ are the N eigenvalues
of the HiPPO-LegS normal part with negative imaginary part (one per conjugate pair; the output's
2 Re(.) accounts for the other), V their eigenvectors [P, N], B̃ = V^H B and C̃ = C V for real
He-normal conv kernels B [k_B, k_B, U, P] and C [k_C, k_C, P, U]; log Δ ~ U[log dt_min,
log dt_max]. With H' = W' = 1 and 1x1 kernels the layer is exactly S5 (with a dense D).

Block (the paper's "resnet" C/D configuration, post-norm): Z = LayerNorm(U + R(Y)), where R is
a ResNet branch on the layer output, R(Y) = GELU(Y + conv(GELU(GN(conv(GELU(GN(Y))))))), both
convs k_D x k_D; R, GroupNorm and LayerNorm act on one frame at a time.

Parallel form (`__call__`): B̄ ∗ U_t is one convolution over all B·T frames; since the
transition is diagonal, `jax.lax.associative_scan` over T with the operator
(a1, b1) ∘ (a2, b2) = (a2 a1, a2 ⊙ b1 + b2) gives every X_t in O(T) work and O(log T) depth;
C̃, D and the block's convs are again per frame. Recurrent form (`step`): one frame,
X_t = Λ̄ ⊙ X_{t-1} + B̄ ∗ U_t, so its cost does not grow with t. `generate` runs the parallel
form over the context once, keeps each block's last state X [B, H', W', N] (complex64), decodes
the first prediction, then `jax.lax.scan`s over the horizon: encode the previous prediction,
one `step` per block, decode. Each generated frame costs one encoder, `depth` steps and one
decoder pass, O(1) in the context length and the frames generated so far.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lla.models.convssm_init import diagonal_hippo
from lla.models.dit import patchify, unpatchify

PRESETS = {
    "tiny": dict(depth=2, d_model=16, state_size=16, encoder_widths=(16,), patch_size=4),
    # The paper's Moving-MNIST model (NVlabs/ConvSSM's 600-frame config; there the encoder is a
    # ResNet with these widths and a 1x1 conv to d_model).
    "moving_mnist": dict(depth=8, d_model=128, state_size=128,
                         encoder_widths=(64, 128, 256), patch_size=1),
}


def discretize_zoh(eigenvalues: jax.Array, step: jax.Array, b_tilde: jax.Array
                   ) -> tuple[jax.Array, jax.Array]:
    """Zero-order hold of dX/dt = Λ X + B̃ ∗ U per state channel.

    Args:
      eigenvalues: Λ complex [N]; step: Δ real [N]; b_tilde: B̃ complex [..., N].
    Returns:
      Λ̄ = exp(ΛΔ) complex [N] and B̄ = ((Λ̄ - 1) / Λ) ⊙ B̃ complex [..., N].
    """
    lambda_bar = jnp.exp(eigenvalues * step)
    return lambda_bar, ((lambda_bar - 1) / eigenvalues) * b_tilde


def _combine(earlier, later):
    """(a1, b1) ∘ (a2, b2) = (a2 a1, a2 ⊙ b1 + b2): two affine maps x -> a x + b in turn."""
    a1, b1 = earlier
    a2, b2 = later
    return a2 * a1, a2 * b1 + b2


def linear_recurrence(lambda_bar: jax.Array, inputs: jax.Array) -> jax.Array:
    """X_t = Λ̄ ⊙ X_{t-1} + inputs_t from X_{-1} = 0, every t at once (associative scan).

    Args:
      lambda_bar: Λ̄ complex [N]; inputs: complex [B, T, ..., N].
    Returns:
      X complex [B, T, ..., N].
    """
    shape = (1, inputs.shape[1]) + (1,) * (inputs.ndim - 3) + lambda_bar.shape
    _, states = jax.lax.associative_scan(
        _combine, (jnp.broadcast_to(lambda_bar, shape), inputs), axis=1)
    return states


def conv2d(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """'SAME' stride-1 convolution of x [..., H, W, I] with kernel [k, k, I, O] -> [..., H, W, O]
    (the leading axes are frames)."""
    frames = x.reshape(-1, *x.shape[-3:])
    out = jax.lax.conv_general_dilated(frames, kernel, (1, 1), "SAME",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return out.reshape(*x.shape[:-1], kernel.shape[-1])


def input_to_state(u: jax.Array, b_bar: jax.Array, dtype) -> jax.Array:
    """B̄ ∗ U: u real [..., H, W, U], b_bar complex [k, k, U, N] -> complex64 [..., H, W, N]
    (one real convolution with the real and imaginary kernels side by side)."""
    kernel = jnp.concatenate([b_bar.real, b_bar.imag], axis=-1).astype(dtype)
    out = conv2d(u.astype(dtype), kernel).astype(jnp.float32)
    real, imag = jnp.split(out, 2, axis=-1)
    return jax.lax.complex(real, imag)


def state_to_output(x: jax.Array, c_tilde: jax.Array, dtype) -> jax.Array:
    """2 Re(C̃ ∗ X) = 2 (Re C̃ ∗ Re X - Im C̃ ∗ Im X): x complex [..., H, W, N], c_tilde complex
    [k, k, N, U] -> [..., H, W, U] in `dtype`."""
    kernel = 2 * jnp.concatenate([c_tilde.real, -c_tilde.imag], axis=-2)
    return conv2d(jnp.concatenate([x.real, x.imag], axis=-1).astype(dtype),
                  kernel.astype(dtype))


def per_frame(function: Callable[[jax.Array], jax.Array], x: jax.Array) -> jax.Array:
    """Applies `function` ([N, H, W, C] -> [N, H2, W2, C2]) to x [B, T, H, W, C] frame by
    frame (so GroupNorm statistics never mix frames) -> [B, T, H2, W2, C2]."""
    out = function(x.reshape(-1, *x.shape[2:]))
    return out.reshape(*x.shape[:2], *out.shape[1:])


def group_norm(groups: int, width: int, dtype, name: str | None = None) -> nn.GroupNorm:
    """GroupNorm over one frame with gcd(groups, width) groups (so every width works)."""
    return nn.GroupNorm(num_groups=math.gcd(groups, width), dtype=dtype, name=name)


def complex_kernel_init(transform: np.ndarray, equation: str):
    """Initialiser of a complex kernel stored as real/imaginary pairs [..., 2]: a real He-normal
    kernel of shape `real_shape` contracted with the complex `transform` by `equation`."""
    def init(key, real_shape):
        kernel = jnp.einsum(equation, nn.initializers.he_normal()(key, real_shape),
                            jnp.asarray(transform, jnp.complex64))
        return jnp.stack([kernel.real, kernel.imag], axis=-1)
    return init


class ConvS5(nn.Module):
    """The ConvS5 layer: u [B, T, H', W', U] -> y [B, T, H', W', U] (see the module docstring).

    Attributes:
      features: U, input and output channels.
      state_size: P (even), the HiPPO size; the state has N = P / 2 complex channels.
      b_kernel, c_kernel, d_kernel: k_B, k_C, k_D, the spatial sizes of B̃, C̃ and D.
      dt_min, dt_max: the range of the initial step sizes Δ (log-uniform).
      dtype: compute dtype of the convolutions (the state and scan stay complex64).
    """

    features: int
    state_size: int
    b_kernel: int = 3
    c_kernel: int = 3
    d_kernel: int = 3
    dt_min: float = 1e-3
    dt_max: float = 1e-1
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        """Λ (from HiPPO-LegS), log Δ, B̃ and C̃ (complex, as real/imaginary pairs) and D."""
        eigenvalues, eigenvectors = diagonal_hippo(self.state_size)
        states = eigenvalues.shape[0]
        self.lambda_re = self.param("lambda_re", nn.initializers.constant(eigenvalues.real),
                                    (states,))
        self.lambda_im = self.param("lambda_im", nn.initializers.constant(eigenvalues.imag),
                                    (states,))
        self.log_step = self.param(
            "log_step", lambda key, shape: jax.random.uniform(
                key, shape, minval=np.log(self.dt_min), maxval=np.log(self.dt_max)),
            (states,))
        k_b, k_c, u, p = self.b_kernel, self.c_kernel, self.features, self.state_size
        self.b_tilde_pair = self.param(  # B̃ = V^H B, [k_B, k_B, U, N, 2]
            "B", complex_kernel_init(eigenvectors.conj().T, "hwup,np->hwun"), (k_b, k_b, u, p))
        self.c_tilde_pair = self.param(  # C̃ = C V, [k_C, k_C, N, U, 2]
            "C", complex_kernel_init(eigenvectors, "hwpu,pn->hwnu"), (k_c, k_c, p, u))
        self.d = nn.Conv(u, (self.d_kernel, self.d_kernel), padding="SAME", dtype=self.dtype,
                         name="D")

    def eigenvalues(self) -> jax.Array:
        """Λ complex64 [N], the real part clipped to <= -1e-4."""
        return jax.lax.complex(jnp.minimum(self.lambda_re, -1e-4), self.lambda_im)

    def discretized(self) -> tuple[jax.Array, jax.Array]:
        """(Λ̄ complex64 [N], B̄ complex64 [k_B, k_B, U, N]) by zero-order hold."""
        b_tilde = jax.lax.complex(self.b_tilde_pair[..., 0], self.b_tilde_pair[..., 1])
        return discretize_zoh(self.eigenvalues(), jnp.exp(self.log_step), b_tilde)

    def c_tilde(self) -> jax.Array:
        """C̃ complex64 [k_C, k_C, N, U]."""
        return jax.lax.complex(self.c_tilde_pair[..., 0], self.c_tilde_pair[..., 1])

    def __call__(self, u: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Parallel form: u [B, T, H', W', U] -> (y [B, T, H', W', U] in dtype, the last state
        X_{T-1} complex64 [B, H', W', N])."""
        lambda_bar, b_bar = self.discretized()
        states = linear_recurrence(lambda_bar, input_to_state(u, b_bar, self.dtype))
        y = state_to_output(states, self.c_tilde(), self.dtype) + self.d(u.astype(self.dtype))
        return y, states[:, -1]

    def step(self, state: jax.Array, u: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Recurrent form, one frame: (X_{t-1} complex64 [B, H', W', N], U_t [B, H', W', U])
        -> (X_t, Y_t [B, H', W', U])."""
        lambda_bar, b_bar = self.discretized()
        state = lambda_bar * state + input_to_state(u, b_bar, self.dtype)
        y = state_to_output(state, self.c_tilde(), self.dtype) + self.d(u.astype(self.dtype))
        return state, y


class ResNetBranch(nn.Module):
    """y [N, H, W, C] -> GELU(y + conv(GELU(GN(conv(GELU(GN(y))))))), k x k convs."""

    kernel: int
    groups: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, y):
        width = y.shape[-1]
        h = y
        for index in range(2):
            h = nn.gelu(group_norm(self.groups, width, self.dtype, f"norm{index}")(h))
            h = nn.Conv(width, (self.kernel, self.kernel), padding="SAME", dtype=self.dtype,
                        name=f"conv{index}")(h)
        return nn.gelu(y + h)


class ConvS5Block(nn.Module):
    """u [B, T, H', W', U] -> LayerNorm(u + ResNet(ConvS5(u))), causal over T."""

    features: int
    state_size: int
    b_kernel: int = 3
    c_kernel: int = 3
    d_kernel: int = 3
    groups: int = 32
    dt_min: float = 1e-3
    dt_max: float = 1e-1
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        """The ConvS5 layer and the ResNet branch of the block."""
        self.ssm = ConvS5(self.features, self.state_size, self.b_kernel, self.c_kernel,
                          self.d_kernel, self.dt_min, self.dt_max, dtype=self.dtype)
        self.resnet = ResNetBranch(self.d_kernel, self.groups, dtype=self.dtype)
        self.norm = nn.LayerNorm(dtype=self.dtype)

    def __call__(self, u: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Parallel form: u [B, T, H', W', U] -> (out [B, T, H', W', U], the layer's last
        state complex64 [B, H', W', N])."""
        y, state = self.ssm(u)
        return self.norm(u + per_frame(self.resnet, y)), state

    def step(self, state: jax.Array, u: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Recurrent form: (state [B, H', W', N], u [B, H', W', U]) -> (state, out)."""
        state, y = self.ssm.step(state, u)
        return state, self.norm(u + self.resnet(y))


class Encoder(nn.Module):
    """frames [N, R, R, C] -> latents [N, R / s, R / s, features], s = patch · 2^(len(widths)-1):
    patches of p x p pixels as channels; a 3x3 conv to widths[0], a stride-2 3x3 conv to each
    further width (GroupNorm, GELU after each); a 1x1 conv."""

    widths: tuple[int, ...]
    features: int
    patch: int = 1
    groups: int = 32
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, frames):
        batch, resolution = frames.shape[:2]
        grid = resolution // self.patch
        x = patchify(frames, self.patch).reshape(batch, grid, grid, -1)
        for index, width in enumerate(self.widths):
            stride = 1 if index == 0 else 2
            x = nn.Conv(width, (3, 3), strides=stride, padding="SAME", dtype=self.dtype)(x)
            x = nn.gelu(group_norm(self.groups, width, self.dtype)(x))
        return nn.Conv(self.features, (1, 1), dtype=self.dtype)(x)


class Decoder(nn.Module):
    """latents [N, H', W', U] -> frames float32 [N, H' s, W' s, channels] in (-1, 1): the
    encoder mirrored (1x1 conv to widths[-1]; nearest 2x upsampling and a 3x3 conv to each
    earlier width; GroupNorm, GELU after each), a 3x3 conv to p x p pixels of C channels each,
    the pixels back in place, tanh."""

    widths: tuple[int, ...]
    channels: int
    patch: int = 1
    groups: int = 32
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(self.widths[-1], (1, 1), dtype=self.dtype)(x)
        x = nn.gelu(group_norm(self.groups, self.widths[-1], self.dtype)(x))
        for width in reversed(self.widths[:-1]):
            batch, height, breadth, features = x.shape
            x = jax.image.resize(x, (batch, 2 * height, 2 * breadth, features), "nearest")
            x = nn.Conv(width, (3, 3), padding="SAME", dtype=self.dtype)(x)
            x = nn.gelu(group_norm(self.groups, width, self.dtype)(x))
        x = nn.Conv(self.patch ** 2 * self.channels, (3, 3), padding="SAME", dtype=self.dtype)(x)
        batch, grid = x.shape[:2]
        frames = unpatchify(x.reshape(batch, grid * grid, -1), self.patch, grid, self.channels)
        return jnp.tanh(frames.astype(jnp.float32))


class ConvSSM(nn.Module):
    """ConvS5 next-frame predictor on square videos (see the module docstring).

    Attributes:
      resolution, channels: frame side R and channels C (filled from the data).
      frames: training clip length T (for `tokens_per_example`; calls take any T >= 1).
      depth: the number of ConvS5 blocks.
      d_model: U, the latent channels.
      state_size: P (even); each block's state is N = P / 2 complex channels per latent pixel.
      b_kernel, c_kernel, d_kernel: k_B, k_C, k_D.
      encoder_widths: channels of the encoder stages (mirrored by the decoder), each after the
        first halving the side.
      patch_size: p; the encoder starts from p x p patches (pixels as channels), the decoder
        ends with them. The latent side is H' = R / (p · 2^(len(encoder_widths) - 1)).
      groups: GroupNorm groups (gcd with each width).
      dt_min, dt_max: the range of the initial step sizes Δ.
      dtype: compute dtype (parameters, states and outputs stay float32 / complex64).
    """

    resolution: int = 64
    channels: int = 1
    frames: int = 20
    depth: int = 2
    d_model: int = 16
    state_size: int = 16
    b_kernel: int = 3
    c_kernel: int = 3
    d_kernel: int = 3
    encoder_widths: tuple[int, ...] = (16,)
    patch_size: int = 4
    groups: int = 32
    dt_min: float = 1e-3
    dt_max: float = 1e-1
    dtype: jnp.dtype = jnp.float32

    @property
    def latent_size(self) -> int:
        """H' = W', the latent side."""
        return self.resolution // self.downsampling

    @property
    def downsampling(self) -> int:
        """R / H' = patch_size · 2^(len(encoder_widths) - 1)."""
        return self.patch_size * 2 ** (len(self.encoder_widths) - 1)

    @property
    def tokens_per_example(self) -> int:
        """Positions the sequence model sees per clip: frames · H' · W'."""
        return self.frames * self.latent_size ** 2

    def setup(self):
        """The frame encoder, the ConvS5 blocks and the frame decoder."""
        self.encoder = Encoder(tuple(self.encoder_widths), self.d_model, self.patch_size,
                               self.groups, dtype=self.dtype)
        self.blocks = [ConvS5Block(self.d_model, self.state_size, self.b_kernel,
                                   self.c_kernel, self.d_kernel, self.groups, self.dt_min,
                                   self.dt_max, dtype=self.dtype, name=f"block{index}")
                       for index in range(self.depth)]
        self.decoder = Decoder(tuple(self.encoder_widths), self.channels, self.patch_size,
                               self.groups, dtype=self.dtype)

    def __call__(self, frames: jax.Array, *, train: bool = False) -> jax.Array:
        """frames float [B, T, R, R, C] -> float32 [B, T, R, R, C]; out[:, t] predicts
        frames[:, t + 1] from frames[:, :t + 1]. `train` changes nothing (no dropout)."""
        del train
        latents, _ = self._context(frames)
        return per_frame(self.decoder, latents)

    def generate(self, context: jax.Array, horizon: int) -> jax.Array:
        """context float [B, Tc, R, R, C] -> the next `horizon` frames float32 [B, horizon, R,
        R, C], each predicted from the context and the predictions before it: the parallel
        form over the context once, then one recurrent step per block and frame."""
        if horizon < 1:
            raise ValueError(f"ConvSSM.generate: horizon must be >= 1; got {horizon}")
        latents, states = self._context(context)
        first = self.decoder(latents[:, -1])

        def advance(carry, _):
            states, frame = carry
            latent = self.encoder(frame.astype(self.dtype))
            new_states = []
            for block, state in zip(self.blocks, states, strict=True):
                state, latent = block.step(state, latent)
                new_states.append(state)
            prediction = self.decoder(latent)
            return (new_states, prediction), prediction

        _, rest = jax.lax.scan(advance, (states, first), length=horizon - 1)
        return jnp.concatenate([first[:, None], jnp.moveaxis(rest, 0, 1)], axis=1)

    def _context(self, frames: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
        """Parallel form: frames [B, T, R, R, C] -> (the last block's outputs [B, T, H', W',
        U], each block's last state complex64 [B, H', W', N])."""
        self._check(frames)
        latents = per_frame(self.encoder, frames.astype(self.dtype))
        states = []
        for block in self.blocks:
            latents, state = block(latents)
            states.append(state)
        return latents, states

    def _check(self, frames) -> None:
        expected = (self.resolution, self.resolution, self.channels)
        if frames.ndim != 5 or tuple(frames.shape[2:]) != expected or frames.shape[1] < 1:
            raise ValueError(f"ConvSSM: frames have shape {tuple(frames.shape)}; expected "
                             f"[B, T >= 1, {expected[0]}, {expected[1]}, {expected[2]}]")
        if not jnp.issubdtype(frames.dtype, jnp.floating):
            raise ValueError(f"ConvSSM: frames are {frames.dtype}; expected floats (uint8 "
                             f"pixels scaled to [-1, 1]: x / 127.5 - 1)")
        if self.resolution % self.downsampling:
            raise ValueError(f"ConvSSM: resolution {self.resolution} is not a multiple of "
                             f"{self.downsampling}, the encoder's downsampling (patch_size "
                             f"{self.patch_size} · 2^{len(self.encoder_widths) - 1})")
        if self.state_size < 2 or self.state_size % 2:
            raise ValueError(f"ConvSSM: state_size must be even (conjugate pairs of HiPPO "
                             f"eigenvalues); got {self.state_size}")


Model = ConvSSM
