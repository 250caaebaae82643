"""The attention registry: ops by name, their capability flags and implementation dispatch.

An op (`AttentionOp`) is a public function plus an ordered table of implementations
(`Implementation`). Each implementation says, for concrete inputs, why it cannot run
(`unsupported_reasons`); dispatch picks the first one with no reasons, and when none fits it
raises `NoImplementationError` listing every implementation with its reasons, e.g.

    no implementation of 'dense' fits: cudnn: platform is cpu, needs gpu; xla: ...

Usage:
    lla.attention.names()            # ('dense', ...)
    lla.attention.get("dense")       # AttentionOp with .capabilities and .implementations
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax


@dataclasses.dataclass(frozen=True)
class Capabilities:
    """What an op supports. Models use these flags to decide whether an op plugs in.

    Attributes:
      causal: supports `causal=True`.
      spatial_dims: token layouts understood, as numbers of spatial axes; () means the op is
        layout agnostic (a plain sequence of tokens in any order).
      segments: supports `segment_ids` (packed variable-length sequences).
      gqa: k/v may have fewer heads than q (a divisor).
      decode: supports incremental decoding (q shorter than k/v with a cache).
      trainable: has a backward pass (gradients into q, k, v).
      dtypes: floating dtypes accepted by at least one implementation.
    """

    causal: bool
    spatial_dims: tuple[int, ...]
    segments: bool
    gqa: bool
    decode: bool
    trainable: bool
    dtypes: tuple[str, ...]


ReasonsFn = Callable[..., list[str]]


@dataclasses.dataclass(frozen=True)
class Implementation:
    """One way to compute an op.

    Attributes:
      name: "xla" (pure-JAX reference), "pallas_gpu", "pallas_tpu", "cudnn", ...
      fn: called as `fn(*arrays, **static_kwargs)` with the op's own arguments.
      unsupported_reasons: same call signature as `fn`, returns why this implementation cannot
        run these inputs (empty when it can). Must only look at shapes, dtypes and statics.
      platforms: jax backends it runs on by default (`jax.default_backend()`); naming an
        implementation explicitly skips this check only where `unsupported_reasons` allows.
    """

    name: str
    fn: Callable[..., Any]
    unsupported_reasons: ReasonsFn
    platforms: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class AttentionOp:
    """A registered attention variant: `op(q, k, v, **kwargs)` calls `fn`."""

    name: str
    fn: Callable[..., Any]
    capabilities: Capabilities
    implementations: Mapping[str, Implementation]
    summary: str

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        caps = ", ".join(f"{f.name}={getattr(self.capabilities, f.name)!r}"
                         for f in dataclasses.fields(self.capabilities))
        impls = ", ".join(
            f"{i.name} [{'/'.join(i.platforms)}]" for i in self.implementations.values())
        return f"AttentionOp({self.name!r}: {self.summary}\n  capabilities: {caps}\n  " \
               f"implementations (preference order): {impls})"


def always_supported(*arrays, **static) -> list[str]:
    """`unsupported_reasons` of an implementation that runs any valid input (references)."""
    return []


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


def get(name: str) -> AttentionOp:
    """Returns the registered op `name`; the error lists the registered names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"no attention op {name!r}; registered: {', '.join(names())}") from None


def names() -> tuple[str, ...]:
    """Names of all registered ops, sorted."""
    return tuple(sorted(_REGISTRY))


def select(
    op: AttentionOp,
    implementation: str | Sequence[str] | None,
    *args,
    **kwargs,
) -> Implementation:
    """Picks the implementation of `op` that will run `op(*args, **kwargs)`.

    Args:
      op: the op.
      implementation: None (the first implementation, in the op's preference order, that
        targets the current platform and supports the inputs), a name, or a sequence of names
        tried in order.
      *args, **kwargs: the op's arrays and static arguments, passed to `unsupported_reasons`.

    Raises:
      ValueError: an unknown implementation name.
      NoImplementationError: none of the candidates supports the inputs; lists every reason.
    """
    platform = jax.default_backend()
    if implementation is None:
        candidates = list(op.implementations)
    elif isinstance(implementation, str):
        candidates = [implementation]
    else:
        candidates = list(implementation)
    unknown = [c for c in candidates if c not in op.implementations]
    if unknown or not candidates:
        raise ValueError(
            f"{op.name}: unknown implementation {unknown or candidates!r}; "
            f"choose from {list(op.implementations)} (or None for the best available)")

    reasons: list[str] = []
    for name in candidates:
        impl = op.implementations[name]
        why = list(impl.unsupported_reasons(*args, **kwargs))
        if implementation is None and platform not in impl.platforms:
            why.insert(0, f"platform is {platform}, needs {'/'.join(impl.platforms)}")
        if not why:
            return impl
        reasons.append(f"{name}: {'; '.join(why)}")
    raise NoImplementationError(
        f"no implementation of {op.name!r} fits these inputs — " + " | ".join(reasons))
