"""lla attention inside Flax's own attention modules, and the lla layer in NNX.

    import flax.linen as nn
    import jax.numpy as jnp
    from flax import nnx
    from lla.interop import flax_attention_fn, nnx_attention

    nn.MultiHeadDotProductAttention(num_heads=8, attention_fn=flax_attention_fn("llsa"))
    nnx.MultiHeadAttention(8, 512, attention_fn=flax_attention_fn("dense", causal=True),
                           rngs=nnx.Rngs(0), decode=False)
    layer = nnx_attention(num_heads=8, op="neighborhood", rngs=nnx.Rngs(0),
                          example=jnp.zeros((1, 32, 32, 512)))

`flax_attention_fn` returns a function with the signature of `flax.linen.dot_product_attention`
(and of `flax.nnx.dot_product_attention`: it also takes `is_causal`). It maps what an lla op
can honour — causality (the `causal` flag here, or NNX's `is_causal`), `segment_ids` (for
direct callers), `dtype`, `precision` — and raises `ValueError` naming the argument for what
it cannot: an arbitrary `mask`, a `bias`, attention dropout in training mode, sown attention
weights, custom einsums, a `promote_dtype`. Nothing is dropped silently. "Causal" means what
the op's `causal=True` means: for dense attention Flax's lower-triangular mask; for
neighbourhood attention, windows that look back along every axis. (Flax's linen module passes
only the arguments an `attention_fn` declares, so the returned function declares them all.)
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

import lla.attention as attention
from lla.layers.attention import Attention


def flax_attention_fn(op: str = "dense", *, causal: bool = False,
                      **op_kwargs) -> Callable[..., jax.Array]:
    """A Flax `attention_fn` running the registered lla op `op`.

    Args:
      op: a name in `lla.attention.names()`.
      causal: causal attention (the op must declare the `causal` capability); NNX's
        `is_causal=True` turns it on too.
      **op_kwargs: the op's keyword arguments (block sizes, `spatial_shape`,
        `implementation`, ...); default: the op's `default_kwargs`.

    Returns:
      `attention_fn(query [..., Nq, H, D], key [..., Nk, Hkv, D], value [..., Nk, Hkv, D],
      ...) -> [..., Nq, H, D]`; leading batch dimensions are flattened for the op.
    """
    registered = attention.get(op)
    kwargs = {**registered.default_kwargs, **op_kwargs}
    if causal and not registered.capabilities.causal:
        raise ValueError(f"flax_attention_fn: op {op!r} has no causal form; causal ops: "
                         f"{', '.join(causal_ops())}")

    def attention_fn(query, key, value, bias=None, mask=None, broadcast_dropout=True,
                     dropout_rng=None, dropout_rate=0.0, deterministic=False, dtype=None,
                     precision=None, module=None, force_fp32_for_softmax=False,
                     einsum_dot_general=None, qk_attn_weights_einsum=None,
                     attn_weights_value_einsum=None, is_causal=False, promote_dtype=None,
                     segment_ids=None, **unknown):
        del broadcast_dropout, dropout_rng, force_fp32_for_softmax  # f32 softmax regardless
        _refuse(op, bias=bias, mask=mask, dropout_rate=dropout_rate,
                deterministic=deterministic, module=module,
                unknown={**unknown, "promote_dtype": promote_dtype},
                einsums=(einsum_dot_general, qk_attn_weights_einsum,
                         attn_weights_value_einsum))
        use_causal = causal or bool(is_causal)
        if use_causal and not registered.capabilities.causal:
            raise ValueError(f"flax_attention_fn: is_causal=True, but op {op!r} has no causal "
                             f"form; causal ops: {', '.join(causal_ops())}")
        call_kwargs = dict(kwargs)
        if use_causal:
            call_kwargs["causal"] = True
        batch_shape = query.shape[:-3]
        if segment_ids is not None:
            call_kwargs["segment_ids"] = jax.tree.map(
                lambda ids: ids.reshape(math.prod(batch_shape), ids.shape[-1]), segment_ids)
        q, k, v = (x.reshape(math.prod(x.shape[:-3]), *x.shape[-3:])
                   for x in (query, key, value))
        dtype = dtype or jnp.result_type(q, k, v)  # Flax promotes mixed inputs
        q, k, v = (x.astype(dtype) for x in (q, k, v))
        with _matmul_precision(op, precision):
            out = registered(q, k, v, **call_kwargs)
        return out.reshape(*batch_shape, *out.shape[1:])

    return attention_fn


def causal_ops() -> list[str]:
    """The registered ops that declare the `causal` capability."""
    return [name for name in attention.names() if attention.get(name).capabilities.causal]


def _matmul_precision(op: str, precision):
    """Flax's `precision` (None, a `jax.lax.Precision` or its name) as a matmul-precision
    context for the op's own dots."""
    if precision is None:
        return contextlib.nullcontext()
    if isinstance(precision, jax.lax.Precision):
        precision = precision.name
    if not isinstance(precision, str):
        raise ValueError(f"flax_attention_fn({op!r}): precision must be None, a "
                         f"jax.lax.Precision or its name; got {precision!r}")
    return jax.default_matmul_precision(precision.lower())


def _refuse(op: str, *, bias, mask, dropout_rate, deterministic, module, unknown,
            einsums) -> None:
    """ValueError for every Flax argument the op cannot honour."""
    if mask is not None:
        raise ValueError(
            f"flax_attention_fn({op!r}): an arbitrary `mask` cannot be honoured (it would be "
            f"ignored). For causal attention pass causal=True to flax_attention_fn (NNX: "
            f"is_causal=True) and leave mask=None; for packed sequences call the function "
            f"with segment_ids=[B, N].")
    if bias is not None:
        raise ValueError(f"flax_attention_fn({op!r}): an additive `bias` cannot be honoured; "
                         f"fold positional information into q and k (e.g. RoPE) instead")
    if dropout_rate and not deterministic:
        raise ValueError(f"flax_attention_fn({op!r}): attention dropout (dropout_rate="
                         f"{dropout_rate}, deterministic=False) is not supported; set "
                         f"dropout_rate=0 on the module, or pass deterministic=True")
    if module is not None:
        raise ValueError(f"flax_attention_fn({op!r}): attention weights cannot be sown "
                         f"(sow_weights=True): lla ops never form the weight matrix")
    if any(fn is not None for fn in einsums):
        raise ValueError(f"flax_attention_fn({op!r}): custom einsums (einsum_dot_general, "
                         f"qk_attn_weights_einsum, attn_weights_value_einsum, e.g. AQT) "
                         f"cannot be honoured; use Flax's own attention for them")
    given = {name: value for name, value in unknown.items() if value is not None}
    if given:
        raise ValueError(f"flax_attention_fn({op!r}): unsupported arguments {sorted(given)}")


def nnx_attention(*, rngs: nnx.Rngs, example: jax.Array, **fields: Any) -> nnx.Module:
    """The linen `lla.layers.Attention(**fields)` as an NNX module (through
    `flax.nnx.bridge.ToNNX`), initialised on `example` ([B, N, C] or a grid [B, ..., C]).

    Calling it gives exactly what the linen layer gives with the same parameters
    (`module.linen_module`, variables under `module`); it is trained like any NNX module.
    """
    module = nnx.bridge.ToNNX(Attention(**fields), rngs=rngs)
    nnx.bridge.lazy_init(module, example)
    return module
