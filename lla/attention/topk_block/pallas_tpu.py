"""The "pallas_tpu" implementation of "topk_block": the shared selection in XLA, then the
sparse-flash TPU kernels (`lla.attention.common.block_sparse_pallas.attend_tpu`)."""

from __future__ import annotations

import functools

import jax

from lla.attention import registry
from lla.attention.common.block_sparse_pallas import attend_tpu
from lla.attention.topk_block import selection
from lla.pallas_kernels.sparse_flash import tpu


def _config(q, k, block_size, topk, causal, interpret) -> tpu.Config:
    return tpu.make_config(block_size, topk, q.shape[2], k.shape[2], q.shape[1], k.shape[1],
                           q.shape[3], causal=causal, interpret=interpret)


def unsupported_reasons(q, k, v, *, block_size, topk, local, causal, interpret) -> list[str]:
    """Why the compiled TPU kernels cannot run these inputs; interpret mode runs any."""
    if interpret:
        return []
    reasons = []
    if jax.default_backend() != "tpu":
        reasons.append(f"needs a TPU (or interpret=True), platform is {jax.default_backend()}")
    return reasons + tpu.unsupported_reasons(_config(q, k, block_size, topk, causal, False))


@functools.partial(jax.jit, static_argnames=("block_size", "topk", "local", "causal",
                                             "interpret"))
def topk_block_pallas_tpu(q, k, v, *, block_size, topk, local, causal, interpret):
    """q [Bt, Nq, H, D], k/v [Bt, Nk, Hkv, D] -> [Bt, Nq, H, D]."""
    picks = selection.select(q, k, block_size=block_size, topk=topk, local=local,
                             causal=causal)
    return attend_tpu(q, k, v, picks, _config(q, k, block_size, topk, causal, interpret))


IMPLEMENTATION = registry.Implementation("pallas_tpu", topk_block_pallas_tpu,
                                         unsupported_reasons, ("tpu",))
