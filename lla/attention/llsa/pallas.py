"""What the two Pallas implementations of LLSA share: their tuning configs come from the kernel
module's `make_config` (shape of the call plus a heuristic tiling), and they decline inputs
the same way."""

from __future__ import annotations

import types

import jax

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


def reasons(kernels: types.ModuleType, backend: str, config, interpret: bool) -> list[str]:
    """Why the compiled kernels cannot run `config` (interpret mode runs any); a tiling that
    does not divide the shapes raises ValueError (`kernels.check_tiling`)."""
    kernels.check_tiling(config)
    if interpret:
        return []
    reasons = []
    if jax.default_backend() != backend:
        reasons.append(f"needs a {backend.upper()} (or interpret=True), platform is "
                       f"{jax.default_backend()}")
    return reasons + kernels.unsupported_reasons(config)
