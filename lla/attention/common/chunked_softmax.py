"""Dense attention in pure JAX that never materialises an N x N array, forward or backward.

The forward walks query chunks (`lax.map`) and, inside each, key chunks (`lax.scan`) with an
online softmax; it returns the output and the f32 natural-log log-sum-exp. A flash-style
custom VJP recomputes each [q_chunk, kv_chunk] logit block from (q, k, lse), so peak memory is
O(B·H·chunk² + B·N·H·D) for any N. All arithmetic is f32 at `Precision.HIGHEST`: this is the
oracle the kernels are tested against.

Masking: key j is visible to query i of batch row b when j < Nk (padding), j // c <= i // c
if causal with causal block size c (top-left aligned, as `jax.nn.dot_product_attention`; c = 1
is token causal, j <= i; a larger c lets blocks of c consecutive tokens, e.g. the frames of a
video, see each other and every earlier block; the last block may be partial), j <
kv_lengths[b] if given (a KV cache holding kv_lengths[b] valid entries), and their segment ids
are equal. A query that sees no key gets output 0 and lse = -inf.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

_HIGHEST = lax.Precision.HIGHEST


def _einsum(spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.einsum(spec, a, b, precision=_HIGHEST, preferred_element_type=jnp.float32)


def _chunks(x: jax.Array, size: int, axis: int) -> jax.Array:
    """Pads `axis` of x to a multiple of `size` and moves the chunk index to the front."""
    n = x.shape[axis]
    padded = -(-n // size) * size
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, padded - n)
    x = jnp.pad(x, pad)
    x = x.reshape((*x.shape[:axis], padded // size, size, *x.shape[axis + 1:]))
    return jnp.moveaxis(x, axis, 0)


def _positions(n: int, size: int) -> jax.Array:
    """Token positions [chunks, size], continuing past n in the padded last chunk."""
    chunks = -(-n // size)
    return jnp.arange(chunks * size).reshape(chunks, size)


class _Blocks:
    """Chunked views of one call's inputs, grouped for GQA.

    Shapes (nq, nk = numbers of chunks; cq, ck = chunk sizes; G = H // Hkv):
      q: [nq, B, Hkv, G, cq, D]   k, v: [nk, B, Hkv, ck, D]
      q_pos: [nq, cq]  k_pos: [nk, ck]  q_seg: [nq, B, cq]  k_seg: [nk, B, ck] (or None)
      kv_lengths: [B] int32 (or None)
    """

    def __init__(self, q, k, v, segments, kv_lengths, chunk_q, chunk_k):
        batch, self.q_tokens, heads, head_dim = q.shape
        self.kv_tokens, self.kv_heads = k.shape[1], k.shape[2]
        self.groups = heads // self.kv_heads
        self.chunk_q = min(chunk_q, self.q_tokens)
        self.chunk_k = min(chunk_k, self.kv_tokens)
        grouped = q.reshape(batch, self.q_tokens, self.kv_heads, self.groups, head_dim)
        self.q = _chunks(grouped.transpose(0, 2, 3, 1, 4).astype(jnp.float32), self.chunk_q, 3)
        self.k = _chunks(k.transpose(0, 2, 1, 3).astype(jnp.float32), self.chunk_k, 2)
        self.v = _chunks(v.transpose(0, 2, 1, 3).astype(jnp.float32), self.chunk_k, 2)
        self.q_pos = _positions(self.q_tokens, self.chunk_q)
        self.k_pos = _positions(self.kv_tokens, self.chunk_k)
        self.kv_lengths = kv_lengths
        if segments is None:
            self.q_seg = self.k_seg = None
        else:
            self.q_seg = _chunks(segments[0], self.chunk_q, 1)
            self.k_seg = _chunks(segments[1], self.chunk_k, 1)

    def grouped_rows(self, x: jax.Array) -> jax.Array:
        """[B, H, Nq, ...] -> chunked [nq, B, Hkv, G, cq, ...]."""
        x = x.reshape((x.shape[0], self.kv_heads, self.groups, *x.shape[2:]))
        return _chunks(x, self.chunk_q, 3)

    def visible(self, q_pos, k_pos, q_seg, k_seg, causal: bool, causal_block: int
                ) -> jax.Array:
        """Boolean [B or 1, 1, 1, cq, ck] mask of the keys each query of the block may see
        (`causal_block`: the causal block size, 1 for token causal)."""
        mask = (k_pos < self.kv_tokens)[None, :]
        if causal:
            mask = mask & (k_pos[None, :] // causal_block <= q_pos[:, None] // causal_block)
        mask = mask[None]
        if self.kv_lengths is not None:
            mask = mask & (k_pos[None, None, :] < self.kv_lengths[:, None, None])
        if q_seg is not None:
            mask = mask & (q_seg[:, :, None] == k_seg[:, None, :])
        return mask[:, None, None]


def _vma(x: jax.Array) -> frozenset:
    """The `shard_map` mesh axes x varies over (empty outside `shard_map`); jax 0.11 keeps
    them in the aval's manual axis type, earlier versions as `aval.vma`."""
    aval = jax.typeof(x)
    manual = getattr(aval, "mat", None)
    return frozenset(getattr(manual, "varying", None) or getattr(aval, "vma", ()))


def _varying(x: jax.Array, *like: jax.Array) -> jax.Array:
    """x marked as varying over every `shard_map` mesh axis any of `like` (arrays or None)
    varies over, so a scan carry started from constants has the type its body gives it (a
    no-op outside `shard_map`)."""
    axes = frozenset().union(*(_vma(y) for y in like if y is not None))
    axes -= _vma(x)
    return lax.pcast(x, tuple(sorted(axes)), to="varying") if axes else x


def _logits(q_block, k_block, scale):
    return _einsum("bhgqd,bhkd->bhgqk", q_block, k_block) * scale


def _forward(q, k, v, segments, kv_lengths, causal, causal_block, scale, chunk_q, chunk_k):
    blocks = _Blocks(q, k, v, segments, kv_lengths, chunk_q, chunk_k)
    context = (blocks.k, blocks.v, blocks.k_seg, blocks.kv_lengths)

    def one_q_chunk(args):
        q_block, q_pos, q_seg = args

        def step(carry, kv):
            row_max, row_sum, acc = carry
            k_block, v_block, k_pos, k_seg = kv
            mask = blocks.visible(q_pos, k_pos, q_seg, k_seg, causal, causal_block)
            logits = jnp.where(mask, _logits(q_block, k_block, scale), -jnp.inf)
            new_max = jnp.maximum(row_max, logits.max(-1))
            safe_max = jnp.where(jnp.isfinite(new_max), new_max, 0.0)
            probs = jnp.exp(logits - safe_max[..., None])
            correction = jnp.exp(row_max - safe_max)
            row_sum = correction * row_sum + probs.sum(-1)
            acc = correction[..., None] * acc + _einsum("bhgqk,bhkd->bhgqd", probs, v_block)
            return (new_max, row_sum, acc), None

        rows = q_block.shape[:-1]
        init = tuple(_varying(x, q_block, q_seg, *context) for x in (
            jnp.full(rows, -jnp.inf), jnp.zeros(rows), jnp.zeros(q_block.shape)))
        (row_max, row_sum, acc), _ = lax.scan(
            step, init, (blocks.k, blocks.v, blocks.k_pos, blocks.k_seg))
        seen = row_sum > 0
        out = acc / jnp.where(seen, row_sum, 1.0)[..., None]
        lse = jnp.where(seen, row_max + jnp.log(jnp.where(seen, row_sum, 1.0)), -jnp.inf)
        return out, lse

    out, lse = lax.map(one_q_chunk, (blocks.q, blocks.q_pos, blocks.q_seg))
    return _unchunk(out, lse, q.shape, q.dtype)


def _unchunk(out, lse, q_shape, dtype):
    """Chunked [nq, B, Hkv, G, cq, D] / [nq, B, Hkv, G, cq] -> [B, N, H, D] and [B, H, N]."""
    batch, tokens, heads, head_dim = q_shape
    out = jnp.moveaxis(out, 0, 3).reshape(batch, heads, -1, head_dim)[:, :, :tokens]
    lse = jnp.moveaxis(lse, 0, 3).reshape(batch, heads, -1)[:, :, :tokens]
    return out.transpose(0, 2, 1, 3).astype(dtype), lse


def _backward(q, k, v, segments, kv_lengths, out, lse, d_out, d_lse, causal, causal_block,
              scale, chunk_q, chunk_k):
    """Gradients of (out, lse) w.r.t. q, k, v; recomputes the probabilities chunk by chunk."""
    blocks = _Blocks(q, k, v, segments, kv_lengths, chunk_q, chunk_k)
    f32 = jnp.float32
    # delta_i = sum_d dO_i·O_i - dlse_i: the softmax-backward row term, with lse's cotangent.
    delta = jnp.einsum("bnhd,bnhd->bhn", d_out.astype(f32), out.astype(f32)) - d_lse
    batch, q_tokens, heads, head_dim = q.shape
    d_out_grouped = d_out.astype(f32).transpose(0, 2, 1, 3)
    do_chunks = blocks.grouped_rows(d_out_grouped)
    lse_safe = jnp.where(jnp.isfinite(lse), lse, 0.0)
    lse_chunks = blocks.grouped_rows(lse_safe)
    delta_chunks = blocks.grouped_rows(delta)
    inputs = (blocks.q, blocks.k, blocks.v, blocks.q_seg, blocks.k_seg, blocks.kv_lengths,
              do_chunks, lse_chunks, delta_chunks)

    def probs_and_dlogits(q_block, k_block, v_block, do_block, lse_block, delta_block, mask):
        probs = jnp.where(mask, jnp.exp(_logits(q_block, k_block, scale) - lse_block[..., None]),
                          0.0)
        d_probs = _einsum("bhgqd,bhkd->bhgqk", do_block, v_block)
        return probs, probs * (d_probs - delta_block[..., None])

    def dq_chunk(args):
        q_block, q_pos, q_seg, do_block, lse_block, delta_block = args

        def step(dq, kv):
            k_block, v_block, k_pos, k_seg = kv
            mask = blocks.visible(q_pos, k_pos, q_seg, k_seg, causal, causal_block)
            _, d_logits = probs_and_dlogits(q_block, k_block, v_block, do_block, lse_block,
                                            delta_block, mask)
            return dq + _einsum("bhgqk,bhkd->bhgqd", d_logits, k_block) * scale, None

        dq, _ = lax.scan(step, _varying(jnp.zeros(q_block.shape), *inputs),
                         (blocks.k, blocks.v, blocks.k_pos, blocks.k_seg))
        return dq

    def dkv_chunk(args):
        k_block, v_block, k_pos, k_seg = args

        def step(carry, qs):
            dk, dv = carry
            q_block, q_pos, q_seg, do_block, lse_block, delta_block = qs
            mask = blocks.visible(q_pos, k_pos, q_seg, k_seg, causal, causal_block)
            probs, d_logits = probs_and_dlogits(q_block, k_block, v_block, do_block,
                                                lse_block, delta_block, mask)
            dv = dv + _einsum("bhgqk,bhgqd->bhkd", probs, do_block)
            dk = dk + _einsum("bhgqk,bhgqd->bhkd", d_logits, q_block) * scale
            return (dk, dv), None

        zeros = _varying(jnp.zeros(k_block.shape), *inputs)
        (dk, dv), _ = lax.scan(step, (zeros, zeros), (blocks.q, blocks.q_pos, blocks.q_seg,
                                                       do_chunks, lse_chunks, delta_chunks))
        return dk, dv

    dq = lax.map(dq_chunk, (blocks.q, blocks.q_pos, blocks.q_seg, do_chunks, lse_chunks,
                            delta_chunks))
    dk, dv = lax.map(dkv_chunk, (blocks.k, blocks.v, blocks.k_pos, blocks.k_seg))
    dq = jnp.moveaxis(dq, 0, 3).reshape(batch, blocks.kv_heads, blocks.groups, -1, head_dim)
    dq = dq[:, :, :, :q_tokens].reshape(batch, heads, q_tokens, head_dim).transpose(0, 2, 1, 3)

    def unchunk_kv(x):
        x = jnp.moveaxis(x, 0, 2).reshape(batch, blocks.kv_heads, -1, head_dim)
        return x[:, :, :blocks.kv_tokens].transpose(0, 2, 1, 3)

    return dq.astype(q.dtype), unchunk_kv(dk).astype(k.dtype), unchunk_kv(dv).astype(v.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7, 8, 9))
