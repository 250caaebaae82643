"""Neighbourhood attention (NATTEN semantics, `papers/seed-papers-1.md` #11), "neighborhood".

Tokens are a 1-, 2- or 3-D grid in row-major order (N = prod(spatial_shape)). Along each
axis of n tokens with kernel size k and dilation d, tokens split into d groups by index mod
d; inside its group a query sees the k nearest members, the window shifting (not shrinking)
at the borders — in group index space [s, s + k) with s = clip(i - k // 2, 0, n_group - k)
— or, on a causal axis, the k members up to and including itself (fewer near the start).
A query attends, with scale 1/sqrt(D), to the product of its per-axis windows: at most
prod(k) keys. `lla.pallas_kernels.neighborhood.windows` holds this arithmetic, shared by the
reference and the kernels.

Implementations: "pallas_gpu" (fused Triton kernels), "pallas_tpu" (Mosaic TPU kernels,
verified in interpret mode), "xla" (the gather-based reference).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from lla.attention import registry
from lla.attention.neighborhood_pallas import neighborhood_pallas_gpu, neighborhood_pallas_tpu
from lla.attention.neighborhood_pallas import unsupported_reasons as pallas_reasons
from lla.attention.validation import check_qkv
from lla.pallas_kernels.neighborhood.windows import group_extent, window

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
    q_tile: Sequence[int] | None = None,
    kv_tile: Sequence[int] | None = None,
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
      q_tile, kv_tile: Pallas tile shapes, one power of two per axis (None: the defaults of
        `lla.pallas_kernels.neighborhood.tiling.DEFAULT_TILES`); ignored by "xla".
      interpret: run the Pallas kernels in interpret mode (any platform, for tests).

    Returns:
      [B, N, H, D] in q's dtype.

    Raises:
      ValueError: malformed inputs or a window that does not fit an axis.
    """
    check_qkv("neighborhood", q, k, v)
    static = _geometry(q, k, spatial_shape, kernel_size, dilation, causal)
    rank = len(static["spatial_shape"])
    static.update(
        q_tile=None if q_tile is None else _per_axis("q_tile", q_tile, rank, int),
        kv_tile=None if kv_tile is None else _per_axis("kv_tile", kv_tile, rank, int),
        interpret=interpret)
    impl = registry.select(NEIGHBORHOOD, implementation, q, k, v, **static)
    return impl.fn(q, k, v, **static)


def _per_axis(name: str, value, rank: int, kind) -> tuple:
    """`value` (one per axis, or one for all) as a tuple of `rank` ints or (kind bool) bools."""
    values = (tuple(np.ravel(value).tolist()) if isinstance(value, Sequence | np.ndarray)
              and not isinstance(value, str | bytes) else (value,) * rank)
    if len(values) != rank:
        raise ValueError(f"neighborhood: {name} has {len(values)} values {values} for a "
                         f"{rank}-D spatial_shape; give one per axis or a single value")
    accepted = (bool, np.bool_) if kind is bool else (int, np.integer)
    if not all(isinstance(x, accepted) and (kind is bool or not isinstance(x, bool))
               for x in values):
        raise ValueError(f"neighborhood: {name} must be {'bools' if kind is bool else 'ints'}"
                         f" (one per axis or a single value); got {value!r}")
    return tuple(kind(x) for x in values)


