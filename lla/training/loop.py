"""The training loop behind `python -m experiments.train`, the same for every model family:
the config names the data, the objective and the model (`Experiment`); AdamW + EMA, data
parallelism and FSDP over all devices, Orbax checkpoints with automatic resume, metrics, a
progress bar and the objective's periodic evaluation (sample grids for generative models).

Devices: `config.mesh` (optional; `docs/sharding.md`) lays them out as a ("data", "fsdp",
"sequence") mesh: `{"data": -1, "fsdp": 1, "sequence": 1, "min_shard_size": 16384}` by
default, i.e. pure data parallelism over every device. `fsdp = n` splits each parameter, its
EMA and its AdamW moments over groups of n devices (its largest dimension divisible by n;
leaves under `min_shard_size` elements and leaves nothing divides stay replicated);
`sequence = P` splits each example's tokens over P devices in models that shard their tokens
(the DiT; `docs/sequence_parallel.md`): initialisation, the train step and the evaluation run
under the mesh (`Experiment`); -1 gives an axis the remaining devices. The batch is split
over "data" x "fsdp", so `batch_size` must be a multiple of their product. The mesh is
not part of the run's identity: a checkpoint restores onto any mesh and device count (each
array is read straight into the current mesh's shardings), and the run continues as it would
have on the old one.

Resuming: the newest checkpoint of `<workdir>/checkpoints` that loads restores the train state
and the data position (the batch of global step s is a pure function of (seed, s)), and every
step's randomness is derived from (seed, step); a run killed and restarted therefore
continues exactly as an uninterrupted run would. Around that:
  - everything the config names is built, and the config checked, before the workdir is
    touched, so a bad config leaves nothing behind (`ConfigError`);
  - one trainer per workdir (`workdir.Lock`), checked before the device is used;
  - a resume that would change the model, its data or the objective's structure is refused
    (`ConfigChangedError`) unless allowed; every start is recorded in `config_history.jsonl`;
  - metrics rows past the restored step are dropped;
  - SIGTERM and SIGINT save a checkpoint at the next step boundary and end the run
    (`Preempted`); a second SIGINT stops at once;
  - a non-finite loss or gradient stops the run before anything non-finite is saved
    (`NonFiniteLossError`), or with `config.nonfinite = "skip"` skips those updates.

Fine-tuning: `config.init_from` = another training workdir starts a run that has no
checkpoint of its own from the EMA weights of that workdir's newest checkpoint (as params
and EMA; step 0, a fresh optimizer state, the data from its first batch), as LLSA trains its
128² model from a 32² one. The saved state must have this run's shapes (same model
parameters and optimizer; the attention op, resolution and token count may differ); once
the run has a checkpoint, it resumes from it and `init_from` is not read again.
"""

from __future__ import annotations

import json
import pathlib
import signal
import threading
import time

import jax
import jax.numpy as jnp
import ml_collections
from jax.experimental import multihost_utils
from tqdm import tqdm

from lla import data
from lla.data.imaging import save_png
from lla.training import sharding
from lla.training import workdir as workdirs
from lla.training.checkpoint import Checkpointer, CheckpointMismatchError
from lla.training.experiment import Experiment, upgrade_config
from lla.training.metrics import MetricWriter


class ConfigError(ValueError):
    """The config (or what it names) cannot be trained; nothing was written."""


class ConfigChangedError(ValueError):
    """The workdir's run was started with another model, data or objective setup."""


class Preempted(RuntimeError):  # noqa: N818 - a requested stop, not a failure
    """SIGTERM or SIGINT ended the run after saving a checkpoint; `signal` names it."""

    def __init__(self, message: str, signal_name: str):
        super().__init__(message)
        self.signal = signal_name


class NonFiniteLossError(FloatingPointError):
    """The loss or gradient norm became NaN or infinite."""


def _config_dict(config: ml_collections.ConfigDict) -> dict:
    return json.loads(config.to_json_best_effort(sort_keys=True))


def _latest_step(workdir: pathlib.Path) -> int | None:
    """The newest complete checkpoint of `workdir` (Orbax's view), read without writing."""
    if not (workdir / "checkpoints").is_dir():
        return None
    checkpointer = Checkpointer(workdir, read_only=True)
    try:
        return checkpointer.latest_step()
    finally:
        checkpointer.close()


