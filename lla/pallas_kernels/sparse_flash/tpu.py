"""Block-sparse flash attention for TPU (Mosaic), driven by scalar-prefetched block lists.

Same lists as `gpu.py` (`metadata.query_major`), in TPU form: they live in SMEM
(`PrefetchScalarGridSpec`) and the key BlockSpec's index map reads them, so every grid step
DMAs exactly one listed key block. Arrays are heads-major rows (r = batch·H + head; kv rows
r_kv = batch·Hkv + kv head), sequences padded to whole blocks:
  q, out, dq, d_out   [R, nQ·B, D]          lse, delta   float32 [R, nQ·B, 1]
  k, v                [Rkv, (nK + nS)·B, D] blocks, counts   int32 [R, nQ, T], [R, nQ]
  key_bias            float32 [Rkv, 1, (nK + nS)·B]   (only with summary tokens)
  dk/dv partials      float32 [R, nQ, T, B, D]
Grid (R, nQ, T), T = K + nS steps: step s of query block i reads key block blocks[r, i, s]
and is skipped when s >= counts[r, i]; keys past `kv_tokens` (padding) and, with `causal`,
after the query are masked. The online softmax state lives in VMEM scratch; the forward
saves the output and the f32 natural-log lse.

Summary tokens (seed-papers K2; `block_sparse_pallas.attend_tpu` lays them out): their S keys
and values are appended to k and v as nS = ceil(S / B) extra key blocks nK, ..., nK + nS - 1,
which the caller puts at the head of every list. Those columns carry their logit bias in
`key_bias` (-inf past S), real key columns 0, so the kernels only add one row of biases.

Backward: one kernel walks the same steps, accumulating dQ and writing the dK/dV partial of
every (query block, slot) pair, which the caller sums into its key block with a
scatter-add (deterministic on TPU, no atomics; skipped slots write zeros). Verified in TPU
interpret mode on CPU with NaN-poisoned buffers; not tuned on TPU hardware.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from lla.pallas_kernels import online_softmax
from lla.pallas_kernels.common import HeadRows
from lla.pallas_kernels.online_softmax import LOG2E


@dataclasses.dataclass(frozen=True)
class Config(HeadRows):
    """Shape of one block-sparse call on TPU (no tuning knobs: one key block per step)."""

    block_size: int
    topk: int
    heads: int
    kv_heads: int
    query_blocks: int
    key_blocks: int
    kv_tokens: int
    head_dim: int
    causal: bool
    summary_tokens: int = 0  # S always-visible summary tokens (0: none)
    interpret: bool = False

    @property
    def scale(self) -> float:
        return self.head_dim ** -0.5

    @property
    def summary_blocks(self) -> int:
        """nS: the key blocks the summary tokens fill."""
        return -(-self.summary_tokens // self.block_size)

    @property
    def steps(self) -> int:
        """T = K + nS grid steps per query block."""
        return self.topk + self.summary_blocks

    def interpret_params(self):
        """TPU interpret mode with NaN-poisoned uninitialised memory, or False (compiled)."""
        return pltpu.InterpretParams(uninitialized_memory="nan") if self.interpret else False


def make_config(block_size, topk, heads, kv_heads, q_tokens, kv_tokens, head_dim, *,
                causal=False, summary_tokens=0, interpret=False) -> Config:
    """The config of a call (q_tokens, kv_tokens: the unpadded sequence lengths)."""
    if summary_tokens and causal:
        raise ValueError("sparse_flash kernels: summary tokens are always visible: they need "
                         "causal=False")
    return Config(block_size=block_size, topk=topk, heads=heads, kv_heads=kv_heads,
                  query_blocks=-(-q_tokens // block_size),
                  key_blocks=-(-kv_tokens // block_size), kv_tokens=kv_tokens,
                  head_dim=head_dim, causal=causal, summary_tokens=summary_tokens,
                  interpret=interpret)


def unsupported_reasons(config: Config) -> list[str]:
    """Why the compiled (non-interpret) kernels cannot run this configuration."""
    if config.block_size % 8:
        return [f"block_size {config.block_size} must be a multiple of 8"]
    return []


def _dot(a, b):
    """The Mosaic matmul with an f32 result."""
    return jax.lax.dot(a, b, preferred_element_type=jnp.float32)


def _masked_logits(q, keys, key_bias, blocks_ref, config: Config):
    """[B, D] x [B, D] (+ key_bias [1, B] or None) -> f32 [B, B] log2 logits of grid step
    (r, i, s), -inf off the padding and causal masks."""
    size = config.block_size
    r, i, s = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    logits = jax.lax.dot_general(q, keys, (((1,), (1,)), ((), ())),
                                 preferred_element_type=jnp.float32) * (config.scale * LOG2E)
    cols = blocks_ref[r, i, s] * size + jax.lax.broadcasted_iota(jnp.int32, (1, size), 1)
    visible = cols < config.kv_tokens
    if key_bias is not None:  # summary columns: visible, their bias (-inf past S) added
        visible = visible | (cols >= config.key_blocks * size)
        logits = logits + key_bias * LOG2E
    if config.causal:
        visible = visible & (cols <= i * size + jax.lax.broadcasted_iota(
            jnp.int32, (size, 1), 0))
    return jnp.where(visible, logits, -jnp.inf)


def _specs(config: Config):
    """(query block [R, nQ·B, D], per-row [R, nQ·B, 1], listed key block [Rkv, nK·B, D],
    its bias row [Rkv, 1, nK·B]) BlockSpecs for grids (r, i, s) with (blocks, counts)
    prefetched."""
    size, dim = config.block_size, config.head_dim
    query = pl.BlockSpec((None, size, dim), lambda r, i, s, *_: (r, i, 0))
    row = pl.BlockSpec((None, size, 1), lambda r, i, s, *_: (r, i, 0))
    key = pl.BlockSpec((None, size, dim),
                       lambda r, i, s, blocks, counts: (config.kv_row(r), blocks[r, i, s], 0))
    key_bias = pl.BlockSpec((None, 1, size),
                            lambda r, i, s, blocks, counts: (config.kv_row(r), 0,
                                                             blocks[r, i, s]))
    return query, row, key, key_bias


def _bias_operands(key_bias, config: Config, key_bias_spec) -> tuple[list, list]:
    """(the key-bias operand, its BlockSpec) as lists: empty without summary tokens."""
    return ([key_bias], [key_bias_spec]) if config.summary_tokens else ([], [])


def _forward_kernel(blocks_ref, counts_ref, q_ref, k_ref, v_ref, *refs, config: Config):
    bias_ref, (out_ref, lse_ref, max_ref, sum_ref, acc_ref) = _split_bias(refs, config)
    r, i, s = pl.program_id(0), pl.program_id(1), pl.program_id(2)

    @pl.when(s == 0)
    def _init():
        max_ref[...] = jnp.full(max_ref.shape, -jnp.inf, jnp.float32)
        sum_ref[...] = jnp.zeros(sum_ref.shape, jnp.float32)
        acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

    @pl.when(s < counts_ref[r, i])
    def _update():
        logits = _masked_logits(q_ref[...], k_ref[...], _read(bias_ref), blocks_ref,
                                config)
        carry = (max_ref[...], sum_ref[...], acc_ref[...])
        max_ref[...], sum_ref[...], acc_ref[...] = online_softmax.update(
            carry, logits, v_ref[...], _dot)

    @pl.when(s == config.steps - 1)
    def _finish():
        out, lse_ref[...] = online_softmax.finish((max_ref[...], sum_ref[...], acc_ref[...]))
        out_ref[...] = out.astype(out_ref.dtype)


def _split_bias(refs, config: Config):
    """(the key-bias ref or None, the other refs) of a kernel's trailing refs."""
    return (refs[0], refs[1:]) if config.summary_tokens else (None, refs)


