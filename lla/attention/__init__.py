"""Functional attention ops over [batch, tokens, heads, head_dim] arrays, by name.

    import lla.attention as attn
    out = attn.dot_product_attention(q, k, v, causal=True)
    attn.names(); attn.get("dense")  # registry: capabilities and implementations
"""

from lla.attention.dense import dot_product_attention
from lla.attention.llsa import llsa
from lla.attention.neighborhood import neighborhood
from lla.attention.partials import merge_partials
from lla.attention.registry import (
    AttentionOp,
    Capabilities,
    Implementation,
    NoImplementationError,
    get,
    names,
    register,
)

__all__ = [
    "AttentionOp",
    "Capabilities",
    "Implementation",
    "NoImplementationError",
    "dot_product_attention",
    "get",
    "llsa",
    "merge_partials",
    "names",
    "neighborhood",
    "register",
]
