"""LLSA attention kernels for TPU (Mosaic), driven by scalar-prefetched selections.

Same schedule as `gpu.py`, in TPU form: the picks live in SMEM (`PrefetchScalarGridSpec`)
and the BlockSpec index maps read them, so every grid step DMAs exactly one selected key
block. Arrays are heads-major rows (r = batch·H + head; kv rows r_kv = batch·Hkv + kv head):
  q, out, dq, d_out   [R, N, D]            lse, delta   float32 [R, N, 1]
  k[l], v[l]          [Rkv, N_l, D]        picks[l]     int32 [R, N_l, K], l = 1..L
Grid (R, N / B query blocks, S steps); the steps walk the sources of the query block in
order: K fine blocks (picks[1]), K blocks of each intermediate level l (picks[l + 1] of the
parent), then the coarsest level in tiles; the ablations (`Hierarchy.attends`) leave the
levels above Lₑ out of the sweep (and out of the kernels' inputs). Online softmax state lives
in VMEM scratch.

Backward: one kernel recomputes the probabilities along the same steps, accumulating dQ and
writing the dK/dV partial of every (query block, picked block) pair of the sparse levels
([R, N / B, K, B, D], summed into keys by the caller: deterministic, no atomics); a second
kernel owns a coarsest-level key tile and loops over all query chunks. Verified in TPU
interpret mode on CPU; not tuned on TPU hardware (query tiles of one block, B rows).

Causal (`config.causal`, docs/llsa_causal.md): picks[l] are per query block, int32
[R, N / B, K] with -1 in empty slots; every level l < L has K + 1 steps, the K picks of the
block and then its open parent c_{l+1}(i) = i // B^l (level 0: the block itself), each step's
keys masked to the usable ones (`_causal_mask`: level 0 at or before the query, level l >= 1
complete for the block, empty slots nowhere); the coarsest tiles are masked to the complete
tokens, and its dK/dV to each key's readers. The online softmax then guards rows that have
seen no key yet.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from lla.pallas_kernels import online_softmax
from lla.pallas_kernels.common import largest_divisor_at_most
from lla.pallas_kernels.llsa.common import Hierarchy
from lla.pallas_kernels.online_softmax import LOG2E


@dataclasses.dataclass(frozen=True)
class Config(Hierarchy):
    """Shape and TPU tiling of one LLSA call."""

    coarse_tile: int  # coarsest-level keys per step (divides N_L)
    query_chunk: int  # query rows per step of the coarsest dK/dV kernel (divides N)
    interpret: bool = False

    def sources(self):
        """(level, first step, number of steps) for each attended level, in sweep order: a
        prefix of levels 0..L, so a sparse source's index is its level."""
        out, start = [], 0
        per_level = self.topk + 1 if self.causal else self.topk  # causal: + the open parent
        for level in range(self.levels):
            if not self.attends(level):
                return out
            out.append((level, start, per_level))
            start += per_level
        if self.attends(self.levels):
            out.append((self.levels, start,
                        self.level_tokens(self.levels) // self.coarse_tile))
        return out

    def sparse_sources(self):
        """The `sources` of the levels below L (their picks give the dK/dV partials)."""
        return [source for source in self.sources() if source[0] < self.levels]

    @property
    def steps(self) -> int:
        _, start, count = self.sources()[-1]
        return start + count

    def interpret_params(self):
        """TPU interpret mode with NaN-poisoned uninitialised memory, or False (compiled)."""
        return pltpu.InterpretParams(uninitialized_memory="nan") if self.interpret else False


# The fields of `Config` that `lla.attention.tuning("llsa", "pallas_tpu", ...)` may set.
TUNABLE_FIELDS = ("coarse_tile", "query_chunk")


def make_config(block_size, topk, levels, heads, kv_heads, tokens, head_dim, *,
                enrich_levels=None, reweight=True, causal=False, interpret=False) -> Config:
    """Default (untuned) tiling: up to 128 coarsest keys per step, up to 256 query rows per
    step of the coarsest dK/dV kernel. `enrich_levels` and `reweight` are the op's ablation
    switches (`Hierarchy`)."""
    coarsest = tokens // block_size ** levels
    return Config(block_size=block_size, topk=topk, levels=levels, heads=heads,
                  kv_heads=kv_heads, tokens=tokens, head_dim=head_dim,
                  coarse_tile=largest_divisor_at_most(coarsest, 128),
                  query_chunk=largest_divisor_at_most(tokens, 256),
                  enrich_levels=enrich_levels, reweight=reweight, causal=causal,
                  interpret=interpret)


def unsupported_reasons(config: Config) -> list[str]:
    """Why the compiled (non-interpret) kernels cannot run this configuration."""
    if config.block_size % 8 or config.coarse_tile % 8:
        return [f"block_size {config.block_size} and the coarsest tile {config.coarse_tile} "
                f"must be multiples of 8"]
    return []


def check_tiling(config: Config) -> None:
    """Raises ValueError, naming the fields, unless the tiling divides the shapes."""
    coarsest = config.level_tokens(config.levels)
    if coarsest % config.coarse_tile or config.tokens % config.query_chunk:
        raise ValueError(f"llsa TPU kernels: coarse_tile {config.coarse_tile} must divide the "
                         f"{coarsest} coarsest-level tokens and query_chunk "
                         f"{config.query_chunk} must divide N = {config.tokens}")


def _source_specs(config: Config):
    """Per source, the BlockSpec of its keys (values use the same); index maps get
    (row, query block, step, *picks refs)."""
    size, dim = config.block_size, config.head_dim
    specs = []
    for level, start, count in config.sources():
        if level < config.levels:
            def index(r, i, s, *picks, level=level, start=start, count=count):
                t = jnp.clip(s - start, 0, count - 1)
                if config.causal:
                    block = _causal_block(picks[level], r, i, t, level, config)[0]
                else:
                    block = picks[level][r, i // config.block_size ** level, t]
                return config.kv_row(r), block, 0
            specs.append(pl.BlockSpec((None, size, dim), index))
        else:
            def index(r, i, s, *picks, start=start, count=count):
                return config.kv_row(r), jnp.clip(s - start, 0, count - 1), 0
            specs.append(pl.BlockSpec((None, config.coarse_tile, dim), index))
    return specs


def _query_specs(config: Config):
    """q-like [R, N, D] blocks and per-row [R, N, 1] blocks of one query block."""
    size, dim = config.block_size, config.head_dim
    return (pl.BlockSpec((None, size, dim), lambda r, i, s, *_: (r, i, 0)),
            pl.BlockSpec((None, size, 1), lambda r, i, s, *_: (r, i, 0)))


def _logits(q, keys, level, config: Config):
    """[B, D] x [M, D] -> f32 [B, M] logits in log2 units with the level's weight."""
    logits = jax.lax.dot_general(q, keys, (((1,), (1,)), ((), ())),
                                 preferred_element_type=jnp.float32)
    return logits * (config.scale * LOG2E) + config.log2_weight(level)


def _causal_block(picks_ref, r, i, t, level: int, config: Config):
    """(block index, exists) of step t of causal query block i at sparse level `level`: pick t
    for t < K (an empty slot loads block 0), the open parent i // B^level for t = K."""
    pick = picks_ref[r, i, jnp.minimum(t, config.topk - 1)]
    is_open = t == config.topk
    return (jnp.where(is_open, i // config.block_size ** level, jnp.maximum(pick, 0)),
            is_open | (pick >= 0))


def _causal_mask(picks_refs, level: int, start: int, config: Config):
    """[B, M] bool: the query-key pairs of the current grid step (row r, query block i, step
    s) that causal LLSA attends (module docstring)."""
    size = config.block_size
    r, i, step = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    rows = i * size + jax.lax.broadcasted_iota(jnp.int32, (size, 1), 0)  # positions
    if level == config.levels:
        cols = (step - start) * config.coarse_tile + jax.lax.broadcasted_iota(
            jnp.int32, (1, config.coarse_tile), 1)
        return jnp.broadcast_to(cols < i * size // size ** level, (size, config.coarse_tile))
    block, exists = _causal_block(picks_refs[level], r, i, step - start, level, config)
    cols = block * size + jax.lax.broadcasted_iota(jnp.int32, (1, size), 1)
    usable = cols <= rows if level == 0 else cols < i // size ** (level - 1)
    return usable & exists


def _masked_logits(q, keys, level, start, picks_refs, config: Config):
    """`_logits`, at -inf off the causal mask when `config.causal`."""
    logits = _logits(q, keys, level, config)
    if not config.causal:
        return logits
    return jnp.where(_causal_mask(picks_refs, level, start, config), logits, -jnp.inf)


def _for_each_source(config: Config, step, body):
    """Runs body(index, level) for the source that grid step `step` belongs to."""
    for index, (level, start, count) in enumerate(config.sources()):
        pl.when((step >= start) & (step < start + count))(functools.partial(body, index, level))


def _forward_kernel(*refs, config: Config):
    sources = len(config.sources())
    q_ref = refs[config.levels]
    k_refs = refs[config.levels + 1:config.levels + 1 + sources]
    v_refs = refs[config.levels + 1 + sources:config.levels + 1 + 2 * sources]
    out_ref, lse_ref, max_ref, sum_ref, acc_ref = refs[config.levels + 1 + 2 * sources:]
    picks_refs = refs[:config.levels]
    step = pl.program_id(2)

    @pl.when(step == 0)
    def _init():
        max_ref[...] = jnp.full(max_ref.shape, -jnp.inf, jnp.float32)
        sum_ref[...] = jnp.zeros(sum_ref.shape, jnp.float32)
        acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

    def update(index, level):
        logits = _masked_logits(q_ref[...], k_refs[index][...], level,
                                config.sources()[index][1], picks_refs, config)
        carry = (max_ref[...], sum_ref[...], acc_ref[...])
        max_ref[...], sum_ref[...], acc_ref[...] = online_softmax.update(
            carry, logits, v_refs[index][...],
            lambda a, b: jax.lax.dot(a, b, preferred_element_type=jnp.float32))

    _for_each_source(config, step, update)

    @pl.when(step == config.steps - 1)
    def _finish():
        out, lse_ref[...] = online_softmax.finish((max_ref[...], sum_ref[...], acc_ref[...]))
        out_ref[...] = out.astype(out_ref.dtype)


def _attended(levels, config: Config):
    """The arrays of `levels` (one per level 0..L) that the sweep reads, in source order."""
    return [levels[level] for level, _, _ in config.sources()]


def forward(q, k_levels, v_levels, picks, config: Config):
    """out [R, N, D] in q's dtype and lse float32 [R, N, 1] (natural log)."""
    k_levels, v_levels = _attended(k_levels, config), _attended(v_levels, config)
    rows, tokens, dim = q.shape
    size = config.block_size
    query_spec, row_spec = _query_specs(config)
    source_specs = _source_specs(config)
    return pl.pallas_call(
        functools.partial(_forward_kernel, config=config),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=config.levels,
            grid=(rows, tokens // size, config.steps),
            in_specs=[query_spec, *source_specs, *source_specs],
            out_specs=[query_spec, row_spec],
            scratch_shapes=[pltpu.VMEM((size, 1), jnp.float32),
                            pltpu.VMEM((size, 1), jnp.float32),
                            pltpu.VMEM((size, dim), jnp.float32)]),
        out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                   jax.ShapeDtypeStruct((rows, tokens, 1), jnp.float32)],
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "arbitrary")),
        interpret=config.interpret_params(),
        name="llsa_forward_tpu",
    )(*picks, q, *k_levels, *v_levels)


def _backward_queries_kernel(*refs, config: Config):
    sources = len(config.sources())
    q_ref, d_out_ref, lse_ref, delta_ref = refs[config.levels:config.levels + 4]
    first = config.levels + 4
    k_refs = refs[first:first + sources]
    v_refs = refs[first + sources:first + 2 * sources]
    dq_ref, *partial_refs = refs[first + 2 * sources:-1]
    dq_acc_ref = refs[-1]
    picks_refs = refs[:config.levels]
    step = pl.program_id(2)

    @pl.when(step == 0)
    def _init():
        dq_acc_ref[...] = jnp.zeros(dq_acc_ref.shape, jnp.float32)

    def update(index, level):
        q, d_out, keys, values = q_ref[...], d_out_ref[...], k_refs[index][...], v_refs[index][...]
        logits = _masked_logits(q, keys, level, config.sources()[index][1], picks_refs, config)
        probs = jnp.exp2(logits - lse_ref[...] * LOG2E)
        d_probs = jax.lax.dot_general(d_out, values, (((1,), (1,)), ((), ())),
                                      preferred_element_type=jnp.float32)
        d_logits = probs * (d_probs - delta_ref[...])
        dq_acc_ref[...] += jax.lax.dot(d_logits.astype(keys.dtype), keys,
                                       preferred_element_type=jnp.float32)
        if level < config.levels:
            transposed = (((0,), (0,)), ((), ()))
            partial_refs[2 * level][...] = config.scale * jax.lax.dot_general(
                d_logits.astype(q.dtype), q, transposed, preferred_element_type=jnp.float32)
            partial_refs[2 * level + 1][...] = jax.lax.dot_general(
                probs.astype(d_out.dtype), d_out, transposed,
                preferred_element_type=jnp.float32)

    _for_each_source(config, step, update)

    @pl.when(step == config.steps - 1)
    def _finish():
        dq_ref[...] = (dq_acc_ref[...] * config.scale).astype(dq_ref.dtype)


def backward_queries(q, d_out, lse, delta, k_levels, v_levels, picks, config: Config):
    """dq [R, N, D] and, per attended sparse level l < L (`Config.sparse_sources`), the
    (dK, dV) partials float32 [R, N / B, S, B, D] of each (query block, level-l block of
    step s) pair: S = K picks (causal: K + 1, the open parent last)."""
    k_levels, v_levels = _attended(k_levels, config), _attended(v_levels, config)
    rows, tokens, dim = q.shape
    size = config.block_size
    per_level = config.topk + 1 if config.causal else config.topk
    query_spec, row_spec = _query_specs(config)
    source_specs = _source_specs(config)
    partial_specs = []
    for _, start, count in config.sparse_sources():
        def index(r, i, s, *_, start=start, count=count):
            return r, i, jnp.clip(s - start, 0, count - 1), 0, 0
        spec = pl.BlockSpec((None, None, None, size, dim), index)
        partial_specs += [spec, spec]
    partial_shape = jax.ShapeDtypeStruct((rows, tokens // size, per_level, size, dim),
                                         jnp.float32)
    dq, *partials = pl.pallas_call(
        functools.partial(_backward_queries_kernel, config=config),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=config.levels,
            grid=(rows, tokens // size, config.steps),
            in_specs=[query_spec, query_spec, row_spec, row_spec, *source_specs,
                      *source_specs],
            out_specs=[query_spec, *partial_specs],
            scratch_shapes=[pltpu.VMEM((size, dim), jnp.float32)]),
        out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype)]
        + [partial_shape] * (2 * len(config.sparse_sources())),
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "arbitrary")),
        interpret=config.interpret_params(),
        name="llsa_backward_queries_tpu",
    )(*picks, q, d_out, lse, delta, *k_levels, *v_levels)
    return dq, [tuple(partials[2 * level:2 * level + 2])
                for level in range(len(config.sparse_sources()))]