def _init_source(config: ml_collections.ConfigDict, workdir: pathlib.Path, restart: bool
                 ) -> Checkpointer | None:
    """The checkpoints (read-only) `config.init_from` names when this run starts from
    scratch (`restart`, or the workdir holds no checkpoint), else None; ConfigError, saying
    what would work, when it names no training workdir with a checkpoint."""
    source = config.get("init_from") or ""
    if not isinstance(source, str):
        raise ConfigError(f"config.init_from must be a training workdir (a path) or ''; got "
                          f"{source!r}")
    if not source or (not restart and _latest_step(workdir) is not None):
        return None
    source = pathlib.Path(source)
    if source.absolute() == workdir.absolute():
        raise ConfigError(f"config.init_from is this run's own workdir {workdir}; give the "
                          f"workdir of the run to start from")
    checkpointer = (Checkpointer(source, read_only=True)
                    if (source / "checkpoints").is_dir() else None)
    if checkpointer is None or checkpointer.latest_step() is None:
        if checkpointer is not None:
            checkpointer.close()
        raise ConfigError(f"config.init_from={str(source)!r}: no checkpoint in "
                          f"{source / 'checkpoints'}; give the workdir of a run that saved "
                          f"one (or '' to start from a fresh initialisation)")
    return checkpointer


def _initialised_from(source: Checkpointer, state):
    """`state` (step 0) with params and EMA set to the EMA weights of `source`'s newest
    checkpoint, read into `state`'s shardings; closes `source`. ConfigError when that
    checkpoint's state has other arrays (another model or optimizer)."""
    try:
        step, saved, _ = source.restore_latest(state)
    except CheckpointMismatchError as error:
        raise ConfigError(f"config.init_from: {source.workdir} holds another model or "
                          f"optimizer ({error}); init_from needs the same parameter and "
                          f"optimizer-state shapes") from error
    finally:
        source.close()
    print(f"initialised from {source.directory}/{step} (its EMA weights), step 0")
    return state.replace(params=saved.ema_params,
                         ema_params=jax.tree.map(jnp.copy, saved.ema_params))


def _check_resume_config(workdir: pathlib.Path, config: dict, step: int,
                         experiment: Experiment, allow: bool) -> None:
    """Refuses (ConfigChangedError) to resume checkpoint `step` under a config whose
    structural keys differ from the config in force at that step."""
    try:
        previous = workdirs.config_at(workdir, step)
    except FileNotFoundError:  # checkpoints without a recorded config: nothing to compare
        return
    previous = upgrade_config(ml_collections.ConfigDict(previous)).to_dict()
    changed = workdirs.changed_keys(previous, config, experiment.structural_keys(),
                                    experiment.MOVABLE_KEYS)
    if not changed:
        return
    listing = "\n  ".join(changed)
    if allow:
        print(f"note: resuming {workdir} with a changed setup (--allow_config_change):\n  "
              f"{listing}")
        return
    raise ConfigChangedError(
        f"{workdir} holds a run whose checkpoint {step} was trained with another model, data "
        f"or objective setup; these keys differ:\n  {listing}\nIts weights would continue "
        f"under the new setup. Train in a new --workdir, start over here with --restart (the "
        f"old run is moved to {workdir}/previous/), or resume anyway with "
        f"--allow_config_change.")