def _read(ref):
    return None if ref is None else ref[...]


def forward(q, k, v, blocks, counts, config: Config, key_bias=None):
    """out [R, nQ·B, D] in q's dtype and lse float32 [R, nQ·B, 1] (natural log); `key_bias`
    with summary tokens only."""
    rows, tokens, dim = q.shape
    size = config.block_size
    query, row, key, bias_spec = _specs(config)
    bias, bias_specs = _bias_operands(key_bias, config, bias_spec)
    return pl.pallas_call(
        functools.partial(_forward_kernel, config=config),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=2,
            grid=(rows, config.query_blocks, config.steps),
            in_specs=[query, key, key, *bias_specs],
            out_specs=[query, row],
            scratch_shapes=[pltpu.VMEM((size, 1), jnp.float32),
                            pltpu.VMEM((size, 1), jnp.float32),
                            pltpu.VMEM((size, dim), jnp.float32)]),
        out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                   jax.ShapeDtypeStruct((rows, tokens, 1), jnp.float32)],
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "arbitrary")),
        interpret=config.interpret_params(),
        name="sparse_flash_forward_tpu",
    )(blocks, counts, q, k, v, *bias)


def _backward_kernel(blocks_ref, counts_ref, q_ref, d_out_ref, lse_ref, delta_ref, k_ref,
                     v_ref, *refs, config: Config):
    bias_ref, (dq_ref, dk_ref, dv_ref, dq_acc_ref) = _split_bias(refs, config)
    r, i, s = pl.program_id(0), pl.program_id(1), pl.program_id(2)

    @pl.when(s == 0)
    def _init():
        dq_acc_ref[...] = jnp.zeros(dq_acc_ref.shape, jnp.float32)

    @pl.when(s < counts_ref[r, i])
    def _update():
        q, d_out, keys, values = q_ref[...], d_out_ref[...], k_ref[...], v_ref[...]
        logits = _masked_logits(q, keys, _read(bias_ref), blocks_ref, config)
        probs = jnp.exp2(logits - lse_ref[...] * LOG2E)
        d_probs = jax.lax.dot_general(d_out, values, (((1,), (1,)), ((), ())),
                                      preferred_element_type=jnp.float32)
        d_logits = probs * (d_probs - delta_ref[...])
        dq_acc_ref[...] += jax.lax.dot(d_logits.astype(keys.dtype), keys,
                                       preferred_element_type=jnp.float32)
        transposed = (((0,), (0,)), ((), ()))
        dk_ref[...] = config.scale * jax.lax.dot_general(
            d_logits.astype(q.dtype), q, transposed, preferred_element_type=jnp.float32)
        dv_ref[...] = jax.lax.dot_general(probs.astype(d_out.dtype), d_out, transposed,
                                          preferred_element_type=jnp.float32)

    @pl.when(s >= counts_ref[r, i])
    def _empty_slot():
        dk_ref[...] = jnp.zeros(dk_ref.shape, jnp.float32)
        dv_ref[...] = jnp.zeros(dv_ref.shape, jnp.float32)

    @pl.when(s == config.steps - 1)
    def _finish():
        dq_ref[...] = (dq_acc_ref[...] * config.scale).astype(dq_ref.dtype)


