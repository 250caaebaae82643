r"""FID and KID of a generative training run's checkpoint: samples from the run's sampler (EMA
weights by default) against as many real images of the run's own data source, at its
resolution (Inception features, `lla.evaluation.sample_quality`; the real images' features
are cached by (dataset, resolution, count) under `${LLA_CACHE:-~/.cache/lla}/fid/stats/`).

    bash scripts/fetch_fid_weights.sh                    # once: the Inception weights
    python -m experiments.evaluate --workdir=workdirs/llsa_pixel [--step=300] \
        [--count=10000] [--steps=20] [--guidance_scale=1.0] [--batch_size=64] [--seed=0] \
        [--raw_weights] [--kid_subset_size=1000] [--memorisation [--memorisation_threshold=0.33]]

Writes `samples/fid`, `samples/kid_mean`, `samples/kid_std` (`samples_raw/...` with
--raw_weights) at the checkpoint's step into the workdir's metrics (metrics.jsonl and
TensorBoard, as the training loop does) and
`<workdir>/eval/fid_<step>_n<count>_s<steps>_g<guidance>[_raw].json` with the settings, the
scores, the jax version, the device and the seconds taken. The same scores come out of
training evaluations with `--config.objective.fid_count=N` (flow matching).

`--memorisation` (off by default: it reads every training image) also finds each scored
sample's nearest training image in pixel and Inception space (`lla.evaluation.memorisation`):
the training set is the whole (finite) training source, the yardstick the run's `eval_data`
(up to --count of its images) or, without one, leave-one-out over the training images. The
real images' Inception features come from, or go to, the FID reference cache (a whole source
is FID's reference whenever --count >= its size, so for OpenMoji they are free after the first
evaluation); the samples' are computed once more. It adds `memorisation` (baseline, fractions
below the threshold, per-space ratios, the most suspicious samples with their nearest training
examples' indices) to the JSON and writes beside it `<json stem>_memorisation.npz` (per sample:
nearest distances, training indices, ratios) and `<json stem>_memorisation.png` (rows: a
suspicious sample, its nearest training image in pixels, in Inception features).
"""

from __future__ import annotations

import json
import pathlib
import time

import jax
import numpy as np
from absl import app, flags, logging

from experiments.checkpoints import restore
from lla.data.imaging import save_png
from lla.evaluation import fid, inception, memorisation, sample_quality
from lla.training.metrics import MetricWriter

flags.DEFINE_string("workdir", None, "a training run's workdir (the config in force at the "
                    "checkpoint's step comes from its config history)")
flags.DEFINE_integer("step", None, "checkpoint step (default: the latest)")
flags.DEFINE_integer("count", 10_000, "number of samples, and of real images (up to the "
                     "data set's size)")
flags.DEFINE_integer("steps", 20, "sampler steps")
flags.DEFINE_float("guidance_scale", 1.0, "classifier-free guidance (class-conditional runs)")
flags.DEFINE_integer("batch_size", 64, "images per sampler call and Inception batch")
flags.DEFINE_integer("seed", 0, "sampling seed")
flags.DEFINE_bool("raw_weights", False, "use the raw instead of the EMA weights")
flags.DEFINE_integer("kid_subset_size", 1000, "KID subset size (clipped to the set sizes)")
flags.DEFINE_bool("memorisation", False, "also find each sample's nearest training image "
                  "(pixels, Inception features): reads every training image")
flags.DEFINE_float("memorisation_threshold", memorisation.THRESHOLD, "ratio to the held-out "
                   "nearest-training distance below which a sample counts as a likely copy")
# --workdir is checked in main, not marked required: tests import this module into processes
# that parse the global flags for other tools.
FLAGS = flags.FLAGS


def evaluate(workdir: str | pathlib.Path, *, step: int | None = None, count: int = 10_000,
             steps: int = 20, guidance_scale: float = 1.0, batch_size: int = 64,
             seed: int = 0, raw_weights: bool = False, kid_subset_size: int = 1000,
             memorisation_check: bool = False,
             memorisation_threshold: float = memorisation.THRESHOLD,
             progress: bool = True) -> tuple[dict, pathlib.Path]:
    """Scores a checkpoint of `workdir` (module docstring; `memorisation_check` is
    --memorisation); returns (the JSON record, its path), after writing both it and the
    metrics.

    Raises:
      SystemExit: count < 2 or batch_size < 1, no workdir or checkpoint, an objective
        without a sampler, no Inception weights (naming the fetch script), or, with
        `memorisation_check`, an infinite training source; all before the checkpoint is
        read.
    """
    started = time.perf_counter()
    workdir = pathlib.Path(workdir)
    if count < 2:
        raise SystemExit(f"--count must be >= 2 (FID needs a covariance); got {count}")
    if batch_size < 1:
        raise SystemExit(f"--batch_size must be >= 1; got {batch_size}")
    if not workdir.is_dir():
        raise SystemExit(f"no workdir {workdir}")

    def can_score(experiment):  # before the checkpoint is read
        if not hasattr(experiment.objective, "sampler"):
            raise SystemExit(f"objective {experiment.config.objective.name!r} of {workdir} "
                             f"has no sampler: FID scores generated images (e.g. a "
                             f"flow_matching run)")
        try:
            inception.load_params()  # cached for `score`
        except FileNotFoundError as error:
            raise SystemExit(str(error)) from None
        if memorisation_check and experiment.source.num_examples is None:
            raise SystemExit(f"--memorisation needs a finite training set; {workdir} trains "
                             f"on {type(experiment.source).__name__}, which never repeats "
                             "an example")

    experiment, state, step = restore(workdir, step, check=can_score)
    batch = min(batch_size, count)
    sampler = experiment.objective.sampler(experiment.model, count=batch, steps=steps,
                                           guidance_scale=guidance_scale)
    weights = state.params if raw_weights else state.ema_params
    sampled = []  # the scored images, for the memorisation check

    def sample(key):
        images = sampler(weights, key)
        if memorisation_check:
            sampled.append(np.asarray(images))
        return images

    scores = sample_quality.score(sample, experiment.source, count=count, batch_size=batch,
                                  key=jax.random.key(seed), kid_subset_size=kid_subset_size,
                                  progress=progress)
    writer = MetricWriter(workdir)
    writer.write(step, scores.metrics("samples_raw/" if raw_weights else "samples/"))
    writer.close()
    source = experiment.source
    record = {
        "workdir": str(workdir), "step": step, "weights": "raw" if raw_weights else "ema",
        "count": count, "reference_count": scores.reference_count, "steps": steps,
        "guidance_scale": guidance_scale, "batch_size": batch, "seed": seed,
        "dataset": experiment.config.data.name, "reference": scores.reference,
        "resolution": source.resolution, "channels": source.channels,
        "fid": scores.fid, "kid_mean": scores.kid_mean, "kid_std": scores.kid_std,
        "kid_subset_size": scores.kid_subset_size, "feature_network": inception.VERSION,
        "jax": jax.__version__, "device": jax.devices()[0].device_kind,
        "seconds": round(time.perf_counter() - started, 2)}
    name = (f"fid_{step:07d}_n{count}_s{steps}_g{guidance_scale:g}"
            f"{'_raw' if raw_weights else ''}.json")
    path = workdir / "eval" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if memorisation_check:
        record["memorisation"] = check_memorisation(
            experiment, np.concatenate(sampled)[:count], scores.sample_features,
            path.with_suffix(""), count=count, batch_size=batch,
            threshold=memorisation_threshold, progress=progress)
        record["seconds"] = round(time.perf_counter() - started, 2)
    path.write_text(json.dumps(record, indent=1) + "\n")
    return record, path


