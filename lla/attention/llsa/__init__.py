"""LLSA, log-linear sparse attention (Zhou et al., arXiv 2512.16615), registered as "llsa".

Tokens must already be in hierarchy order: consecutive tokens pool together, so the op's
`token_order` capability is "hierarchy" and models feed images and volumes in Z-order
(`lla.attention.token_order.for_op("llsa", grid)`). With B = block_size, K = topk and
L = levels, query block b (B consecutive queries) attends, in one softmax with scale
1/sqrt(D), to
  fine:          the B tokens of each of its K selected level-0 blocks      weight 1
  level 0<l<L:   the K·B level-l candidates of its level-l parent           weight B^l
  coarsest L:    all N / B^L level-L tokens                                  weight B^L
where level-l keys and values are means over B^l consecutive tokens and a weight w enters
as +log(w) on the logit. Selection (`hierarchy.select`) has no gradient; q, k and v get
exact gradients, k and v also through the pooling.

Ablations (the paper's Tables 1a and 5a), static like the rest: `enrich_levels` = Lₑ keeps
the coarse levels 1..Lₑ in the softmax and drops Lₑ+1..L (Lₑ = 0: plain top-K over the fine
blocks; Lₑ = L, the default: full LLSA); `reweight=False` gives every coarse token weight 1
instead of B^l. Neither changes the selection, which always runs through all L levels. The
paper does not say which levels go first when Lₑ < L; dropping the coarsest keeps the
attended levels a prefix 0..Lₑ of the sweep, so every kernel just ends its sweep early, and
keeps each query's nearest context (the candidate sets of its own picks) over the global
summary. With the defaults the kernels trace exactly the code they did without the switches.

Files: `hierarchy.py` (levels, pooling, selection: shared by every implementation),
`reference.py` ("xla"), `pallas_gpu.py` and `pallas_tpu.py` (glue around the kernels of
`lla.pallas_kernels.llsa`; their tiling is a `tuning` config, not an argument).

`causal=True` (decoder LMs, tokens in sequence order) is defined in docs/llsa_causal.md:
each query block selects, at every level, with the mean query of the block before it, among
tokens whose whole span lies before the block; it attends at level l < L to the children of
its picks and of its open parent (the level-(l+1) token containing its start) that are
complete (level 0: at or before the query, so the own block is always kept, masked on the
diagonal), and to every complete coarsest token. Every past token stays represented at some
level; no output depends on a later token. `causal.py` holds that selection, `decoding.py`
the token-by-token cache (the op's `Decoding`: pooled levels kept up to date per token).

N must be divisible by B^L (no partial blocks): other sizes are rejected with an error that
names the nearest valid N.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax

from lla.attention import registry
from lla.attention.common.validation import check_flag, check_int, check_qkv
from lla.attention.llsa import decoding, hierarchy, pallas_gpu, pallas_tpu, reference


def llsa(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    block_size: int = 16,
    topk: int = 8,
    levels: int | None = None,
    enrich_levels: int | None = None,
    reweight: bool = True,
    causal: bool = False,
    implementation: str | Sequence[str] | None = None,
    interpret: bool = False,
) -> jax.Array:
    """Log-linear sparse attention (self-attention; causal or not).

    Args:
      q: [B, N, H, D] float32, bfloat16 or float16, tokens in hierarchy order.
      k, v: [B, N, Hkv, D], Hkv dividing H.
      block_size: tokens per block and pooling window (B >= 2).
      topk: blocks kept per query block at every level (K <= N / B^L).
      levels: L >= 1; None means max(1, floor(log_B(N) - 1)), and one fewer (at least 1)
        with causal=True (`hierarchy.default_levels`).
      enrich_levels: Lₑ in 0..L, the coarse levels 1..Lₑ that join each query block's KV
        set (levels Lₑ+1..L, the coarsest, are left out); 0 is plain top-K over the
        selected fine blocks; None means L.
      reweight: add log(B^l) to the logits of level-l tokens (their count); False gives
        every token weight 1.
      causal: each query sees only tokens at or before its position (docs/llsa_causal.md).
      implementation: None (best available), "xla", "pallas_gpu", "pallas_tpu", or a
        sequence of names.
      interpret: run Pallas kernels in interpret mode (any platform, for tests).

    Returns:
      [B, N, H, D] in q's dtype.
    """
    check_qkv("llsa", q, k, v)
    if q.shape[1] != k.shape[1]:
        raise ValueError(f"llsa: self-attention needs q and k with the same number of tokens; "
                         f"got q {tuple(q.shape)} and k {tuple(k.shape)}")
    tokens = q.shape[1]
    block_size = check_int("llsa", "block_size", block_size, 2)
    topk = check_int("llsa", "topk", topk, 1)
    causal = check_flag("llsa", "causal", causal)
    levels = (hierarchy.default_levels(tokens, block_size, causal) if levels is None
              else check_int("llsa", "levels", levels, 1))
    enrich_levels = hierarchy.check_enrich_levels("llsa", enrich_levels, levels)
    reweight = check_flag("llsa", "reweight", reweight)
    interpret = check_flag("llsa", "interpret", interpret)
    hierarchy.check_hierarchy("llsa", tokens, block_size, topk, levels)
    static = dict(block_size=block_size, topk=topk, levels=levels,
                  enrich_levels=enrich_levels, reweight=reweight, causal=causal,
                  interpret=interpret)
    return registry.call(LLSA, implementation, q, k, v, **static)


LLSA = registry.register(registry.AttentionOp(
    name="llsa",
    fn=llsa,
    capabilities=registry.Capabilities(token_order="hierarchy", causal=True, gqa=True),
    implementations=(
        registry.Implementation("pallas_gpu", pallas_gpu.llsa_pallas_gpu,
                                pallas_gpu.unsupported_reasons, ("gpu",), pallas_gpu.TUNABLE),
        registry.Implementation("pallas_tpu", pallas_tpu.llsa_pallas_tpu,
                                pallas_tpu.unsupported_reasons, ("tpu",), pallas_tpu.TUNABLE),
        registry.Implementation("xla", reference.llsa_xla),
    ),
    decoding=registry.Decoding(decoding.init_cache, decoding.prefill, decoding.step),
    summary="log-linear sparse attention: hierarchical top-K + weighted coarse levels",
    default_kwargs={"block_size": 16, "topk": 8},
    example_kwargs={"block_size": 4, "topk": 2},
    keys_per_query=hierarchy.keys_per_query,
))
