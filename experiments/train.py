r"""Trains a model described by a config file.

    python -m experiments.train --config=configs/llsa_pixel.py [--workdir=DIR]
    python -m experiments.train --config=configs/llsa_pixel.py:res=64,attention=dense \
        --config.total_steps=2000

Writes checkpoints, metrics.jsonl, TensorBoard events, the config history and sample grids to
--workdir (default `workdirs/<config file name>`), and resumes from it when run again
(`lla.training.loop` says what is checked). --restore_step=N resumes from checkpoint N,
--restart starts over (the earlier run is moved to <workdir>/previous/, not deleted),
--allow_config_change resumes although the model or data setup changed, --mesh=data=-1,fsdp=2
lays the devices out for data parallelism and FSDP, --mesh=data=-1,sequence=2 shards each
image's tokens over pairs of devices (sets `config.mesh`; `docs/sharding.md`,
`docs/sequence_parallel.md`).
SIGTERM / SIGINT save a checkpoint and exit with 143 / 130; refusals (bad config, changed
setup, locked workdir, unreadable checkpoints, non-finite loss) exit with 1 and one message;
bad flags exit with 2; bugs keep their traceback.
"""

from __future__ import annotations

import pathlib
import re
import sys
import warnings

from absl import app, flags, logging
from ml_collections import config_flags

from lla.training.checkpoint import CheckpointError
from lla.training.loop import (
    ConfigChangedError,
    ConfigError,
    NonFiniteLossError,
    Preempted,
    train,
)
from lla.training.workdir import WorkdirLockedError

config_flags.DEFINE_config_file("config", None, "config file, optionally file.py:arg",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "where checkpoints, metrics and samples go "
                    "(default: workdirs/<config name>)")
flags.DEFINE_integer("restore_step", None, "resume from this checkpoint (default: the newest "
                     "that loads); later checkpoints are moved aside")
flags.DEFINE_bool("restart", False, "start from step 0: move the earlier run's outputs to "
                  "<workdir>/previous/<time>/")
flags.DEFINE_bool("allow_config_change", False, "resume even though the model, data or "
                  "objective setup differs from the run in the workdir")
flags.DEFINE_string("mesh", None, "device mesh, e.g. data=-1,fsdp=2 (sets config.mesh; "
                    "fields: data, fsdp, sequence, min_shard_size; default: all devices "
                    "on data)")
flags.mark_flags_as_required(["config"])
FLAGS = flags.FLAGS
EXIT_CODES = {"SIGTERM": 128 + 15, "SIGINT": 128 + 2}


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one plain line ("warning: ..."), without the source location."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def main(argv) -> int:
    del argv
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
    warnings.showwarning = show_warning
    config_path = flags.FLAGS["config"].config_filename
    workdir = FLAGS.workdir or pathlib.Path("workdirs") / pathlib.Path(
        config_path.split(":")[0]).stem
    print(f"workdir: {workdir}")
    config = FLAGS.config
    if FLAGS.mesh:
        try:
            mesh = parse_mesh(FLAGS.mesh)
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr, flush=True)
            return 2
        config = config.copy_and_resolve_references()
        with config.unlocked():
            config.mesh = mesh
    try:
        train(config, workdir, restore_step=FLAGS.restore_step, restart=FLAGS.restart,
              allow_config_change=FLAGS.allow_config_change)
    except Preempted as stopped:
        print(stopped, flush=True)
        return EXIT_CODES[stopped.signal]
    except (ConfigError, ConfigChangedError, WorkdirLockedError, CheckpointError,
            NonFiniteLossError) as error:  # expected refusals: one message, no traceback
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 1
    return 0


def parse_mesh(text: str) -> dict[str, int]:
    """'data=-1,fsdp=2' -> {"data": -1, "fsdp": 2} (checked by the loop)."""
    fields = {}
    for item in filter(None, text.split(",")):
        key, sep, value = (part.strip() for part in item.partition("="))
        if not sep or not value.lstrip("-").isdigit():
            raise ValueError(f"--mesh item {item!r}: expected name=integer, e.g. "
                             f"--mesh=data=-1,fsdp=2")
        fields[key] = int(value)
    return fields


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, but a bad flag or a config file's own error (e.g. an unknown
    attention name) is one line ("error: ...") and exit status 2, not a traceback."""
    try:
        return FLAGS(argv)
    except flags.Error as error:
        last = str(error).strip().splitlines()[-1].strip()
        print(f"error: {re.sub(r'^[A-Za-z]+Error: ', '', last)}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
