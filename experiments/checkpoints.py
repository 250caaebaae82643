"""A finished or running training run's experiment and weights, for the scripts that use them
(`experiments.sample`, `experiments.generate`). No flags here, so any script can import it."""

from __future__ import annotations

import pathlib
from collections.abc import Callable

import ml_collections

from lla.training import sharding
from lla.training import workdir as workdirs
from lla.training.checkpoint import Checkpointer
from lla.training.experiment import Experiment
from lla.training.state import TrainState


def restore(workdir: str | pathlib.Path, step: int | None = None,
            check: Callable[[Experiment], None] | None = None
            ) -> tuple[Experiment, TrainState, int]:
    """(the experiment rebuilt from the config in force at the checkpoint's step (the
    workdir's config history), its restored train state, the step).

    Args:
      workdir: a training run's workdir.
      step: the checkpoint step (default: the latest).
      check: called with the experiment before the weights are read, to refuse a run the
        caller cannot use (e.g. by raising SystemExit).

    Raises:
      SystemExit: the workdir holds no checkpoint.
    """
    workdir = pathlib.Path(workdir)
    checkpointer = Checkpointer(workdir)
    step = step or checkpointer.latest_step()
    if step is None:
        raise SystemExit(f"no checkpoint in {workdir / 'checkpoints'}")
    experiment = Experiment.from_config(
        ml_collections.ConfigDict(workdirs.config_at(workdir, step)))
    if check is not None:
        check(experiment)
    state, _ = checkpointer.restore(step, experiment.initial_state(sharding.data_mesh()))
    checkpointer.close()
    return experiment, state, step
