"""Sequence-parallel attention: the token axis of q, k, v sharded over a mesh axis.

    from lla.attention import parallel
    mesh = jax.make_mesh((4,), ("sequence",))
    attend = parallel.sequence_parallel(parallel.ring_attention, mesh, causal=True)
    out = attend(q, k, v)            # global [B, N, H, D] in, global out, N / 4 per device

`ring_attention` (dense, `ring.py`) and `sequence_parallel_llsa` (`llsa.py`) are the
per-device functions: they run inside `jax.shard_map` on a device's N / P consecutive tokens
and communicate over `axis_name`; `sequence_parallel` wraps one of them in `jax.shard_map`
for global arrays (`shard.py`). Both equal their single-device op row for row
(`lla.attention.dot_product_attention`, `lla.attention.llsa` with implementation "xla"),
forward and gradients. Inside a model (`context.py`, used by the DiT): `shard_tokens`
constrains [B, N, C] activations to the token sharding of the mesh in context
(`jax.set_mesh`), `sharded_attention(op, q, k, v)` runs a registered op's per-device form
(`OPS`: "dense", "llsa") over it. Costs and what is not done: docs/sequence_parallel.md.

A folder of its own rather than a module of `common/`: it is built on the ops (dense, LLSA's
reference and hierarchy), while `common/` holds the pieces the ops are built from.
"""

from lla.attention.parallel.context import (
    OPS,
    axis_size,
    shard_tokens,
    sharded_attention,
    token_spec,
)
from lla.attention.parallel.llsa import sequence_parallel_llsa
from lla.attention.parallel.ring import ring_attention
from lla.attention.parallel.shard import sequence_parallel

__all__ = ["OPS", "axis_size", "ring_attention", "sequence_parallel", "sequence_parallel_llsa",
           "shard_tokens", "sharded_attention", "token_spec"]
