"""Linen modules built on `lla.attention`: the attention layer, MLP, adaLN, embeddings, RoPE
(1-D, 2-D and 3-D).

    from lla.layers import Attention
    y = Attention(num_heads=8, op="neighborhood", op_kwargs={"kernel_size": 7}).apply(
        params, x)                                   # x [B, H, W, C] -> [B, H, W, C]
"""

from lla.layers.adaln import AdaLNModulation, layer_norm, modulate
from lla.layers.attention import Attention, RMSNorm
from lla.layers.embeddings import LabelEmbedder, TimestepEmbedder, timestep_features
from lla.layers.mlp import Mlp, SwiGLU
from lla.layers.rope import apply_rope, rope_1d, rope_2d, rope_3d
from lla.layers.sparse_linear import SparseLinearAttention

__all__ = [
    "AdaLNModulation",
    "Attention",
    "LabelEmbedder",
    "Mlp",
    "RMSNorm",
    "SparseLinearAttention",
    "SwiGLU",
    "TimestepEmbedder",
    "apply_rope",
    "layer_norm",
    "modulate",
    "rope_1d",
    "rope_2d",
    "rope_3d",
    "timestep_features",
]