def backward(q, d_out, lse, delta, k, v, blocks, counts, config: Config, key_bias=None):
    """dq [R, nQ·B, D] and the dK, dV partials float32 [R, nQ, T, B, D] of every (query
    block, step) pair (zeros in empty slots)."""
    rows, _, dim = q.shape
    size = config.block_size
    query, row, key, bias_spec = _specs(config)
    bias, bias_specs = _bias_operands(key_bias, config, bias_spec)
    partial = pl.BlockSpec((None, None, None, size, dim), lambda r, i, s, *_: (r, i, s, 0, 0))
    partial_shape = jax.ShapeDtypeStruct((rows, config.query_blocks, config.steps, size, dim),
                                         jnp.float32)
    return pl.pallas_call(
        functools.partial(_backward_kernel, config=config),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=2,
            grid=(rows, config.query_blocks, config.steps),
            in_specs=[query, query, row, row, key, key, *bias_specs],
            out_specs=[query, partial, partial],
            scratch_shapes=[pltpu.VMEM((size, dim), jnp.float32)]),
        out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype), partial_shape, partial_shape],
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "arbitrary")),
        interpret=config.interpret_params(),
        name="sparse_flash_backward_tpu",
    )(blocks, counts, q, d_out, lse, delta, k, v, *bias)
