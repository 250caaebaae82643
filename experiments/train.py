r"""Trains a model described by a config file.

    python -m experiments.train --config=configs/llsa_pixel.py [--workdir=DIR]
    python -m experiments.train --config=configs/llsa_pixel.py:res=64,attention=dense \
        --config.total_steps=2000

Writes checkpoints, metrics.jsonl, TensorBoard events and sample grids to --workdir
(default `workdirs/<config file name>`), and resumes from it when run again.
"""

from __future__ import annotations

import pathlib

from absl import app, flags, logging
from ml_collections import config_flags

from lla.training.loop import train

config_flags.DEFINE_config_file("config", None, "config file, optionally file.py:arg",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "where checkpoints, metrics and samples go "
                    "(default: workdirs/<config name>)")
flags.mark_flags_as_required(["config"])
FLAGS = flags.FLAGS


def main(argv) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
    config_path = flags.FLAGS["config"].config_filename
    workdir = FLAGS.workdir or pathlib.Path("workdirs") / pathlib.Path(
        config_path.split(":")[0]).stem
    print(f"workdir: {workdir}")
    train(FLAGS.config, workdir)


if __name__ == "__main__":
    app.run(main)
