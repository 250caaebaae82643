"""Top-K block-sparse attention, registered as "topk_block": single-level top-K over
mean-pooled blocks (LLSA's "Top-K, L=1" baseline; the NSA-selection / MoBA pattern).

Tokens are cut into blocks of B consecutive tokens (the last one partial when B does not
divide N), so the op's `token_order` is "hierarchy": models feed 2-D and 3-D grids in Z-order
and a block is a compact patch. Query block b attends, in one softmax with scale 1/sqrt(D),
to all tokens of its K selected key blocks (`selection.py`, no gradient): the top K by the
dot product of mean-pooled query and key blocks; `local=True` always keeps the diagonal
block b. `causal=True` (self-attention, sequence order): block b keeps its own block, masked
on the diagonal, and the top K - 1 past blocks ranked with the mean query of block b - 1, so
no output depends on a later token. Ties go to the lower block. Keys per query: K·B, so the
work is linear in N.

Files: `selection.py` (shared by every implementation), `reference.py` ("xla", over
`lla.attention.common.block_sparse`), `pallas_gpu.py` and `pallas_tpu.py` (the sparse-flash
kernels of `lla.pallas_kernels.sparse_flash`; the GPU tiling is a `tuning` config, not an
argument).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax

from lla.attention import registry
from lla.attention.common.block_sparse import check_block_arguments
from lla.attention.common.validation import check_flag, check_qkv
from lla.attention.topk_block import pallas_gpu, pallas_tpu, reference, selection


def topk_block(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    block_size: int = 16,
    topk: int = 32,
    local: bool = False,
    causal: bool = False,
    implementation: str | Sequence[str] | None = None,
    interpret: bool = False,
) -> jax.Array:
    """Top-K block-sparse attention.

    Args:
      q: [B, Nq, H, D] float32, bfloat16 or float16.
      k, v: [B, Nk, Hkv, D], Hkv dividing H.
      block_size: tokens per query and key block (B >= 1); 16 as in LLSA's baselines, 64
        or 128 for the video methods.
      topk: key blocks per query block (K <= ceil(Nk / B)), the forced one included.
      local: always keep the diagonal key block (key block b for query block b).
      causal: self-attention where query i sees keys j <= i only (see the module docstring).
      implementation: None (best available), "pallas_gpu", "pallas_tpu", "xla", or a
        sequence of names.
      interpret: run the Pallas kernels in interpret mode (any platform, for tests).

    Returns:
      [B, Nq, H, D] in q's dtype.
    """
    check_qkv("topk_block", q, k, v)
    block_size, topk = check_block_arguments("topk_block", k.shape[1], block_size, topk)
    local = check_flag("topk_block", "local", local)
    causal = check_flag("topk_block", "causal", causal)
    interpret = check_flag("topk_block", "interpret", interpret)
    if (causal or local) and q.shape[1] != k.shape[1]:
        raise ValueError(f"topk_block: {'causal' if causal else 'local'}=True needs "
                         f"self-attention (q and k with the same number of tokens); got "
                         f"q {tuple(q.shape)} and k {tuple(k.shape)}")
    static = dict(block_size=block_size, topk=topk, local=local, causal=causal,
                  interpret=interpret)
    return registry.call(TOPK_BLOCK, implementation, q, k, v, **static)


TOPK_BLOCK = registry.register(registry.AttentionOp(
    name="topk_block",
    fn=topk_block,
    capabilities=registry.Capabilities(token_order="hierarchy", causal=True, gqa=True),
    implementations=(pallas_gpu.IMPLEMENTATION, pallas_tpu.IMPLEMENTATION,
                     registry.Implementation("xla", reference.topk_block_xla)),
    summary="top-K block-sparse attention over mean-pooled blocks (LLSA's Top-K baseline)",
    default_kwargs={"block_size": 16, "topk": 32},
    keys_per_query=selection.keys_per_query,
    example_kwargs={"block_size": 4, "topk": 3},
))
