"""The "pallas_tpu" implementation of "topk_block": the shared selection in XLA, then the
sparse-flash TPU kernels (`lla.attention.common.block_sparse_pallas.attend_tpu`)."""

from __future__ import annotations

import functools

import jax

from lla.attention import registry
from lla.attention.common import block_sparse_pallas as kernels
from lla.attention.common.kernel_reasons import compiled_kernel_reasons
from lla.attention.topk_block import selection
from lla.pallas_kernels.sparse_flash import tpu


def unsupported_reasons(q, k, v, *, block_size, topk, local, causal, interpret) -> list[str]:
    """Why the compiled kernels cannot run these inputs (interpret mode runs any)."""
    config = kernels.tpu_config(q, k, block_size=block_size, topk=topk, causal=causal)
    return compiled_kernel_reasons(tpu, "tpu", config, interpret)


@functools.partial(jax.jit, static_argnames=("block_size", "topk", "local", "causal",
                                             "interpret"))
def topk_block_pallas_tpu(q, k, v, *, block_size, topk, local, causal, interpret):
    """q [Bt, Nq, H, D], k/v [Bt, Nk, Hkv, D] -> [Bt, Nq, H, D]."""
    picks = selection.select(q, k, block_size=block_size, topk=topk, local=local,
                             causal=causal)
    config = kernels.tpu_config(q, k, block_size=block_size, topk=topk, causal=causal,
                                interpret=interpret)
    return kernels.attend_tpu(q, k, v, picks, config)


IMPLEMENTATION = registry.Implementation("pallas_tpu", topk_block_pallas_tpu,
                                         unsupported_reasons, ("tpu",))
