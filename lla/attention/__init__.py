"""Functional attention ops over [batch, tokens, heads, head_dim] arrays, by name.

    import lla.attention as attn
    out = attn.dot_product_attention(q, k, v, causal=True)
    attn.names(); attn.get("dense")            # registry: capabilities and implementations
    order = attn.token_order.for_op("llsa", (256, 256))   # how a model feeds grid tokens

One folder per op (`dense/`, `llsa/`, `neighborhood/`, `topk_block/`, `vsa/`, `sla/`,
`asa/`; `asa/` registers two, "asa" and "asa_gt"): the public function and its registration
in `__init__.py`, the "xla" reference in `reference.py`, one file per other implementation
named as it is (`cudnn.py`, `pallas_gpu.py`, `pallas_tpu.py`). Shared pieces are in
`common/`. This file is the explicit list of public ops: a new op adds one import.
Here `lla.attention.llsa` and `lla.attention.neighborhood` are the op functions, which
shadow their folders as attributes: reach a folder's modules with from-imports
(`from lla.attention.llsa import reference`).
"""

from lla.attention import parallel  # sequence-parallel dense and LLSA (shard_map)
from lla.attention.asa import asa, asa_gt
from lla.attention.common import token_order
from lla.attention.common.partials import merge_partials
from lla.attention.dense import dot_product_attention
from lla.attention.llsa import llsa
from lla.attention.neighborhood import neighborhood
from lla.attention.registry import (
    AttentionOp,
    Capabilities,
    Implementation,
    NoImplementationError,
    Tunable,
    dispatch_log,
    get,
    kept_keys,
    names,
    register,
    tuning,
)
from lla.attention.sla import sla
from lla.attention.topk_block import topk_block
from lla.attention.vsa import vsa

__all__ = [
    "AttentionOp",
    "Capabilities",
    "Implementation",
    "NoImplementationError",
    "Tunable",
    "asa",
    "asa_gt",
    "dispatch_log",
    "dot_product_attention",
    "get",
    "kept_keys",
    "llsa",
    "merge_partials",
    "names",
    "neighborhood",
    "parallel",
    "register",
    "sla",
    "token_order",
    "topk_block",
    "tuning",
    "vsa",
]
