"""Top-K block selection in one Pallas (Triton lowering) kernel: the block lists of
"topk_block" and "vsa" without XLA's top_k over a [nQ, nK] score matrix in memory.

Contract (that of `lla.attention.topk_block.selection.select`, which is the reference): per
row r = batch·H + head and query block b, the K key blocks j with the highest score
q̄_b · k̄_j (block means, float32, no scale), ties to the lower j, returned ascending, -1 for
empty slots. `local` gives the diagonal block j = b the score +inf (always kept); `causal`
gives the blocks j > b the score -inf and the diagonal +inf, and the caller passes as q̄_b
the mean of block b - 1 (block 0 its own), so block b keeps itself and the best K - 1 past
blocks; slots with score -inf are empty. `past_stride` R > 0 (LLSA's causal coarsest level,
`lla.attention.llsa.causal`) lets block b pick only the key blocks j < b // R and forces
none. A program of the causal kinds streams only the key chunks its last block may see.

Compiled, it needs D a power of two >= 16, as the sparse-flash kernels that use its lists
do (their `unsupported_reasons` speak for both).

Layouts (Bt batch, H query and Hkv kv heads, nQ / nK query / key blocks, D head dim; the
caller pads nQ to whole query tiles and nK to whole key chunks, `pad_means`):
  q_means   float32 [Bt, nQ', H, D]     block means of the queries (causal: shifted by one)
  k_means   float32 [Bt, nK', Hkv, D]   block means of the keys (padding rows never picked)
  returns   int32 [Bt·H, nQ', K']       K' = K rounded up to a power of two; the caller keeps
                                        [:, :nQ, :K]

Grid (nQ' / tile, Bt·H): program (p, r) holds `tile` query-block means in registers and
streams the key means in chunks of `chunk` blocks. Per chunk it scores them ([tile, chunk],
one dot) and inserts them into its running best K: only scores above a row's K-th best can
enter, so the chunk takes as many steps as the most such scores of any row (at most K; few
once the running best is good). Each step moves every row's best remaining chunk score
(lowest block among equal ones) into the slot of its worst running one when strictly
higher; among equal worst ones the highest block leaves, so ties keep the lower block, as
`lax.top_k` does. The work is [nQ, nK] dot products per row, as in XLA, but nothing of size
nQ x nK reaches memory; the last step emits the K picks in ascending order.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plt

from lla.pallas_kernels.common import HeadRows

PAST_END = 2**31 - 1  # sorts after every block; becomes -1 (an empty slot)
# (empty running slots hold the ids -1 - slot, above -PAST_END)


def _next_power_of_two(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


@dataclasses.dataclass(frozen=True)
class Config(HeadRows):
    """Shape and tiling of one selection call."""

    topk: int  # K
    heads: int
    kv_heads: int
    query_blocks: int  # nQ (unpadded)
    key_blocks: int  # nK (unpadded)
    head_dim: int
    causal: bool
    local: bool
    past_stride: int = 0  # R > 0: query block b sees key blocks j < b // R only
    tile: int = 16  # query blocks per program (>= 16: the dot's rows)
    chunk: int = 128  # key blocks per step (a power of two >= 16)
    num_warps: int = 4
    interpret: bool = False

    @property
    def slots(self) -> int:
        """K': K rounded up to a power of two (Triton's array sizes)."""
        return _next_power_of_two(self.topk)

    @property
    def padded_query_blocks(self) -> int:
        return -(-self.query_blocks // self.tile) * self.tile

    @property
    def padded_key_blocks(self) -> int:
        return -(-self.key_blocks // self.chunk) * self.chunk


# The fields of `Config` a caller may tune (topk_block's "pallas_gpu" exposes them).
TUNABLE_FIELDS = ("tile", "chunk", "num_warps")


def make_config(topk, heads, kv_heads, query_blocks, key_blocks, head_dim, *, causal=False,
                local=False, past_stride=0, interpret=False, **overrides) -> Config:
    """Heuristic tiling: 16 query blocks per program, key chunks of up to 128 blocks (fewer
    when the sequence has fewer, at least 16); `overrides` replaces any of
    `TUNABLE_FIELDS`. Raises ValueError for a tile or chunk that is not a power of two
    >= 16 (the dot's rows and Triton's array sizes)."""
    if past_stride and (causal or local):
        raise ValueError("selection: past_stride forces no block; it excludes causal and "
                         "local")
    chunk = min(128, max(16, _next_power_of_two(key_blocks)))
    config = Config(topk=topk, heads=heads, kv_heads=kv_heads, query_blocks=query_blocks,
                    key_blocks=key_blocks, head_dim=head_dim, causal=causal, local=local,
                    past_stride=past_stride, chunk=chunk, interpret=interpret)
    config = dataclasses.replace(config, **overrides)
    bad = [f"{name} {getattr(config, name)}" for name in ("tile", "chunk")
           if getattr(config, name) < 16 or _next_power_of_two(getattr(config, name))
           != getattr(config, name)]
    if bad:
        raise ValueError(f"selection: {' and '.join(bad)} must be a power of two >= 16")
    return config


def _chunks_seen(first_query, config: Config):
    """How many key chunks the program whose first query block is `first_query` streams:
    all of them, or (causal kinds) those up to the last key block its last row may see."""
    total = config.padded_key_blocks // config.chunk
    last_query = first_query + config.tile - 1
    if config.causal:
        return jnp.minimum(total, last_query // config.chunk + 1)
    if config.past_stride:
        visible = last_query // config.past_stride  # key blocks 0 .. visible - 1
        return jnp.minimum(total, (visible + config.chunk - 1) // config.chunk)
    return total


def _select_kernel(q_ref, k_ref, picks_ref, *, config: Config):
    tile, chunk, slots, topk = config.tile, config.chunk, config.slots, config.topk
    first_query = pl.program_id(0) * tile
    q_means = q_ref[...]  # [tile, D]
    query_block = first_query + lax.broadcasted_iota(jnp.int32, (tile, 1), 0)
    slot = lax.broadcasted_iota(jnp.int32, (tile, slots), 1)

    def merge_chunk(c, best):
        best_v, best_i = best
        keys = k_ref[pl.ds(c * chunk, chunk), :]  # [chunk, D]
        scores = plt.dot(q_means, keys, trans_b=True, precision=lax.Precision.HIGHEST)
        block = c * chunk + lax.broadcasted_iota(jnp.int32, (tile, chunk), 1)
        scores = jnp.where(block < config.key_blocks, scores, -jnp.inf)
        if config.causal:
            scores = jnp.where(block > query_block, -jnp.inf, scores)
        if config.past_stride:
            scores = jnp.where(block < query_block // config.past_stride, scores, -jnp.inf)
        if config.causal or config.local:
            scores = jnp.where(block == query_block, jnp.inf, scores)
        # Only chunk scores above a row's K-th best can enter it: as many steps as the
        # most such scores of any row (at most K).
        kth = best_v.min(axis=1, keepdims=True)
        steps = jnp.minimum(jnp.sum((scores > kth).astype(jnp.int32), axis=1).max(), topk)

        def insert_best(_, state):
            best_v, best_i, scores = state
            top = scores.max(axis=1, keepdims=True)
            pick = jnp.where(scores == top, block, PAST_END).min(axis=1, keepdims=True)
            kth = best_v.min(axis=1, keepdims=True)
            # evict the worst slot; among equal worst the highest block (ties keep lower)
            evict = jnp.where(best_v == kth, best_i, -PAST_END).max(axis=1, keepdims=True)
            enter = top > kth  # a tie keeps the running block: it is lower
            out = enter & (best_v == kth) & (best_i == evict)
            best_v = jnp.where(out, top, best_v)
            best_i = jnp.where(out, pick, best_i)
            scores = jnp.where(block == pick, -jnp.inf, scores)
            return best_v, best_i, scores

        best_v, best_i, _ = lax.fori_loop(0, steps, insert_best, (best_v, best_i, scores))
        return best_v, best_i

    # slots >= K hold +inf so that they are never the worst and never evicted
    start = (jnp.where(slot < topk, -jnp.inf, jnp.inf).astype(jnp.float32),
             jnp.where(slot < topk, -1 - slot, PAST_END))
    best_v, best_i = lax.fori_loop(0, _chunks_seen(first_query, config), merge_chunk, start)
    remaining = jnp.where((best_v > -jnp.inf) & (slot < topk), best_i, PAST_END)

    def emit_lowest(t, state):
        remaining, picks = state
        lowest = remaining.min(axis=1, keepdims=True)
        return (jnp.where(remaining == lowest, PAST_END, remaining),
                jnp.where(slot == t, lowest, picks))

    _, picks = lax.fori_loop(0, topk, emit_lowest,
                             (remaining, jnp.full((tile, slots), PAST_END, jnp.int32)))
    picks_ref[...] = jnp.where(picks == PAST_END, -1, picks)


def pad_means(q_means: jax.Array, k_means: jax.Array, config: Config):
    """Pads [Bt, nQ, H, D] and [Bt, nK, Hkv, D] with zero rows to nQ' and nK'."""
    def pad(x, rows):
        return jnp.pad(x, ((0, 0), (0, rows - x.shape[1]), (0, 0), (0, 0)))
    return pad(q_means, config.padded_query_blocks), pad(k_means, config.padded_key_blocks)


def select_blocks(q_means: jax.Array, k_means: jax.Array, config: Config) -> jax.Array:
    """q_means float32 [Bt, nQ, H, D], k_means float32 [Bt, nK, Hkv, D] -> int32
    [Bt, H, nQ, K] key blocks per query block (see the module docstring)."""
    batch, dim = q_means.shape[0], config.head_dim
    rows = batch * config.heads
    q_means, k_means = pad_means(q_means.astype(jnp.float32), k_means.astype(jnp.float32),
                                 config)
    picks = pl.pallas_call(
        functools.partial(_select_kernel, config=config),
        grid=(config.padded_query_blocks // config.tile, rows),
        in_specs=[
            pl.BlockSpec((None, config.tile, None, dim),
                         lambda p, row: (config.batch(row), p, config.head(row), 0)),
            pl.BlockSpec((None, config.padded_key_blocks, None, dim),
                         lambda p, row: (config.batch(row), 0, config.kv_head(row), 0)),
        ],
        out_specs=pl.BlockSpec((None, config.tile, config.slots), lambda p, row: (row, p, 0)),
        out_shape=jax.ShapeDtypeStruct((rows, config.padded_query_blocks, config.slots),
                                       jnp.int32),
        compiler_params=plt.CompilerParams(num_warps=config.num_warps, num_stages=1),
        interpret=config.interpret,
        name="sparse_flash_select_blocks",
    )(q_means, k_means)
    picks = picks[:, :config.query_blocks, :config.topk]
    return picks.reshape(batch, config.heads, config.query_blocks, config.topk)
