"""The "pallas_gpu" implementation of "vsa": the coarse branch in XLA, the selection on
topk_block's selection kernel, the fine branch on the sparse-flash GPU kernels
(`lla.attention.common.block_sparse_pallas`), whose key tile is a `tuning` config."""

from __future__ import annotations

import functools

import jax

from lla.attention import registry
from lla.attention.common import block_sparse_pallas as kernels
from lla.attention.common.kernel_reasons import compiled_kernel_reasons
from lla.attention.topk_block import pallas_gpu as topk_gpu
from lla.attention.vsa.coarse import with_coarse
from lla.pallas_kernels.sparse_flash import gpu


def default_config(q, k, v, *, block_size, topk, interpret) -> gpu.Config:
    """The kernels' shape of this call with the heuristic tiling."""
    return kernels.gpu_config(q, k, block_size=block_size, topk=topk, interpret=interpret)


def unsupported_reasons(q, k, v, *, block_size, topk, interpret,
                        config: gpu.Config) -> list[str]:
    """Why the compiled kernels cannot run these inputs (interpret mode runs any)."""
    return compiled_kernel_reasons(gpu, "gpu", config, interpret)


@functools.partial(jax.jit, static_argnames=("block_size", "topk", "interpret", "config"))
def vsa_pallas_gpu(q, k, v, *, block_size, topk, interpret, config: gpu.Config):
    """q [Bt, Nq, H, D], k/v [Bt, Nk, Hkv, D] -> [Bt, Nq, H, D]."""
    picks = topk_gpu.select(q, k, block_size=block_size, topk=topk, local=False,
                            causal=False, interpret=interpret)
    return with_coarse(kernels.attend_gpu(q, k, v, picks, config), q, k, v, block_size)


IMPLEMENTATION = registry.Implementation(
    "pallas_gpu", vsa_pallas_gpu, unsupported_reasons, ("gpu",),
    registry.Tunable(default_config, gpu.TUNABLE_FIELDS))
