"""The training loop behind `python -m experiments.train`: data, DiT, flow matching, AdamW +
EMA, data parallelism over all devices, Orbax checkpoints with automatic resume, metrics,
progress bar and periodic sample grids.

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
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm import tqdm

from lla import data
from lla.diffusion import flow_matching
from lla.models.dit import PRESETS, DiT
from lla.training import optim, samples, sharding
from lla.training import state as train_state
from lla.training.checkpoint import Checkpointer
from lla.training.metrics import MetricWriter
from lla.training.step import make_train_step


def build_model(config: ml_collections.ConfigDict, source) -> DiT:
    """The DiT described by `config.model` for images of `source`."""
    model = config.model
    return DiT(resolution=config.resolution, channels=source.channels,
               patch_size=model.patch_size,
               num_classes=source.num_classes if model.class_conditional else 0,
               label_dropout=model.label_dropout, attention=model.attention,
               attention_kwargs=dict(model.attention_kwargs),
               dtype=jnp.dtype(model.dtype), **PRESETS[model.preset])


def initial_state(model: DiT, optimizer, config, mesh):
    """Step-0 train state, replicated over the mesh."""
    images = jnp.zeros((1, model.resolution, model.resolution, model.channels))
    labels = jnp.zeros((1,), jnp.int32) if model.num_classes else None
    params = jax.jit(model.init)(jax.random.key(config.seed), images, jnp.zeros((1,)), labels)
    return sharding.replicate(train_state.create(params, optimizer), mesh)


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
    source = data.get_source(config.data.name, resolution=config.resolution,
                             **dict(config.data.kwargs))
    model = build_model(config, source)
    optimizer = optim.make_optimizer(**dict(config.optimizer))
    scale = config.noise_scale or flow_matching.noise_scale(config.resolution)
    state = initial_state(model, optimizer, config, mesh)

    checkpointer = Checkpointer(workdir, keep=config.keep_checkpoints)
    start = checkpointer.latest_step() or 0
    if start:
        state, meta = checkpointer.restore(start, state)
        assert meta["data_step"] == start == int(state.step), (meta, start, state.step)
        print(f"resumed from {workdir}/checkpoints/{start}")
    if is_chief:
        _save_config(config, workdir)
    writer = MetricWriter(workdir, enabled=is_chief)
    step_fn = jax.jit(make_train_step(model, optimizer, scale=scale, seed=config.seed,
                                      ema=dict(config.ema)), donate_argnums=0)
    sampler = samples.make_sampler(model, count=config.sampling.count, scale=scale,
                                   steps=config.sampling.steps,
                                   guidance_scale=config.sampling.guidance_scale)
    batches = data.batches(source, batch_size=config.batch_size, seed=config.seed,
                           start_step=start, process_index=jax.process_index(),
                           process_count=jax.process_count())
    tokens_per_step = config.batch_size * (config.resolution // config.model.patch_size) ** 2

    progress = tqdm(total=config.total_steps, initial=start, disable=not is_chief,
                    desc="train", unit="step", dynamic_ncols=True)
    try:
        state = _run(state, range(start + 1, config.total_steps + 1), step_fn, batches, mesh,
                     config, workdir, checkpointer, writer, sampler, progress,
                     tokens_per_step)
    finally:
        progress.close()
        checkpointer.wait()
        checkpointer.close()
        writer.close()
    return state


def _run(state, steps, step_fn, batches, mesh, config, workdir, checkpointer, writer, sampler,
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
        if config.sample_every and (step % config.sample_every == 0
                                    or step == config.total_steps):
            _write_samples(sampler, state, step, config, workdir, writer)
    return state


def _write_samples(sampler, state, step, config, workdir, writer) -> None:
    """EMA-weight samples -> `<workdir>/samples/step_<step>.png` and their statistics."""
    images = np.asarray(sampler(state.ema_params, jax.random.key(config.seed + 1)))
    if jax.process_index() != 0:
        return
    grid = samples.image_grid(images)
    samples.save_png(grid, workdir / "samples" / f"step_{step:07d}.png")
    writer.write_image(step, "samples", grid)
    if config.data.name == "procedural":
        statistics = data.shape_statistics(images.astype(np.float32) / 127.5 - 1.0)
        writer.write(step, {f"samples/{name}": value for name, value in statistics.items()})
