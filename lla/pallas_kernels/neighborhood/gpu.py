"""Neighbourhood-attention kernels in Pallas (Triton lowering): forward, dQ, dK/dV.

Arrays are in the tiled layout of `tiling.Plan` (Bt batch, G dilation groups, M tokens per
group, H query / Hkv kv heads, tq = prod(q_tile), tk = prod(kv_tile)):
  q, out, d_out, dq   [Bt, G, Mq, H, D]          k, v   [Bt, G, Mkv, Hkv, D]
  lse, delta          float32 [Bt, H, G, Mq]     dk, dv float32 [Bt, G, Mkv, H, D] per
                                                 query head (GQA groups summed by the caller)
Forward and dQ run one program per (query tile, group, batch·H row); it visits the kv tiles
of `plan.kv_lists()`, the fully visible ones without a mask, then the partial ones with the
per-element window mask (`plan.visible`), in one online softmax (log2 domain). dK/dV run one
program per kv tile over the query tiles of `plan.query_lists()`. No atomics: every program
owns its outputs, so results are deterministic. float32 inputs run their dots in TF32 (the
Triton default; about 1e-3 relative error): bfloat16 and float16 are what the GPU tests and
benchmarks cover.
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
from lla.pallas_kernels.neighborhood.tiling import Plan, TileLists, Tiles
from lla.pallas_kernels.online_softmax import LOG2E


@dataclasses.dataclass(frozen=True)
class Config(Tiles):
    """Tiles and Triton launch parameters of one call (defaults tuned on an H200 at 256 x 256;
    `tuning("neighborhood", "pallas_gpu", ...)` overrides them)."""

    num_warps: int = 4  # every kernel
    num_stages: int = 2  # forward and dQ
    dkv_num_stages: int = 1  # dK/dV

    def compiler_params(self, kernel: str):
        """Triton launch parameters of `kernel` ("forward", "dq" or "dkv")."""
        stages = self.dkv_num_stages if kernel == "dkv" else self.num_stages
        return plt.CompilerParams(num_warps=self.num_warps, num_stages=stages)


# The fields of `Config` that `tuning` may set.
TUNABLE_FIELDS = ("q_tile", "kv_tile", "num_warps", "num_stages", "dkv_num_stages")


def _log2_logits(q, keys, plan: Plan):
    return plt.dot(q, keys, trans_b=True) * (plan.scale * LOG2E)


def _visit(step, carry, counts_ref):
    """carry = step(s, carry, masked) over list entries s: fully visible ones, then masked."""
    carry = lax.fori_loop(0, counts_ref[0], functools.partial(step, masked=False), carry)
    return lax.fori_loop(counts_ref[0], counts_ref[1], functools.partial(step, masked=True),
                         carry)


class _Specs:
    """BlockSpecs for grids (tile, group, row) with row = batch·H + head."""

    def __init__(self, plan: Plan, lists: TileLists):
        self.tq, self.tk = math.prod(plan.q_tile), math.prod(plan.kv_tile)
        self.mq = plan.group_tokens(plan.q_tile)
        self.mkv = plan.group_tokens(plan.kv_tile)
        d, heads = plan.head_dim, plan.heads
        self.batch = lambda row: row // heads
        self.head = lambda row: row % heads
        self.kv_head = lambda row: plan.kv_head(row % heads)
        self.entries = pl.BlockSpec((None, None, lists.tiles.shape[2]),
                                    lambda t, g, row: (g, t, 0))
        self.counts = pl.BlockSpec((None, None, 2), lambda t, g, row: (g, t, 0))
        self.q_tile = pl.BlockSpec((None, None, self.tq, None, d),
                                   lambda t, g, row: (self.batch(row), g, t, self.head(row), 0))
        self.q_all = pl.BlockSpec((None, None, self.mq, None, d),
                                  lambda t, g, row: (self.batch(row), g, 0, self.head(row), 0))
        self.kv_tile = pl.BlockSpec(
            (None, None, self.tk, None, d),
            lambda t, g, row: (self.batch(row), g, t, self.kv_head(row), 0))
        self.kv_all = pl.BlockSpec(
            (None, None, self.mkv, None, d),
            lambda t, g, row: (self.batch(row), g, 0, self.kv_head(row), 0))
        self.dkv_tile = pl.BlockSpec(
            (None, None, self.tk, None, d),
            lambda t, g, row: (self.batch(row), g, t, self.head(row), 0))
        self.row_tile = pl.BlockSpec((None, None, None, self.tq),
                                     lambda t, g, row: (self.batch(row), self.head(row), g, t))
        self.row_all = pl.BlockSpec((None, None, None, self.mq),
                                    lambda t, g, row: (self.batch(row), self.head(row), g, 0))


# ---- forward --------------------------------------------------------------------------------

def _forward_kernel(entries_ref, counts_ref, q_ref, k_ref, v_ref, out_ref, lse_ref, *,
                    plan: Plan, tk: int):
    q_tile, group = pl.program_id(0), pl.program_id(1)
    q = q_ref[...]

    def step(s, carry, masked):
        kv_tile = entries_ref[s]
        keys = k_ref[pl.ds(kv_tile * tk, tk), :]
        logits = _log2_logits(q, keys, plan)
        if masked:
            logits = jnp.where(plan.visible(group, q_tile, kv_tile), logits, -jnp.inf)
        return online_softmax.update(carry, logits, v_ref[pl.ds(kv_tile * tk, tk), :],
                                     plt.dot)

    out, lse = online_softmax.finish(
        _visit(step, online_softmax.init(q.shape[0], q.shape[1]), counts_ref))
    out_ref[...] = out.astype(out_ref.dtype)
    lse_ref[...] = lse


def forward(q, k, v, plan: Plan, config: Config):
    """(out [Bt, G, Mq, H, D] in q's dtype, lse f32 [Bt, H, G, Mq] natural log)."""
    batch, groups, mq, heads, _ = q.shape
    lists = plan.kv_lists()
    specs = _Specs(plan, lists)
    return pl.pallas_call(
        functools.partial(_forward_kernel, plan=plan, tk=specs.tk),
        grid=(mq // specs.tq, groups, batch * heads),
        in_specs=[specs.entries, specs.counts, specs.q_tile, specs.kv_all, specs.kv_all],
        out_specs=[specs.q_tile, specs.row_tile],
        out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                   jax.ShapeDtypeStruct((batch, heads, groups, mq), jnp.float32)],
        compiler_params=config.compiler_params("forward"),
        interpret=config.interpret,
        name="neighborhood_forward",
    )(lists.tiles, lists.counts, q, k, v)


# ---- backward: dQ ---------------------------------------------------------------------------

def _dq_kernel(entries_ref, counts_ref, q_ref, d_out_ref, lse_ref, delta_ref, k_ref, v_ref,
               dq_ref, *, plan: Plan, tk: int):
    q_tile, group = pl.program_id(0), pl.program_id(1)
    q, d_out = q_ref[...], d_out_ref[...]
    log2_lse, delta = lse_ref[...] * LOG2E, delta_ref[...]

    def step(s, dq, masked):
        kv_tile = entries_ref[s]
        keys = k_ref[pl.ds(kv_tile * tk, tk), :]
        values = v_ref[pl.ds(kv_tile * tk, tk), :]
        probs = jnp.exp2(_log2_logits(q, keys, plan) - log2_lse[:, None])
        if masked:
            probs = jnp.where(plan.visible(group, q_tile, kv_tile), probs, 0.0)
        d_logits = probs * (plt.dot(d_out, values, trans_b=True) - delta[:, None])
        return dq + plt.dot(d_logits.astype(keys.dtype), keys)

    dq = _visit(step, jnp.zeros(q.shape, jnp.float32), counts_ref)
    dq_ref[...] = (dq * plan.scale).astype(dq_ref.dtype)


def backward_dq(q, k, v, d_out, lse, delta, plan: Plan, config: Config):
    """dQ [Bt, G, Mq, H, D] in q's dtype; delta = rowsum(out * d_out) like lse."""
    batch, groups, mq, heads, _ = q.shape
    lists = plan.kv_lists()
    specs = _Specs(plan, lists)
    return pl.pallas_call(
        functools.partial(_dq_kernel, plan=plan, tk=specs.tk),
        grid=(mq // specs.tq, groups, batch * heads),
        in_specs=[specs.entries, specs.counts, specs.q_tile, specs.q_tile, specs.row_tile,
                  specs.row_tile, specs.kv_all, specs.kv_all],
        out_specs=specs.q_tile,
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        compiler_params=config.compiler_params("dq"),
        interpret=config.interpret,
        name="neighborhood_backward_dq",
    )(lists.tiles, lists.counts, q, d_out, lse, delta, k, v)


# ---- backward: dK/dV ------------------------------------------------------------------------

def _dkv_kernel(entries_ref, counts_ref, q_ref, d_out_ref, lse_ref, delta_ref, k_ref, v_ref,
                dk_ref, dv_ref, *, plan: Plan, tq: int):
    kv_tile, group = pl.program_id(0), pl.program_id(1)
    keys, values = k_ref[...], v_ref[...]

    def step(s, carry, masked):
        dk, dv = carry
        q_tile = entries_ref[s]
        rows = pl.ds(q_tile * tq, tq)
        q, d_out = q_ref[rows, :], d_out_ref[rows, :]
        probs = jnp.exp2(_log2_logits(q, keys, plan) - lse_ref[rows][:, None] * LOG2E)
        if masked:
            probs = jnp.where(plan.visible(group, q_tile, kv_tile), probs, 0.0)
        dv = dv + plt.dot(probs.astype(d_out.dtype), d_out, trans_a=True)
        d_logits = probs * (plt.dot(d_out, values, trans_b=True) - delta_ref[rows][:, None])
        return dk + plt.dot(d_logits.astype(q.dtype), q, trans_a=True), dv

    zeros = jnp.zeros(keys.shape, jnp.float32)
    dk, dv = _visit(step, (zeros, zeros), counts_ref)
    dk_ref[...] = dk * plan.scale
    dv_ref[...] = dv


def backward_dkv(q, k, v, d_out, lse, delta, plan: Plan, config: Config):
    """dK, dV float32 [Bt, G, Mkv, H, D], per query head."""
    batch, groups, _, heads, dim = q.shape
    mkv = k.shape[2]
    lists = plan.query_lists()
    specs = _Specs(plan, lists)
    return pl.pallas_call(
        functools.partial(_dkv_kernel, plan=plan, tq=specs.tq),
        grid=(mkv // specs.tk, groups, batch * heads),
        in_specs=[specs.entries, specs.counts, specs.q_all, specs.q_all, specs.row_all,
                  specs.row_all, specs.kv_tile, specs.kv_tile],
        out_specs=[specs.dkv_tile, specs.dkv_tile],
        out_shape=[jax.ShapeDtypeStruct((batch, groups, mkv, heads, dim), jnp.float32)] * 2,
        compiler_params=config.compiler_params("dkv"),
        interpret=config.interpret,
        name="neighborhood_backward_dkv",
    )(lists.tiles, lists.counts, q, d_out, lse, delta, k, v)
