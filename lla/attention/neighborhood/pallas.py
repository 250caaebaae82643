"""Glue shared by the "pallas_gpu" and "pallas_tpu" implementations of neighbourhood attention.

Both rearrange q, k, v into the tiled layout of `lla.pallas_kernels.neighborhood.tiling`
(dilation groups, then multi-dimensional tiles made contiguous) in XLA, run the fused kernels
of their backend inside one `jax.custom_vjp` (residuals: output and f32 lse), and rearrange
the output back. The layout change is differentiated by JAX. `pallas_gpu.py` and
`pallas_tpu.py` bind this to their kernels, whose `Config` holds the tiles (and launch
parameters).
"""

from __future__ import annotations

import functools
import math
import types

import jax
import jax.numpy as jnp

from lla.attention import registry
from lla.pallas_kernels.neighborhood.tiling import Plan, make_plan


def plan_for(q, k, *, spatial_shape, kernel_size, dilation, causal, config) -> Plan:
    """The tiling plan of a call with `config`'s tiles."""
    return make_plan(spatial_shape, kernel_size, dilation, causal, q.shape[2], k.shape[2],
                     q.shape[3], config.q_tile, config.kv_tile)


def unsupported_reasons(backend: str, q, k, v, *, spatial_shape, kernel_size, dilation,
                        causal, interpret, config) -> list[str]:
    """Why the `backend` kernels cannot run these inputs (interpret mode runs any tiles)."""
    rank = len(spatial_shape)
    reasons = []
    for name in ("q_tile", "kv_tile"):
        tile = getattr(config, name)
        if len(tile) != rank or not all(isinstance(t, int) and t >= 1 for t in tile):
            reasons.append(f"{name} {tile} needs one positive int per spatial axis")
    if reasons or interpret:
        return reasons
    if jax.default_backend() != backend:
        reasons.append(f"needs a {backend.upper()} (or interpret=True), platform is "
                       f"{jax.default_backend()}")
    power_of_two = lambda n: n & (n - 1) == 0  # noqa: E731
    head_dim = q.shape[3]
    if not power_of_two(head_dim) or head_dim < 16:
        reasons.append(f"head_dim {head_dim} must be a power of two >= 16")
    for name in ("q_tile", "kv_tile"):
        tile = getattr(config, name)
        if not all(map(power_of_two, tile)) or math.prod(tile) < 16:
            reasons.append(f"{name} {tile} must be powers of two with at least 16 tokens "
                           f"(the grid {spatial_shape} may be too small)")
    return reasons


def implementation(name: str, kernels: types.ModuleType) -> registry.Implementation:
    """The registry entry `name` running `kernels` (the gpu or tpu kernel module, which
    provides `Config`, `TUNABLE_FIELDS` and the three kernels)."""
    backend = name.removeprefix("pallas_")

    def default_config(q, k, v, *, spatial_shape, kernel_size, dilation, causal, interpret):
        return kernels.Config.default(spatial_shape, dilation, interpret)

    @functools.partial(jax.jit, static_argnames=(
        "spatial_shape", "kernel_size", "dilation", "causal", "interpret", "config"))
    def run(q, k, v, *, spatial_shape, kernel_size, dilation, causal, interpret, config):
        """q [Bt, N, H, D], k/v [Bt, N, Hkv, D] -> [Bt, N, H, D] (see `neighborhood`)."""
        del interpret  # part of config
        plan = plan_for(q, k, spatial_shape=spatial_shape, kernel_size=kernel_size,
                        dilation=dilation, causal=causal, config=config)
        out = _attend(plan.to_tiles(q, plan.q_tile), plan.to_tiles(k, plan.kv_tile),
                      plan.to_tiles(v, plan.kv_tile), plan, kernels, config)
        return plan.from_tiles(out, plan.q_tile)

    return registry.Implementation(
        name, run, functools.partial(unsupported_reasons, backend), (backend,),
        registry.Tunable(default_config, kernels.TUNABLE_FIELDS))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _attend(q, k, v, plan: Plan, kernels: types.ModuleType, config):
    """Tiled q [Bt, G, Mq, H, D], k/v [Bt, G, Mkv, Hkv, D] -> tiled output."""
    return kernels.forward(q, k, v, plan, config)[0]


def _attend_fwd(q, k, v, plan, kernels, config):
    out, lse = kernels.forward(q, k, v, plan, config)
    return out, (q, k, v, out, lse)


def _attend_bwd(plan, kernels, config, residuals, d_out):
    q, k, v, out, lse = residuals
    delta = jnp.einsum("bgnhd,bgnhd->bhgn", out.astype(jnp.float32),
                       d_out.astype(jnp.float32))
    d_out = d_out.astype(q.dtype)
    dq = kernels.backward_dq(q, k, v, d_out, lse, delta, plan, config)
    dk, dv = kernels.backward_dkv(q, k, v, d_out, lse, delta, plan, config)
    group = plan.heads // plan.kv_heads
    dk, dv = (x.reshape(*x.shape[:3], plan.kv_heads, group, plan.head_dim).sum(4)
              for x in (dk, dv))
    return dq, dk.astype(k.dtype), dv.astype(v.dtype)


_attend.defvjp(_attend_fwd, _attend_bwd)
