"""Neighbourhood attention with NATTEN's semantics (Hassani et al.), registered as "neighborhood".

Tokens are a 1-, 2- or 3-D grid in row-major order (N = prod(spatial_shape)). Along each
axis of n tokens with kernel size k and dilation d, tokens split into d groups by index mod
d; inside its group a query sees the k nearest members, the window shifting (not shrinking)
at the borders — in group index space [s, s + k) with s = clip(i - k // 2, 0, n_group - k)
— or, on a causal axis, the k members up to and including itself (fewer near the start).
A query attends, with scale 1/sqrt(D), to the product of its per-axis windows: at most
prod(k) keys. `lla.pallas_kernels.neighborhood.windows` holds this arithmetic, shared by the
reference and the kernels. Models feed raster-order tokens and pass the grid as
`spatial_shape` (the op's `token_order` capability is "grid").

Implementations: "pallas_gpu" (fused Triton kernels; `pallas_gpu.py`), "pallas_tpu" (Mosaic
TPU kernels, verified in interpret mode; `pallas_tpu.py`), "xla" (the gather-based reference;
`reference.py`). Argument checks are in `geometry.py`; the kernels' tiles and launch
parameters are `tuning` configs, not arguments.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax

from lla.attention import registry
from lla.attention.common.validation import check_flag, check_qkv
from lla.attention.neighborhood import geometry, pallas_gpu, pallas_tpu, reference

PerAxis = int | Sequence[int]


def neighborhood(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    spatial_shape: Sequence[int],
    kernel_size: PerAxis,
    dilation: PerAxis = 1,
    causal: bool | Sequence[bool] = False,
    implementation: str | Sequence[str] | None = None,
    interpret: bool = False,
) -> jax.Array:
    """Neighbourhood self-attention on a token grid.

    Args:
      q: [B, N, H, D] float32, bfloat16 or float16, row-major over `spatial_shape`.
      k, v: [B, N, Hkv, D], Hkv dividing H.
      spatial_shape: the grid, 1 to 3 axes, product N.
      kernel_size: window size per axis (an int for all axes); kernel_size·dilation must
        not exceed the axis.
      dilation: per axis (or one int).
      causal: per axis (or one bool): a causal axis only looks back.
      implementation: None (best available), "pallas_gpu", "pallas_tpu", "xla", or a
        sequence of names.
      interpret: run the Pallas kernels in interpret mode (any platform, for tests).

    Returns:
      [B, N, H, D] in q's dtype.

    Raises:
      ValueError: malformed inputs or a window that does not fit an axis.
    """
    check_qkv("neighborhood", q, k, v)
    static = geometry.validate(q, k, spatial_shape, kernel_size, dilation, causal)
    interpret = check_flag("neighborhood", "interpret", interpret)
    return registry.call(NEIGHBORHOOD, implementation, q, k, v, **static, interpret=interpret)


NEIGHBORHOOD = registry.register(registry.AttentionOp(
    name="neighborhood",
    fn=neighborhood,
    capabilities=registry.Capabilities(causal=True, token_order="grid", gqa=True),
    implementations=(pallas_gpu.IMPLEMENTATION, pallas_tpu.IMPLEMENTATION,
                     registry.Implementation(
                         "xla", reference.neighborhood_xla,
                         tunable=registry.Tunable(reference.default_config, ("chunk",)))),
    summary="neighbourhood attention on 1-3-D token grids (per-axis window, dilation, causal)",
    default_kwargs={"kernel_size": 13},
    example_kwargs={"kernel_size": 3},
))
