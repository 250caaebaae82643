"""The attention registry: ops by name, what each supports, and implementation dispatch.

An op (`AttentionOp`) is a public function plus an ordered table of implementations
(`Implementation`). Each implementation says, for concrete inputs, why it cannot run
(`unsupported_reasons`); dispatch (`call`, `select`) picks the first one with no reasons, and
when none fits it raises `NoImplementationError` listing every implementation with its
reasons, e.g.

    no implementation of 'dense' fits these inputs — cudnn: needs a CUDA GPU, platform is
    cpu; dtype float32 not supported (bfloat16 or float16)

An op also carries the facts models, configs, tests and benchmarks need, so none of them
knows ops by name: `capabilities` (including the token order a model must feed,
`lla.attention.token_order`), `default_kwargs` (what configs and models use),
`example_kwargs` (small valid arguments for tests and smoke benchmarks) and, for ops a decoder
can run token by token, `decoding` (`Decoding`: the op's own cache, prefill and step; e.g.
`lla.models.lm` decodes through it).

Kernel tuning (tile sizes, launch parameters) is not in an op's signature: an implementation
may declare a `Tunable` config, a frozen dataclass with a heuristic default; `tuning(...)`
overrides fields of it for the calls made inside a `with` block (jitted ones included: the
overrides are part of the jit cache key). An implementation with active overrides that
cannot run the inputs raises instead of being skipped for the next one.

Usage:
    lla.attention.names()                      # ('dense', 'llsa', 'neighborhood')
    lla.attention.get("dense")                 # AttentionOp: capabilities, implementations
    with lla.attention.tuning("neighborhood", "pallas_gpu", q_tile=(8, 16)):
        out = lla.attention.neighborhood(q, k, v, spatial_shape=(256, 256), kernel_size=13)
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np

TOKEN_ORDERS = ("any", "hierarchy", "gilbert", "grid")


@dataclasses.dataclass(frozen=True)
class Capabilities:
    """What an op supports. Models use these flags to decide whether and how an op plugs in.

    Every flag has a default, so a new flag never touches existing registrations.

    Attributes:
      causal: supports `causal=True`.
      block_causal: supports `causal_block_size=c` with `causal=True`: query i sees key j
        iff j // c <= i // c (blocks of c consecutive tokens see each other and every
        earlier block: frame-causal video, c tokens per frame, in an op whose token order is
        "any"; `lla.attention.token_order.frame_causal_arguments`).
      spatial_dims: numbers of grid axes (1 = a sequence, 2 = images, 3 = video) whose tokens
        the op can attend over.
      token_order: what a model must do with grid tokens (`lla.attention.token_order`):
        "any"       the result does not depend on the token order (dense attention);
        "hierarchy" the op pools runs of consecutive tokens, so runs must be spatially
                    compact: Z-order on 2-D and 3-D grids, the natural order in 1-D (LLSA);
        "gilbert"   the op cuts the tokens into blocks of consecutive tokens, which must be
                    compact regions for any grid size: the generalized Hilbert ("Gilbert")
                    curve on 2-D and 3-D grids, the natural order in 1-D (ASA);
        "grid"      row-major (raster) order, with the grid passed as `spatial_shape`
                    (neighbourhood attention).
      segments: supports `segment_ids` (packed variable-length sequences).
      gqa: k/v may have fewer heads than q (a divisor).
      decode: has incremental (token-by-token causal) decoding with a cache of its own,
        `AttentionOp.decoding` (a `Decoding`). Derived from it: `AttentionOp` sets the flag
        when `decoding` is given, and rejects `decode=True` without one.
      trainable: has a backward pass (gradients into q, k, v).
      dtypes: floating dtypes accepted by at least one implementation.
    """

    causal: bool = False
    block_causal: bool = False
    spatial_dims: tuple[int, ...] = (1, 2, 3)
    token_order: str = "any"
    segments: bool = False
    gqa: bool = False
    decode: bool = False
    trainable: bool = True
    dtypes: tuple[str, ...] = ("float32", "bfloat16", "float16")

    def __post_init__(self):
        if self.token_order not in TOKEN_ORDERS:
            raise ValueError(f"Capabilities: token_order {self.token_order!r} is not one of "
                             f"{TOKEN_ORDERS}")
        if self.block_causal and not self.causal:
            raise ValueError("Capabilities: block_causal needs causal (a causal block size "
                             "is a kind of causal masking)")
        if not self.spatial_dims or not set(self.spatial_dims) <= {1, 2, 3}:
            raise ValueError(f"Capabilities: spatial_dims {self.spatial_dims!r} must be a "
                             f"non-empty subset of (1, 2, 3)")


ReasonsFn = Callable[..., list[str]]


def always_supported(*arrays, **static) -> list[str]:
    """`unsupported_reasons` of an implementation that runs any valid input (references)."""
    return []


@dataclasses.dataclass(frozen=True)
class Tunable:
    """The tuning knobs of one implementation.

    Attributes:
      default: `default(*arrays, **static)` -> the heuristic config for these inputs, a
        frozen, hashable dataclass (it becomes a static argument of jitted code).
      fields: the names of the config's fields `tuning(...)` may override (the rest, if
        any, describe the call and follow from the inputs).
    """

    default: Callable[..., Any]
    fields: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Implementation:
    """One way to compute an op.

    Attributes:
      name: "xla" (pure-JAX reference), "pallas_gpu", "pallas_tpu", "cudnn", ...
      fn: called as `fn(*arrays, **static)` with the op's own arguments, plus `config=` (the
        resolved `Tunable` config) when the implementation is tunable.
      unsupported_reasons: same call as `fn`; returns why this implementation cannot run
        these inputs (empty when it can). Must only look at shapes, dtypes and statics.
      platforms: jax backends it runs on by default (`jax.default_backend()`); naming an
        implementation explicitly skips this check only where `unsupported_reasons` allows.
      tunable: its tuning knobs, or None.
    """

    name: str
    fn: Callable[..., Any]
    unsupported_reasons: ReasonsFn = always_supported
    platforms: tuple[str, ...] = ("cpu", "gpu", "tpu")
    tunable: Tunable | None = None


@dataclasses.dataclass(frozen=True)
class Decoding:
    """An op's incremental causal decoding: a cache it owns, a prompt, then one token a step.

    The cache is any pytree of arrays with fixed shapes (it is a jit argument and a
    `lax.scan` carry), holding its own length: the number of tokens seen, which is the
    position of the next one. A model drives it per layer as

        cache = init(B, C, H, Hkv, D, dtype, **op_kwargs)
        out, cache = prefill(q, k, v, cache, **op_kwargs)     # P prompt tokens, positions 0..P-1
        out, cache = step(q1, k1, v1, cache, **op_kwargs)     # one token at position P, P+1, ...

    `op_kwargs` are the op's static keyword arguments as the model passes them to its forward
    (`default_kwargs` updated by the model's own), without `causal`, which is implied. k and v
    have Hkv heads, a divisor of H where the op declares `gqa`, else Hkv == H (a model repeats
    kv heads for ops without `gqa`). In float32, prefill then steps reproduce the rows of the
    op's causal forward over the whole sequence (`op(q, k, v, causal=True, **op_kwargs)`).

    Attributes:
      init: `init(batch, capacity, heads, kv_heads, head_dim, dtype, **op_kwargs) -> cache`,
        empty (length 0), for up to `capacity` tokens; keys and values stored in `dtype`.
        Raises ValueError for a capacity or `op_kwargs` it cannot decode.
      prefill: `prefill(q [B, P, H, D], k, v [B, P, Hkv, D], cache, **op_kwargs) ->
        (out [B, P, H, D], cache)`: causal attention over the prompt, into a cache fresh from
        `init`; the cache then holds P tokens. Raises ValueError for P > capacity, or a P the
        op cannot take.
      step: `step(q [B, 1, H, D], k, v [B, 1, Hkv, D], cache, **op_kwargs) ->
        (out [B, 1, H, D], cache)`: the token at position t = the cache's length, appended
        and attended causally (keys 0..t); the cache then holds t + 1 tokens. A step with a
        full cache (t >= capacity) returns NaN output, and the cache it returns is not
        usable. Compiles once per cache shape: t is traced, never static.
    """

    init: Callable[..., Any]
    prefill: Callable[..., tuple[jax.Array, Any]]
    step: Callable[..., tuple[jax.Array, Any]]


@dataclasses.dataclass(frozen=True, kw_only=True)
class AttentionOp:
    """A registered attention variant: `op(q, k, v, **kwargs)` calls `fn`.

    Attributes:
      name: the registry name.
      fn: the public function, `fn(q, k, v, *, ..., implementation=None)`.
      implementations: in preference order; one must be "xla", the reference.
      summary: one line for listings.
      capabilities: what it supports (defaults: see `Capabilities`).
      default_kwargs: the op's keyword arguments as configs and models use them by default
        (e.g. the paper's defaults); spatial arguments come from the token order instead.
      example_kwargs: keyword arguments valid on small inputs (an 8 x 8 grid, 64 tokens),
        for the shared tests, models' "every op plugs in" tests and CPU benchmark runs.
      decoding: its incremental causal decoding (`Decoding`), or None. Needs
        `capabilities.causal`; sets `capabilities.decode`.
      keys_per_query: `keys_per_query(q, k, v, **static) -> float32 scalar`, the mean number
        of keys in one query's softmax for these inputs (pooled, global and summary tokens
        count as keys; a causal mask's hidden keys still count where the kernels compute
        them), or None where the op does not say. `static` are the keyword arguments the op
        dispatches with (as its implementations receive them, without `config`); call it
        through `kept_keys`, which finds them. Benchmarks turn it into the density
        keys / Nk and the ideal speed-up over dense attention, Nk / keys.
    """

    name: str
    fn: Callable[..., Any]
    implementations: Mapping[str, Implementation] | Sequence[Implementation]
    summary: str
    capabilities: Capabilities = Capabilities()
    default_kwargs: Mapping[str, Any] = types.MappingProxyType({})
    example_kwargs: Mapping[str, Any] = types.MappingProxyType({})
    decoding: Decoding | None = None
    keys_per_query: Callable[..., jax.Array] | None = None

    def __post_init__(self):
        impls = self.implementations
        if not isinstance(impls, Mapping):
            impls = {impl.name: impl for impl in impls}
        for field, value in (("implementations", impls),
                             ("default_kwargs", self.default_kwargs),
                             ("example_kwargs", self.example_kwargs)):
            object.__setattr__(self, field, types.MappingProxyType(dict(value)))
        if self.decoding is None:
            if self.capabilities.decode:
                raise ValueError(f"attention op {self.name!r}: capabilities declare decode but "
                                 f"the op has no decoding; pass decoding=Decoding(init, "
                                 f"prefill, step) (the flag follows from it)")
            return
        if not isinstance(self.decoding, Decoding):
            raise ValueError(f"attention op {self.name!r}: decoding must be a Decoding(init, "
                             f"prefill, step) or None; got {type(self.decoding).__name__}")
        if not self.capabilities.causal:
            raise ValueError(f"attention op {self.name!r}: decoding is causal attention, token "
                             f"by token; it needs capabilities.causal")
        object.__setattr__(self, "capabilities",
                           dataclasses.replace(self.capabilities, decode=True))

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        caps = ", ".join(f"{f.name}={getattr(self.capabilities, f.name)!r}"
                         for f in dataclasses.fields(self.capabilities))
        impls = ", ".join(
            f"{i.name} [{'/'.join(i.platforms)}]" for i in self.implementations.values())
        return (f"AttentionOp({self.name!r}: {self.summary}\n  capabilities: {caps}\n  "
                f"default_kwargs: {dict(self.default_kwargs)}\n  "
                f"implementations (preference order): {impls})")


class NoImplementationError(NotImplementedError):
    """No implementation of an op can run the given inputs; the message lists each reason."""


_REGISTRY: dict[str, AttentionOp] = {}


def register(op: AttentionOp) -> AttentionOp:
    """Adds `op` to the registry under `op.name`; registering a name twice is an error."""
    if op.name in _REGISTRY:
        raise ValueError(f"attention op {op.name!r} is already registered")
    if "xla" not in op.implementations:
        raise ValueError(f"attention op {op.name!r} needs an 'xla' reference implementation")
    _REGISTRY[op.name] = op
    return op


def get(name: str | AttentionOp) -> AttentionOp:
    """Returns the registered op `name` (an op is returned as is); the error lists the
    registered names."""
    if isinstance(name, AttentionOp):
        return name
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"no attention op {name!r}; registered: {', '.join(names())}") from None


def names() -> tuple[str, ...]:
    """Names of all registered ops, sorted."""
    return tuple(sorted(_REGISTRY))


def table(ops: Sequence[str] | None = None) -> str:
    """A Markdown table of `ops` (default: the ops lla itself registers): capabilities,
    implementations in preference order with their platforms, and default kwargs."""
    if ops is None:
        ops = [name for name in names() if _REGISTRY[name].fn.__module__.startswith("lla.")]
    flags = ("causal", "segments", "gqa", "decode", "trainable")
    lines = ["| op | what | token order | grids | " + " | ".join(flags)
             + " | implementations | default kwargs |",
             "|" + "---|" * (len(flags) + 6)]
    for name in ops:
        op = get(name)
        caps = op.capabilities
        impls = ", ".join(f"`{i.name}` ({'/'.join(i.platforms)})"
                          for i in op.implementations.values())
        defaults = ", ".join(f"{k}={v!r}" for k, v in op.default_kwargs.items()) or "-"
        lines.append(
            f"| `{name}` | {op.summary} | {caps.token_order} | "
            f"{'/'.join(map(str, caps.spatial_dims))}-D | "
            + " | ".join("yes" if getattr(caps, f) else "-" for f in flags)
            + f" | {impls} | {defaults} |")
    return "\n".join(lines) + "\n"


# ---- tuning overrides ------------------------------------------------------------------------

# The active overrides, ((op, implementation, ((field, value), ...)), ...), sorted. A jax user
# context: `jax.jit` keys its caches on it, so a jitted function called inside a `tuning`
# block is traced again with the overrides, and called outside again without them.
_OVERRIDES = jax.make_user_context(default_value=())


def _active_overrides() -> dict[tuple[str, str], dict[str, Any]]:
    return {(op, impl): dict(values) for op, impl, values in _OVERRIDES.value}


def _tuning_value(name: str, value):
    """A tuning value as a hashable positive int or tuple of them; ValueError otherwise."""
    def positive_int(x):
        return isinstance(x, int | np.integer) and not isinstance(x, bool | np.bool_) and x >= 1

    if positive_int(value):
        return int(value)
    if isinstance(value, Sequence | np.ndarray) and not isinstance(value, str) and all(
            positive_int(x) for x in np.ravel(value)):
        return tuple(int(x) for x in np.ravel(value))
    raise ValueError(f"tuning field {name} must be a positive int or a sequence of them "
                     f"(one per axis); got {value!r}")


@contextlib.contextmanager
def tuning(op: str | AttentionOp, implementation: str, **values) -> Iterator[None]:
    """Overrides tuning fields of `op`'s `implementation` for calls inside the block.

    Nested blocks add to (and may replace) the outer block's values. Values are positive
    ints or tuples of them (lists and numpy values are converted). The overrides are part of
    the jit cache key: a jitted function runs with the overrides of the block it is called
    in (retraced on a change), whether it was traced there or not.

    Raises:
      KeyError: an unknown op. ValueError: an unknown implementation, one without tuning
      knobs, an unknown field or a value of the wrong kind (each naming what would work).
    """
    impl = _implementation(get(op), implementation)
    if impl.tunable is None:
        raise ValueError(f"{op}: implementation {implementation!r} has no tuning knobs")
    unknown = sorted(set(values) - set(impl.tunable.fields))
    if unknown:
        raise ValueError(f"{op}/{implementation}: unknown tuning field(s) {unknown}; "
                         f"fields: {', '.join(impl.tunable.fields)}")
    values = {name: _tuning_value(name, value) for name, value in values.items()}
    active = _active_overrides()
    key = (get(op).name, implementation)
    active[key] = {**active.get(key, {}), **values}
    with _OVERRIDES(tuple(sorted((op_name, impl_name, tuple(sorted(fields.items())))
                                 for (op_name, impl_name), fields in active.items()))):
        yield


def config_for(op: AttentionOp, impl: Implementation, *args, **kwargs):
    """The config `impl` runs these inputs with: its heuristic default with the active
    `tuning` overrides applied (None when it has no tuning knobs)."""
    if impl.tunable is None:
        return None
    config = impl.tunable.default(*args, **kwargs)
    overrides = _active_overrides().get((op.name, impl.name))
    return dataclasses.replace(config, **overrides) if overrides else config


# ---- dispatch --------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Dispatch:
    """One dispatched call, as recorded by `dispatch_log`."""

    op: str
    implementation: str
    config: Any
    static: Mapping[str, Any] = types.MappingProxyType({})  # the keyword arguments


_LOGS: contextvars.ContextVar[tuple[list[Dispatch], ...]] = contextvars.ContextVar(
    "lla_attention_dispatch_logs", default=())


@contextlib.contextmanager
def dispatch_log() -> Iterator[list[Dispatch]]:
    """Records every op call dispatched inside the block (in every enclosing log too): which
    implementation ran and with which config. Dispatch happens when a call is traced, so a
    jitted function records on its first call (or on a retrace) only; `jax.eval_shape`
    inside the block records without computing."""
    log: list[Dispatch] = []
    token = _LOGS.set((*_LOGS.get(), log))
    try:
        yield log
    finally:
        _LOGS.reset(token)


def _implementation(op: AttentionOp, name: str) -> Implementation:
    if name not in op.implementations:
        raise ValueError(f"{op.name}: unknown implementation {name!r}; choose from "
                         f"{list(op.implementations)} (or None for the best available)")
    return op.implementations[name]


def select(
    op: AttentionOp,
    implementation: str | Sequence[str] | None,
    *args,
    **kwargs,
) -> tuple[Implementation, Any]:
    """Picks the implementation of `op` that will run `op(*args, **kwargs)`.

    Args:
      op: the op.
      implementation: None (the first implementation, in the op's preference order, that
        targets the current platform and supports the inputs), a name, or a sequence of names
        tried in order.
      *args, **kwargs: the op's arrays and static arguments, passed to `unsupported_reasons`.

    Returns:
      (the implementation, its config for these inputs or None; see `config_for`).

    Raises:
      ValueError: an unknown implementation name.
      NoImplementationError: none of the candidates supports the inputs; lists every reason.
    """
    platform = jax.default_backend()
    if implementation is None:
        candidates = list(op.implementations)
    elif isinstance(implementation, str):
        candidates = [implementation]
    elif isinstance(implementation, Sequence) and all(
            isinstance(name, str) for name in implementation):
        candidates = list(implementation)
    else:
        raise ValueError(f"{op.name}: implementation must be None, a name or a sequence of "
                         f"names from {list(op.implementations)}; got {implementation!r}")
    if not candidates:
        raise ValueError(f"{op.name}: empty implementation list; choose from "
                         f"{list(op.implementations)} (or None for the best available)")
    impls = [_implementation(op, name) for name in candidates]

    reasons: list[str] = []
    for impl in impls:
        config = config_for(op, impl, *args, **kwargs)
        extra = {} if impl.tunable is None else {"config": config}
        why = list(impl.unsupported_reasons(*args, **kwargs, **extra))
        on_platform = platform in impl.platforms
        if implementation is None and not on_platform:
            why.insert(0, f"platform is {platform}, needs {'/'.join(impl.platforms)}")
        if not why:
            return impl, config
        if on_platform and (op.name, impl.name) in _active_overrides():
            raise NoImplementationError(
                f"{op.name}: tuning overrides for {impl.name!r} are active but it cannot run "
                f"these inputs with them: {'; '.join(why)}")
        reasons.append(f"{impl.name}: {'; '.join(why)}")
    raise NoImplementationError(
        f"no implementation of {op.name!r} fits these inputs — " + " | ".join(reasons))


def call(op: AttentionOp, implementation: str | Sequence[str] | None, *args, **kwargs):
    """Runs `op` on the implementation `select` picks: `fn(*args, **kwargs)`, plus `config=`
    for tunable implementations."""
    impl, config = select(op, implementation, *args, **kwargs)
    for log in _LOGS.get():
        log.append(Dispatch(op.name, impl.name, config, types.MappingProxyType(kwargs)))
    if impl.tunable is None:
        return impl.fn(*args, **kwargs)
    return impl.fn(*args, config=config, **kwargs)


def kept_keys(op: str | AttentionOp, q: jax.Array, k: jax.Array, v: jax.Array, *args,
              **kwargs) -> float | None:
    """The mean number of keys in one query's softmax when `op(q, k, v, *args, **kwargs)`
    runs (see `AttentionOp.keys_per_query`), or None where the op does not say. The op's
    call is traced abstractly (`jax.eval_shape`) to find its dispatched keyword arguments."""
    op = get(op)
    if op.keys_per_query is None:
        return None
    with dispatch_log() as log:
        jax.eval_shape(lambda *arrays: op.fn(*arrays, **kwargs), q, k, v, *args)
    static = dict(log[0].static)
    count = jax.jit(lambda q, k, v: op.keys_per_query(q, k, v, **static))(q, k, v)
    return float(count)
