"""The "pallas_tpu" implementation of "sla": the critical blocks on the sparse-flash TPU
kernels (`lla.attention.common.block_sparse_pallas.attend_tpu`), the block classes and the
linear branch in XLA."""

from __future__ import annotations

import functools

import jax

from lla.attention import registry
from lla.attention.common import block_sparse_pallas as kernels
from lla.attention.common.kernel_reasons import compiled_kernel_reasons
from lla.attention.sla.reference import STATIC, sparse_linear
from lla.pallas_kernels.sparse_flash import tpu


def unsupported_reasons(q, k, v, kernel, bias, *, block_size, critical_blocks,
                        negligible_blocks, feature_map, interpret) -> list[str]:
    """Why the compiled kernels cannot run these inputs (interpret mode runs any)."""
    config = kernels.tpu_config(q, k, block_size=block_size, topk=critical_blocks)
    return compiled_kernel_reasons(tpu, "tpu", config, interpret)


@functools.partial(jax.jit, static_argnames=STATIC)
def sla_pallas_tpu(q, k, v, kernel, bias, *, block_size, critical_blocks, negligible_blocks,
                   feature_map, interpret):
    """q [Bt, Nq, H, D], k/v [Bt, Nk, Hkv, D], kernel [D, D], bias [D] -> [Bt, Nq, H, D]."""
    config = kernels.tpu_config(q, k, block_size=block_size, topk=critical_blocks,
                                interpret=interpret)
    return sparse_linear(
        q, k, v, kernel, bias,
        lambda critical: kernels.attend_tpu(q, k, v, critical, config),
        block_size=block_size, critical_blocks=critical_blocks,
        negligible_blocks=negligible_blocks, feature_map=feature_map)


IMPLEMENTATION = registry.Implementation("pallas_tpu", sla_pallas_tpu, unsupported_reasons,
                                         ("tpu",))
