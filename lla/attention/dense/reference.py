"""The "xla" implementation of dense attention: the chunked online softmax of
`lla.attention.common.chunked_softmax` (pure JAX, flash-style custom VJP, f32 at HIGHEST
precision), which never materialises N x N on any platform. It is the float32 oracle the
kernels are tested against."""

from __future__ import annotations

import dataclasses

from lla.attention.common.chunked_softmax import chunked_attention


@dataclasses.dataclass(frozen=True)
class Config:
    """Chunk sizes of the online softmax: peak memory O(B·H·chunk_q·chunk_k) per step."""

    chunk_q: int = 512  # queries per `lax.map` step
    chunk_k: int = 512  # keys per `lax.scan` step


def default_config(q, k, v, **static) -> Config:
    """The default chunk sizes (512 x 512), whatever the inputs."""
    del q, k, v, static
    return Config()


def dense_xla(q, k, v, *, causal, causal_block_size, segments, kv_lengths, scale,
              return_residuals, config: Config):
    """q [B, Nq, H, D], k/v [B, Nk, Hkv, D] -> out [B, Nq, H, D] (and lse [B, H, Nq])."""
    out, lse = chunked_attention(q, k, v, segments, kv_lengths=kv_lengths, causal=causal,
                                 causal_block_size=causal_block_size, scale=scale,
                                 chunk_q=config.chunk_q, chunk_k=config.chunk_k)
    return (out, lse) if return_residuals else out
