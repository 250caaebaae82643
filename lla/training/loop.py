"""The training loop behind `python -m experiments.train`, the same for every model family:
the config names the data, the objective and the model (`Experiment`); AdamW + EMA, data
parallelism over all devices, Orbax checkpoints with automatic resume, metrics, a progress bar
and the objective's periodic evaluation (sample grids for generative models).

Resuming: the latest checkpoint in `<workdir>/checkpoints` restores the train state and the
data position (the batch of global step s is a pure function of (seed, s)), and every
step's randomness is derived from (seed, step); a run killed and restarted therefore
continues exactly as an uninterrupted run would.
"""

from __future__ import annotations

import json
import pathlib
import time

import jax
import ml_collections
from tqdm import tqdm

from lla import data
from lla.data.imaging import save_png
from lla.training import sharding
from lla.training.checkpoint import Checkpointer
from lla.training.experiment import Experiment
from lla.training.metrics import MetricWriter


def _save_config(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> None:
    path = workdir / "config.json"
    text = config.to_json_best_effort(indent=1, sort_keys=True)
    if path.exists() and json.loads(path.read_text()) != json.loads(text):
        print(f"note: {path} differs from this run's config; the checkpoint's run used it "
              f"(kept as config.json, this run's saved as config.resumed.json)")
        path = workdir / "config.resumed.json"
    path.write_text(text + "\n")


def train(config: ml_collections.ConfigDict, workdir: str | pathlib.Path):
    """Trains to `config.total_steps`, resuming from `workdir` if it holds checkpoints.

    Returns the final train state.
    """
    if config.get("distributed"):
        jax.distributed.initialize()
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    is_chief = jax.process_index() == 0
    mesh = sharding.data_mesh()
    if config.batch_size % mesh.size:
        raise ValueError(f"batch_size {config.batch_size} must be a multiple of the "
                         f"{mesh.size} devices")
    experiment = Experiment.from_config(config)
    state = experiment.initial_state(mesh)

    checkpointer = Checkpointer(workdir, keep=config.keep_checkpoints)
    start = checkpointer.latest_step() or 0
    if start:
        state, meta = checkpointer.restore(start, state)
        assert meta["data_step"] == start == int(state.step), (meta, start, state.step)
        print(f"resumed from {workdir}/checkpoints/{start}")
    if is_chief:
        _save_config(config, workdir)
    writer = MetricWriter(workdir, enabled=is_chief)
    step_fn = jax.jit(experiment.train_step(), donate_argnums=0)
    evaluate = experiment.objective.evaluator(experiment.model, experiment.source)
    batches = data.batches(experiment.source, batch_size=config.batch_size, seed=config.seed,
                           start_step=start, process_index=jax.process_index(),
                           process_count=jax.process_count())

    progress = tqdm(total=config.total_steps, initial=start, disable=not is_chief,
                    desc="train", unit="step", dynamic_ncols=True)
    try:
        state = _run(state, range(start + 1, config.total_steps + 1), step_fn, batches, mesh,
                     config, workdir, checkpointer, writer, evaluate, progress,
                     experiment.tokens_per_step())
    finally:
        progress.close()
        checkpointer.wait()
        checkpointer.close()
        writer.close()
    return state


def _run(state, steps, step_fn, batches, mesh, config, workdir, checkpointer, writer, evaluate,
         progress, tokens_per_step):
    last_time, last_step = time.perf_counter(), steps.start - 1
    for step in steps:
        state, metrics = step_fn(state, sharding.global_batch(next(batches), mesh))
        progress.update(1)
        if step % config.log_every == 0 or step == config.total_steps:
            metrics = {name: float(value) for name, value in metrics.items()}
            now = time.perf_counter()
            metrics["steps_per_s"] = (step - last_step) / (now - last_time)
            metrics["tokens_per_s"] = metrics["steps_per_s"] * tokens_per_step
            last_time, last_step = now, step
            writer.write(step, metrics)
            progress.set_postfix(loss=f"{metrics['loss']:.4f}",
                                 steps_s=f"{metrics['steps_per_s']:.2f}",
                                 tokens_s=f"{metrics['tokens_per_s']:.3g}")
        if step % config.checkpoint_every == 0 or step == config.total_steps:
            checkpointer.save(step, state, {"data_step": step})
        if evaluate and config.eval_every and (step % config.eval_every == 0
                                               or step == config.total_steps):
            _evaluate(evaluate, state, step, config, workdir, writer)
    return state


def _evaluate(evaluate, state, step, config, workdir, writer) -> None:
    """The objective's evaluation on the EMA weights: images to
    `<workdir>/<name>/step_<step>.png` and TensorBoard, scalars to the metrics."""
    scalars, images = evaluate(state.ema_params, jax.random.key(config.seed + 1))
    if jax.process_index() != 0:
        return
    for name, image in images.items():
        save_png(image, workdir / name / f"step_{step:07d}.png")
        writer.write_image(step, name, image)
    if scalars:
        writer.write(step, dict(scalars))