class _StopRequests:
    """Catches SIGTERM and SIGINT (main thread only) so the loop can save and stop at the next
    step boundary; a second SIGINT raises KeyboardInterrupt at once."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, enabled: bool):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.received: str | None = None
        self._previous = {}

    def _handle(self, number, frame) -> None:
        if number == signal.SIGINT and self.received is not None:
            raise KeyboardInterrupt
        self.received = self.received or signal.Signals(number).name

    def __enter__(self) -> _StopRequests:
        if self.enabled:
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)


def _sync(name: str) -> None:
    """A barrier across the processes of a multi-host run (after the chief moved files)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def train(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *,
          restore_step: int | None = None, restart: bool = False,
          allow_config_change: bool = False, handle_signals: bool = True):
    """Trains to `config.total_steps`, resuming from `workdir` if it holds checkpoints.

    Args:
      config: the experiment config (see the module docstring of `lla.training.experiment`).
      workdir: where checkpoints, metrics, evaluations and the config history go.
      restore_step: resume from exactly this checkpoint (later ones, and the metrics logged
        after it, are then moved to `<workdir>/previous/`); default: the newest that loads.
      restart: move the outputs of earlier runs to `<workdir>/previous/<time>/` and start
        from step 0.
      allow_config_change: resume even if the model, data or objective setup changed.
      handle_signals: save and stop on SIGTERM / SIGINT (main thread only).

    Returns:
      The final train state.

    Raises:
      ConfigError: a bad config (the workdir is left as it was); ConfigChangedError;
      workdir.WorkdirLockedError; checkpoint.CheckpointMismatchError / CheckpointError;
      Preempted (after saving); NonFiniteLossError.

    Multi-host runs: the chief (process 0) holds the lock and moves files; the others wait at
    a barrier and re-read the checkpoint folder. Preemption signals are handled per process
    (not yet agreed across hosts).
    """
    if config.get("distributed"):
        jax.distributed.initialize()
    if restart and restore_step is not None:
        raise ConfigError("--restart starts from step 0 and --restore_step resumes a "
                          "checkpoint: give one of them")
    try:
        experiment = Experiment.from_config(config)
    except (ValueError, KeyError, FileNotFoundError, NotADirectoryError) as error:
        raise ConfigError(error.args[0] if isinstance(error, KeyError) else str(error)) \
            from error
    config = experiment.config
    try:
        mesh = sharding.make_mesh(config)
        sharding.check_batch_size(config.batch_size, mesh)
    except ValueError as error:
        raise ConfigError(str(error)) from error
    workdir = pathlib.Path(workdir)
    init_source = _init_source(config, workdir, restart)
    created = not workdir.exists()
    workdir.mkdir(parents=True, exist_ok=True)
    is_chief = jax.process_index() == 0
    lock = workdirs.Lock(workdir)
    checkpointer = writer = progress = None
    try:
        if is_chief:
            lock.acquire()  # before touching the device: a second trainer leaves at once
        try:
            state = experiment.initial_state(mesh)  # traces the model: bad attention args
            if init_source is not None:  # this run has no checkpoint to resume
                state, init_source = _initialised_from(init_source, state), None
        except (ValueError, KeyError) as error:
            lock.release()
            if created and not any(workdir.iterdir()):
                workdir.rmdir()
            raise ConfigError(error.args[0] if isinstance(error, KeyError) else str(error)) \
                from error
        if restart and is_chief:
            moved = workdirs.move_aside(workdir)
            if moved:
                print(f"--restart: moved the earlier run to {moved}")
        _sync("lla-restart")
        config_dict = _config_dict(config)
        checkpointer = Checkpointer(workdir, keep=config.keep_checkpoints, moves_files=is_chief)
        target = restore_step if restore_step is not None else checkpointer.latest_step()
        if target is not None:
            _check_resume_config(workdir, config_dict, target, experiment,
                                 allow_config_change)
        restored = checkpointer.restore_latest(state, step=restore_step)
        _sync("lla-restored")
        start = 0
        if restored:
            start, state, meta = restored
            assert meta["data_step"] == start == int(state.step), (meta, start, state.step)
            print(f"resumed from {checkpointer.directory}/{start}")
        kept = None
        if restore_step is not None and is_chief:
            kept = checkpointer.move_aside_after(restore_step)
            if kept:
                print(f"--restore_step={restore_step}: moved the later checkpoints to {kept}")
        _sync("lla-superseded")
        checkpointer.reload()
        if is_chief:
            dropped = workdirs.truncate_metrics(
                workdir, start, keep_dropped=kept.parent / workdirs.METRICS if kept else None)
            if dropped:
                print(f"dropped {dropped} metrics rows logged after step {start}")
            workdirs.record_start(workdir, start, config_dict)
        writer = MetricWriter(workdir, enabled=is_chief)
        step_fn = experiment.sharded_train_step(mesh, state)
        evaluate = experiment.evaluator(mesh)
        batches = data.batches(experiment.source, batch_size=config.batch_size,
                               seed=config.seed, start_step=start,
                               process_index=jax.process_index(),
                               process_count=jax.process_count())
        progress = tqdm(total=config.total_steps, initial=start, disable=not is_chief,
                        desc="train", unit="step", dynamic_ncols=True)
        with _StopRequests(handle_signals) as stops:
            state = _run(state, range(start + 1, config.total_steps + 1), step_fn, batches,
                         mesh, config, workdir, checkpointer, writer, evaluate, progress,
                         experiment.tokens_per_step(), stops)
    finally:
        for closable in (progress, checkpointer, init_source, writer):
            if closable is not None:
                if closable is checkpointer:
                    checkpointer.wait()
                closable.close()
        lock.release()
    return state


