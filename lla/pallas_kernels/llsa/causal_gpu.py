"""Causal LLSA kernels in Pallas (Triton lowering): the key sweep of forward and dQ, and
dK/dV per level (docs/llsa_causal.md). Tiling, layouts and the online softmax are those of
`gpu` (its `Config` with `causal=True`); only the sources and their masks differ.

Layouts as in `gpu`, except the selections, which are per query block at every level:
  picks[l]   int32 [Bt·H, N / B, K] for l = 1..L: the level-l tokens (= level-(l-1) blocks)
             query block b picked (`lla.attention.llsa.causal.select`), -1 in empty slots
With c_l(b) = floor(b·B / B^l), query block b (rows b·B .. b·B + B - 1) attends to
  its own block                                 causal diagonal            weight 1
  level l < L: the blocks picks[l + 1][b]        every token                weight B^l
  level l in 1..L-1: its open parent c_{l+1}(b)  children j < c_l(b)        weight B^l
  level L: tokens j < c_L(b)                                                weight B^L
A program's G = query_blocks blocks share their open parent at every level >= 1 (G divides
B), so it is read once per tile; the picks differ per block at every level, so every level's
key tile holds a chunk of the picks of each of the G blocks, masked to its own rows.

Backward: dQ runs the same sweep. dK/dV of level l < L per key block p (the B children of
level-(l+1) token p): its open-parent readers, a contiguous run of query rows found from p
(level 0: block p itself, on the diagonal; level l >= 1: rows (p·B + 1)·B^l ..
(p + 1)·B^(l+1) - 1, key j read from row (j + 1)·B^l on), then the query blocks that picked
it (key-major CSR of picks[l + 1], `sparse_flash.metadata.transpose`). Coarsest key j is
read by the rows from (j + 1)·B^L on; its dK/dV per (key tile, query split) starts at the
tile's first reader (`gpu.backward_coarse_dkv` with `config.causal`). No atomics,
deterministic, gradients per query head.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from lla.pallas_kernels.common import largest_divisor_at_most
from lla.pallas_kernels.llsa import gpu
from lla.pallas_kernels.llsa.gpu import Config
from lla.pallas_kernels.sparse_flash.gpu import accumulate_dkv


def _iota(shape, axis):
    return lax.broadcasted_iota(jnp.int32, shape, axis)


def _valid_columns(parents: jax.Array, size: int) -> jax.Array:
    """[1, n·B]: whether each column's parent (parents int32 [n], -1 = empty slot) exists."""
    return jnp.broadcast_to((parents >= 0)[:, None], (parents.shape[0], size)).reshape(1, -1)


