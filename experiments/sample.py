r"""Writes a PNG grid of samples from a generative training run's checkpoint (EMA weights by
default; the run's objective provides the sampler, e.g. flow matching's Euler sampler).

    python -m experiments.sample --workdir=workdirs/llsa_pixel [--step=300] [--count=16] \
        [--steps=20] [--guidance_scale=1.0] [--out=samples.png] [--raw_weights]
"""

from __future__ import annotations

import pathlib

import jax
import ml_collections
from absl import app, flags, logging

from lla.data.imaging import image_grid, save_png
from lla.training import sharding
from lla.training import workdir as workdirs
from lla.training.checkpoint import Checkpointer
from lla.training.experiment import Experiment

flags.DEFINE_string("workdir", None, "a training run's workdir (the config in force at the "
                    "checkpoint's step comes from its config history)")
flags.DEFINE_integer("step", None, "checkpoint step (default: the latest)")
flags.DEFINE_integer("count", 16, "number of images")
flags.DEFINE_integer("steps", 20, "Euler steps")
flags.DEFINE_float("guidance_scale", 1.0, "classifier-free guidance (class-conditional runs)")
flags.DEFINE_integer("seed", 0, "sampling seed")
flags.DEFINE_string("out", None, "PNG path (default: <workdir>/samples/sample_<step>.png)")
flags.DEFINE_bool("raw_weights", False, "use the raw instead of the EMA weights")
flags.mark_flags_as_required(["workdir"])
FLAGS = flags.FLAGS


def main(argv) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)
    workdir = pathlib.Path(FLAGS.workdir)
    checkpointer = Checkpointer(workdir)
    step = FLAGS.step or checkpointer.latest_step()
    if step is None:
        raise SystemExit(f"no checkpoint in {workdir / 'checkpoints'}")
    config = ml_collections.ConfigDict(workdirs.config_at(workdir, step))
    experiment = Experiment.from_config(config)
    if not hasattr(experiment.objective, "sampler"):
        raise SystemExit(f"objective {config.objective.name!r} of {workdir} does not sample "
                         f"images")
    state, _ = checkpointer.restore(step, experiment.initial_state(sharding.data_mesh()))
    checkpointer.close()
    sampler = experiment.objective.sampler(experiment.model, count=FLAGS.count,
                                           steps=FLAGS.steps,
                                           guidance_scale=FLAGS.guidance_scale)
    params = state.params if FLAGS.raw_weights else state.ema_params
    images = jax.device_get(sampler(params, jax.random.key(FLAGS.seed)))
    out = FLAGS.out or workdir / "samples" / f"sample_{step:07d}.png"
    print(f"wrote {save_png(image_grid(images), out)}")


if __name__ == "__main__":
    app.run(main)
