r"""Writes a PNG grid of samples from a generative training run's checkpoint (EMA weights by
default; the run's objective provides the sampler, e.g. flow matching's Euler sampler).

    python -m experiments.sample --workdir=workdirs/llsa_pixel [--step=300] [--count=16] \
        [--steps=20] [--guidance_scale=1.0] [--out=samples.png] [--raw_weights]
"""

from __future__ import annotations

import pathlib

import jax
from absl import app, flags, logging

from experiments.checkpoints import restore
from lla.data.imaging import image_grid, save_png

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

    def samples_images(experiment):
        if not hasattr(experiment.objective, "sampler"):
            raise SystemExit(f"objective {experiment.config.objective.name!r} of {workdir} "
                             f"does not sample images")

    experiment, state, step = restore(workdir, FLAGS.step, check=samples_images)
    sampler = experiment.objective.sampler(experiment.model, count=FLAGS.count,
                                           steps=FLAGS.steps,
                                           guidance_scale=FLAGS.guidance_scale)
    params = state.params if FLAGS.raw_weights else state.ema_params
    images = jax.device_get(sampler(params, jax.random.key(FLAGS.seed)))
    out = FLAGS.out or workdir / "samples" / f"sample_{step:07d}.png"
    print(f"wrote {save_png(image_grid(images), out)}")


if __name__ == "__main__":
    app.run(main)
