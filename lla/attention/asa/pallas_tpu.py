"""The "pallas_tpu" implementation of "asa": the prober in XLA, then the sparse-flash TPU
kernels (`lla.attention.common.block_sparse_pallas.attend_tpu`). ASA_GT has none yet: the
TPU kernels have no summary tokens."""

from __future__ import annotations

import functools

import jax

from lla.attention import registry
from lla.attention.asa import prober
from lla.attention.asa.reference import STATIC
from lla.attention.common import block_sparse_pallas as kernels
from lla.attention.common.kernel_reasons import compiled_kernel_reasons
from lla.pallas_kernels.sparse_flash import tpu


def _config(q, k, block_size, max_keep, interpret) -> tpu.Config:
    return kernels.tpu_config(q, k, block_size=block_size,
                              topk=prober.list_length(k.shape[1], block_size, max_keep),
                              interpret=interpret)


def unsupported_reasons(q, k, v, *, block_size, max_keep, interpret, **_) -> list[str]:
    """Why the compiled TPU kernels cannot run these inputs (interpret mode runs any)."""
    return compiled_kernel_reasons(tpu, "tpu", _config(q, k, block_size, max_keep, False),
                                   interpret)


@functools.partial(jax.jit, static_argnames=STATIC)
def asa_pallas_tpu(q, k, v, *, block_size, samples, tau, min_keep, max_keep, seed, interpret):
    """q [Bt, Nq, H, D], k/v [Bt, Nk, Hkv, D] -> [Bt, Nq, H, D]."""
    picks = prober.select(q, k, block_size=block_size, samples=samples, tau=tau,
                          min_keep=min_keep, max_keep=max_keep, seed=seed)
    return kernels.attend_tpu(q, k, v, picks,
                              _config(q, k, block_size, max_keep, interpret))


IMPLEMENTATION = registry.Implementation("pallas_tpu", asa_pallas_tpu, unsupported_reasons,
                                         ("tpu",))