def _geometry(q, k, spatial_shape, kernel_size, dilation, causal) -> dict:
    """Validated per-axis tuples: spatial_shape, kernel_size, dilation, causal."""
    tokens = q.shape[1]
    if k.shape[1] != tokens:
        raise ValueError(f"neighborhood: self-attention needs q and k with the same number "
                         f"of tokens; got q {tuple(q.shape)} and k {tuple(k.shape)}")
    shape = _per_axis("spatial_shape", spatial_shape, np.size(spatial_shape), int)
    if not 1 <= len(shape) <= 3 or min(shape) < 1 or math.prod(shape) != tokens:
        raise ValueError(f"neighborhood: spatial_shape {shape} must have 1 to 3 positive "
                         f"axes whose product is the number of tokens {tokens}")
    rank = len(shape)
    kernel = _per_axis("kernel_size", kernel_size, rank, int)
    dilation = _per_axis("dilation", dilation, rank, int)
    causal = _per_axis("causal", causal, rank, bool)
    for axis, (n, kk, d) in enumerate(zip(shape, kernel, dilation, strict=True)):
        if kk < 1 or d < 1:
            raise ValueError(f"neighborhood: kernel_size {kernel} and dilation {dilation} "
                             f"must be >= 1 on every axis")
        if kk * d > n:
            fixes = [f"kernel_size <= {n // d}"] + (
                [f"dilation <= {n // kk}"] if d > 1 and n // kk >= 1 else [])
            raise ValueError(
                f"neighborhood: kernel_size {kk} x dilation {d} = {kk * d} exceeds axis "
                f"{axis} of spatial_shape {shape}, of length {n}; use {' or '.join(fixes)}")
    return dict(spatial_shape=shape, kernel_size=kernel, dilation=dilation, causal=causal)


def _neighbours(spatial_shape, kernel_size, dilation, causal) -> tuple[list, list]:
    """Per axis, the coordinates each position sees: (index int [n, k], valid bool [n, k])
    lists; invalid slots (causal windows near the start) hold the position itself."""
    indices, valid = [], []
    for n, kk, d, c in zip(spatial_shape, kernel_size, dilation, causal, strict=True):
        position = np.arange(n)
        group, slot = position % d, position // d
        lo, hi = window(slot, group_extent(n, d, group), kk, c)
        member = lo[:, None] + np.arange(kk)[None, :]
        ok = member < hi[:, None]
        indices.append(np.where(ok, group[:, None] + d * member, position[:, None]))
        valid.append(ok)
    return indices, valid


def _chunk_size(batch, heads, head_dim, window_keys, tokens) -> int:
    """Queries per step of the reference so one step's [B, C, K, H, D] products stay near
    2^25 floats."""
    return int(max(1, min(tokens, 2 ** 25 // (batch * heads * head_dim * window_keys))))


@functools.partial(jax.jit, static_argnames=(
    "spatial_shape", "kernel_size", "dilation", "causal", "q_tile", "kv_tile", "interpret"))
def _xla(q, k, v, *, spatial_shape, kernel_size, dilation, causal, q_tile, kv_tile,
         interpret):
    """Gather-based reference in float32 at HIGHEST precision; autodiff gives the gradients.

    Queries go in chunks (`lax.map`, each step rematerialised in the backward pass); a chunk
    of C queries gathers its C·prod(k) keys and values, so memory is O(C·prod(k)·H·D),
    never N x N.
    """
    del q_tile, kv_tile, interpret  # pure JAX
    batch, tokens, heads, head_dim = q.shape
    kv_heads = k.shape[2]
    indices, valid = _neighbours(spatial_shape, kernel_size, dilation, causal)
    strides = [math.prod(spatial_shape[a + 1:]) for a in range(len(spatial_shape))]
    window_keys = math.prod(kernel_size)
    chunk = _chunk_size(batch, heads, head_dim, window_keys, tokens)
    chunks = -(-tokens // chunk)
    positions = jnp.minimum(jnp.arange(chunks * chunk), tokens - 1).reshape(chunks, chunk)
    k32, v32 = k.astype(jnp.float32), v.astype(jnp.float32)
    q_chunks = jnp.pad(q.astype(jnp.float32) * head_dim ** -0.5,
                       [(0, 0), (0, chunks * chunk - tokens), (0, 0), (0, 0)])
    q_chunks = q_chunks.reshape(batch, chunks, chunk, kv_heads, heads // kv_heads, head_dim)

    def attend(args):
        q_chunk, position = args  # [B, C, Hkv, G, D], [C]
        index = jnp.zeros((chunk,) + (1,) * len(strides), jnp.int32)
        ok = jnp.ones((chunk,) + (1,) * len(strides), bool)
        for a, (table, mask, stride) in enumerate(zip(indices, valid, strides, strict=True)):
            coordinate = (position // stride) % spatial_shape[a]
            shape = [chunk] + [1] * len(strides)
            shape[a + 1] = kernel_size[a]
            index = index + (jnp.asarray(table)[coordinate] * stride).reshape(shape)
            ok = ok & jnp.asarray(mask)[coordinate].reshape(shape)
        index, ok = index.reshape(chunk, window_keys), ok.reshape(chunk, window_keys)
        keys, values = k32[:, index], v32[:, index]  # [B, C, K, Hkv, D]
        # Products and sums rather than einsums: exact float32 on every backend, and no
        # batched matrix-vector GEMMs for XLA's GPU emitters to tile.
        logits = (q_chunk[:, :, None] * keys[:, :, :, :, None]).sum(-1)  # [B, C, K, Hkv, G]
        logits = jnp.where(ok[None, :, :, None, None], logits, -jnp.inf)
        probs = jax.nn.softmax(logits, axis=2)
        return (probs[..., None] * values[:, :, :, :, None]).sum(2)  # [B, C, Hkv, G, D]

    out = lax.map(jax.checkpoint(attend), (q_chunks.swapaxes(0, 1), positions))
    out = out.swapaxes(0, 1).reshape(batch, chunks * chunk, heads, head_dim)
    return out[:, :tokens].astype(q.dtype)


NEIGHBORHOOD = registry.register(registry.AttentionOp(
    name="neighborhood",
    fn=neighborhood,
    capabilities=registry.Capabilities(
        causal=True, spatial_dims=(1, 2, 3), segments=False, gqa=True, decode=False,
        trainable=True, dtypes=("float32", "bfloat16", "float16")),
    implementations={
        "pallas_gpu": registry.Implementation(
            "pallas_gpu", neighborhood_pallas_gpu, functools.partial(pallas_reasons, "gpu"),
            ("gpu",)),
        "pallas_tpu": registry.Implementation(
            "pallas_tpu", neighborhood_pallas_tpu, functools.partial(pallas_reasons, "tpu"),
            ("tpu",)),
        "xla": registry.Implementation("xla", _xla, registry.always_supported,
                                       ("cpu", "gpu", "tpu")),
    },
    summary="neighbourhood attention on 1-3-D token grids (per-axis window, dilation, causal)",
))