def _coarse_dkv_kernel(q_ref, d_out_ref, lse_ref, delta_ref, k_ref, v_ref, dk_ref, dv_ref,
                       dk_acc_ref, dv_acc_ref, *, config: Config):
    chunk = pl.program_id(2)

    @pl.when(chunk == 0)
    def _init():
        dk_acc_ref[...] = jnp.zeros(dk_acc_ref.shape, jnp.float32)
        dv_acc_ref[...] = jnp.zeros(dv_acc_ref.shape, jnp.float32)

    q, d_out, keys, values = q_ref[...], d_out_ref[...], k_ref[...], v_ref[...]
    logits = _logits(q, keys, config.levels, config)
    if config.causal:  # key j is read by the rows from (j + 1)·B^L on
        rows = chunk * config.query_chunk + jax.lax.broadcasted_iota(
            jnp.int32, (config.query_chunk, 1), 0)
        cols = pl.program_id(1) * config.coarse_tile + jax.lax.broadcasted_iota(
            jnp.int32, (1, config.coarse_tile), 1)
        logits = jnp.where(rows >= (cols + 1) * config.block_size ** config.levels, logits,
                           -jnp.inf)
    probs = jnp.exp2(logits - lse_ref[...] * LOG2E)
    d_probs = jax.lax.dot_general(d_out, values, (((1,), (1,)), ((), ())),
                                  preferred_element_type=jnp.float32)
    d_logits = probs * (d_probs - delta_ref[...])
    transposed = (((0,), (0,)), ((), ()))
    dk_acc_ref[...] += jax.lax.dot_general(d_logits.astype(q.dtype), q, transposed,
                                           preferred_element_type=jnp.float32)
    dv_acc_ref[...] += jax.lax.dot_general(probs.astype(d_out.dtype), d_out, transposed,
                                           preferred_element_type=jnp.float32)

    @pl.when(chunk == pl.num_programs(2) - 1)
    def _finish():
        dk_ref[...] = dk_acc_ref[...] * config.scale
        dv_ref[...] = dv_acc_ref[...]


