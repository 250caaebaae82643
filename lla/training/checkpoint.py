"""Orbax checkpoints of the train state: atomic, keep-N, resumable, and robust to damage.

Layout: `<workdir>/checkpoints/<step>/{state,meta}`; Orbax writes each step to a temporary
directory and renames it when complete, so a run killed mid-save leaves the previous
checkpoint intact and the partial one is ignored on restart.

`restore_latest` restores the newest checkpoint that loads. Those newer that do not (a
truncated data file, a missing `_METADATA`, an emptied manifest) are then moved to
`<workdir>/damaged_checkpoints/<step>` with a one-paragraph warning each; when none loads,
nothing is moved and the error lists every reason. Storage errors are summarised in one line,
never dumped. A checkpoint whose arrays
do not have the shapes of the state to restore (a changed model) raises
`CheckpointMismatchError` naming the first differences; it is not damaged and stays in place.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import warnings

import jax
import orbax.checkpoint as ocp

from lla.training.workdir import previous_folder

QUIET_LOGGERS = ("asyncio", "absl", "orbax")


class CheckpointError(RuntimeError):
    """A checkpoint that was asked for by step cannot be restored."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint holds arrays of other names or shapes than the state to restore."""


def summary(error: BaseException, limit: int = 240) -> str:
    """`Type: first line of the message`, at most `limit` characters."""
    lines = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {lines[0] if lines else ''}"
    return text if len(text) <= limit else text[:limit - 3] + "..."


