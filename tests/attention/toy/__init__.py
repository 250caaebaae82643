"""A toy op in its own folder: everything a new attention op must write to join the registry,
the shared op suite, the benchmark and every model. Softmax attention with two
implementations: "fast" (`jax.nn.dot_product_attention`, float32 only, so dispatch has a
choice to make) and the "xla" reference.

Two variants with other capabilities serve the model tests: TOY_HIERARCHY (the same math,
asking for hierarchy-ordered tokens) and TOY_SEQUENCE (1-D sequences only); they share the
toy's function, so their calls dispatch (and log) as "toy".
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from lla.attention import registry
from lla.attention.common.validation import check_qkv, default_scale


def toy_attention(q, k, v, *, causal=False, scale=None, implementation=None):
    """softmax(q·kᵀ·scale)·v; q [B, Nq, H, D], k/v [B, Nk, H, D] -> [B, Nq, H, D]."""
    check_qkv("toy", q, k, v)
    return registry.call(TOY, implementation, q, k, v, causal=causal,
                         scale=default_scale(q.shape[-1], scale))


def reference(q, k, v, *, causal, scale):
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision="highest") * scale
    if causal:
        logits = jnp.where(jnp.tri(q.shape[1], k.shape[1], dtype=bool), logits, -jnp.inf)
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v, precision="highest").astype(q.dtype)


def fast(q, k, v, *, causal, scale):
    return jax.nn.dot_product_attention(q, k, v, scale=scale, is_causal=causal)


def fast_reasons(q, k, v, *, causal, scale):
    return [] if q.dtype == jnp.float32 else [f"needs float32, got {q.dtype}"]


TOY = registry.register(registry.AttentionOp(
    name="toy", fn=toy_attention, summary="toy softmax attention (tests)",
    capabilities=registry.Capabilities(causal=True),
    implementations=[registry.Implementation("fast", fast, fast_reasons),
                     registry.Implementation("xla", reference)]))

TOY_HIERARCHY = registry.register(dataclasses.replace(
    TOY, name="toy_hierarchy", capabilities=registry.Capabilities(token_order="hierarchy"))).name
TOY_SEQUENCE = registry.register(dataclasses.replace(
    TOY, name="toy_sequence", capabilities=registry.Capabilities(spatial_dims=(1,)))).name
