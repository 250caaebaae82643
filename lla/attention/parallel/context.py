"""Sequence parallelism inside a model: the tokens of every example sharded over an axis of
the mesh in context (`jax.set_mesh(mesh)`, seen inside `jax.jit` as
`jax.sharding.get_abstract_mesh()`).

    with jax.set_mesh(mesh):                      # e.g. axes ("data", "fsdp", "sequence")
        x = shard_tokens(x, "sequence")           # [B, N, C]: P(("data", "fsdp"), "sequence")
        out = sharded_attention("llsa", q, k, v, axis_name="sequence", block_size=16)

The token-wise layers between the constraints run on each device's tokens by XLA's sharding
propagation; the attention runs the op's per-device form (`OPS`) inside `jax.shard_map`.
The batch is split over the mesh's other axes (those of size > 1) when it divides their
product, else replicated over them. Without a mesh in context, or with `axis_name` absent
from it or of size 1, both are the identity / the plain op, so the same model runs on one
device unchanged.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
from jax.sharding import AbstractMesh, AxisType, PartitionSpec

from lla.attention import registry
from lla.attention.parallel.llsa import sequence_parallel_llsa
from lla.attention.parallel.ring import ring_attention
from lla.attention.parallel.shard import sequence_parallel

# The registered ops with a sequence-parallel form: op name -> its per-device function.
OPS: Mapping[str, Callable] = {"dense": ring_attention, "llsa": sequence_parallel_llsa}


def axis_size(axis_name: str | None) -> int:
    """Devices on axis `axis_name` of the mesh in context; 1 when `axis_name` is None, no
    mesh is set, or the mesh has no such axis."""
    mesh = jax.sharding.get_abstract_mesh()
    if axis_name is None or mesh.empty:
        return 1
    return mesh.shape.get(axis_name, 1)


def token_spec(batch: int, axis_name: str) -> PartitionSpec:
    """The PartitionSpec of [B = batch, N, ...] token arrays in the context mesh: tokens over
    `axis_name`, the batch over the mesh's other axes of size > 1 when their product divides
    `batch` (else replicated over them), trailing axes replicated."""
    return PartitionSpec(_batch_axes(_mesh(axis_name), axis_name, batch), axis_name)


def shard_tokens(x: jax.Array, axis_name: str | None) -> jax.Array:
    """x [B, N, ...] constrained to `token_spec` (`jax.lax.with_sharding_constraint`), or x
    itself when `axis_size(axis_name)` is 1.

    Raises:
      ValueError: N not divisible by the axis size (naming sizes that divide N), or a mesh
        whose axes are Explicit (the constraint needs Auto axes).
    """
    if axis_size(axis_name) == 1:
        return x
    _check_tokens("sequence parallelism", x.shape[1], axis_name)
    return jax.lax.with_sharding_constraint(x, token_spec(x.shape[0], axis_name))


def sharded_attention(op: str, q: jax.Array, k: jax.Array, v: jax.Array, *,
                      axis_name: str = "sequence", **op_kwargs) -> jax.Array:
    """Registered op `op` ("dense" or "llsa", `OPS`) on global q, k, v with their tokens
    sharded over axis `axis_name` of the mesh in context: its per-device form
    (`ring_attention`, `sequence_parallel_llsa`) inside `jax.shard_map`, the batch split as
    in `token_spec`. Equals `op(q, k, v, **op_kwargs)` (LLSA: its "xla" implementation).

    Args:
      op: a name in `OPS`.
      q: [B, N, H, D], N divisible by the axis size P (device d holds tokens d·N/P ..
        (d+1)·N/P - 1, in the order given: hierarchy order for LLSA).
      k, v: [B, N, Hkv, D].
      axis_name: the mesh axis the tokens are sharded over.
      **op_kwargs: the op's keyword arguments. Those its per-device form does not take must
        be at the op's defaults, except `implementation` None or "xla" and `interpret` for
        forms without an `implementation` (LLSA's runs the XLA reference).

    Returns:
      [B, N, H, D] in q's dtype, sharded like q.

    Raises:
      ValueError: an op without a sequence-parallel form (naming those with one), N not
        divisible by P, or an argument the per-device form cannot honour.
    """
    if op not in OPS:
        raise ValueError(f"attention {op!r} has no sequence-parallel form (mesh axis "
                         f"{axis_name!r} has {axis_size(axis_name)} devices); ops with one: "
                         f"{', '.join(OPS)}. Use one of them, or a mesh with {axis_name} = 1")
    mesh = _mesh(axis_name)
    _check_tokens(f"attention {op!r}", q.shape[1], axis_name)
    fn = OPS[op]
    attend = sequence_parallel(fn, mesh, axis_name=axis_name,
                               batch_axis=_batch_axes(mesh, axis_name, q.shape[0]),
                               **_per_device_kwargs(op, fn, op_kwargs))
    return attend(q, k, v)


def _mesh(axis_name: str) -> AbstractMesh:
    """The context mesh, checked to have Auto axes (with_sharding_constraint is an assertion
    on Explicit ones)."""
    mesh = jax.sharding.get_abstract_mesh()
    if any(kind == AxisType.Explicit for kind in mesh.axis_types):
        raise ValueError(
            f"sequence parallelism over {axis_name!r}: the mesh in context {dict(mesh.shape)} "
            f"has Explicit axes {mesh.axis_types}; it needs Auto axes, e.g. "
            f"lla.training.sharding.make_mesh(config) or jax.make_mesh(shape, names, "
            f"axis_types=(jax.sharding.AxisType.Auto,) * len(names))")
    return mesh


def _batch_axes(mesh: AbstractMesh, axis_name: str, batch: int) -> tuple[str, ...] | None:
    axes = tuple(axis for axis in mesh.axis_names if axis != axis_name and mesh.shape[axis] > 1)
    if not axes or batch % math.prod(mesh.shape[axis] for axis in axes):
        return None
    return axes


def _check_tokens(caller: str, tokens: int, axis_name: str) -> None:
    devices = axis_size(axis_name)
    if tokens % devices:
        sizes = [str(size) for size in range(2, min(tokens, 64) + 1) if tokens % size == 0]
        raise ValueError(
            f"{caller}: N = {tokens} tokens do not split evenly over the {devices} devices of "
            f"mesh axis {axis_name!r}; use a {axis_name} size that divides N "
            f"({', '.join(sizes[:8]) or 'none up to 64'}), or an image / patch size whose "
            f"token count is a multiple of {devices}")


def _per_device_kwargs(op: str, fn: Callable, op_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """`op_kwargs` that `fn` takes; the rest checked to change nothing (see
    `sharded_attention`)."""
    taken = inspect.signature(fn).parameters
    defaults = {name: parameter.default for name, parameter
                in inspect.signature(registry.get(op).fn).parameters.items()}
    kwargs = {}
    for name, value in op_kwargs.items():
        if name in taken:
            kwargs[name] = value
        elif name in ("implementation", "interpret") and "implementation" not in taken:
            if name == "implementation" and value not in (None, "xla", ("xla",)):
                raise ValueError(
                    f"attention {op!r}: its sequence-parallel form {fn.__name__} runs the "
                    f"XLA reference; implementation={value!r} is not available there (use "
                    f"None or 'xla')")
        elif name not in defaults or value != defaults[name]:
            accepted = ", ".join(name for name in taken if name not in ("q", "k", "v", "axis_name"))
            raise ValueError(
                f"attention {op!r}: its sequence-parallel form {fn.__name__} does not take "
                f"{name}={value!r}; it takes {accepted}")
    return kwargs
