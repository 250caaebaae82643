"""Neighbourhood-attention kernels for TPU (Mosaic): forward, dQ, dK/dV.

Same interface, arrays and math as `gpu.py` (Bt batch, G dilation groups, M tokens per
group, H query / Hkv kv heads, tq = prod(q_tile), tk = prod(kv_tile)):
  q, out, d_out, dq   [Bt, G, Mq, H, D]          k, v   [Bt, G, Mkv, Hkv, D]
  lse, delta          float32 [Bt, H, G, Mq]     dk, dv float32 [Bt, G, Mkv, H, D] per
                                                 query head (GQA groups summed by the caller)
Mosaic blocks need their last two dimensions divisible by (8, 128) or whole, so one head of
[.., H, D] cannot be a block: the wrappers move heads outwards (XLA transposes beside the
caller's own layout change) and the kernels see heads-major rows r = batch·H + head:
  q-like [R, G, Mq, D]   k, v [Rkv, G, Mkv, D]   lse, delta [R, G, Mq, 1]   dk, dv [R, G, Mkv, D]
Every kernel runs on the grid (R, G, tile, S) with the tile lists of `tiling.Plan`
(`kv_lists()` for forward and dQ, `query_lists()` for dK/dV) scalar-prefetched into SMEM:
the BlockSpec index maps read entry s of the tile's list, so grid step s DMAs one visited
tile. Steps s < counts[0] (fully visible) run unmasked, the partial ones with the window mask
(`plan.visible`), and padding steps (the list repeats its last entry, so no new DMA) run
nothing. Accumulators live in VMEM scratch: set at s = 0, written out at the last step.
Every program owns its outputs (no atomics), so results are deterministic.

Verified in TPU interpret mode on CPU (uninitialised memory NaN-filled) against the "xla"
reference in float32 (relative L2 error below 4e-7 for out, dq, dk, dv; 1- to 3-D, dilation,
causal axes, GQA, fully visible and partial tiles; tiles of 2 to 16 tokens) and bfloat16.
Lowering to Mosaic (`jax.export` for TPU v5p) passes for realistic tiles (tq = 128, tk = 64
or 128, D = 64 or 128). Not compiled or run on TPU hardware: Mosaic's layout passes (e.g. for
the integer div/mod of `plan.visible`) and performance are untested; the [.., 1] statistics
take a 128-lane tile per 8 rows in VMEM (and likely in HBM).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from lla.pallas_kernels import online_softmax
from lla.pallas_kernels.neighborhood.tiling import Plan, TileLists, Tiles
from lla.pallas_kernels.online_softmax import LOG2E


@dataclasses.dataclass(frozen=True)
class Config(Tiles):
    """Tiles of one call (untuned: the GPU defaults); `tuning("neighborhood", "pallas_tpu",
    ...)` overrides them."""


# The fields of `Config` that `tuning` may set.
TUNABLE_FIELDS = ("q_tile", "kv_tile")


_NT = (((1,), (1,)), ((), ()))  # a [m, k] x b [n, k] -> [m, n]
_TN = (((0,), (0,)), ((), ()))  # a [k, m] x b [k, n] -> [m, n]


def _dot(a, b, dims=(((1,), (0,)), ((), ()))):
    return jax.lax.dot_general(a, b, dims, preferred_element_type=jnp.float32)


def _log2_logits(q, keys, plan: Plan):
    return _dot(q, keys, _NT) * (plan.scale * LOG2E)


def _heads_major(x):
    """[Bt, G, M, h, D] -> [Bt·h, G, M, D]."""
    batch, groups, tokens, heads, dim = x.shape
    return x.transpose(0, 3, 1, 2, 4).reshape(batch * heads, groups, tokens, dim)


def _tokens_major(x, batch: int):
    """Inverse of `_heads_major`: [Bt·h, G, M, D] -> [Bt, G, M, h, D]."""
    rows, groups, tokens, dim = x.shape
    return x.reshape(batch, rows // batch, groups, tokens, dim).transpose(0, 2, 3, 1, 4)


def _rows(x):
    """Per-query statistics [Bt, H, G, Mq] -> [Bt·H, G, Mq, 1] (a column per tile)."""
    return x.reshape(-1, *x.shape[2:], 1)


class _Lists:
    """A plan's TileLists flattened to 1-D for SMEM, as the Pallas paged-attention kernel
    flattens its page table (N-D SMEM arrays may be padded in their minor dimensions)."""

    def __init__(self, lists: TileLists):
        self.groups, self.tiles_per_group, self.width = lists.tiles.shape
        self.arrays = (jnp.asarray(lists.tiles.reshape(-1)),
                       jnp.asarray(lists.counts.reshape(-1)))

    def entry(self, tiles_ref, group, tile, s):
        """Entry s of the list of (group, tile)."""
        return tiles_ref[(group * self.tiles_per_group + tile) * self.width + s]

    def count(self, counts_ref, group, tile, which: int):
        """counts[group, tile, which]: 0 fully visible, 1 all entries to visit."""
        return counts_ref[(group * self.tiles_per_group + tile) * 2 + which]

    def spec(self, rows: int, width: int, row=lambda r: r, visited: bool = False):
        """BlockSpec of [rows, width] blocks of an [R', G, M, width] array at grid step
        (r, g, t, s): row `row(r)`, group g, and tile t, or with `visited` the tile of list
        entry s of (g, t)."""
        def index(r, g, t, s, tiles_ref, counts_ref):
            del counts_ref
            return row(r), g, self.entry(tiles_ref, g, t, s) if visited else t, 0
        return pl.BlockSpec((None, None, rows, width), index)

    def visit(self, tiles_ref, counts_ref, body):
        """At grid step (r, g, t, s), runs body(visited tile, masked) for list entry s of
        (g, t): unmasked if fully visible, masked if partial, not at all if padding."""
        group, tile, s = pl.program_id(1), pl.program_id(2), pl.program_id(3)
        full = self.count(counts_ref, group, tile, 0)
        total = self.count(counts_ref, group, tile, 1)
        visited = self.entry(tiles_ref, group, tile, s)
        pl.when(s < full)(lambda: body(visited, False))
        pl.when((s >= full) & (s < total))(lambda: body(visited, True))


def _call(kernel, lists: _Lists, rows: int, *args, in_specs, out_specs, out_shape, scratch,
          interpret: bool, name: str):
    """pallas_call on the grid (rows, G, tiles, S) with the lists as scalar prefetch."""
    return pl.pallas_call(
        kernel,
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=2,
            grid=(rows, lists.groups, lists.tiles_per_group, lists.width),
            in_specs=in_specs, out_specs=out_specs, scratch_shapes=scratch),
        out_shape=out_shape,
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")),
        interpret=pltpu.InterpretParams(uninitialized_memory="nan") if interpret else False,
        name=name,
    )(*lists.arrays, *args)


def _first_step():
    return pl.program_id(3) == 0


def _last_step():
    return pl.program_id(3) == pl.num_programs(3) - 1


def _kv_row(plan: Plan):
    """Grid row r = batch·H + head -> its kv row batch·Hkv + kv head."""
    return lambda r: r // plan.heads * plan.kv_heads + plan.kv_head(r % plan.heads)


# ---- forward --------------------------------------------------------------------------------

def _forward_kernel(tiles_ref, counts_ref, q_ref, k_ref, v_ref, out_ref, lse_ref, max_ref,
                    sum_ref, acc_ref, *, plan: Plan, lists: _Lists):
    @pl.when(_first_step())
    def _init():
        max_ref[...] = jnp.full(max_ref.shape, -jnp.inf, jnp.float32)
        sum_ref[...] = jnp.zeros(sum_ref.shape, jnp.float32)
        acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

    def step(kv_tile, masked):
        logits = _log2_logits(q_ref[...], k_ref[...], plan)
        if masked:
            visible = plan.visible(pl.program_id(1), pl.program_id(2), kv_tile)
            logits = jnp.where(visible, logits, -jnp.inf)
        carry = (max_ref[...], sum_ref[...], acc_ref[...])
        max_ref[...], sum_ref[...], acc_ref[...] = online_softmax.update(
            carry, logits, v_ref[...], _dot)

    lists.visit(tiles_ref, counts_ref, step)

    @pl.when(_last_step())
    def _finish():
        out, lse = online_softmax.finish((max_ref[...], sum_ref[...], acc_ref[...]))
        out_ref[...] = out.astype(out_ref.dtype)
        lse_ref[...] = lse


def forward(q, k, v, plan: Plan, config: Config):
    """(out [Bt, G, Mq, H, D] in q's dtype, lse f32 [Bt, H, G, Mq] natural log)."""
    batch, groups, mq, heads, dim = q.shape
    tq, tk = math.prod(plan.q_tile), math.prod(plan.kv_tile)
    lists = _Lists(plan.kv_lists())
    q_rows = _heads_major(q)
    query, stats = lists.spec(tq, dim), lists.spec(tq, 1)
    keys = lists.spec(tk, dim, _kv_row(plan), visited=True)
    out, lse = _call(
        functools.partial(_forward_kernel, plan=plan, lists=lists), lists, batch * heads,
        q_rows, _heads_major(k), _heads_major(v),
        in_specs=[query, keys, keys], out_specs=[query, stats],
        out_shape=[jax.ShapeDtypeStruct(q_rows.shape, q.dtype),
                   jax.ShapeDtypeStruct((batch * heads, groups, mq, 1), jnp.float32)],
        scratch=[pltpu.VMEM((tq, 1), jnp.float32), pltpu.VMEM((tq, 1), jnp.float32),
                 pltpu.VMEM((tq, dim), jnp.float32)],
        interpret=config.interpret, name="neighborhood_forward_tpu")
    return _tokens_major(out, batch), lse.reshape(batch, heads, groups, mq)


# ---- backward: dQ ---------------------------------------------------------------------------

def _dq_kernel(tiles_ref, counts_ref, q_ref, d_out_ref, lse_ref, delta_ref, k_ref, v_ref,
               dq_ref, dq_acc_ref, *, plan: Plan, lists: _Lists):
    @pl.when(_first_step())
    def _init():
        dq_acc_ref[...] = jnp.zeros(dq_acc_ref.shape, jnp.float32)

    def step(kv_tile, masked):
        keys = k_ref[...]
        probs = jnp.exp2(_log2_logits(q_ref[...], keys, plan) - lse_ref[...] * LOG2E)
        if masked:
            visible = plan.visible(pl.program_id(1), pl.program_id(2), kv_tile)
            probs = jnp.where(visible, probs, 0.0)
        d_logits = probs * (_dot(d_out_ref[...], v_ref[...], _NT) - delta_ref[...])
        dq_acc_ref[...] += _dot(d_logits.astype(keys.dtype), keys)

    lists.visit(tiles_ref, counts_ref, step)

    @pl.when(_last_step())
    def _finish():
        dq_ref[...] = (dq_acc_ref[...] * plan.scale).astype(dq_ref.dtype)


def backward_dq(q, k, v, d_out, lse, delta, plan: Plan, config: Config):
    """dQ [Bt, G, Mq, H, D] in q's dtype; delta = rowsum(out * d_out) like lse."""
    batch, _, _, heads, dim = q.shape
    tq, tk = math.prod(plan.q_tile), math.prod(plan.kv_tile)
    lists = _Lists(plan.kv_lists())
    q_rows = _heads_major(q)
    query, stats = lists.spec(tq, dim), lists.spec(tq, 1)
    keys = lists.spec(tk, dim, _kv_row(plan), visited=True)
    dq = _call(
        functools.partial(_dq_kernel, plan=plan, lists=lists), lists, batch * heads,
        q_rows, _heads_major(d_out), _rows(lse), _rows(delta), _heads_major(k),
        _heads_major(v),
        in_specs=[query, query, stats, stats, keys, keys], out_specs=query,
        out_shape=jax.ShapeDtypeStruct(q_rows.shape, q.dtype),
        scratch=[pltpu.VMEM((tq, dim), jnp.float32)],
        interpret=config.interpret, name="neighborhood_backward_dq_tpu")
    return _tokens_major(dq, batch)


# ---- backward: dK/dV ------------------------------------------------------------------------

def _dkv_kernel(tiles_ref, counts_ref, q_ref, d_out_ref, lse_ref, delta_ref, k_ref, v_ref,
                dk_ref, dv_ref, dk_acc_ref, dv_acc_ref, *, plan: Plan, lists: _Lists):
    @pl.when(_first_step())
    def _init():
        dk_acc_ref[...] = jnp.zeros(dk_acc_ref.shape, jnp.float32)
        dv_acc_ref[...] = jnp.zeros(dv_acc_ref.shape, jnp.float32)

    def step(q_tile, masked):
        q, d_out = q_ref[...], d_out_ref[...]
        probs = jnp.exp2(_log2_logits(q, k_ref[...], plan) - lse_ref[...] * LOG2E)
        if masked:
            visible = plan.visible(pl.program_id(1), q_tile, pl.program_id(2))
            probs = jnp.where(visible, probs, 0.0)
        dv_acc_ref[...] += _dot(probs.astype(d_out.dtype), d_out, _TN)
        d_logits = probs * (_dot(d_out, v_ref[...], _NT) - delta_ref[...])
        dk_acc_ref[...] += _dot(d_logits.astype(q.dtype), q, _TN)

    lists.visit(tiles_ref, counts_ref, step)

    @pl.when(_last_step())
    def _finish():
        dk_ref[...] = dk_acc_ref[...] * plan.scale
        dv_ref[...] = dv_acc_ref[...]


def backward_dkv(q, k, v, d_out, lse, delta, plan: Plan, config: Config):
    """dK, dV float32 [Bt, G, Mkv, H, D], per query head."""
    batch, groups, _, heads, dim = q.shape
    mkv = k.shape[2]
    tq, tk = math.prod(plan.q_tile), math.prod(plan.kv_tile)
    lists = _Lists(plan.query_lists())
    query = lists.spec(tq, dim, visited=True)
    stats = lists.spec(tq, 1, visited=True)
    keys, grads = lists.spec(tk, dim, _kv_row(plan)), lists.spec(tk, dim)
    dk, dv = _call(
        functools.partial(_dkv_kernel, plan=plan, lists=lists), lists, batch * heads,
        _heads_major(q), _heads_major(d_out), _rows(lse), _rows(delta), _heads_major(k),
        _heads_major(v),
        in_specs=[query, query, stats, stats, keys, keys], out_specs=[grads, grads],
        out_shape=[jax.ShapeDtypeStruct((batch * heads, groups, mkv, dim), jnp.float32)] * 2,
        scratch=[pltpu.VMEM((tk, dim), jnp.float32)] * 2,
        interpret=config.interpret, name="neighborhood_backward_dkv_tpu")
    return _tokens_major(dk, batch), _tokens_major(dv, batch)