def sweep(visit, carry, tile, picks_refs, k_refs, v_refs, config: Config):
    """carry = visit(carry, keys [M, D], values [M, D], log2_weight, mask [G·B, M]) over the
    causal sources of query tile `tile` (G = query_blocks blocks): the own blocks first (so
    every row has a finite max after the first tile), the picks of levels 0..L-1 and the
    open parents of levels 1..L-1, then the complete coarsest tokens; the coarse levels only
    where `config.attends` them."""
    size, groups, dim = config.block_size, config.query_blocks, config.head_dim
    rows = groups * size
    first_block = tile * groups
    row_block = first_block + _iota((rows, 1), 0) // size  # each row's query block

    own = pl.ds(first_block, groups)
    diagonal = (_iota((rows, rows), 0) // size == _iota((rows, rows), 1) // size) & (
        _iota((rows, rows), 1) <= _iota((rows, rows), 0))
    carry = visit(carry, k_refs[0][own].reshape(rows, dim), v_refs[0][own].reshape(rows, dim),
                  0.0, diagonal)

    for level in range(config.levels):
        if not config.attends(level):
            break
        log2_weight = config.log2_weight(level)
        chunk = config.fine_chunk if level == 0 else config.pick_chunk
        width = groups * chunk * size
        own_rows = _iota((rows, width), 0) // size == _iota((rows, width), 1) // (chunk * size)

        def picked(t, carry, level=level, chunk=chunk, width=width, own_rows=own_rows,
                   log2_weight=log2_weight):
            parents = picks_refs[level][own, pl.ds(t * chunk, chunk)].reshape(groups * chunk)
            index = jnp.maximum(parents, 0)
            keys = k_refs[level][index].reshape(width, dim)
            values = v_refs[level][index].reshape(width, dim)
            return visit(carry, keys, values, log2_weight,
                         own_rows & _valid_columns(parents, size))

        carry = lax.fori_loop(0, config.topk // chunk, picked, carry)
        if level >= 1:
            open_parent = first_block // size ** level
            children = open_parent * size + _iota((1, size), 1)
            keys = k_refs[level][pl.ds(open_parent, 1)].reshape(size, dim)
            values = v_refs[level][pl.ds(open_parent, 1)].reshape(size, dim)
            carry = visit(carry, keys, values, log2_weight,
                          children < row_block // size ** (level - 1))

    if not config.attends(config.levels):
        return carry
    width, span = config.coarse_tile, size ** config.levels
    limit = row_block * size // span  # c_L of each row's block
    complete = (first_block + groups - 1) * size // span  # c_L of the tile's last block

    def coarse(t, carry):
        keys = k_refs[-1][pl.ds(t * width, width), :]
        values = v_refs[-1][pl.ds(t * width, width), :]
        return visit(carry, keys, values, config.log2_weight(config.levels),
                     t * width + _iota((1, width), 1) < limit)

    return lax.fori_loop(0, (complete + width - 1) // width, coarse, carry)


def forward(q, k_levels, v_levels, picks, config: Config):
    """Output [Bt, N, H, D] and lse f32 [Bt·H, N] of causal LLSA (layouts above)."""
    return gpu.forward(q, k_levels, v_levels, picks, config, sweep)


def backward_dq(q, d_out, lse, delta, k_levels, v_levels, picks, config: Config):
    """dQ [Bt, N, H, D] of causal LLSA."""
    return gpu.backward_dq(q, d_out, lse, delta, k_levels, v_levels, picks, config, sweep)


# ---- backward: dK/dV ------------------------------------------------------------------------

def _sparse_dkv_kernel(q_ref, d_out_ref, lse_ref, delta_ref, k_ref, v_ref, offsets_ref,
                       readers_ref, dk_ref, dv_ref, *, level: int, config: Config):
    keys, values = k_ref[...], v_ref[...]
    size = config.block_size
    log2_weight = config.log2_weight(level)
    query_refs = (q_ref, d_out_ref, lse_ref, delta_ref)
    parent = pl.program_id(0)
    key_tokens = parent * size + _iota((1, size), 1)  # level-l index of each key column
    zeros = jnp.zeros(keys.shape, jnp.float32)

    if level == 0:  # the own block, on the diagonal
        start = parent * size
        carry = accumulate_dkv((zeros, zeros), start, size, query_refs, keys, values,
                                   log2_weight, config,
                                   start + _iota((size, 1), 0) >= key_tokens)
    else:  # the blocks whose open parent is `parent`, from each key's first reader on
        span = size ** level
        rows = largest_divisor_at_most(span, config.dkv_rows)
        first = (parent * size + 1) * span

        def open_chunk(c, carry):
            start = first + c * rows
            mask = start + _iota((rows, 1), 0) >= (key_tokens + 1) * span
            return accumulate_dkv(carry, start, rows, query_refs, keys, values,
                                      log2_weight, config, mask)

        carry = lax.fori_loop(0, (size - 1) * span // rows, open_chunk, (zeros, zeros))

    def picked_by(i, carry):
        return accumulate_dkv(carry, readers_ref[i] * size, size, query_refs, keys,
                                  values, log2_weight, config)

    dk, dv = lax.fori_loop(offsets_ref[parent], offsets_ref[parent + 1], picked_by, carry)
    dk_ref[...] = dk * config.scale
    dv_ref[...] = dv


def backward_sparse_dkv(q, d_out, lse, delta, k, v, offsets, readers, level, config: Config):
    """dK, dV (f32, per query head, [Bt, N_l, H, D]) of level `level` < L: `gpu`'s call with
    the causal kernel; offsets/readers: the CSR of picks[level + 1]
    (`sparse_flash.metadata.transpose`, which leaves the empty slots out)."""
    return gpu.backward_sparse_dkv(q, d_out, lse, delta, k, v, offsets, readers, level, config,
                                   kernel=_sparse_dkv_kernel)
