"""Why a Pallas implementation declines inputs, said the same way by every op."""

from __future__ import annotations

import types

import jax


def compiled_kernel_reasons(kernels: types.ModuleType, backend: str, config,
                            interpret: bool) -> list[str]:
    """Why the compiled kernels of the module `kernels` cannot run `config` on this platform:
    a `backend` ("gpu", "tpu") other than jax's, plus `kernels.unsupported_reasons(config)`.
    Interpret mode runs anywhere. A tiling that does not divide the shapes raises ValueError
    first (`kernels.check_tiling`, where the module has one)."""
    if hasattr(kernels, "check_tiling"):
        kernels.check_tiling(config)
    if interpret:
        return []
    reasons = []
    if jax.default_backend() != backend:
        reasons.append(f"needs a {backend.upper()} (or interpret=True), platform is "
                       f"{jax.default_backend()}")
    return reasons + kernels.unsupported_reasons(config)
