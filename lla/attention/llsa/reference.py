"""The "xla" implementation of LLSA: the readable definition, gather-based, float32 at
HIGHEST precision; autodiff gives the gradients. Held to the brute-force oracle of
tests/attention/llsa/oracle.py.

With B = block_size, K = topk and L = levels, query block b (B consecutive queries) attends,
in one softmax with scale 1/sqrt(D), to
  fine:          the B tokens of each of its K selected level-0 blocks      weight 1
  level 0<l<L:   the K·B level-l candidates of its level-l parent           weight B^l
  coarsest L:    all N / B^L level-L tokens                                  weight B^L
where level-l keys and values are means over B^l consecutive tokens (`hierarchy.pyramid`),
the selection is `hierarchy.select` (no gradient) and a weight w enters as +log(w) on the
logit. Ablations: only levels 0..Lₑ (Lₑ = enrich_levels) are attended, and reweight=False
gives every weight 1.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from lla.attention.llsa import hierarchy


def _einsum(spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.einsum(spec, a, b, precision=lax.Precision.HIGHEST)


@functools.partial(jax.jit, static_argnames=("block_size", "topk", "levels", "enrich_levels",
                                             "reweight", "interpret"))
def llsa_xla(q, k, v, *, block_size, topk, levels, enrich_levels, reweight, interpret):
    """q [Bt, N, H, D], k/v [Bt, N, Hkv, D] -> [Bt, N, H, D] (see `lla.attention.llsa`).

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
    def log_weight(level):
        return level * math.log(block_size) if reweight else 0.0

    keys, values, log_weights = [], [], []
    # Fine and intermediate levels: per query block, the K·B tokens (of level l) that are the
    # children of its level-(l+1) picks; query block b's level-(l+1) parent token is b // B^l.
    for level in range(min(levels, enrich_levels + 1)):
        parent_picks = jnp.repeat(picks[level + 1], block_size ** level, axis=2)
        index = hierarchy.children(parent_picks, block_size)  # [Bt, H, N/B, K·B]
        keys.append(hierarchy.gather_tokens(k_levels[level], index))
        values.append(hierarchy.gather_tokens(v_levels[level], index))
        log_weights.append(log_weight(level))
    logits = [_einsum("bhnqd,bhnmd->bhnqm", q_blocks, key) + w
              for key, w in zip(keys, log_weights, strict=True)]
    coarsest = enrich_levels == levels  # all N / B^L level-L tokens
    if coarsest:
        logits.append(_einsum("bhnqd,bhmd->bhnqm", q_blocks, k_levels[levels])
                      + log_weight(levels))
    probs = jax.nn.softmax(jnp.concatenate(logits, axis=-1), axis=-1)
    sizes = [x.shape[-1] for x in logits]
    splits = jnp.split(probs, [sum(sizes[:i + 1]) for i in range(len(sizes) - 1)], axis=-1)
    out = sum(_einsum("bhnqm,bhnmd->bhnqd", p, value)
              for p, value in zip(splits[:len(values)], values, strict=True))
    if coarsest:
        out = out + _einsum("bhnqm,bhmd->bhnqd", splits[-1], v_levels[levels])
    return hierarchy.heads_major(out.reshape(batch, heads, tokens, head_dim)).astype(q.dtype)
