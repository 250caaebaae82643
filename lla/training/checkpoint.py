"""Orbax checkpoints of the train state: atomic, keep-N, resumable.

Layout: `<workdir>/checkpoints/<step>/{state,meta}`; Orbax writes each step to a temporary
directory and renames it when complete, so a run killed mid-save leaves the previous
checkpoint intact and the partial one is ignored on restart.
"""

from __future__ import annotations

import pathlib

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    """Saves and restores (state, meta) pairs; meta is a small JSON dict (e.g. data step)."""

    def __init__(self, workdir: str | pathlib.Path, *, keep: int = 3):
        directory = pathlib.Path(workdir).absolute() / "checkpoints"
        self._manager = ocp.CheckpointManager(
            directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state, meta: dict) -> None:
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))

    def restore(self, step: int, like):
        """(state shaped and sharded like `like`, meta) of checkpoint `step`."""
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), like)
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
        return restored.state, restored.meta

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()
