"""Data parallelism, FSDP and sequence parallelism over a 3-D device mesh
("data", "fsdp", "sequence") with `jax.sharding`.

The mesh comes from `config.mesh` (all fields optional; a config without it trains
data-parallel over every device, as before):

    config.mesh = ml_collections.ConfigDict({
        "data": -1,                # batch replicas; -1: the devices the other axes leave
        "fsdp": 1,                 # devices each parameter (and its optimizer state) is split over
        "sequence": 1,             # devices each example's tokens are split over
        "min_shard_size": 2**14,   # leaves with fewer elements stay replicated
    })

The batch is split over "data" and "fsdp" jointly (`P(("data", "fsdp"))`): every device
sees batch_size / (data · fsdp) rows, the same rows on the `sequence` devices of a group.
A model that shards its tokens (the DiT's `sequence_axis`, `lla.attention.parallel`) splits
those rows' tokens over "sequence" when it is traced under the mesh (`jax.set_mesh`); the
mesh's axes are Auto, so XLA's partitioner does the rest. Parameters follow one shape-only
rule (`leaf_spec`), so optimizer moments and EMA parameters, which have their parameter's
shape, are split exactly like it, and every model family is covered without per-model code
(the models carry no logical-axis annotations). `docs/sharding.md` gives the reasons and
the memory arithmetic; `docs/sequence_parallel.md` the sequence axis.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXES = ("data", "fsdp", "sequence")
BATCH_AXES = ("data", "fsdp")  # the batch axis is split over these jointly
SEQUENCE_AXIS = "sequence"  # the token axis of models that shard their tokens
MIN_SHARD_SIZE = 2 ** 14
MESH_FIELDS = (*AXES, "min_shard_size")


def mesh_fields(config) -> dict:
    """`config.mesh` (a ConfigDict, dict or None) with the defaults filled in.

    Raises:
      ValueError: an unknown field, or a size that is not an int (or -1 for at most one axis).
    """
    given = (config.get("mesh") if config is not None else None) or {}
    given = given.to_dict() if hasattr(given, "to_dict") else dict(given)
    unknown = sorted(set(given) - set(MESH_FIELDS))
    if unknown:
        raise ValueError(f"config.mesh has unknown fields {unknown}; known: "
                         f"{', '.join(MESH_FIELDS)}")
    fields = {"data": -1, "fsdp": 1, "sequence": 1, "min_shard_size": MIN_SHARD_SIZE, **given}
    for name, value in fields.items():
        low = 0 if name == "min_shard_size" else 1
        if isinstance(value, bool) or not isinstance(value, int) or (
                value < low and not (name in AXES and value == -1)):
            raise ValueError(f"config.mesh.{name} must be an int >= {low}"
                             f"{' or -1 (the remaining devices)' if name in AXES else ''}; "
                             f"got {value!r}")
    return fields


def mesh_shape(sizes: Mapping[str, int], device_count: int) -> tuple[int, ...]:
    """Axis sizes in `AXES` order with the one -1 resolved against `device_count`.

    Raises:
      ValueError: more than one -1, or sizes whose product is not `device_count`.
    """
    asked = {axis: sizes.get(axis, 1) for axis in AXES}
    free = [axis for axis, size in asked.items() if size == -1]
    if len(free) > 1:
        raise ValueError(f"config.mesh: only one axis may be -1; got {asked}")
    fixed = math.prod(size for size in asked.values() if size != -1)
    resolved = dict(asked)
    if free:
        if device_count % fixed:
            raise ValueError(f"config.mesh {asked}: {device_count} devices cannot be split "
                             f"into groups of {fixed}")
        resolved[free[0]] = device_count // fixed
    if math.prod(resolved.values()) != device_count:
        raise ValueError(f"config.mesh {asked} needs {math.prod(resolved.values())} devices; "
                         f"there are {device_count}. Use -1 for one axis to take the "
                         f"remaining devices")
    return tuple(resolved.values())


def make_mesh(config=None, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The ("data", "fsdp", "sequence") mesh `config.mesh` asks for, over `devices`
    (default: all devices of all hosts, in `jax.devices()` order, so a sequence group, and
    an fsdp group of sequence groups, lies on one host when fsdp · sequence divides the
    local device count). Its axes are `AxisType.Auto` (XLA propagates shardings)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(mesh_fields(config), len(devices))
    return Mesh(np.asarray(devices).reshape(shape), AXES,
                axis_types=(jax.sharding.AxisType.Auto,) * len(AXES))


def data_mesh() -> Mesh:
    """All devices on "data" (fsdp = sequence = 1): pure data parallelism."""
    return make_mesh()


def leaf_spec(shape: Sequence[int], fsdp: int, min_shard_size: int = MIN_SHARD_SIZE) -> P:
    """Where one array of `shape` lives: its largest dimension divisible by `fsdp` (the first
    of equals) split over "fsdp", or replicated (`P()`) when fsdp is 1, the array has fewer
    than `min_shard_size` elements, or no dimension divides."""
    if fsdp == 1 or math.prod(shape) < min_shard_size:
        return P()
    candidates = [axis for axis, size in enumerate(shape) if size % fsdp == 0]
    if not candidates:
        return P()
    axis = max(candidates, key=lambda a: (shape[a], -a))
    return P(*(["fsdp" if a == axis else None for a in range(len(shape))]))


def state_shardings(tree, mesh: Mesh, min_shard_size: int = MIN_SHARD_SIZE):
    """A NamedSharding per array leaf of `tree` (arrays or `jax.ShapeDtypeStruct`s) by
    `leaf_spec`: a train state's parameters, EMA and optimizer moments alike. A mesh
    without an "fsdp" axis (e.g. a 1-D "data" mesh) replicates everything."""
    fsdp = mesh.shape.get("fsdp", 1)
    return jax.tree.map(
        lambda leaf: NamedSharding(mesh, leaf_spec(leaf.shape, fsdp, min_shard_size)), tree)


def replicated(mesh: Mesh) -> NamedSharding:
    """A whole copy on every device of `mesh`."""
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over "data" and "fsdp" jointly (those of them the mesh
    has), replicated over "sequence"."""
    return NamedSharding(mesh, P(_batch_axes(mesh)))


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
    """Raises ValueError unless `batch_size` splits evenly over the mesh's "data" x "fsdp"
    devices."""
    axes = _batch_axes(mesh)
    replicas = math.prod(mesh.shape[axis] for axis in axes)
    if batch_size % replicas:
        sizes = " x ".join(f"{axis} {mesh.shape[axis]}" for axis in axes)
        raise ValueError(f"batch_size {batch_size} must be a multiple of the {replicas} "
                         f"devices ({sizes}); the batch is split over {' x '.join(axes)}")


def _batch_axes(mesh: Mesh) -> tuple[str, ...]:
    return tuple(axis for axis in BATCH_AXES if axis in mesh.shape)


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's rows -> global arrays split along the batch axis over every device."""
    sharding = batch_sharding(mesh)
    return {name: jax.make_array_from_process_local_data(sharding, value)
            for name, value in local_batch.items()}
