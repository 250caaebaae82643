"""Decoder-only language model (a LLaMA-style GPT) over any causal attention op in the registry.

    model = Model(vocab_size=256, **PRESETS["tiny"])
    logits = model.apply(params, tokens)                        # int32 [B, N] -> [B, N, V]
    logits = model.apply(params, tokens, segment_ids=segments)  # packed documents
    tokens = generate(model, params, prompt, key, steps=200)    # [B, P + 200], KV cache

Blocks of pre-RMSNorm causal self-attention (q, k, v, out projections without bias; 1-D
RoPE on q and k; grouped-query attention with `num_kv_heads` k/v heads) and a SwiGLU MLP; a
final RMSNorm; an output head, by default the transposed token embedding (tied). Weights are
N(0, 0.02), the residual output projections N(0, 0.02 / sqrt(2·depth)) (GPT-2).

Packed sequences: with `segment_ids`, a token attends only to earlier tokens of its own
segment and its RoPE position restarts at 0 where a segment starts. Decoding
(`lla.models.lm_decoding`) runs through the attention op's own `decoding`
(`lla.attention.registry.Decoding`, ops that declare `decode`): `prefill` starts one op cache
per layer with the prompt, each `decode` step appends one token to them; the model's
`DecodingCache` holds those caches and the next token's position (for RoPE).

SSA alignment training (`lla.objectives.alignment`): with `full_mode` (a bool scalar, drawn
once per step) every block also runs dense causal attention (same segments) on its q, k, v,
sows both outputs into the "alignment" collection (at the model's root, one entry per block)
and passes on the dense one in full mode, the op's in sparse mode. Decoding runs the op only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

import lla.attention as attention
from lla.attention import token_order
from lla.layers.attention import RMSNorm, align_with_dense
from lla.layers.mlp import SwiGLU
from lla.layers.rope import apply_rope, rope_1d
from lla.models.lm_decoding import filter_logits, generate, make_decode_step, prefill

# vocab_size comes from the data. gpt2_small with a 50304-token vocabulary (tied) has
# 123,587,328 parameters (tests/models/test_lm.py), GPT-2 small's "124 M".
PRESETS = {
    "tiny": dict(depth=2, width=64, num_heads=4, num_kv_heads=2, context=256),
    "S": dict(depth=6, width=384, num_heads=6, context=1024),
    "gpt2_small": dict(depth=12, width=768, num_heads=12, context=2048),
}


class DecodingCache(NamedTuple):
    """The decoding state of an LM: every layer's attention cache and the tokens seen.

    Attributes:
      layers: one cache per block, each whatever the op's `Decoding` keeps (dense: keys and
        values [B, L, Hkv, D] in the compute dtype, keys after RoPE, and their length).
      length: int32 [], the number of tokens seen (the next token's RoPE position).
    """

    layers: tuple[Any, ...]
    length: jax.Array


# (q [B, T, H, D], k, v [B, T, Hkv, D]) -> (out [B, T, H, D], the layer's cache or None)
Attend = Callable[[jax.Array, jax.Array, jax.Array], tuple[jax.Array, Any]]


def segment_positions(segment_ids: jax.Array) -> jax.Array:
    """int32 [B, N]: each token's position within its segment, restarting at 0 wherever the
    id changes from the previous token (segments are contiguous runs)."""
    index = jnp.arange(segment_ids.shape[1], dtype=jnp.int32)
    starts = jnp.concatenate([jnp.ones_like(segment_ids[:, :1], bool),
                              segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
    return index - lax.cummax(jnp.where(starts, index, 0), axis=1)


def ops_with(capability: str) -> list[str]:
    """Names of the registered ops whose capabilities declare `capability`."""
    return [name for name in attention.names()
            if getattr(attention.get(name).capabilities, capability)]


class CausalSelfAttention(nn.Module):
    """x [B, T, C] -> ([B, T, C], cache): projections, RoPE on q and k, `attend`, out.

    `attend(q, k, v)` is the op's causal forward (cache None) or a phase of its decoding
    (prefill or step, returning the layer's new cache); see `LM`. k and v have Hkv heads
    where the op declares `gqa`, else each kv head is repeated for its group of query heads.
    """

    num_heads: int
    num_kv_heads: int
    op: str
    out_init: nn.initializers.Initializer
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, rope, attend: Attend):
        batch, tokens, width = x.shape
        head_dim = width // self.num_heads

        def project(heads, name):
            dense = nn.Dense(heads * head_dim, use_bias=False, dtype=self.dtype, name=name,
                             kernel_init=nn.initializers.normal(0.02))
            return dense(x).reshape(batch, tokens, heads, head_dim)

        q = apply_rope(project(self.num_heads, "query"), *rope)
        k = apply_rope(project(self.num_kv_heads, "key"), *rope)
        v = project(self.num_kv_heads, "value")
        if not attention.get(self.op).capabilities.gqa:
            groups = self.num_heads // self.num_kv_heads
            k, v = jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2)
        out, cache = attend(q, k, v)
        out = nn.Dense(width, use_bias=False, dtype=self.dtype, kernel_init=self.out_init,
                       name="out")(out.reshape(batch, tokens, width))
        return out, cache


class Block(nn.Module):
    """x + attention(RMSNorm(x)), then + SwiGLU(RMSNorm(x)); returns (x, the layer's cache)."""

    num_heads: int
    num_kv_heads: int
    mlp_hidden: int
    op: str
    out_init: nn.initializers.Initializer
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, rope, attend: Attend):
        attended, cache = CausalSelfAttention(
            self.num_heads, self.num_kv_heads, self.op, self.out_init, self.dtype,
            name="attention")(RMSNorm(name="attention_norm")(x), rope, attend)
        x = x + attended
        mlp = SwiGLU(x.shape[-1], self.mlp_hidden, nn.initializers.normal(0.02),
                     self.out_init, self.dtype, name="mlp")
        return x + mlp(RMSNorm(name="mlp_norm")(x)), cache


class LM(nn.Module):
    """Next-token logits of byte or subword token sequences.

    Attributes:
      vocab_size: V (filled from the data by the next-token objective).
      context: the longest sequence (N <= context) and the default KV-cache length.
      depth, width, num_heads: transformer size; head_dim = width / num_heads, even.
      num_kv_heads: k/v heads (grouped-query attention; divides num_heads); 0 = num_heads.
      mlp_hidden: SwiGLU hidden features; 0 = 8/3·width rounded up to a multiple of 64.
      tie_embeddings: the output head is the token embedding, transposed.
      rope_theta: RoPE base.
      attention, attention_kwargs: a registered op that declares `causal` and takes 1-D
        sequences, and its keyword arguments (over its `default_kwargs`; the model passes
        `causal`, `segment_ids` and, for grid ops, `spatial_shape`). Decoding (`prefill`,
        `decode`) needs an op with `decoding`, which gets the same keyword arguments.
      dtype: compute dtype (parameters stay float32; logits are returned as float32).
    """

    vocab_size: int
    context: int = 1024
    depth: int = 2
    width: int = 64
    num_heads: int = 4
    num_kv_heads: int = 0
    mlp_hidden: int = 0
    tie_embeddings: bool = True
    rope_theta: float = 10000.0
    attention: str = "dense"
    attention_kwargs: Mapping[str, Any] | None = None
    dtype: jnp.dtype = jnp.float32

    @property
    def kv_heads(self) -> int:
        """Hkv: `num_kv_heads`, or num_heads when it is 0."""
        return self.num_kv_heads or self.num_heads

    @property
    def hidden(self) -> int:
        """The SwiGLU hidden width: `mlp_hidden`, or 8/3·width rounded up to 64."""
        return self.mlp_hidden or 64 * math.ceil(8 * self.width / 3 / 64)

    @property
    def tokens_per_example(self) -> int:
        return self.context

    def train_flops_per_example(self, sequence_length: int) -> int:
        """Training FLOPs (forward + backward = 3 x forward) of one sequence of n tokens:

            6·n·(depth·P + width·V) + 6·depth·n²·width,
            P = width·(2·width + 2·Hkv·head_dim) + 3·width·hidden   (one block's matmuls)

        6·n·P per block are its weight matmuls (2 FLOPs per multiply-add, x 3); the LM head
        adds 6·n·width·V (tied or not; the embedding lookup costs none). Attention logits
        and the weighted sum are 2·n²·width FLOPs each per block for dense attention,
        halved for causal attention: 2·n²·width forward, 6·n²·width for training. Norms,
        RoPE and the softmax are not counted (as in PaLM's model-FLOP utilisation).
        """
        n, width = int(sequence_length), self.width
        kv_width = self.kv_heads * (width // self.num_heads)
        block = width * (2 * width + 2 * kv_width) + 3 * width * self.hidden
        return 6 * n * (self.depth * block + width * self.vocab_size) \
            + 6 * self.depth * n * n * width

    def setup(self):
        """The embedding, the blocks, the final norm and, untied, the head."""
        self._check_fields()
        residual_init = nn.initializers.normal(0.02 / math.sqrt(2 * self.depth))
        self.embed = nn.Embed(self.vocab_size, self.width, dtype=self.dtype,
                              embedding_init=nn.initializers.normal(0.02))
        self.blocks = [Block(self.num_heads, self.kv_heads, self.hidden, self.attention,
                             residual_init, self.dtype) for _ in range(self.depth)]
        self.final_norm = RMSNorm()
        if not self.tie_embeddings:
            self.head = nn.Dense(self.vocab_size, use_bias=False, dtype=self.dtype,
                                 kernel_init=nn.initializers.normal(0.02))

    def __call__(self, tokens: jax.Array, *, segment_ids: jax.Array | None = None,
                 positions: jax.Array | None = None, train: bool = False,
                 full_mode: jax.Array | bool | None = None) -> jax.Array:
        """tokens int [B, N] (N <= context) -> logits float32 [B, N, V].

        segment_ids: int [B, N] or None; a token attends only within its segment.
        positions: int [B, N] or None: RoPE positions; by default arange(N), or with
          segment_ids the position within each segment (`segment_positions`).
        train: accepted for the objectives' interface (the model has no dropout).
        full_mode: None runs the op alone; a bool scalar turns on SSA alignment with dense
          causal attention (module docstring; `lla.layers.attention.align_with_dense`).
        """
        del train
        self._check_inputs(tokens, segment_ids, positions)
        if positions is None and segment_ids is not None:
            positions = segment_positions(segment_ids)
        if positions is None:
            positions = jnp.arange(tokens.shape[1])
        op = attention.get(self.attention)
        op_kwargs = self._op_kwargs(tokens.shape[1], segment_ids)

        def forward(q, k, v):
            out = op(q, k, v, **op_kwargs)
            if full_mode is not None:
                out = align_with_dense(self, q, k, v, out, full_mode, causal=True,
                                       segment_ids=segment_ids)
            return out, None

        logits, _ = self._run(tokens, positions, [forward] * self.depth)
        return logits

    def prefill(self, tokens: jax.Array, cache_length: int
                ) -> tuple[jax.Array, DecodingCache]:
        """tokens int [B, P] -> (logits float32 [B, P, V], a cache of `cache_length` positions
        holding them, length P): the causal forward, through the op's `Decoding.prefill`."""
        self._check_inputs(tokens, None, None)
        if not tokens.shape[1] <= cache_length <= self.context:
            raise ValueError(f"LM: a cache of {cache_length} positions cannot hold the "
                             f"{tokens.shape[1]}-token prompt or exceeds the context "
                             f"{self.context}; use P <= cache_length <= context")
        decoding, op_kwargs = self._decoding()
        # CausalSelfAttention repeats the kv heads for ops without gqa
        gqa = attention.get(self.attention).capabilities.gqa
        kv_heads = self.kv_heads if gqa else self.num_heads
        empty = decoding.init(tokens.shape[0], cache_length, self.num_heads, kv_heads,
                              self.width // self.num_heads, self.dtype, **op_kwargs)
        attends = [_phase(decoding.prefill, empty, op_kwargs) for _ in range(self.depth)]
        logits, layers = self._run(tokens, jnp.arange(tokens.shape[1]), attends)
        return logits, DecodingCache(tuple(layers), jnp.asarray(tokens.shape[1], jnp.int32))

    def decode(self, token: jax.Array, cache: DecodingCache
               ) -> tuple[jax.Array, DecodingCache]:
        """token int [B] at position cache.length -> (logits float32 [B, V], the cache with
        the token added), through the op's `Decoding.step`. A step past the cache's end
        returns NaN logits (the op's step outputs NaN there)."""
        decoding, op_kwargs = self._decoding()
        attends = [_phase(decoding.step, layer, op_kwargs) for layer in cache.layers]
        logits, layers = self._run(token[:, None], cache.length[None], attends)
        return logits[:, 0], DecodingCache(tuple(layers), cache.length + 1)

    def generate(self, params, prompt: jax.Array, key: jax.Array, **sampling) -> jax.Array:
        """`lla.models.lm_decoding.generate` with this model (for callers that know the model,
        not its module): prompt int [B, P] -> int32 [B, P + steps]."""
        return generate(self, params, prompt, key, **sampling)

    def document_positions(self, segment_ids: jax.Array) -> jax.Array:
        """`segment_positions(segment_ids)`: RoPE positions restarting at each document."""
        return segment_positions(segment_ids)

    def _run(self, tokens, positions, attends: list[Attend]):
        """(logits float32 [B, T, V], [each layer's cache]) of tokens int [B, T] at RoPE
        positions int [T] or [B, T], block i attending through `attends[i]`."""
        rope = rope_1d(positions, self.width // self.num_heads, self.rope_theta)
        x = self.embed(tokens)
        caches = []
        for block, attend in zip(self.blocks, attends, strict=True):
            x, cache = block(x, rope, attend)
            caches.append(cache)
        x = self.final_norm(x)
        logits = self.embed.attend(x) if self.tie_embeddings else self.head(x)
        return logits.astype(jnp.float32), caches

    def _user_kwargs(self) -> dict[str, Any]:
        """The op's `default_kwargs` updated by `attention_kwargs` (none the model sets)."""
        op = attention.get(self.attention)
        kwargs = {**op.default_kwargs, **(self.attention_kwargs or {})}
        for reserved in ("causal", "segment_ids", "kv_lengths"):
            if reserved in kwargs:
                raise ValueError(f"LM: attention_kwargs sets {reserved!r}, which the model "
                                 f"passes itself; leave it out")
        return kwargs

    def _decoding(self) -> tuple[Any, dict[str, Any]]:
        """(the op's `Decoding`, its keyword arguments); ValueError naming the ops that
        decode when this one does not."""
        decoding = attention.get(self.attention).decoding
        if decoding is None:
            raise ValueError(f"LM: decoding with a KV cache needs an attention op that "
                             f"declares `decode` (an AttentionOp.decoding); {self.attention!r} "
                             f"does not. Ops that do: {', '.join(ops_with('decode'))}")
        return decoding, self._user_kwargs()

    def _op_kwargs(self, tokens: int, segment_ids) -> dict[str, Any]:
        """The op's keyword arguments for a causal pass over `tokens` tokens."""
        op = attention.get(self.attention)
        kwargs = self._user_kwargs()
        kwargs["causal"] = True
        if segment_ids is not None:
            if not op.capabilities.segments:
                raise ValueError(
                    f"LM: attention {self.attention!r} does not take segment_ids (packed "
                    f"documents); ops that do: {', '.join(ops_with('segments'))}. Or call "
                    f"the model without segment_ids (one document per row)")
            kwargs["segment_ids"] = segment_ids
        return token_order.for_op(op, (tokens,)).op_arguments(kwargs)

    def _check_fields(self) -> None:
        op = attention.get(self.attention)
        if not op.capabilities.causal:
            raise ValueError(f"LM: attention {self.attention!r} does not declare causal; "
                             f"causal ops: {', '.join(ops_with('causal'))}")
        if 1 not in op.capabilities.spatial_dims:
            raise ValueError(f"LM: attention {self.attention!r} does not take 1-D sequences")
        if self.width % self.num_heads or (self.width // self.num_heads) % 2:
            raise ValueError(f"LM: width {self.width} must be num_heads ({self.num_heads}) "
                             f"times an even head_dim (RoPE rotates pairs)")
        if self.num_heads % self.kv_heads:
            raise ValueError(f"LM: num_kv_heads {self.kv_heads} must divide num_heads "
                             f"{self.num_heads}")

    def _check_inputs(self, tokens, segment_ids, positions) -> None:
        if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise ValueError(f"LM: tokens must be integer [B, N]; got {tokens.dtype} of "
                             f"shape {tuple(tokens.shape)}")
        if tokens.shape[1] > self.context:
            raise ValueError(f"LM: {tokens.shape[1]} tokens exceed the context "
                             f"{self.context}; pass at most {self.context} per row")
        for name, ids in (("segment_ids", segment_ids), ("positions", positions)):
            if ids is not None and (tuple(ids.shape) != tuple(tokens.shape)
                                    or not jnp.issubdtype(ids.dtype, jnp.integer)):
                raise ValueError(f"LM: {name} must be integer [B, N] = "
                                 f"{tuple(tokens.shape)} like tokens; got {ids.dtype} of "
                                 f"shape {tuple(ids.shape)}")


def _phase(fn: Callable, cache, op_kwargs: Mapping[str, Any]) -> Attend:
    """`attend` running a `Decoding` phase (`prefill` or `step`) on one layer's cache."""
    return lambda q, k, v: fn(q, k, v, cache, **op_kwargs)


Model = LM

__all__ = ["LM", "PRESETS", "Block", "CausalSelfAttention", "DecodingCache", "Model",
           "filter_logits", "generate", "make_decode_step", "ops_with", "prefill",
           "segment_positions"]
