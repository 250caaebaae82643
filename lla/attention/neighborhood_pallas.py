"""The "pallas_gpu" and "pallas_tpu" implementations of neighbourhood attention.

Both rearrange q, k, v into the tiled layout of `lla.pallas_kernels.neighborhood.tiling`
(dilation groups, then multi-dimensional tiles made contiguous) in XLA, run the fused kernels
of their backend inside one `jax.custom_vjp` (residuals: output and f32 lse), and rearrange
the output back. The layout change is differentiated by JAX.
"""

from __future__ import annotations

import functools
import math
import types

import jax
import jax.numpy as jnp

from lla.pallas_kernels.neighborhood import gpu, tpu
from lla.pallas_kernels.neighborhood.tiling import Plan, make_plan

_KERNELS = {"gpu": gpu, "tpu": tpu}


def _plan(q, k, spatial_shape, kernel_size, dilation, causal, q_tile, kv_tile) -> Plan:
    return make_plan(spatial_shape, kernel_size, dilation, causal, q.shape[2], k.shape[2],
                     q.shape[3], q_tile, kv_tile)


def unsupported_reasons(backend, q, k, v, *, spatial_shape, kernel_size, dilation, causal,
                        q_tile, kv_tile, interpret):
    """Why the `backend` kernels cannot run these inputs (interpret mode runs anything)."""
    plan = _plan(q, k, spatial_shape, kernel_size, dilation, causal, q_tile, kv_tile)
    reasons = []
    for name, tile in (("q_tile", plan.q_tile), ("kv_tile", plan.kv_tile)):
        if len(tile) != plan.rank or min(tile) < 1:
            reasons.append(f"{name} {tile} needs one positive size per spatial axis")
    if reasons or interpret:
        return reasons
    if jax.default_backend() != backend:
        reasons.append(f"needs a {backend.upper()} (or interpret=True), platform is "
                       f"{jax.default_backend()}")
    power_of_two = lambda n: n & (n - 1) == 0  # noqa: E731
    if not power_of_two(plan.head_dim) or plan.head_dim < 16:
        reasons.append(f"head_dim {plan.head_dim} must be a power of two >= 16")
    for name, tile in (("q_tile", plan.q_tile), ("kv_tile", plan.kv_tile)):
        if not all(map(power_of_two, tile)) or math.prod(tile) < 16:
            reasons.append(f"{name} {tile} must be powers of two with at least 16 tokens "
                           f"(the grid {spatial_shape} may be too small)")
    return reasons


def _implementation(backend: str):
    kernels = _KERNELS[backend]

    @functools.partial(jax.jit, static_argnames=(
        "spatial_shape", "kernel_size", "dilation", "causal", "q_tile", "kv_tile",
        "interpret"))
    def run(q, k, v, *, spatial_shape, kernel_size, dilation, causal, q_tile, kv_tile,
            interpret):
        """q [Bt, N, H, D], k/v [Bt, N, Hkv, D] -> [Bt, N, H, D] (see `neighborhood`)."""
        plan = _plan(q, k, spatial_shape, kernel_size, dilation, causal, q_tile, kv_tile)
        out = _attend(plan.to_tiles(q, plan.q_tile), plan.to_tiles(k, plan.kv_tile),
                      plan.to_tiles(v, plan.kv_tile), plan, kernels, interpret)
        return plan.from_tiles(out, plan.q_tile)

    return run


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _attend(q, k, v, plan: Plan, kernels: types.ModuleType, interpret: bool):
    """Tiled q [Bt, G, Mq, H, D], k/v [Bt, G, Mkv, Hkv, D] -> tiled output."""
    return kernels.forward(q, k, v, plan, interpret)[0]


def _attend_fwd(q, k, v, plan, kernels, interpret):
    out, lse = kernels.forward(q, k, v, plan, interpret)
    return out, (q, k, v, out, lse)


def _attend_bwd(plan, kernels, interpret, residuals, d_out):
    q, k, v, out, lse = residuals
    delta = jnp.einsum("bgnhd,bgnhd->bhgn", out.astype(jnp.float32),
                       d_out.astype(jnp.float32))
    d_out = d_out.astype(q.dtype)
    dq = kernels.backward_dq(q, k, v, d_out, lse, delta, plan, interpret)
    dk, dv = kernels.backward_dkv(q, k, v, d_out, lse, delta, plan, interpret)
    group = plan.heads // plan.kv_heads
    dk, dv = (x.reshape(*x.shape[:3], plan.kv_heads, group, plan.head_dim).sum(4)
              for x in (dk, dv))
    return dq, dk.astype(k.dtype), dv.astype(v.dtype)


_attend.defvjp(_attend_fwd, _attend_bwd)

neighborhood_pallas_gpu = _implementation("gpu")
neighborhood_pallas_tpu = _implementation("tpu")
