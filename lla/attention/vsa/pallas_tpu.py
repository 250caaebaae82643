"""The "pallas_tpu" implementation of "vsa": the coarse branch and the selection in XLA, the
fine branch on the sparse-flash TPU kernels (`lla.attention.common.block_sparse_pallas`)."""

from __future__ import annotations

import functools

import jax

from lla.attention import registry
from lla.attention.common import block_sparse_pallas as kernels
from lla.attention.common.kernel_reasons import compiled_kernel_reasons
from lla.attention.topk_block import selection
from lla.attention.vsa.coarse import with_coarse
from lla.pallas_kernels.sparse_flash import tpu


def unsupported_reasons(q, k, v, *, block_size, topk, interpret) -> list[str]:
    """Why the compiled kernels cannot run these inputs (interpret mode runs any)."""
    config = kernels.tpu_config(q, k, block_size=block_size, topk=topk)
    return compiled_kernel_reasons(tpu, "tpu", config, interpret)


@functools.partial(jax.jit, static_argnames=("block_size", "topk", "interpret"))
def vsa_pallas_tpu(q, k, v, *, block_size, topk, interpret):
    """q [Bt, Nq, H, D], k/v [Bt, Nk, Hkv, D] -> [Bt, Nq, H, D]."""
    picks = selection.select(q, k, block_size=block_size, topk=topk, local=False,
                             causal=False)
    config = kernels.tpu_config(q, k, block_size=block_size, topk=topk, interpret=interpret)
    return with_coarse(kernels.attend_tpu(q, k, v, picks, config), q, k, v, block_size)


IMPLEMENTATION = registry.Implementation("pallas_tpu", vsa_pallas_tpu, unsupported_reasons,
                                         ("tpu",))
