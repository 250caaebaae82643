"""Video Sparse Attention (VSA, FastVideo), registered as "vsa": a coarse pass over pooled
tiles plus fine attention inside the top-K tiles, summed.

Tokens come in tiles of B consecutive tokens (the last one partial), so the op's
`token_order` is "hierarchy": models feed 2-D and 3-D grids in Z-order, where a run of 64
tokens is an 8 x 8 or a 4 x 4 x 4 tile (VSA's tile). With B = block_size and K = topk, the
output of query token i in tile b is
  coarse(b)  the attention of b's mean query over all mean-pooled key tiles (one softmax,
             scale 1/sqrt(D), values pooled the same way; `coarse.py`), copied to every
             token of b, plus
  fine(i)    attention of query i over the tokens of the K key tiles with the highest coarse
             scores for b (selection as `topk_block`'s, no gradient), in one softmax.
VSA's optional learned gate on the coarse branch (a per-token projection of the layer's
input) is not part of the op: with no gate, FastVideo also adds the branches as they are.
Both branches are differentiable in q, k and v (the coarse one through the pooling).

Implementations: "pallas_gpu" and "pallas_tpu" (`pallas_gpu.py`, `pallas_tpu.py`: the fine
branch on the sparse-flash kernels of `lla.pallas_kernels.sparse_flash`), "xla"
(`reference.py`).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax

from lla.attention import registry
from lla.attention.common.block_sparse import check_block_arguments, num_blocks
from lla.attention.common.validation import check_flag, check_qkv
from lla.attention.topk_block import selection
from lla.attention.vsa import pallas_gpu, pallas_tpu, reference


def vsa(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    block_size: int = 64,
    topk: int = 32,
    implementation: str | Sequence[str] | None = None,
    interpret: bool = False,
) -> jax.Array:
    """Video sparse attention: coarse tile attention + fine top-K tile attention.

    Args:
      q: [B, Nq, H, D] float32, bfloat16 or float16.
      k, v: [B, Nk, Hkv, D], Hkv dividing H.
      block_size: tokens per tile (VSA: 64 = 4 x 4 x 4).
      topk: key tiles of each query tile's fine branch (K <= ceil(Nk / B)).
      implementation: None (best available), "pallas_gpu", "pallas_tpu", "xla", or a
        sequence of names.
      interpret: run the Pallas kernels in interpret mode (any platform, for tests).

    Returns:
      [B, Nq, H, D] in q's dtype.
    """
    check_qkv("vsa", q, k, v)
    block_size, topk = check_block_arguments("vsa", k.shape[1], block_size, topk)
    interpret = check_flag("vsa", "interpret", interpret)
    return registry.call(VSA, implementation, q, k, v, block_size=block_size, topk=topk,
                         interpret=interpret)


def keys_per_query(q, k, v, *, block_size, topk, **_) -> jax.Array:
    """The op's `keys_per_query`: the fine branch's K tiles of B keys plus the coarse
    branch's ceil(Nk / B) pooled tiles."""
    fine = selection.keys_per_query(q, k, v, block_size=block_size, topk=topk, local=False,
                                    causal=False)
    return fine + num_blocks(k.shape[1], block_size)


VSA = registry.register(registry.AttentionOp(
    name="vsa",
    fn=vsa,
    capabilities=registry.Capabilities(token_order="hierarchy", gqa=True),
    implementations=(pallas_gpu.IMPLEMENTATION, pallas_tpu.IMPLEMENTATION,
                     registry.Implementation("xla", reference.vsa_xla)),
    summary="video sparse attention: pooled-tile attention + fine top-K tile attention",
    default_kwargs={"block_size": 64, "topk": 32},
    keys_per_query=keys_per_query,
    example_kwargs={"block_size": 4, "topk": 3},
))
