"""Flow-matching schedules and samplers: pure JAX functions; the model is a callable
`apply_fn(x [B, H, W, C], timesteps f32 [B], labels int [B] | None) -> velocity [B, H, W, C]`.

The recipe (LLSA paper §3.2), images NHWC in [-1, 1]:
  noise rescale  s = max(1, resolution / 64): 1 at <= 64, 2 at 128, 4 at 256.
  training       sigma uniform over {1/1000, ..., 1} (no shift, no logit-normal);
                 x_t = (1 - sigma) * x0 + sigma * s * eps; the model sees timesteps sigma * 1000;
                 target v = s * eps - x0; plain MSE (mean).
  sampling       Euler, 20 steps from x = s * eps over sigma = linspace(1, 0.001, 20) then 0:
                 x <- x + (sigma_next - sigma) * v; no classifier-free guidance for FFHQ
                 (optional here, both branches in one batched call).
"""

from lla.diffusion.flow_matching import (
    VelocityFn,
    interpolate,
    loss,
    noise_scale,
    sample_sigma,
    velocity_target,
)
from lla.diffusion.sampling import euler_sample, to_uint8

__all__ = [
    "VelocityFn",
    "euler_sample",
    "interpolate",
    "loss",
    "noise_scale",
    "sample_sigma",
    "to_uint8",
    "velocity_target",
]