def backward_coarse_dkv(q, d_out, lse, delta, k, v, config: Config):
    """dK, dV float32 [R, N_L, D] (per query row) of the coarsest level, over all queries."""
    rows, tokens, dim = q.shape
    tile, chunk = config.coarse_tile, config.query_chunk
    query_spec = pl.BlockSpec((None, chunk, dim), lambda r, j, c: (r, c, 0))
    row_spec = pl.BlockSpec((None, chunk, 1), lambda r, j, c: (r, c, 0))
    key_spec = pl.BlockSpec((None, tile, dim), lambda r, j, c: (config.kv_row(r), j, 0))
    out_spec = pl.BlockSpec((None, tile, dim), lambda r, j, c: (r, j, 0))
    return pl.pallas_call(
        functools.partial(_coarse_dkv_kernel, config=config),
        grid=(rows, k.shape[1] // tile, tokens // chunk),
        in_specs=[query_spec, query_spec, row_spec, row_spec, key_spec, key_spec],
        out_specs=[out_spec, out_spec],
        out_shape=[jax.ShapeDtypeStruct((rows, k.shape[1], dim), jnp.float32)] * 2,
        scratch_shapes=[pltpu.VMEM((tile, dim), jnp.float32)] * 2,
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "arbitrary")),
        interpret=config.interpret_params(),
        name="llsa_backward_dkv_coarsest_tpu",
    )(q, d_out, lse, delta, k, v)
