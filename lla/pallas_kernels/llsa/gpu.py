"""LLSA attention kernels in Pallas (Triton lowering): forward, dQ, and dK/dV per level.

Arrays keep the op's token-major layout (no transposes). With B = block_size, K = topk,
L = levels, N_l = N / B^l tokens at level l, Bt batch, H query and Hkv kv heads, and the grid
running over rows r = batch·H + head:
  q, out, dq       [Bt, N, H, D]
  k[l], v[l]       [Bt, N_l / B, B, Hkv, D] for l < L (blocks), [Bt, N_L, Hkv, D] for l = L
  picks[l]         int32 [Bt·H, N_l, K] for l = 1..L: level-(l-1) blocks picked by each
                   level-l token (coarsest: XLA top-K; others: `selection.py`)
  lse, delta       float32 [Bt·H, N]
Query block b (B rows) attends, in one online softmax (log2 domain), to the K·B tokens of
level l < L in blocks picks[l + 1][b // B^l] (weight B^l), then to all N_L coarsest tokens
(weight B^L); the ablations (`Hierarchy.attends`, `Hierarchy.log2_weight`) drop the levels
above Lₑ or the weights, as static branches. A program handles a tile of G = query_blocks
consecutive blocks, which share their intermediate and coarsest sources (`_sweep_keys`).
Forward saves the output and the f32 natural-log lse.

Backward: dQ per query tile (same sweep as the forward); dK/dV of level l < L per key block
from the key-major CSR transpose of picks[l + 1] (`sparse_flash.metadata.transpose`): key
block j loops over the query groups (B^(l+1) queries each) that read it; dK/dV of the coarsest level
per (key tile, query split) with the splits summed outside; optionally (`masked_levels`) the
sparse levels just below the coarsest the coarsest's way too, each query chunk masked to the
blocks its group picked (grid (N_l / masked_tile, Bt·H, masked_splits), partials
[masked_splits, Bt, N_l, H, D] summed outside). No atomics: every program owns
its outputs, so results are deterministic. Gradients come out per query head (GQA groups
are summed by the caller).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plt

from lla.pallas_kernels import online_softmax
from lla.pallas_kernels.common import largest_divisor_at_most
from lla.pallas_kernels.llsa.common import Hierarchy
from lla.pallas_kernels.online_softmax import LOG2E
from lla.pallas_kernels.sparse_flash.gpu import accumulate_dkv, log2_logits


@dataclasses.dataclass(frozen=True)
class Config(Hierarchy):
    """Shape and GPU tiling of one LLSA call."""

    pick_chunk: int  # picks per key tile at the intermediate levels (divides topk)
    query_blocks: int  # G: query blocks per forward/dQ program (divides block_size)
    fine_chunk: int  # picks of each query block per fine key tile (divides topk)
    coarse_tile: int  # coarsest-level keys per tile (divides N_L)
    dkv_rows: int  # query rows per step in the dK/dV kernels (at most; divides N)
    coarse_splits: int  # query splits of the coarsest-level dK/dV (partials summed)
    # dK/dV of the `masked_levels` sparse levels just below the coarsest (0: none) run like
    # the coarsest's, per (key tile of `masked_tile` tokens, query split of `masked_splits`),
    # each query chunk masked to the blocks its group picked, instead of per key block over
    # the CSR of its readers: fewer, wider steps where a level has few blocks, most of them
    # picked (L - 1 at 256²: 16 blocks, K = 8), and enough programs to fill the GPU
    # (`make_config` picks it: `default_masked_levels`).
    masked_levels: int = 0
    masked_tile: int = 64
    masked_splits: int = 1
    num_warps: int = 4
    num_stages: int = 2
    # The dQ kernel runs unpipelined, as the sparse-flash dQ does: that kernel's two-stage
    # build raced on an H200 (sparse_flash_dq_race.json), and this one's two-stage dQ differs
    # from its one-stage dQ by 0.5-0.8 % at [1, 65536, 6, 64] with dK/dV bit-identical, at
    # no time saved (tune_llsa_dit256_masked.json).
    dq_num_stages: int = 1
    interpret: bool = False

    def masked(self, level: int) -> bool:
        """Whether sparse level `level` (< L) runs the masked-tile dK/dV."""
        return self.levels - self.masked_levels <= level < self.levels

    def masked_tile_tokens(self, level: int) -> int:
        """Keys per tile of the masked-tile dK/dV at `level`: `masked_tile`, or all N_l."""
        return largest_divisor_at_most(self.level_tokens(level), self.masked_tile)

    def group_chunk_rows(self, level: int) -> int:
        """Query rows per dK/dV step at sparse level `level`: at most `dkv_rows`, dividing
        the B^(level+1) queries of one reading group."""
        return largest_divisor_at_most(self.block_size ** (level + 1), self.dkv_rows)

    @property
    def tile_rows(self) -> int:
        """Query rows per forward/dQ program."""
        return self.query_blocks * self.block_size

    def query_spec(self, rows: int) -> pl.BlockSpec:
        """`rows` consecutive tokens of one head of a [Bt, N, H, D] array (grid (i, row))."""
        return pl.BlockSpec((None, rows, None, self.head_dim),
                            lambda i, row: (self.batch(row), i, self.head(row), 0))

    def compiler_params(self, num_stages: int | None = None):
        """Triton launch parameters (warps, pipeline stages) of the LLSA GPU kernels
        (`num_stages` replaces the config's, as the dQ kernel's `dq_num_stages` does)."""
        return plt.CompilerParams(num_warps=self.num_warps,
                                  num_stages=num_stages or self.num_stages)


# The fields of `Config` that `lla.attention.tuning("llsa", "pallas_gpu", ...)` may set.
TUNABLE_FIELDS = ("pick_chunk", "query_blocks", "fine_chunk", "coarse_tile", "dkv_rows",
                  "coarse_splits", "masked_levels", "masked_tile", "masked_splits",
                  "num_warps", "num_stages", "dq_num_stages")


def make_config(block_size, topk, levels, heads, kv_heads, tokens, head_dim, *,
                enrich_levels=None, reweight=True, causal=False, interpret=False,
                **overrides) -> Config:
    """Default tiling (tuned on an H200 at [1, 65536, 6, 64]; tune_llsa_*.json in
    experiments/results/nvidia_h200/, from the per-op script experiments/tune.py replaced):
    query tiles of 4 blocks, each fine tile holding one pick of each block; up to 4 picks
    (64 keys at B=16) per intermediate tile; up to 64 keys per coarsest tile; up to 64
    query rows per dK/dV step; coarsest-level query splits for about 1024 programs per batch
    element; the masked-tile dK/dV for the levels just below the coarsest whose K picks
    cover at least a quarter of their blocks (`default_masked_levels`; its splits sized
    the same way for level L - 1, so setting `masked_levels` alone gives a valid tiling).
    `enrich_levels` and `reweight` are the op's ablation switches (`Hierarchy`);
    `overrides` replaces any field."""
    coarsest = tokens // block_size ** levels
    coarse_tile = largest_divisor_at_most(coarsest, 64)
    rows = largest_divisor_at_most(tokens, 64)
    programs_per_split = (coarsest // coarse_tile) * heads
    splits = largest_divisor_at_most(tokens // rows, max(1, 1024 // programs_per_split))
    # masked-tile query splits: whole steps of every level that may run masked (1..L-1),
    # about 1024 programs per batch element at level L-1
    below = tokens // block_size ** (levels - 1)
    step = math.lcm(*(largest_divisor_at_most(block_size ** (level + 1), rows)
                      for level in range(1, levels))) if levels > 1 else rows
    masked_programs = below // largest_divisor_at_most(below, 64) * heads
    masked_splits = largest_divisor_at_most(tokens // step, max(1, 1024 // masked_programs))
    config = Config(block_size=block_size, topk=topk, levels=levels, heads=heads,
                    kv_heads=kv_heads, tokens=tokens, head_dim=head_dim,
                    pick_chunk=largest_divisor_at_most(topk, 4),
                    query_blocks=largest_divisor_at_most(block_size, 4), fine_chunk=1,
                    coarse_tile=coarse_tile, dkv_rows=rows, coarse_splits=splits,
                    masked_splits=masked_splits,
                    enrich_levels=enrich_levels, reweight=reweight, causal=causal,
                    interpret=interpret)
    if "masked_levels" not in overrides:
        config = dataclasses.replace(config, masked_levels=default_masked_levels(config))
    config = dataclasses.replace(config, **overrides)
    check_tiling(config)
    return config


# A sparse level runs the masked-tile dK/dV by default when its group picks at least this
# share of its blocks. Measured on an H200 at [1, 65536, 6, 64], B = 16, K = 8
# (tune_llsa_dit256_masked.json, tune_llsa_l2_dit256_masked.json): level 2 of L = 3, 8 of 16
# blocks picked, fwd+bwd 2.76 -> 2.02 ms masked; level 1, 8 of 256 picked, 2.04 -> 4.66 ms
# (L = 2) and, with level 2, 4.56 ms (L = 3). The threshold between those two points is a
# guess, not a measurement.
MASKED_PICKED_SHARE = 1 / 4


def default_masked_levels(config: Config) -> int:
    """How many sparse levels, counted down from just below the coarsest, run the
    masked-tile dK/dV by default: those whose K picks are at least `MASKED_PICKED_SHARE`
    of their N_l / B blocks, while masking them adds no reason the compiled kernels cannot
    run (`unsupported_reasons`) and the call is not causal (the causal dK/dV keeps the CSR)."""
    if config.causal:
        return 0
    masked = 0
    for level in range(config.levels - 1, 0, -1):
        if config.topk < MASKED_PICKED_SHARE * config.level_tokens(level) // config.block_size:
            break
        candidate = dataclasses.replace(config, masked_levels=masked + 1)
        if not config.interpret and unsupported_reasons(candidate) != unsupported_reasons(
                config):
            break
        masked += 1
    return masked


def check_tiling(config: Config) -> None:
    """Raises ValueError, naming the fields, unless the tiling divides the shapes."""
    problems = []
    if config.block_size % config.query_blocks:
        problems.append(f"query_blocks {config.query_blocks} must divide block_size "
                        f"{config.block_size}")
    for name in ("fine_chunk", "pick_chunk"):
        if config.topk % getattr(config, name):
            problems.append(f"{name} {getattr(config, name)} must divide topk {config.topk}")
    if config.level_tokens(config.levels) % config.coarse_tile:
        problems.append(f"coarse_tile {config.coarse_tile} must divide the "
                        f"{config.level_tokens(config.levels)} coarsest-level tokens")
    if config.tokens % config.coarse_splits or (
            config.tokens // config.coarse_splits) % config.dkv_rows:
        problems.append(f"coarse_splits {config.coarse_splits} must divide N = "
                        f"{config.tokens} and dkv_rows {config.dkv_rows} must divide "
                        f"N / coarse_splits")
    if not 0 <= config.masked_levels < config.levels:
        problems.append(f"masked_levels {config.masked_levels} must be in 0..L-1 = "
                        f"{config.levels - 1}")
    elif config.masked_levels and config.causal:
        problems.append("masked_levels needs causal=False (the causal dK/dV keeps the CSR)")
    for level in range(config.levels - config.masked_levels, config.levels):
        rows = config.group_chunk_rows(level)
        if config.tokens % config.masked_splits or (
                config.tokens // config.masked_splits) % rows:
            problems.append(f"masked_splits {config.masked_splits} must divide N = "
                            f"{config.tokens} into runs of whole {rows}-row steps "
                            f"(level {level})")
    if problems:
        raise ValueError("llsa kernels: " + "; ".join(problems))


def unsupported_reasons(config: Config) -> list[str]:
    """Why the compiled (non-interpret) kernels cannot run this configuration."""
    reasons = []
    power_of_two = lambda n: n >= 1 and n & (n - 1) == 0  # noqa: E731
    if not power_of_two(config.block_size) or config.block_size < 16:
        reasons.append(f"block_size {config.block_size} must be a power of two >= 16")
    if not power_of_two(config.head_dim) or config.head_dim < 16:
        reasons.append(f"head_dim {config.head_dim} must be a power of two >= 16")
    if config.coarse_tile < 16 or not power_of_two(config.coarse_tile):
        reasons.append(f"coarsest level of {config.level_tokens(config.levels)} tokens needs "
                       f"a multiple of 16")
    if config.masked_levels and not power_of_two(config.topk):
        reasons.append(f"masked_levels needs a power-of-two topk (got {config.topk})")
    for level in range(config.levels - config.masked_levels, config.levels):
        tile = config.masked_tile_tokens(level)
        if tile < 16 or not power_of_two(tile):
            reasons.append(f"masked-tile dK/dV at level {level}: a tile of {tile} tokens "
                           f"must be a power of two >= 16")
    return reasons


# ---- shared sweeps --------------------------------------------------------------------------

def _sweep_keys(visit, carry, tile, picks_refs, k_refs, v_refs, config: Config):
    """carry = visit(carry, keys [M, D], values [M, D], log2_weight, mask) over every key tile
    of query tile `tile` (G = query_blocks consecutive query blocks, G·B rows): the fine
    level, the intermediate levels 1..L-1, then the whole coarsest level (the coarse levels
    only where `config.attends` them).

    The G query blocks of a tile share their parent at every level >= 1 (G divides B), so
    those sources are read once per tile. Fine blocks differ per query block: a fine key
    tile holds `fine_chunk` picks of each of the G query blocks and `mask` [G·B, M] keeps
    each query block on its own picks (None when G = 1).
    """
    size, groups, dim = config.block_size, config.query_blocks, config.head_dim
    first_block = tile * groups

    chunk = config.fine_chunk
    if groups == 1:
        mask = None
    else:
        rows = lax.broadcasted_iota(jnp.int32, (groups * size, groups * chunk * size), 0)
        cols = lax.broadcasted_iota(jnp.int32, (groups * size, groups * chunk * size), 1)
        mask = rows // size == cols // (chunk * size)

    def fine_step(t, carry):
        blocks = picks_refs[0][pl.ds(first_block, groups), pl.ds(t * chunk, chunk)]
        blocks = blocks.reshape(groups * chunk)
        keys = k_refs[0][blocks].reshape(groups * chunk * size, dim)
        values = v_refs[0][blocks].reshape(groups * chunk * size, dim)
        return visit(carry, keys, values, 0.0, mask)

    carry = lax.fori_loop(0, config.topk // chunk, fine_step, carry)

    chunk = config.pick_chunk
    for level in range(1, config.levels):
        if not config.attends(level):
            break
        parent = first_block // size ** level

        def sparse_step(t, carry, level=level, parent=parent):
            blocks = picks_refs[level][parent, pl.ds(t * chunk, chunk)]
            keys = k_refs[level][blocks].reshape(chunk * size, dim)
            values = v_refs[level][blocks].reshape(chunk * size, dim)
            return visit(carry, keys, values, config.log2_weight(level), None)

        carry = lax.fori_loop(0, config.topk // chunk, sparse_step, carry)

    if not config.attends(config.levels):
        return carry
    width = config.coarse_tile

    def coarse_step(t, carry):
        keys = k_refs[-1][pl.ds(t * width, width), :]
        values = v_refs[-1][pl.ds(t * width, width), :]
        return visit(carry, keys, values, config.log2_weight(config.levels), None)

    return lax.fori_loop(0, config.level_tokens(config.levels) // width, coarse_step, carry)


def _split_refs(refs, config: Config):
    levels = config.levels
    k_refs = refs[:levels + 1]
    v_refs = refs[levels + 1:2 * levels + 2]
    picks_refs = refs[2 * levels + 2:3 * levels + 2]
    return k_refs, v_refs, picks_refs, refs[3 * levels + 2:]


# ---- forward --------------------------------------------------------------------------------

def _forward_kernel(q_ref, *refs, config: Config, sweep):
    k_refs, v_refs, picks_refs, (out_ref, lse_ref) = _split_refs(refs, config)
    q = q_ref[...]

    def visit(carry, keys, values, log2_weight, mask):
        logits = log2_logits(q, keys, log2_weight, config, mask)
        return online_softmax.update(carry, logits, values, plt.dot)

    carry = sweep(visit, online_softmax.init(config.tile_rows, config.head_dim),
                        pl.program_id(0), picks_refs, k_refs, v_refs, config)
    out, lse = online_softmax.finish(carry)
    out_ref[...] = out.astype(out_ref.dtype)
    lse_ref[...] = lse


def _level_specs(config: Config, picks):
    """BlockSpecs (grid (i, row)) of k/v (whole kv head) and picks (whole row), per level."""
    size, dim = config.block_size, config.head_dim
    kv_specs = []
    for level in range(config.levels):
        blocks = config.level_tokens(level) // size
        kv_specs.append(pl.BlockSpec(
            (None, blocks, size, None, dim),
            lambda i, row: (config.batch(row), 0, 0, config.kv_head(row), 0)))
    kv_specs.append(pl.BlockSpec(
        (None, config.level_tokens(config.levels), None, dim),
        lambda i, row: (config.batch(row), 0, config.kv_head(row), 0)))
    picks_specs = [pl.BlockSpec((None, *level_picks.shape[1:]), lambda i, row: (row, 0, 0))
                   for level_picks in picks]
    return kv_specs, picks_specs


def forward(q, k_levels, v_levels, picks, config: Config, sweep=None):
    """Output [Bt, N, H, D] in q's dtype and lse f32 [Bt·H, N] (natural log); `sweep` (the
    key sources of a query tile, `_sweep_keys` by default) is the causal one of `causal_gpu`
    with its picks."""
    batch, tokens, heads, _ = q.shape
    rows = config.tile_rows
    kv_specs, picks_specs = _level_specs(config, picks)
    query_spec = config.query_spec(rows)
    return pl.pallas_call(
        functools.partial(_forward_kernel, config=config, sweep=sweep or _sweep_keys),
        grid=(tokens // rows, batch * heads),
        in_specs=[query_spec, *kv_specs, *kv_specs, *picks_specs],
        out_specs=[query_spec, pl.BlockSpec((None, rows), lambda i, row: (row, i))],
        out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                   jax.ShapeDtypeStruct((batch * heads, tokens), jnp.float32)],
        compiler_params=config.compiler_params(),
        interpret=config.interpret,
        name="llsa_forward",
    )(q, *k_levels, *v_levels, *picks)


# ---- backward: dQ ---------------------------------------------------------------------------

def _dq_kernel(q_ref, d_out_ref, lse_ref, delta_ref, *refs, config: Config, sweep):
    k_refs, v_refs, picks_refs, (dq_ref,) = _split_refs(refs, config)
    q, d_out = q_ref[...], d_out_ref[...]
    log2_lse = lse_ref[...] * LOG2E
    delta = delta_ref[...]

    def visit(dq, keys, values, log2_weight, mask):
        logits = log2_logits(q, keys, log2_weight, config, mask)
        probs = jnp.exp2(logits - log2_lse[:, None])
        d_logits = probs * (plt.dot(d_out, values, trans_b=True) - delta[:, None])
        return dq + plt.dot(d_logits.astype(keys.dtype), keys)

    dq = sweep(visit, jnp.zeros(q.shape, jnp.float32), pl.program_id(0), picks_refs, k_refs,
               v_refs, config)
    dq_ref[...] = (dq * config.scale).astype(dq_ref.dtype)


def backward_dq(q, d_out, lse, delta, k_levels, v_levels, picks, config: Config, sweep=None):
    """dQ [Bt, N, H, D] in q's dtype; delta = rowsum(out * d_out) f32 [Bt·H, N]; `sweep` as
    in `forward`."""
    batch, tokens, heads, _ = q.shape
    rows = config.tile_rows
    kv_specs, picks_specs = _level_specs(config, picks)
    query_spec = config.query_spec(rows)
    row_spec = pl.BlockSpec((None, rows), lambda i, row: (row, i))
    return pl.pallas_call(
        functools.partial(_dq_kernel, config=config, sweep=sweep or _sweep_keys),
        grid=(tokens // rows, batch * heads),
        in_specs=[query_spec, query_spec, row_spec, row_spec, *kv_specs, *kv_specs,
                  *picks_specs],
        out_specs=query_spec,
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        compiler_params=config.compiler_params(config.dq_num_stages),
        interpret=config.interpret,
        name="llsa_backward_dq",
    )(q, d_out, lse, delta, *k_levels, *v_levels, *picks)


# ---- backward: dK/dV ------------------------------------------------------------------------

def _sparse_dkv_kernel(q_ref, d_out_ref, lse_ref, delta_ref, k_ref, v_ref, offsets_ref,
                       groups_ref, dk_ref, dv_ref, *, level: int, config: Config):
    keys, values = k_ref[...], v_ref[...]
    group_rows = config.block_size ** (level + 1)
    rows = config.group_chunk_rows(level)
    query_refs = (q_ref, d_out_ref, lse_ref, delta_ref)
    key_block = pl.program_id(0)

    def per_group(i, carry):
        first = groups_ref[i] * group_rows

        def per_chunk(c, carry):
            return accumulate_dkv(carry, first + c * rows, rows, query_refs, keys, values,
                                   config.log2_weight(level), config)

        return lax.fori_loop(0, group_rows // rows, per_chunk, carry)

    zeros = jnp.zeros(keys.shape, jnp.float32)
    dk, dv = lax.fori_loop(offsets_ref[key_block], offsets_ref[key_block + 1], per_group,
                           (zeros, zeros))
    dk_ref[...] = dk * config.scale
    dv_ref[...] = dv


def whole_query_specs(config: Config):
    """Specs of q and d_out (one whole head) and lse and delta (one whole row) for grids
    (j, row, ...)."""

    def query_index(j, row, *_):
        return config.batch(row), 0, config.head(row), 0

    def row_index(j, row, *_):
        return row, 0

    query_spec = pl.BlockSpec((None, config.tokens, None, config.head_dim), query_index)
    row_spec = pl.BlockSpec((None, config.tokens), row_index)
    return [query_spec, query_spec, row_spec, row_spec]


def backward_sparse_dkv(q, d_out, lse, delta, k, v, offsets, groups, level, config: Config,
                        kernel=None):
    """dK, dV (f32, per query head, [Bt, N_l, H, D]) of sparse level `level` < L.

    k, v: [Bt, N_l, Hkv, D] level-l keys; offsets/groups: the CSR of picks[level + 1]
    (`sparse_flash.metadata.transpose`);
    `kernel`: the per-key-block body (`_sparse_dkv_kernel` by default; `causal_gpu`'s).
    """
    batch, _, heads, dim = q.shape
    size = config.block_size
    level_tokens = k.shape[1]
    key_spec = pl.BlockSpec((None, size, None, dim),
                            lambda j, row: (config.batch(row), j, config.kv_head(row), 0))
    out_spec = pl.BlockSpec((None, size, None, dim),
                            lambda j, row: (config.batch(row), j, config.head(row), 0))
    return pl.pallas_call(
        functools.partial(kernel or _sparse_dkv_kernel, level=level, config=config),
        grid=(level_tokens // size, batch * heads),
        in_specs=[*whole_query_specs(config), key_spec, key_spec,
                  pl.BlockSpec((None, offsets.shape[1]), lambda j, row: (row, 0)),
                  pl.BlockSpec((None, groups.shape[1]), lambda j, row: (row, 0))],
        out_specs=[out_spec, out_spec],
        out_shape=[jax.ShapeDtypeStruct((batch, level_tokens, heads, dim), jnp.float32)] * 2,
        compiler_params=config.compiler_params(),
        interpret=config.interpret,
        name=f"llsa_backward_dkv_level{level}",
    )(q, d_out, lse, delta, k, v, offsets, groups)


def _masked_dkv_kernel(q_ref, d_out_ref, lse_ref, delta_ref, k_ref, v_ref, picks_ref, dk_ref,
                       dv_ref, *, level: int, config: Config):
    keys, values = k_ref[...], v_ref[...]
    size, tile = config.block_size, config.masked_tile_tokens(level)
    group_rows, rows = size ** (level + 1), config.group_chunk_rows(level)
    split_rows = config.tokens // config.masked_splits
    first = pl.program_id(2) * split_rows
    key_blocks = (pl.program_id(0) * tile
                  + lax.broadcasted_iota(jnp.int32, (1, tile), 1)) // size  # [1, tile]
    query_refs = (q_ref, d_out_ref, lse_ref, delta_ref)

    def per_chunk(c, carry):
        start = first + c * rows
        picks = picks_ref[start // group_rows, :]  # [K] level-l blocks this group reads
        hits = (picks[:, None] == key_blocks).astype(jnp.int32)  # [K, tile]
        picked = jnp.max(hits, axis=0, keepdims=True) > 0
        return accumulate_dkv(carry, start, rows, query_refs, keys, values,
                              config.log2_weight(level), config,
                              jnp.broadcast_to(picked, (rows, tile)))

    zeros = jnp.zeros(keys.shape, jnp.float32)
    dk, dv = lax.fori_loop(0, split_rows // rows, per_chunk, (zeros, zeros))
    dk_ref[...] = dk * config.scale
    dv_ref[...] = dv


def backward_masked_dkv(q, d_out, lse, delta, k, v, picks, level, config: Config):
    """dK, dV (f32, per query head, [Bt, N_l, H, D]) of sparse level `level` < L on the
    masked-tile grid (`Config.masked_levels`): k, v [Bt, N_l, Hkv, D]; picks int32
    [Bt·H, N_{l+1}, K], the level-l blocks each level-(l+1) token picked."""
    picks_spec = pl.BlockSpec((None, *picks.shape[1:]), lambda j, row, s: (row, 0, 0))
    return _split_query_dkv(
        functools.partial(_masked_dkv_kernel, level=level, config=config),
        q, d_out, lse, delta, k, v, (picks,), (picks_spec,), config.masked_tile_tokens(level),
        config.masked_splits, config, f"llsa_backward_dkv_masked_level{level}")


def _coarse_dkv_kernel(q_ref, d_out_ref, lse_ref, delta_ref, k_ref, v_ref, dk_ref, dv_ref, *,
                       config: Config):
    keys, values = k_ref[...], v_ref[...]
    rows = config.dkv_rows
    split_rows = config.tokens // config.coarse_splits
    first = pl.program_id(2) * split_rows
    query_refs = (q_ref, d_out_ref, lse_ref, delta_ref)
    begin, mask = 0, lambda start: None
    if config.causal:  # key j is read by the rows from (j + 1)·B^L on
        span = config.block_size ** config.levels
        first_key = pl.program_id(0) * config.coarse_tile
        keys_after = (first_key + 1 + lax.broadcasted_iota(
            jnp.int32, (1, config.coarse_tile), 1)) * span
        begin = jnp.clip(((first_key + 1) * span - first) // rows, 0, split_rows // rows)

        def mask(start):
            return start + lax.broadcasted_iota(jnp.int32, (rows, 1), 0) >= keys_after

    def per_chunk(c, carry):
        start = first + c * rows
        return accumulate_dkv(carry, start, rows, query_refs, keys, values,
                              config.log2_weight(config.levels), config, mask(start))

    zeros = jnp.zeros(keys.shape, jnp.float32)
    dk, dv = lax.fori_loop(begin, split_rows // rows, per_chunk, (zeros, zeros))
    dk_ref[...] = dk * config.scale
    dv_ref[...] = dv


def backward_coarse_dkv(q, d_out, lse, delta, k, v, config: Config):
    """dK, dV (f32, per query head, [Bt, N_L, H, D]) of the coarsest level (all queries)."""
    return _split_query_dkv(functools.partial(_coarse_dkv_kernel, config=config),
                            q, d_out, lse, delta, k, v, (), (), config.coarse_tile,
                            config.coarse_splits, config, "llsa_backward_dkv_coarsest")


def _split_query_dkv(kernel, q, d_out, lse, delta, k, v, extras, extra_specs, tile: int,
                     splits: int, config: Config, name: str):
    """Runs a dK/dV `kernel` on the grid (N_l / tile, Bt·H, splits): program (j, row, s)
    owns key tile j of one row for query split s (partials [splits, Bt, N_l, H, D] f32,
    summed here); `extras` are further inputs with their `extra_specs`."""
    batch, _, heads, dim = q.shape
    level_tokens = k.shape[1]
    key_spec = pl.BlockSpec((None, tile, None, dim),
                            lambda j, row, s: (config.batch(row), j, config.kv_head(row), 0))
    out_spec = pl.BlockSpec((None, None, tile, None, dim),
                            lambda j, row, s: (s, config.batch(row), j, config.head(row), 0))
    dk, dv = pl.pallas_call(
        kernel,
        grid=(level_tokens // tile, batch * heads, splits),
        in_specs=[*whole_query_specs(config), key_spec, key_spec, *extra_specs],
        out_specs=[out_spec, out_spec],
        out_shape=[jax.ShapeDtypeStruct((splits, batch, level_tokens, heads, dim),
                                        jnp.float32)] * 2,
        compiler_params=config.compiler_params(),
        interpret=config.interpret,
        name=name,
    )(q, d_out, lse, delta, k, v, *extras)
    return dk.sum(0), dv.sum(0)
