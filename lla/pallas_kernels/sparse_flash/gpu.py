"""Block-sparse flash attention in Pallas (Triton lowering): forward, dQ and dK/dV over
query-major block lists and their key-major CSR transpose (`metadata`).

Arrays keep the ops' token-major layout. With Bt batch, H query and Hkv kv heads, B =
block_size, nQ and nK query and key blocks of the (padded) sequences, K list slots, and
grids running over rows r = batch·H + head:
  q, out, dq        [Bt, nQ·B, H, D]
  k, v              [Bt, nK·B, Hkv, D]; forward and dQ view them as [Bt, nK, B, Hkv, D]
  blocks, counts    int32 [Bt·H, nQ, K], [Bt·H, nQ]: key blocks of each query block,
                    ascending, the counts[r, b] valid ones first (`metadata.query_major`)
  offsets, readers  int32 [Bt·H, nK + 1], [Bt·H, nQ·K]: the key-major CSR of the same lists
                    (`metadata.transpose`)
  lse, delta        float32 [Bt·H, nQ·B] (natural-log lse; delta = rowsum(out * d_out))
  dk, dv            float32 [Bt, nK·B, H, D], per query head (the caller sums GQA groups)
  summary k, v      [Bt, S, Hkv, D] summary tokens (seed-papers K2; only when
                    summary_tokens > 0), bias float32 [Bt, Hkv, S] (natural log)
  summary dk, dv    float32 [splits, Bt, S, H, D] per query head and query split

Forward and dQ: grid (nQ, Bt·H); program (b, r) holds query block b of row r and sweeps its
list in key tiles of `chunk` blocks (chunk·B keys), masking the slots >= counts[r, b], the
padding keys (positions >= kv_tokens) and, with `causal`, the keys after each query. The
forward keeps an online softmax in the log2 domain (`online_softmax`) and saves the output
and lse. Summary tokens, when there are any, follow the list in the same softmax, in tiles
of `summary_tile`, each logit plus its bias. dK/dV: grid (nK, Bt·H); program (j, r) holds
key block j and loops over the query blocks that read it, one block of B queries per step;
the summary tokens' dK/dV: grid (S / summary_tile, Bt·H, summary_splits), each program
looping over its split of the queries, the splits summed by the caller. No atomics: every
program owns its outputs, so two runs give identical bits.

`log2_logits` and `accumulate_dkv` are the flash pieces LLSA's kernels share.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plt

from lla.pallas_kernels import online_softmax
from lla.pallas_kernels.common import HeadRows, largest_divisor_at_most
from lla.pallas_kernels.online_softmax import LOG2E


@dataclasses.dataclass(frozen=True)
class Config(HeadRows):
    """Shape and GPU tiling of one block-sparse call."""

    block_size: int  # B: tokens per query and key block
    topk: int  # K: slots per list
    heads: int
    kv_heads: int
    query_blocks: int  # nQ
    key_blocks: int  # nK
    kv_tokens: int  # valid keys; nK·B - kv_tokens padding keys are masked
    head_dim: int
    causal: bool
    chunk: int  # list slots per key tile (divides topk)
    summary_tokens: int = 0  # S always-visible summary tokens (0: none)
    summary_tile: int = 1  # summary tokens per tile (divides S)
    summary_splits: int = 1  # query splits of the summary dK/dV (divides nQ)
    num_warps: int = 4  # forward and summary dK/dV
    # dQ and dK/dV: 8 at block >= 128 (`make_config`). Measured with 8 warps in every kernel,
    # ASA (block 128) at [1, 65536, 6, 64] on an H200, tune_asa_dit256_warps.json: fwd+bwd
    # 65.7 -> 49.3 ms, the forward 13.0 -> 14.7 ms; this split (forward 4, backward 8) and
    # blocks above 128 are not measured yet
    backward_num_warps: int = 4
    num_stages: int = 2
    # The dQ kernel runs unpipelined: with num_warps 4 and two stages its results on an H200
    # (jax 0.11.2) differed between two runs on the same inputs, a few query blocks ~10 % off
    # (experiments/results/nvidia_h200/sparse_flash_dq_race.json); one stage was exact.
    dq_num_stages: int = 1
    interpret: bool = False

    @property
    def scale(self) -> float:
        return self.head_dim ** -0.5

    @property
    def padded(self) -> bool:
        """Whether the last key block holds padding keys."""
        return self.kv_tokens < self.key_blocks * self.block_size

    def compiler_params(self, num_stages: int | None = None, *, backward: bool = False):
        """Triton launch parameters of the sparse-flash GPU kernels (`num_stages` replaces
        the config's, as the dQ kernel's `dq_num_stages` does; `backward`: the dQ and
        dK/dV kernels' `backward_num_warps`)."""
        return plt.CompilerParams(
            num_warps=self.backward_num_warps if backward else self.num_warps,
            num_stages=num_stages or self.num_stages)


# The fields of `Config` that `lla.attention.tuning(op, "pallas_gpu", ...)` may set.
TUNABLE_FIELDS = ("chunk", "summary_tile", "summary_splits", "num_warps",
                  "backward_num_warps", "num_stages", "dq_num_stages")


def make_config(block_size, topk, heads, kv_heads, q_tokens, kv_tokens, head_dim, *,
                causal=False, summary_tokens=0, interpret=False, **overrides) -> Config:
    """Default tiling: key tiles of up to 128 keys (chunk = the largest divisor of K with
    chunk·B <= 128); summary tiles of up to 64 tokens, their dK/dV in up to 16 query splits;
    8 warps in dQ and dK/dV at B >= 128 (4 below, where it was not measured); `overrides`
    replaces any tunable field."""
    query_blocks = -(-q_tokens // block_size)
    config = Config(block_size=block_size, topk=topk, heads=heads, kv_heads=kv_heads,
                    query_blocks=query_blocks, key_blocks=-(-kv_tokens // block_size),
                    kv_tokens=kv_tokens, head_dim=head_dim, causal=causal,
                    chunk=largest_divisor_at_most(topk, max(1, 128 // block_size)),
                    summary_tokens=summary_tokens,
                    summary_tile=largest_divisor_at_most(max(summary_tokens, 1), 64),
                    summary_splits=largest_divisor_at_most(query_blocks, 16),
                    backward_num_warps=8 if block_size >= 128 else 4,
                    interpret=interpret)
    config = dataclasses.replace(config, **overrides)
    check_tiling(config)
    return config


def check_tiling(config: Config) -> None:
    """Raises ValueError, naming the fields, unless the tiling divides the shapes."""
    problems = []
    if config.chunk < 1 or config.topk % config.chunk:
        problems.append(f"chunk {config.chunk} must divide topk {config.topk}")
    if config.summary_tokens and config.summary_tokens % config.summary_tile:
        problems.append(f"summary_tile {config.summary_tile} must divide the "
                        f"{config.summary_tokens} summary tokens")
    if config.query_blocks % config.summary_splits:
        problems.append(f"summary_splits {config.summary_splits} must divide the "
                        f"{config.query_blocks} query blocks")
    if config.summary_tokens and config.causal:
        problems.append("summary tokens are always visible: they need causal=False")
    if problems:
        raise ValueError("sparse_flash kernels: " + "; ".join(problems))


def unsupported_reasons(config: Config) -> list[str]:
    """Why the compiled (non-interpret) kernels cannot run this configuration."""
    power_of_two = lambda n: n >= 1 and n & (n - 1) == 0  # noqa: E731
    reasons = []
    if not power_of_two(config.block_size) or config.block_size < 16:
        reasons.append(f"block_size {config.block_size} must be a power of two >= 16")
    if not power_of_two(config.head_dim) or config.head_dim < 16:
        reasons.append(f"head_dim {config.head_dim} must be a power of two >= 16")
    if not power_of_two(config.chunk):
        reasons.append(f"chunk {config.chunk} must be a power of two")
    if config.summary_tokens and (config.summary_tile < 16
                                  or not power_of_two(config.summary_tile)):
        reasons.append(f"summary tile {config.summary_tile} must be a power of two >= 16 "
                       f"(S = {config.summary_tokens} summary tokens)")
    return reasons


# ---- shared flash pieces --------------------------------------------------------------------

def log2_logits(q, keys, log2_weight, config, mask=None):
    """[T, D] x [M, D] -> f32 [T, M] logits in log2 units, weight included, -inf off `mask`
    (`config.scale` is 1/sqrt(D))."""
    logits = plt.dot(q, keys, trans_b=True) * (config.scale * LOG2E) + log2_weight
    return logits if mask is None else jnp.where(mask, logits, -jnp.inf)


def accumulate_dkv(carry, start, rows, refs, keys, values, log2_weight, config, mask=None):
    """Adds the dK/dV contribution of queries [start, start + rows) to one key tile.

    Args:
      carry: (dk, dv) f32 [M, D] each, unscaled.
      refs: (q, d_out, lse, delta) refs of one whole head / row.
      keys, values: [M, D]; log2_weight: added to every logit.
      mask: [rows, M] the query-key pairs that attend, None for all.
    """
    q_ref, d_out_ref, lse_ref, delta_ref = refs
    dk, dv = carry
    q = q_ref[pl.ds(start, rows), :]
    d_out = d_out_ref[pl.ds(start, rows), :]
    log2_lse = lse_ref[pl.ds(start, rows)] * LOG2E
    delta = delta_ref[pl.ds(start, rows)]
    probs = jnp.exp2(log2_logits(q, keys, log2_weight, config, mask) - log2_lse[:, None])
    dv = dv + plt.dot(probs.astype(d_out.dtype), d_out, trans_a=True)
    d_logits = probs * (plt.dot(d_out, values, trans_b=True) - delta[:, None])
    dk = dk + plt.dot(d_logits.astype(q.dtype), q, trans_a=True)
    return dk, dv


def _key_mask(query_start, key_position, config: Config, mask=None):
    """`mask` and, where the call needs them, key_position < kv_tokens and (causal) key at
    or before the query; query rows are query_start + 0..B-1, key_position [1, M]."""
    if config.padded:
        real = key_position < config.kv_tokens
        mask = real if mask is None else mask & real
    if config.causal:
        queries = query_start + lax.broadcasted_iota(jnp.int32, (config.block_size, 1), 0)
        past = key_position <= queries
        mask = past if mask is None else mask & past
    return mask


# ---- forward and dQ: the query-major sweep --------------------------------------------------

def _sweep(visit, carry, blocks_ref, counts_ref, k_ref, v_ref, summary_refs, config: Config):
    """carry = visit(carry, keys [M, D], values [M, D], mask [B, M] or None, log2_bias) over
    the key tiles of the program's query block (M = chunk·B keys per tile, bias 0), then over
    the summary tiles (`summary_refs` = (keys, values, bias) refs, M = summary_tile, log2_bias
    [1, M], no mask)."""
    size, chunk, dim = config.block_size, config.chunk, config.head_dim
    query_block = pl.program_id(0)
    count = counts_ref[query_block]
    width = chunk * size

    def step(t, carry):
        blocks = blocks_ref[query_block, pl.ds(t * chunk, chunk)]
        keys = k_ref[blocks].reshape(width, dim)
        values = v_ref[blocks].reshape(width, dim)
        mask = None
        if chunk > 1:  # the last tile may hold empty slots
            slot = t * chunk + lax.broadcasted_iota(jnp.int32, (1, width), 1) // size
            mask = slot < count
        if config.padded or config.causal:
            offsets = lax.broadcasted_iota(jnp.int32, (chunk, size), 1)
            key_position = (blocks[:, None] * size + offsets).reshape(1, width)
            mask = _key_mask(query_block * size, key_position, config, mask)
        return visit(carry, keys, values, mask, 0.0)

    carry = lax.fori_loop(0, (count + chunk - 1) // chunk, step, carry)
    if not config.summary_tokens:
        return carry
    keys_ref, values_ref, bias_ref = summary_refs
    tile = config.summary_tile

    def summary_step(t, carry):
        tokens = pl.ds(t * tile, tile)
        log2_bias = bias_ref[tokens].reshape(1, tile) * LOG2E
        return visit(carry, keys_ref[tokens, :], values_ref[tokens, :], None, log2_bias)

    return lax.fori_loop(0, config.summary_tokens // tile, summary_step, carry)


def _forward_kernel(q_ref, k_ref, v_ref, blocks_ref, counts_ref, *refs, config: Config):
    summary_refs, (out_ref, lse_ref) = refs[:-2], refs[-2:]
    q = q_ref[...]

    def visit(carry, keys, values, mask, log2_bias):
        logits = log2_logits(q, keys, log2_bias, config, mask)
        return online_softmax.update(carry, logits, values, plt.dot)

    carry = _sweep(visit, online_softmax.init(config.block_size, config.head_dim), blocks_ref,
                   counts_ref, k_ref, v_ref, summary_refs, config)
    out, lse = online_softmax.finish(carry)
    out_ref[...] = out.astype(out_ref.dtype)
    lse_ref[...] = lse


def _query_major_specs(config: Config):
    """Specs (grid (b, row)) of a query block, of k/v as whole-head blocks, of one row's
    lists and counts, and of one query block's lse/delta."""
    size, dim = config.block_size, config.head_dim
    query = pl.BlockSpec((None, size, None, dim),
                         lambda b, row: (config.batch(row), b, config.head(row), 0))
    kv = pl.BlockSpec((None, config.key_blocks, size, None, dim),
                      lambda b, row: (config.batch(row), 0, 0, config.kv_head(row), 0))
    blocks = pl.BlockSpec((None, config.query_blocks, config.topk), lambda b, row: (row, 0, 0))
    counts = pl.BlockSpec((None, config.query_blocks), lambda b, row: (row, 0))
    rows = pl.BlockSpec((None, size), lambda b, row: (row, b))
    return query, kv, blocks, counts, rows


def _summary_specs(config: Config) -> list[pl.BlockSpec]:
    """Specs of the whole summary keys, values (one kv head) and bias (one kv row) of a grid
    row, for grids (i, row, ...); none without summary tokens."""
    if not config.summary_tokens:
        return []
    tokens, dim = config.summary_tokens, config.head_dim
    kv = pl.BlockSpec((None, tokens, None, dim),
                      lambda i, row, *_: (config.batch(row), 0, config.kv_head(row), 0))
    bias = pl.BlockSpec((None, None, tokens),
                        lambda i, row, *_: (config.batch(row), config.kv_head(row), 0))
    return [kv, kv, bias]


def _as_blocks(x, config: Config):
    """[Bt, nK·B, Hkv, D] -> [Bt, nK, B, Hkv, D]."""
    return x.reshape(x.shape[0], config.key_blocks, config.block_size, *x.shape[2:])


def forward(q, k, v, blocks, counts, summary, config: Config):
    """Output [Bt, nQ·B, H, D] in q's dtype and lse f32 [Bt·H, nQ·B] (layouts above);
    `summary`: (keys, values, bias) or () without summary tokens."""
    batch, tokens, heads, _ = q.shape
    query, kv, block_spec, count_spec, row_spec = _query_major_specs(config)
    return pl.pallas_call(
        functools.partial(_forward_kernel, config=config),
        grid=(config.query_blocks, batch * heads),
        in_specs=[query, kv, kv, block_spec, count_spec, *_summary_specs(config)],
        out_specs=[query, row_spec],
        out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                   jax.ShapeDtypeStruct((batch * heads, tokens), jnp.float32)],
        compiler_params=config.compiler_params(),
        interpret=config.interpret,
        name="sparse_flash_forward",
    )(q, _as_blocks(k, config), _as_blocks(v, config), blocks, counts, *summary)


def _dq_kernel(q_ref, d_out_ref, lse_ref, delta_ref, k_ref, v_ref, blocks_ref, counts_ref,
               *refs, config: Config):
    summary_refs, dq_ref = refs[:-1], refs[-1]
    q, d_out = q_ref[...], d_out_ref[...]
    log2_lse = lse_ref[...] * LOG2E
    delta = delta_ref[...]

    def visit(dq, keys, values, mask, log2_bias):
        probs = jnp.exp2(log2_logits(q, keys, log2_bias, config, mask) - log2_lse[:, None])
        d_logits = probs * (plt.dot(d_out, values, trans_b=True) - delta[:, None])
        return dq + plt.dot(d_logits.astype(keys.dtype), keys)

    dq = _sweep(visit, jnp.zeros(q.shape, jnp.float32), blocks_ref, counts_ref, k_ref, v_ref,
                summary_refs, config)
    dq_ref[...] = (dq * config.scale).astype(dq_ref.dtype)


def backward_dq(q, d_out, lse, delta, k, v, blocks, counts, summary, config: Config):
    """dQ [Bt, nQ·B, H, D] in q's dtype."""
    batch, _, heads, _ = q.shape
    query, kv, block_spec, count_spec, row_spec = _query_major_specs(config)
    return pl.pallas_call(
        functools.partial(_dq_kernel, config=config),
        grid=(config.query_blocks, batch * heads),
        in_specs=[query, query, row_spec, row_spec, kv, kv, block_spec, count_spec,
                  *_summary_specs(config)],
        out_specs=query,
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        compiler_params=config.compiler_params(config.dq_num_stages, backward=True),
        interpret=config.interpret,
        name="sparse_flash_backward_dq",
    )(q, d_out, lse, delta, _as_blocks(k, config), _as_blocks(v, config), blocks, counts,
      *summary)


# ---- backward: dK/dV, the key-major loop ----------------------------------------------------

def _dkv_kernel(q_ref, d_out_ref, lse_ref, delta_ref, k_ref, v_ref, offsets_ref, readers_ref,
                dk_ref, dv_ref, *, config: Config):
    keys, values = k_ref[...], v_ref[...]
    size = config.block_size
    key_block = pl.program_id(0)
    key_position = key_block * size + lax.broadcasted_iota(jnp.int32, (1, size), 1)
    query_refs = (q_ref, d_out_ref, lse_ref, delta_ref)

    def per_reader(i, carry):
        start = readers_ref[i] * size
        return accumulate_dkv(carry, start, size, query_refs, keys, values, 0.0, config,
                              _key_mask(start, key_position, config))

    zeros = jnp.zeros(keys.shape, jnp.float32)
    dk, dv = lax.fori_loop(offsets_ref[key_block], offsets_ref[key_block + 1], per_reader,
                           (zeros, zeros))
    dk_ref[...] = dk * config.scale
    dv_ref[...] = dv


def backward_dkv(q, d_out, lse, delta, k, v, offsets, readers, config: Config):
    """dK, dV f32 [Bt, nK·B, H, D] per query head."""
    batch, tokens, heads, dim = q.shape
    size = config.block_size

    def query_index(j, row):
        return config.batch(row), 0, config.head(row), 0

    whole_query = pl.BlockSpec((None, tokens, None, dim), query_index)
    whole_row = pl.BlockSpec((None, tokens), lambda j, row: (row, 0))
    key = pl.BlockSpec((None, size, None, dim),
                       lambda j, row: (config.batch(row), j, config.kv_head(row), 0))
    out = pl.BlockSpec((None, size, None, dim),
                       lambda j, row: (config.batch(row), j, config.head(row), 0))
    return pl.pallas_call(
        functools.partial(_dkv_kernel, config=config),
        grid=(config.key_blocks, batch * heads),
        in_specs=[whole_query, whole_query, whole_row, whole_row, key, key,
                  pl.BlockSpec((None, offsets.shape[1]), lambda j, row: (row, 0)),
                  pl.BlockSpec((None, readers.shape[1]), lambda j, row: (row, 0))],
        out_specs=[out, out],
        out_shape=[jax.ShapeDtypeStruct((batch, k.shape[1], heads, dim), jnp.float32)] * 2,
        compiler_params=config.compiler_params(backward=True),
        interpret=config.interpret,
        name="sparse_flash_backward_dkv",
    )(q, d_out, lse, delta, k, v, offsets, readers)


def _summary_dkv_kernel(q_ref, d_out_ref, lse_ref, delta_ref, k_ref, v_ref, bias_ref, dk_ref,
                        dv_ref, *, config: Config):
    keys, values = k_ref[...], v_ref[...]
    log2_bias = bias_ref[...].reshape(1, config.summary_tile) * LOG2E
    size = config.block_size
    blocks_per_split = config.query_blocks // config.summary_splits
    first = pl.program_id(2) * blocks_per_split * size
    query_refs = (q_ref, d_out_ref, lse_ref, delta_ref)

    def per_block(i, carry):
        return accumulate_dkv(carry, first + i * size, size, query_refs, keys, values,
                              log2_bias, config)

    zeros = jnp.zeros(keys.shape, jnp.float32)
    dk, dv = lax.fori_loop(0, blocks_per_split, per_block, (zeros, zeros))
    dk_ref[...] = dk * config.scale
    dv_ref[...] = dv


def backward_summary_dkv(q, d_out, lse, delta, summary, config: Config):
    """dK, dV f32 [Bt, S, H, D] per query head of the summary tokens (all queries)."""
    batch, tokens, heads, dim = q.shape
    tile, splits = config.summary_tile, config.summary_splits
    summary_keys, summary_values, bias = summary

    def query_index(j, row, s):
        return config.batch(row), 0, config.head(row), 0

    whole_query = pl.BlockSpec((None, tokens, None, dim), query_index)
    whole_row = pl.BlockSpec((None, tokens), lambda j, row, s: (row, 0))
    key = pl.BlockSpec((None, tile, None, dim),
                       lambda j, row, s: (config.batch(row), j, config.kv_head(row), 0))
    bias_spec = pl.BlockSpec((None, None, tile),
                             lambda j, row, s: (config.batch(row), config.kv_head(row), j))
    out = pl.BlockSpec((None, None, tile, None, dim),
                       lambda j, row, s: (s, config.batch(row), j, config.head(row), 0))
    dk, dv = pl.pallas_call(
        functools.partial(_summary_dkv_kernel, config=config),
        grid=(config.summary_tokens // tile, batch * heads, splits),
        in_specs=[whole_query, whole_query, whole_row, whole_row, key, key, bias_spec],
        out_specs=[out, out],
        out_shape=[jax.ShapeDtypeStruct((splits, batch, config.summary_tokens, heads, dim),
                                        jnp.float32)] * 2,
        compiler_params=config.compiler_params(),
        interpret=config.interpret,
        name="sparse_flash_backward_summary_dkv",
    )(q, d_out, lse, delta, summary_keys, summary_values, bias)
    return dk.sum(0), dv.sum(0)
