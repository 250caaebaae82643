"""The "pallas_gpu" implementations of "asa" and "asa_gt": the prober in XLA, then the
sparse-flash GPU kernels (`lla.attention.common.block_sparse_pallas.attend_gpu`), ASA_GT's
global tokens as their summary tokens; the tiling is a `tuning` config."""

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
from lla.pallas_kernels.sparse_flash import gpu


def default_config(q, k, v, *, block_size, max_keep, interpret, pool=None, **_):
    """The kernels' shape of this call with the heuristic tiling (summary tokens: ASA_GT's
    global tokens, when `pool` is given)."""
    summary_tokens = 0 if pool is None else num_blocks(k.shape[1], pool)
    return kernels.gpu_config(q, k, block_size=block_size,
                              topk=prober.list_length(k.shape[1], block_size, max_keep),
                              summary_tokens=summary_tokens, interpret=interpret)


def unsupported_reasons(q, k, v, *, interpret, config: gpu.Config, **_) -> list[str]:
    """Why the compiled kernels cannot run these inputs (interpret mode runs any)."""
    return compiled_kernel_reasons(gpu, "gpu", config, interpret)


@functools.partial(jax.jit, static_argnames=(*STATIC, "config"))
def asa_pallas_gpu(q, k, v, *, block_size, samples, tau, min_keep, max_keep, seed, interpret,
                   config: gpu.Config):
    """q [Bt, Nq, H, D], k/v [Bt, Nk, Hkv, D] -> [Bt, Nq, H, D]."""
    del interpret
    picks = prober.select(q, k, block_size=block_size, samples=samples, tau=tau,
                          min_keep=min_keep, max_keep=max_keep, seed=seed)
    return kernels.attend_gpu(q, k, v, picks, config)


@functools.partial(jax.jit, static_argnames=(*STATIC, "pool", "config"))
def asa_gt_pallas_gpu(q, k, v, *, block_size, samples, tau, min_keep, max_keep, seed, pool,
                      interpret, config: gpu.Config):
    """`asa_pallas_gpu` plus the global tokens of windows of `pool` keys."""
    del interpret
    picks = prober.select(q, k, block_size=block_size, samples=samples, tau=tau,
                          min_keep=min_keep, max_keep=max_keep, seed=seed)
    return kernels.attend_gpu(q, k, v, picks, config, global_tokens(k, v, pool))


TUNABLE = registry.Tunable(default_config, gpu.TUNABLE_FIELDS)
ASA = registry.Implementation("pallas_gpu", asa_pallas_gpu, unsupported_reasons, ("gpu",),
                              TUNABLE)
ASA_GT = registry.Implementation("pallas_gpu", asa_gt_pallas_gpu, unsupported_reasons,
                                 ("gpu",), TUNABLE)