@jax.jit
def _track_nonfinite(first_bad, skipped, step, nonfinite):
    """(first non-finite step or 0, non-finite steps since the last log), on the device."""
    bad = nonfinite > 0
    return jnp.where((first_bad == 0) & bad, step, first_bad), skipped + bad.astype(jnp.int32)


def _run(state, steps, step_fn, batches, mesh, config, workdir, checkpointer, writer, evaluate,
         progress, tokens_per_step, stops):
    last_time, last_step = time.perf_counter(), steps.start - 1
    first_bad, skipped = jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32)
    stop_on_nonfinite = config.get("nonfinite", "stop") == "stop"

    def check_finite(step):
        bad = int(first_bad)
        if stop_on_nonfinite and bad:
            raise NonFiniteLossError(
                f"the loss or gradient became non-finite at step {bad} (checked at step "
                f"{step}); stopped without saving it. The latest checkpoint is step "
                f"{checkpointer.latest_step() or 'none'}. Lower the learning rate, or set "
                f"--config.nonfinite=skip to skip such updates.")

    for step in steps:
        state, metrics = step_fn(state, sharding.global_batch(next(batches), mesh))
        first_bad, skipped = _track_nonfinite(first_bad, skipped, step, metrics["nonfinite"])
        progress.update(1)
        last = step == config.total_steps
        if step % config.log_every == 0 or last:
            check_finite(step)
            metrics = {name: float(value) for name, value in metrics.items()
                       if name != "nonfinite"}
            if not stop_on_nonfinite:
                metrics["skipped_updates"] = float(skipped)
                skipped = jnp.zeros((), jnp.int32)
            now = time.perf_counter()
            metrics["steps_per_s"] = (step - last_step) / (now - last_time)
            metrics["tokens_per_s"] = metrics["steps_per_s"] * tokens_per_step
            last_time, last_step = now, step
            writer.write(step, metrics)
            progress.set_postfix(loss=f"{metrics['loss']:.4f}",
                                 steps_s=f"{metrics['steps_per_s']:.2f}",
                                 tokens_s=f"{metrics['tokens_per_s']:.3g}")
        if stops.received and not last:
            print(f"\nreceived {stops.received}: saving a checkpoint of step {step}",
                  flush=True)
        if step % config.checkpoint_every == 0 or last or stops.received:
            check_finite(step)
            checkpointer.save(step, state, {"data_step": step})
        if stops.received and not last:
            checkpointer.wait()
            raise Preempted(f"{stops.received}: saved checkpoint {step} in "
                            f"{checkpointer.directory}; run the same command to resume",
                            stops.received)
        if evaluate and config.eval_every and (step % config.eval_every == 0 or last):
            check_finite(step)
            _evaluate(evaluate, state, step, config, workdir, writer)
    return state


def _evaluate(evaluate, state, step, config, workdir, writer) -> None:
    """The objective's evaluation on the EMA weights: images to
    `<workdir>/<name>/step_<step>.png` and TensorBoard, texts to
    `<workdir>/<name>/step_<step>.txt`, scalars to the metrics."""
    evaluation = evaluate(state.ema_params, jax.random.key(config.seed + 1))
    if jax.process_index() != 0:
        return
    for name, image in evaluation.images.items():
        save_png(image, workdir / name / f"step_{step:07d}.png")
        writer.write_image(step, name, image)
    for name, text in evaluation.texts.items():
        path = workdir / name / f"step_{step:07d}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    if evaluation.scalars:
        writer.write(step, dict(evaluation.scalars))
