"""Using lla from other Flax code: `flax_attention_fn` (an lla op as the `attention_fn` of
Flax's linen and NNX attention modules) and `nnx_attention` (the lla attention layer as an NNX
module)."""

from lla.interop.flax_attention import causal_ops, flax_attention_fn, nnx_attention

__all__ = ["causal_ops", "flax_attention_fn", "nnx_attention"]
