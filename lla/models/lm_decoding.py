"""Cached decoding and sampling for language models with `prefill` and `decode` methods
(`lla.models.lm.LM`, which decodes through its attention op's `Decoding`: dense attention
keeps keys and values, other ops whatever their step needs).

    logits, cache = prefill(model, params, prompt)            # [B, P] -> [B, P, V], cache
    step = make_decode_step(model)                            # jitted once per cache size
    logits, cache = step(params, cache, token)                # token [B] -> [B, V]
    tokens = generate(model, params, prompt, key, steps=200, temperature=0.8, top_p=0.95)

`generate` is one jitted program: the prefill, then a `lax.scan` of decode steps, each
sampling its next token from the filtered distribution (`filter_logits`).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


def prefill(model, params, prompt: jax.Array, cache_length: int | None = None):
    """(logits float32 [B, P, V], a decoding cache (`lla.models.lm.DecodingCache`) of
    `cache_length` (default: model.context) positions holding the prompt) of prompt int32
    [B, P]."""
    length = model.context if cache_length is None else cache_length
    return model.apply(params, prompt, length, method="prefill")


def make_decode_step(model) -> Callable:
    """`step(params, cache, token int32 [B]) -> (logits float32 [B, V], cache)`, jitted: it
    compiles once per cache size and batch, whatever the cache's length."""
    return jax.jit(lambda params, cache, token: model.apply(params, token, cache,
                                                            method="decode"))


def filter_logits(logits: jax.Array, *, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
    """logits [..., V] with every token outside the kept set at -inf.

    top_k: keep the k largest logits (0: all). top_p: then keep the smallest set of the most
    likely tokens whose probability (renormalised after top-k) reaches top_p (nucleus
    sampling; 1: all). Ties at either cut are kept.
    """
    if top_k:
        kth = lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits >= kth, logits, -jnp.inf)
    if top_p < 1.0:
        ordered = jnp.sort(logits, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(ordered, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        kept = jnp.sum(mass_before < top_p, axis=-1, keepdims=True)  # >= 1: mass_before[0] = 0
        cutoff = jnp.take_along_axis(ordered, kept - 1, axis=-1)
        logits = jnp.where(logits >= cutoff, logits, -jnp.inf)
    return logits


def sample_token(logits: jax.Array, key: jax.Array, *, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0) -> jax.Array:
    """int32 [B] drawn from softmax(logits [B, V] / temperature) after `filter_logits`;
    temperature 0 is greedy (argmax)."""
    if temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    filtered = filter_logits(logits / temperature, top_k=top_k, top_p=top_p)
    return jax.random.categorical(key, filtered, axis=-1).astype(jnp.int32)


def _check_sampling(vocab_size: int, steps, temperature, top_k, top_p) -> None:
    def is_int(x):
        return isinstance(x, numbers.Integral) and not isinstance(x, bool | np.bool_)

    if not is_int(steps) or steps < 1:
        raise ValueError(f"generate: steps must be an int >= 1; got {steps!r}")
    if not isinstance(temperature, numbers.Real) or not temperature >= 0:
        raise ValueError(f"generate: temperature must be >= 0 (0: greedy); got {temperature!r}")
    if not is_int(top_k) or not 0 <= top_k <= vocab_size:
        raise ValueError(f"generate: top_k must be an int in [0, {vocab_size}] (0: off); "
                         f"got {top_k!r}")
    if not isinstance(top_p, numbers.Real) or not 0 < top_p <= 1:
        raise ValueError(f"generate: top_p must be in (0, 1] (1: off); got {top_p!r}")


def generate(model, params, prompt: jax.Array, key: jax.Array, *, steps: int,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             cache_length: int | None = None) -> jax.Array:
    """Continues each prompt row by `steps` sampled tokens.

    Args:
      model, params: an LM (`lla.models.lm.LM`, an attention op with `decoding`) and its
        params.
      prompt: int [B, P], P >= 1, one document per row.
      key: the sampling randomness (step t uses the t-th of `steps` split keys).
      steps: new tokens per row, >= 1.
      temperature: logits are divided by it; 0 = greedy decoding.
      top_k, top_p: `filter_logits` (0 and 1 turn them off).
      cache_length: cache positions, P + steps <= cache_length <= model.context
        (default: model.context).

    Returns:
      int32 [B, P + steps]: the prompt, then the generated tokens.

    Raises:
      ValueError: bad sampling settings, a prompt of the wrong shape, or P + steps beyond
        the cache or the context.
    """
    _check_sampling(model.vocab_size, steps, temperature, top_k, top_p)
    prompt = jnp.asarray(prompt)
    if prompt.ndim != 2 or prompt.shape[1] < 1 or not jnp.issubdtype(prompt.dtype, jnp.integer):
        raise ValueError(f"generate: prompt must be integer [B, P] with P >= 1; got "
                         f"{prompt.dtype} of shape {tuple(prompt.shape)}")
    length = model.context if cache_length is None else cache_length
    if length > model.context or prompt.shape[1] + steps > length:
        raise ValueError(
            f"generate: the {prompt.shape[1]}-token prompt plus {steps} steps needs "
            f"{prompt.shape[1] + steps} positions; the cache has {length} and the model's "
            f"context is {model.context}. Shorten the prompt or the steps (or raise "
            f"cache_length, up to the context)")
    return _program(model, steps, length, temperature, top_k, top_p)(params, prompt, key)


# Jitted generation programs by (model, settings): an evaluation that generates every few
# thousand steps compiles once. Keyed on the model's repr (its fields), since a module
# holding a dict of attention kwargs is not hashable.
_PROGRAMS: dict[tuple, Callable] = {}


def _program(model, steps, length, temperature, top_k, top_p) -> Callable:
    """`run(params, prompt [B, P], key) -> [B, P + steps]`, jitted, built once per setting."""
    name = (repr(model), steps, length, temperature, top_k, top_p)
    if name in _PROGRAMS:
        return _PROGRAMS[name]
    settings = dict(temperature=temperature, top_k=top_k, top_p=top_p)

    @jax.jit
    def run(params, prompt, key):
        keys = jax.random.split(key, steps)
        logits, cache = prefill(model, params, prompt.astype(jnp.int32), length)
        first = sample_token(logits[:, -1], keys[0], **settings)

        def step(carry, key):
            cache, token = carry
            logits, cache = model.apply(params, token, cache, method="decode")
            token = sample_token(logits, key, **settings)
            return (cache, token), token

        _, rest = lax.scan(step, (cache, first), keys[1:])
        return jnp.concatenate([prompt.astype(jnp.int32), first[:, None], rest.T], axis=1)

    if len(_PROGRAMS) >= 16:
        _PROGRAMS.clear()
    _PROGRAMS[name] = run
    return run