def _attention(q, k, v, segments, kv_lengths, causal, causal_block, scale, chunk_q, chunk_k):
    return _forward(q, k, v, segments, kv_lengths, causal, causal_block, scale, chunk_q, chunk_k)


def _attention_fwd(q, k, v, segments, kv_lengths, causal, causal_block, scale, chunk_q, chunk_k):
    out, lse = _forward(q, k, v, segments, kv_lengths, causal, causal_block, scale, chunk_q,
                        chunk_k)
    return (out, lse), (q, k, v, segments, kv_lengths, out, lse)


def _attention_bwd(causal, causal_block, scale, chunk_q, chunk_k, residuals, cotangents):
    q, k, v, segments, kv_lengths, out, lse = residuals
    d_out, d_lse = cotangents
    dq, dk, dv = _backward(q, k, v, segments, kv_lengths, out, lse, d_out, d_lse, causal,
                           causal_block, scale, chunk_q, chunk_k)
    return dq, dk, dv, None, None


_attention.defvjp(_attention_fwd, _attention_bwd)


def chunked_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    segments: tuple[jax.Array, jax.Array] | None = None,
    *,
    kv_lengths: jax.Array | None = None,
    causal: bool = False,
    causal_block_size: int = 1,
    scale: float,
    chunk_q: int = 512,
    chunk_k: int = 512,
) -> tuple[jax.Array, jax.Array]:
    """Softmax attention computed chunk by chunk; differentiable in (out, lse).

    Args:
      q: [B, Nq, H, D].
      k, v: [B, Nk, Hkv, D], Hkv dividing H (query head h uses kv head h // (H // Hkv)).
      segments: optional (q_segment_ids [B, Nq], kv_segment_ids [B, Nk]) integer arrays.
      kv_lengths: optional int32 [B]: row b sees only keys j < kv_lengths[b].
      causal: key j visible to query i only if j // causal_block_size <= i //
        causal_block_size (j <= i for the default 1).
      causal_block_size: c >= 1, the causal block size (used with causal only).
      scale: logit multiplier.
      chunk_q, chunk_k: chunk sizes (any positive ints; the last chunk may be partial).

    Returns:
      out [B, Nq, H, D] in q's dtype and lse [B, H, Nq] f32 (natural log; -inf where a query
      sees no key).
    """
    return _attention(q, k, v, segments, kv_lengths, causal, causal_block_size, scale,
                      chunk_q, chunk_k)
