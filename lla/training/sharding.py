"""Data parallelism over every device of every host with `jax.sharding`."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P


def data_mesh() -> Mesh:
    """A 1-D mesh named "data" over all devices (all hosts)."""
    return Mesh(np.asarray(jax.devices()), ("data",))


def replicate(tree, mesh: Mesh):
    """Places every leaf on every device of `mesh`."""
    return jax.device_put(tree, NamedSharding(mesh, P()))


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's rows -> global arrays sharded along the batch axis over "data"."""
    sharding = NamedSharding(mesh, P("data"))
    return {name: jax.make_array_from_process_local_data(sharding, value)
            for name, value in local_batch.items()}