@contextlib.contextmanager
def _quiet_storage_logs():
    """Orbax and TensorStore log every failed read of a damaged checkpoint (thousands of
    lines); the exception says enough."""
    loggers = [logging.getLogger(name) for name in QUIET_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _key_name(entry) -> str:
    for attribute in ("key", "name", "idx"):
        if hasattr(entry, attribute):
            return str(getattr(entry, attribute))
    return str(entry)


def _shapes(tree) -> dict[str, tuple]:
    """{"params.block0.attention.key.kernel": (shape, dtype)} of the array leaves."""
    return {".".join(_key_name(entry) for entry in path): (tuple(leaf.shape), str(leaf.dtype))
            for path, leaf in jax.tree.leaves_with_path(tree)}


class Checkpointer:
    """Saves and restores (state, meta) pairs; meta is a small JSON dict (e.g. data step)."""

    def __init__(self, workdir: str | os.PathLike, *, keep: int = 3, moves_files: bool = True,
                 read_only: bool = False):
        """`moves_files`: this process moves damaged or superseded checkpoints (only one
        process of a multi-host run should; the others re-read the folder). `read_only`:
        another run's checkpoints, only read (nothing created, saved, deleted or moved)."""
        self.workdir = pathlib.Path(workdir).absolute()
        self.moves_files = moves_files and not read_only
        self.directory = self.workdir / "checkpoints"
        options = (ocp.CheckpointManagerOptions(read_only=True, create=False,
                                                save_interval_steps=0) if read_only
                   else ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))
        with _quiet_storage_logs() if read_only else contextlib.nullcontext():
            self._manager = ocp.CheckpointManager(  # read-only: Orbax says so in a warning
                self.directory, options=options,
                item_handlers={"state": ocp.StandardCheckpointHandler(),
                               "meta": ocp.JsonCheckpointHandler()})

    def steps(self) -> list[int]:
        """The complete checkpoints' steps, ascending."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None."""
        return self._manager.latest_step()

    def save(self, step: int, state, meta: dict) -> None:
        """Starts saving (state, meta) as checkpoint `step` (asynchronous; see `wait`).

        Raises:
          CheckpointError: Orbax declined to save (e.g. a checkpoint of this step or a later
            one exists that this process does not know of).
        """
        saved = self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))
        if not saved:
            raise CheckpointError(f"checkpoint {step} was not saved: {self.directory} already "
                                  f"holds steps {self.steps()}")

    def restore(self, step: int, like):
        """(state shaped and sharded like `like`, meta) of checkpoint `step`.

        `like` holds arrays or `jax.ShapeDtypeStruct`s with shardings; each saved array is
        read straight into its leaf's sharding, so a checkpoint written on one mesh (say 8
        devices, fsdp = 4) restores onto any other (1 device, or 4 with fsdp = 2).

        Raises:
          CheckpointMismatchError: its arrays differ in names or shapes from `like`.
          CheckpointError: it cannot be read (damaged); the message is one line.
        """
        with _quiet_storage_logs():
            self._check_shapes(step, like)
            abstract = jax.tree.map(
                lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), like)
            try:
                restored = self._manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
            except Exception as error:  # storage errors come in many types
                raise CheckpointError(f"checkpoint {step} cannot be read ({summary(error)})"
                                      ) from None
        return restored.state, restored.meta

    def _check_shapes(self, step: int, like) -> None:
        try:
            saved = self._manager.item_metadata(step)["state"]
        except Exception as error:
            raise CheckpointError(f"checkpoint {step} has unreadable metadata "
                                  f"({summary(error)})") from None
        if saved is None:
            raise CheckpointError(f"checkpoint {step} has no readable array metadata "
                                  f"(state/_METADATA missing?)")
        saved, wanted = _shapes(saved), _shapes(like)
        if saved == wanted:
            return
        differences = [f"{name}: saved {saved.get(name, 'absent')}, wanted "
                       f"{wanted.get(name, 'absent')}"
                       for name in sorted(set(saved) | set(wanted))
                       if saved.get(name) != wanted.get(name)]
        raise CheckpointMismatchError(
            f"checkpoint {step} holds another model's state ({len(differences)} arrays "
            f"differ; first: {'; '.join(differences[:3])})")

    def restore_latest(self, like, *, step: int | None = None):
        """(step, state, meta) of the newest checkpoint that restores, or of exactly `step`;
        None when there are no checkpoints.

        Newer checkpoints that failed are moved aside (see the module docstring) with a
        warning each, once an older one has loaded; an explicit `step` is never replaced.

        Raises:
          CheckpointMismatchError: the newest checkpoint holds another model's state.
          CheckpointError: `step` is given and missing or unreadable, or no checkpoint
            loads (each reason listed; nothing is moved, no run restarts from step 0).
        """
        steps = self.steps()
        if step is not None:
            self.require(step)
            return (step, *self.restore(step, like))
        failures = []
        for candidate in reversed(steps):
            try:
                restored = self.restore(candidate, like)
            except CheckpointMismatchError:
                raise
            except CheckpointError as error:
                failures.append((candidate, error))
                continue
            for failed, error in failures:
                moved = self._move_aside(failed)
                warnings.warn(f"{error}; moved it to {moved} (delete it when you no longer "
                              f"need it); restoring checkpoint {candidate} instead.",
                              stacklevel=2)
            return (candidate, *restored)
        if failures:
            reasons = "; ".join(str(error) for _, error in failures)
            raise CheckpointError(
                f"no checkpoint in {self.directory} can be restored ({reasons}). Nothing was "
                f"moved. If they are damaged, start over with --restart (they are kept in "
                f"<workdir>/previous/), or move the damaged ones away yourself.")
        return None

    def require(self, step: int) -> None:
        """Raises CheckpointError, listing the steps there are, unless `step` exists."""
        if step not in self.steps():
            raise CheckpointError(f"no checkpoint {step} in {self.directory}; checkpoints: "
                                  f"{self.steps() or 'none'}")

    def move_aside_after(self, step: int) -> pathlib.Path | None:
        """Moves the checkpoints later than `step` to `<workdir>/previous/<time>/checkpoints/`
        (a run resumed from `step` would write over them); returns that folder, or None."""
        later = [s for s in self.steps() if s > step]
        if not later or not self.moves_files:
            return None
        target = previous_folder(self.workdir) / "checkpoints"
        target.mkdir()
        for s in later:
            os.replace(self.directory / str(s), target / str(s))
        self._manager.reload()
        return target

    def reload(self) -> None:
        """Re-reads the checkpoint folder (after another process moved files)."""
        self._manager.reload()

    def _move_aside(self, step: int) -> pathlib.Path:
        target = self.workdir / "damaged_checkpoints" / str(step)
        if not self.moves_files:
            return target
        while target.exists():
            target = target.with_name(target.name + "+")
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.directory / str(step), target)
        self._manager.reload()
        return target

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases the manager."""
        self._manager.close()
