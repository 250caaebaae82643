"""What the two Pallas implementations of LLSA share: their tuning configs come from the kernel
module's `make_config` (shape of the call plus a heuristic tiling); they decline inputs
through `lla.attention.common.kernel_reasons`."""

from __future__ import annotations

import types

from lla.attention import registry


def tunable(kernels: types.ModuleType) -> registry.Tunable:
    """The `Tunable` of the implementation running `kernels` (`lla.pallas_kernels.llsa.gpu`
    or `.tpu`): `kernels.make_config` for the inputs, `kernels.TUNABLE_FIELDS` settable."""

    def default_config(q, k, v, *, block_size, topk, levels, enrich_levels, reweight,
                       causal, interpret):
        _, tokens, heads, head_dim = q.shape
        return kernels.make_config(block_size, topk, levels, heads, k.shape[2], tokens,
                                   head_dim, enrich_levels=enrich_levels, reweight=reweight,
                                   causal=causal, interpret=interpret)

    return registry.Tunable(default_config, kernels.TUNABLE_FIELDS)
