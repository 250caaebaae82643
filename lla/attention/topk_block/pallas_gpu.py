"""The "pallas_gpu" implementation of "topk_block": the selection kernel
(`lla.pallas_kernels.sparse_flash.selection`, the same picks as `selection.select` without an
[nQ, nK] score matrix in memory), then the sparse-flash kernels
(`lla.attention.common.block_sparse_pallas.attend_gpu`) over the picked blocks; both
kernels' tiling is one `tuning` config (`Config`)."""

from __future__ import annotations

import dataclasses
import functools

import jax

from lla.attention import registry
from lla.attention.common import block_sparse_pallas as kernels
from lla.attention.common.kernel_reasons import compiled_kernel_reasons
from lla.attention.topk_block import selection
from lla.pallas_kernels.sparse_flash import gpu
from lla.pallas_kernels.sparse_flash import selection as select_kernel


@dataclasses.dataclass(frozen=True)
class Config(gpu.Config):
    """The sparse-flash kernels' config plus the selection kernel's tiling
    (`select_kernel.Config`: query blocks per program, key blocks per step, warps)."""

    select_tile: int = 16
    select_chunk: int = 128
    select_num_warps: int = 4


# The fields `lla.attention.tuning("topk_block", "pallas_gpu", ...)` may set.
TUNABLE_FIELDS = (*gpu.TUNABLE_FIELDS,
                  *(f"select_{name}" for name in select_kernel.TUNABLE_FIELDS))


def _selection_config(q, k, *, block_size, topk, local, causal, interpret, **tiling):
    """The selection kernel's config for this call (`tiling`: its tunable fields)."""
    query_blocks, key_blocks = -(-q.shape[1] // block_size), -(-k.shape[1] // block_size)
    return select_kernel.make_config(topk, q.shape[2], k.shape[2], query_blocks, key_blocks,
                                     q.shape[3], causal=causal, local=local,
                                     interpret=interpret, **tiling)


def default_config(q, k, v, *, block_size, topk, local, causal, interpret) -> Config:
    """The kernels' shape of this call with the heuristic tilings."""
    flash = kernels.gpu_config(q, k, block_size=block_size, topk=topk, causal=causal,
                               interpret=interpret)
    picking = _selection_config(q, k, block_size=block_size, topk=topk, local=local,
                                causal=causal, interpret=interpret)
    return Config(**{field.name: getattr(flash, field.name)
                     for field in dataclasses.fields(flash)},
                  **{f"select_{name}": getattr(picking, name)
                     for name in select_kernel.TUNABLE_FIELDS})


def unsupported_reasons(q, k, v, *, block_size, topk, local, causal, interpret,
                        config: gpu.Config) -> list[str]:
    """Why the compiled kernels cannot run these inputs (interpret mode runs any)."""
    return compiled_kernel_reasons(gpu, "gpu", config, interpret)


def select(q, k, *, block_size, topk, local, causal, interpret,
           config: Config | None = None) -> jax.Array:
    """`selection.select` on the selection kernel: int32 [Bt, H, nQ, K]; its tiling from
    `config`'s select_* fields, or the kernel's heuristic without one."""
    tiling = {} if config is None else {name: getattr(config, f"select_{name}")
                                        for name in select_kernel.TUNABLE_FIELDS}
    q_means, k_means = selection.ranking_means(q, k, block_size, causal)
    picking = _selection_config(q, k, block_size=block_size, topk=topk, local=local,
                                causal=causal, interpret=interpret, **tiling)
    return select_kernel.select_blocks(q_means, k_means, picking)


@functools.partial(jax.jit, static_argnames=("block_size", "topk", "local", "causal",
                                             "interpret", "config"))
def topk_block_pallas_gpu(q, k, v, *, block_size, topk, local, causal, interpret,
                          config: Config):
    """q [Bt, Nq, H, D], k/v [Bt, Nk, Hkv, D] -> [Bt, Nq, H, D]; `config` already describes
    the static arguments."""
    picks = select(q, k, block_size=block_size, topk=topk, local=local, causal=causal,
                   interpret=interpret, config=config)
    return kernels.attend_gpu(q, k, v, picks, config)


IMPLEMENTATION = registry.Implementation(
    "pallas_gpu", topk_block_pallas_gpu, unsupported_reasons, ("gpu",),
    registry.Tunable(default_config, TUNABLE_FIELDS))
