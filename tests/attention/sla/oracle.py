"""A brute-force oracle for "sla", written from the op's docstring (thu-ml/SLA's
sparse-linear attention).

Per (batch, head): blocks of b tokens (the last one partial); query block p scores key block
j by mean(q of p) · mean(k̃ of j), with k̃ = k minus the mean key of the whole sequence (SLA's
smooth-k, which the op leaves out as it cannot change a ranking); key blocks ranked highest
first, ties to the lower j. The first floor(critical·nK) (at least 1) are critical, the last
floor(negligible·nK) negligible, the rest marginal. Query i then gets
  o_s: dense softmax attention (scale 1/sqrt(D)) restricted to its block's critical keys,
  o_l: Σ_j A_ij v_j / Σ_j A_ij over its block's marginal keys j, with A_ij = φ(q_i)·φ(k_j)
       (0 when that set is empty), computed as a full Nq x Nk matrix,
and o = o_s + o_l W + c. The masks come from numpy (float64) through a callback, so the
oracle stays differentiable in q, k, v, W and c.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from tests.attention.topk_block.oracle import masked_dense_attention


def block_class_masks(q, k, block_size, critical, negligible):
    """(critical, marginal): bool [B, H, Nq, Nk] token masks (numpy q [B, Nq, H, D],
    k [B, Nk, Hkv, D])."""
    q, k = np.asarray(q, np.float64), np.asarray(k, np.float64)
    batch, q_tokens, heads, _ = q.shape
    kv_tokens, kv_heads = k.shape[1], k.shape[2]
    key_starts = list(range(0, kv_tokens, block_size))
    n_critical = max(1, math.floor(critical * len(key_starts) + 1e-6))
    n_negligible = math.floor(negligible * len(key_starts) + 1e-6)
    critical_mask = np.zeros((batch, heads, q_tokens, kv_tokens), bool)
    marginal_mask = np.zeros_like(critical_mask)
    for b in range(batch):
        for h in range(heads):
            smooth = k[b, :, h // (heads // kv_heads)]
            smooth = smooth - smooth.mean(0)
            key_means = [smooth[s:s + block_size].mean(0) for s in key_starts]
            for p in range(0, q_tokens, block_size):
                query_mean = q[b, p:p + block_size, h].mean(0)
                scores = [float(query_mean @ mean) for mean in key_means]
                ranked = sorted(range(len(scores)), key=lambda j: (-scores[j], j))
                rows = slice(p, p + block_size)
                for rank, j in enumerate(ranked):
                    cols = slice(j * block_size, (j + 1) * block_size)
                    if rank < n_critical:
                        critical_mask[b, h, rows, cols] = True
                    elif rank < len(ranked) - n_negligible:
                        marginal_mask[b, h, rows, cols] = True
    return critical_mask, marginal_mask


def features(x, name):
    """φ(x) over the last axis."""
    if name == "softmax":
        return jax.nn.softmax(x, axis=-1)
    return jax.nn.elu(x) + 1 if name == "elu" else jax.nn.relu(x)


@functools.partial(jax.jit, static_argnames=("block_size", "critical", "negligible",
                                             "feature_map"))
def sla_oracle(q, k, v, kernel=None, bias=None, *, block_size, critical, negligible=0.0,
               feature_map="softmax"):
    """The oracle's output [B, Nq, H, D] (float32); kernel [D, D] and bias [D] default to
    the identity and 0."""
    dim = q.shape[-1]
    kernel = jnp.eye(dim) if kernel is None else kernel
    bias = jnp.zeros(dim) if bias is None else bias
    shape = jax.ShapeDtypeStruct((q.shape[0], q.shape[2], q.shape[1], k.shape[1]), jnp.bool_)
    critical_mask, marginal_mask = jax.pure_callback(
        lambda q, k: block_class_masks(q, k, block_size, critical, negligible),
        (shape, shape), jax.lax.stop_gradient(q), jax.lax.stop_gradient(k))
    sparse = masked_dense_attention(q, k, v, critical_mask)
    group = q.shape[2] // k.shape[2]
    key_features = jnp.repeat(features(k, feature_map), group, axis=2)
    affinity = jnp.einsum("bqhd,bkhd->bhqk", features(q, feature_map), key_features)
    affinity = jnp.where(marginal_mask, affinity, 0.0)
    totals = affinity.sum(-1, keepdims=True)
    weights = jnp.where(totals > 0, affinity / jnp.where(totals > 0, totals, 1.0), 0.0)
    linear = jnp.einsum("bhqk,bkhd->bqhd", weights, jnp.repeat(v, group, axis=2))
    return sparse + linear @ kernel + bias
