"""The "pallas_gpu" implementation of "topk_block": the selection kernel
(`lla.pallas_kernels.sparse_flash.selection`, the same picks as `selection.select` without an
[nQ, nK] score matrix in memory), then the sparse-flash kernels
(`lla.attention.common.block_sparse_pallas.attend_gpu`) over the picked blocks; their key
tile is a `tuning` config (`lla.pallas_kernels.sparse_flash.gpu.Config`)."""

from __future__ import annotations

import functools

import jax

from lla.attention import registry
from lla.attention.common import block_sparse_pallas as kernels
from lla.attention.common.kernel_reasons import compiled_kernel_reasons
from lla.attention.topk_block import selection
from lla.pallas_kernels.sparse_flash import gpu
from lla.pallas_kernels.sparse_flash import selection as select_kernel


def default_config(q, k, v, *, block_size, topk, local, causal, interpret) -> gpu.Config:
    """The kernels' shape of this call with the heuristic tiling."""
    return kernels.gpu_config(q, k, block_size=block_size, topk=topk, causal=causal,
                              interpret=interpret)


def unsupported_reasons(q, k, v, *, block_size, topk, local, causal, interpret,
                        config: gpu.Config) -> list[str]:
    """Why the compiled kernels cannot run these inputs (interpret mode runs any)."""
    return compiled_kernel_reasons(gpu, "gpu", config, interpret)


def select(q, k, *, block_size, topk, local, causal, interpret) -> jax.Array:
    """`selection.select` on the selection kernel: int32 [Bt, H, nQ, K]."""
    q_means, k_means = selection.ranking_means(q, k, block_size, causal)
    config = select_kernel.make_config(topk, q.shape[2], k.shape[2], q_means.shape[1],
                                       k_means.shape[1], q.shape[3], causal=causal,
                                       local=local, interpret=interpret)
    return select_kernel.select_blocks(q_means, k_means, config)


@functools.partial(jax.jit, static_argnames=("block_size", "topk", "local", "causal",
                                             "interpret", "config"))
def topk_block_pallas_gpu(q, k, v, *, block_size, topk, local, causal, interpret,
                          config: gpu.Config):
    """q [Bt, Nq, H, D], k/v [Bt, Nk, Hkv, D] -> [Bt, Nq, H, D]; `config` already describes
    the static arguments."""
    picks = select(q, k, block_size=block_size, topk=topk, local=local, causal=causal,
                   interpret=interpret)
    return kernels.attend_gpu(q, k, v, picks, config)


IMPLEMENTATION = registry.Implementation(
    "pallas_gpu", topk_block_pallas_gpu, unsupported_reasons, ("gpu",),
    registry.Tunable(default_config, gpu.TUNABLE_FIELDS))