def real_set(source, count: int, batch_size: int, params: dict, *, progress: bool = True
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(example indices int [n], images uint8 [n, R, R, C], Inception features float32
    [n, 2048]) of FID's reference draw of `source` (`sample_quality.reference_indices`, n =
    min(count, size)); the features are read from, or written to, FID's reference cache."""
    indices = sample_quality.reference_indices(source, count)
    images = np.concatenate(list(sample_quality.real_images(source, indices, batch_size,
                                                            progress=progress)))
    reference = fid.reference(sample_quality.reference_name(source), source.resolution,
                              len(indices), lambda: images, features=lambda batch:
                              sample_quality.padded_features(batch, batch_size, params))
    return indices, images, reference.features


def check_memorisation(experiment, samples: np.ndarray, sample_features: np.ndarray,
                       stem: pathlib.Path, *, count: int, batch_size: int, threshold: float,
                       progress: bool = True) -> dict:
    """`lla.evaluation.memorisation.check` of samples uint8 [n, R, R, C] (with their Inception
    features [n, 2048], as FID computed them) against the whole
    training source, with the run's eval source (up to `count` images) as the held-out set,
    or leave-one-out without one; writes `<stem>_memorisation.npz` and `.png` (module
    docstring) and returns the summary for the JSON (training images named by their example
    indices)."""
    params = inception.load_params()
    source = experiment.source
    train_ids, train, train_features = real_set(source, source.num_examples, batch_size,
                                                params, progress=progress)
    held_out = held_out_features = None
    if experiment.eval_source is not None:
        _, held_out, held_out_features = real_set(experiment.eval_source, count, batch_size,
                                                  params, progress=progress)
    report = memorisation.check(samples, sample_features, train, train_features, held_out,
                                held_out_features)
    arrays = stem.with_name(f"{stem.name}_memorisation.npz")
    np.savez(arrays, **report.per_sample(train_ids))
    grid = save_png(memorisation.suspicious_grid(report, samples, train),
                    stem.with_name(f"{stem.name}_memorisation.png"))
    return {**report.summary(threshold, train_ids), "train": len(train_ids),
            "per_sample": arrays.name, "grid": grid.name}


def main(argv) -> None:
    del argv
    if not FLAGS.workdir:
        raise app.UsageError("--workdir is required: the training run to evaluate")
    logging.set_verbosity(logging.WARNING)
    record, path = evaluate(FLAGS.workdir, step=FLAGS.step, count=FLAGS.count,
                            steps=FLAGS.steps, guidance_scale=FLAGS.guidance_scale,
                            batch_size=FLAGS.batch_size, seed=FLAGS.seed,
                            raw_weights=FLAGS.raw_weights,
                            kid_subset_size=FLAGS.kid_subset_size,
                            memorisation_check=FLAGS.memorisation,
                            memorisation_threshold=FLAGS.memorisation_threshold)
    print(f"step {record['step']}: FID {record['fid']:.3f}, KID {record['kid_mean']:.5f} "
          f"± {record['kid_std']:.5f} ({record['count']} samples, "
          f"{record['reference_count']} real images of {record['dataset']} at "
          f"{record['resolution']} px, {record['seconds']:.0f} s)")
    if "memorisation" in record:
        check = record["memorisation"]
        print(f"memorisation: {check['fraction_below']:.1%} of the samples (real images: "
              f"{check['reference_fraction_below']:.1%}) within "
              f"{check['threshold']:.2g} x the {check['baseline'].replace('_', '-')} nearest-"
              f"training distance; smallest ratio pixels {check['pixel']['ratio_min']:.3f}, "
              f"Inception {check['inception']['ratio_min']:.3f}; grid {check['grid']}")
    print(f"wrote {path}")


if __name__ == "__main__":
    app.run(main)
