"""The "pallas_gpu" implementation of "sla": the critical blocks on the sparse-flash GPU
kernels (`lla.attention.common.block_sparse_pallas.attend_gpu`, key tile a `tuning` config),
the block classes and the linear branch in XLA (block-level matrix products)."""

from __future__ import annotations

import functools

import jax

from lla.attention import registry
from lla.attention.common import block_sparse_pallas as kernels
from lla.attention.common.kernel_reasons import compiled_kernel_reasons
from lla.attention.sla.reference import STATIC, sparse_linear
from lla.pallas_kernels.sparse_flash import gpu


def default_config(q, k, v, kernel, bias, *, block_size, critical_blocks, negligible_blocks,
                   feature_map, interpret) -> gpu.Config:
    """The kernels' shape of this call with the heuristic tiling."""
    return kernels.gpu_config(q, k, block_size=block_size, topk=critical_blocks,
                              interpret=interpret)


def unsupported_reasons(q, k, v, kernel, bias, *, block_size, critical_blocks,
                        negligible_blocks, feature_map, interpret,
                        config: gpu.Config) -> list[str]:
    """Why the compiled kernels cannot run these inputs (interpret mode runs any)."""
    return compiled_kernel_reasons(gpu, "gpu", config, interpret)


@functools.partial(jax.jit, static_argnames=(*STATIC, "config"))
def sla_pallas_gpu(q, k, v, kernel, bias, *, block_size, critical_blocks, negligible_blocks,
                   feature_map, interpret, config: gpu.Config):
    """q [Bt, Nq, H, D], k/v [Bt, Nk, Hkv, D], kernel [D, D], bias [D] -> [Bt, Nq, H, D]."""
    del interpret
    return sparse_linear(
        q, k, v, kernel, bias,
        lambda critical: kernels.attend_gpu(q, k, v, critical, config),
        block_size=block_size, critical_blocks=critical_blocks,
        negligible_blocks=negligible_blocks, feature_map=feature_map)


IMPLEMENTATION = registry.Implementation(
    "pallas_gpu", sla_pallas_gpu, unsupported_reasons, ("gpu",),
    registry.Tunable(default_config, gpu.TUNABLE_FIELDS))
