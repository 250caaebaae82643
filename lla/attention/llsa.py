"""LLSA, log-linear sparse attention (`papers/llsa.md`), registered as "llsa".

Tokens must already be in hierarchy order (consecutive tokens pool together; see
`lla.attention.layouts` for Z-order on images and volumes). With B = block_size, K = topk and
L = levels, query block b (B consecutive queries) attends, in one softmax with scale
1/sqrt(D), to
  fine:          the B tokens of each of its K selected level-0 blocks      weight 1
  level 0<l<L:   the K·B level-l candidates of its level-l parent           weight B^l
  coarsest L:    all N / B^L level-L tokens                                  weight B^L
where level-l keys and values are means over B^l consecutive tokens and a weight w enters
as +log(w) on the logit. Selection (`llsa_hierarchy.select`) has no gradient; q, k and v get
exact gradients, k and v also through the pooling.

N must be divisible by B^L (no partial blocks): other sizes are rejected with an error that
names the nearest valid N.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

from lla.attention import llsa_hierarchy as hierarchy
from lla.attention import registry
from lla.attention.llsa_pallas import llsa_pallas_gpu
from lla.attention.llsa_pallas import unsupported_reasons as pallas_gpu_reasons
from lla.attention.llsa_pallas_tpu import llsa_pallas_tpu
from lla.attention.llsa_pallas_tpu import unsupported_reasons as pallas_tpu_reasons
from lla.attention.validation import check_qkv


def llsa(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    block_size: int = 16,
    topk: int = 8,
    levels: int | None = None,
    implementation: str | Sequence[str] | None = None,
    interpret: bool = False,
) -> jax.Array:
    """Log-linear sparse attention (non-causal self-attention).

    Args:
      q: [B, N, H, D] float32, bfloat16 or float16, tokens in hierarchy order.
      k, v: [B, N, Hkv, D], Hkv dividing H.
      block_size: tokens per block and pooling window (B >= 2).
      topk: blocks kept per query block at every level (K <= N / B^L).
      levels: L >= 1; None means max(1, floor(log_B(N) - 1)).
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
    if levels is None:
        levels = hierarchy.default_levels(tokens, block_size)
    hierarchy.check_hierarchy("llsa", tokens, block_size, topk, levels)
    static = dict(block_size=block_size, topk=topk, levels=levels, interpret=interpret)
    impl = registry.select(LLSA, implementation, q, k, v, **static)
    return impl.fn(q, k, v, **static)


def _einsum(spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.einsum(spec, a, b, precision=lax.Precision.HIGHEST)


@functools.partial(jax.jit, static_argnames=("block_size", "topk", "levels", "interpret"))
def _xla(q, k, v, *, block_size, topk, levels, interpret):
    """Gather-based reference in float32 at HIGHEST precision; autodiff gives the gradients.

    Memory O(N·(K·B·L + N/B^L)·D) per head: per query block it gathers its K·B fine keys and
    K·B keys per intermediate level, and reads all coarsest-level keys.
    """
    del interpret  # pure JAX
    batch, tokens, heads, head_dim = q.shape
    groups = heads // k.shape[2]
    q_levels = hierarchy.pyramid(q, block_size, levels)
    k_levels = hierarchy.pyramid(k, block_size, levels)
    picks = hierarchy.select(q_levels, k_levels, block_size, topk)
    k_levels = [jnp.repeat(x, groups, 2) for x in k_levels]
    v_levels = [jnp.repeat(x, groups, 2) for x in hierarchy.pyramid(v, block_size, levels)]
    q_levels = [hierarchy.heads_major(x) for x in q_levels]
    k_levels = [hierarchy.heads_major(x) for x in k_levels]
    v_levels = [hierarchy.heads_major(x) for x in v_levels]

    blocks = tokens // block_size
    q_blocks = q_levels[0].reshape(batch, heads, blocks, block_size, head_dim)
    q_blocks = q_blocks * head_dim ** -0.5
    keys, values, log_weights = [], [], []
    # Fine and intermediate levels: per query block, the K·B tokens (of level l) that are the
    # children of its level-(l+1) picks; query block b's level-(l+1) parent token is b // B^l.
    for level in range(levels):
        parent_picks = jnp.repeat(picks[level + 1], block_size ** level, axis=2)
        index = hierarchy.children(parent_picks, block_size)  # [Bt, H, N/B, K·B]
        keys.append(hierarchy.gather_tokens(k_levels[level], index))
        values.append(hierarchy.gather_tokens(v_levels[level], index))
        log_weights.append(level * math.log(block_size))
    logits = [_einsum("bhnqd,bhnmd->bhnqm", q_blocks, key) + w
              for key, w in zip(keys, log_weights, strict=True)]
    logits.append(_einsum("bhnqd,bhmd->bhnqm", q_blocks, k_levels[levels])
                  + levels * math.log(block_size))
    probs = jax.nn.softmax(jnp.concatenate(logits, axis=-1), axis=-1)
    sizes = [x.shape[-1] for x in logits]
    splits = jnp.split(probs, [sum(sizes[:i + 1]) for i in range(len(sizes) - 1)], axis=-1)
    out = sum(_einsum("bhnqm,bhnmd->bhnqd", p, value)
              for p, value in zip(splits[:-1], values, strict=True))
    out = out + _einsum("bhnqm,bhmd->bhnqd", splits[-1], v_levels[levels])
    return hierarchy.heads_major(out.reshape(batch, heads, tokens, head_dim)).astype(q.dtype)


LLSA = registry.register(registry.AttentionOp(
    name="llsa",
    fn=llsa,
    capabilities=registry.Capabilities(
        causal=False, spatial_dims=(), segments=False, gqa=True, decode=False, trainable=True,
        dtypes=("float32", "bfloat16", "float16")),
    implementations={
        "pallas_gpu": registry.Implementation("pallas_gpu", llsa_pallas_gpu, pallas_gpu_reasons,
                                              ("gpu",)),
        "pallas_tpu": registry.Implementation("pallas_tpu", llsa_pallas_tpu, pallas_tpu_reasons,
                                              ("tpu",)),
        "xla": registry.Implementation("xla", _xla, registry.always_supported,
                                       ("cpu", "gpu", "tpu")),
    },
    summary="log-linear sparse attention: hierarchical top-K + weighted coarse levels",
))
