"""The "pallas_tpu" implementations of "asa" and "asa_gt": the prober in XLA, then the
sparse-flash TPU kernels (`lla.attention.common.block_sparse_pallas.attend_tpu`), ASA_GT's
global tokens as their summary tokens."""

from __future__ import annotations

import functools

import jax

from lla.attention import registry
from lla.attention.asa import prober
from lla.attention.asa.globals import global_tokens
from lla.attention.asa.reference import STATIC
from lla.attention.common import block_sparse_pallas as kernels
from lla.attention.common.block_sparse import num_blocks
from lla.attention.common.kernel_reasons import compiled_kernel_reasons
from lla.pallas_kernels.sparse_flash import tpu


def _config(q, k, block_size, max_keep, pool, interpret) -> tpu.Config:
    summary_tokens = 0 if pool is None else num_blocks(k.shape[1], pool)
    return kernels.tpu_config(q, k, block_size=block_size,
                              topk=prober.list_length(k.shape[1], block_size, max_keep),
                              summary_tokens=summary_tokens, interpret=interpret)


def unsupported_reasons(q, k, v, *, block_size, max_keep, interpret, pool=None,
                        **_) -> list[str]:
    """Why the compiled TPU kernels cannot run these inputs (interpret mode runs any)."""
    return compiled_kernel_reasons(
        tpu, "tpu", _config(q, k, block_size, max_keep, pool, False), interpret)


@functools.partial(jax.jit, static_argnames=STATIC)
def asa_pallas_tpu(q, k, v, *, block_size, samples, tau, min_keep, max_keep, seed, interpret):
    """q [Bt, Nq, H, D], k/v [Bt, Nk, Hkv, D] -> [Bt, Nq, H, D]."""
    picks = prober.select(q, k, block_size=block_size, samples=samples, tau=tau,
                          min_keep=min_keep, max_keep=max_keep, seed=seed)
    return kernels.attend_tpu(q, k, v, picks,
                              _config(q, k, block_size, max_keep, None, interpret))


@functools.partial(jax.jit, static_argnames=(*STATIC, "pool"))
def asa_gt_pallas_tpu(q, k, v, *, block_size, samples, tau, min_keep, max_keep, seed, pool,
                      interpret):
    """`asa_pallas_tpu` plus the global tokens of windows of `pool` keys."""
    picks = prober.select(q, k, block_size=block_size, samples=samples, tau=tau,
                          min_keep=min_keep, max_keep=max_keep, seed=seed)
    return kernels.attend_tpu(q, k, v, picks,
                              _config(q, k, block_size, max_keep, pool, interpret),
                              global_tokens(k, v, pool))


ASA = registry.Implementation("pallas_tpu", asa_pallas_tpu, unsupported_reasons, ("tpu",))
ASA_GT = registry.Implementation("pallas_tpu", asa_gt_pallas_tpu, unsupported_reasons,
                                 ("tpu",))
