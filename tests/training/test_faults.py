"""Fault injection: a training run killed (-9, also mid-save), preempted (SIGTERM), resumed
from a damaged checkpoint, restarted with another config, or started twice on one workdir
ends in an exact resume or a clear refusal, and loses nothing.

Runs that must die are subprocesses driven by DRIVER; the rest run in this process.
"""

from __future__ import annotations

import json
import os
import pathlib
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from lla.training import loop
from lla.training import workdir as workdirs
from lla.training.checkpoint import CheckpointError, CheckpointMismatchError
from tests.training.test_loop import small_config

ROOT = pathlib.Path(__file__).resolve().parents[2]
STEPS = 8

# argv: workdir, fault, params.npz. Faults: "none"; "kill_before_step:<n>" / "sigterm_before_
# step:<n>" (the signal arrives as step n's batch is fetched: SIGKILL dies after step n - 1,
# SIGTERM finishes step n and saves it); "kill_mid_save:<n>" (SIGKILL right after the n-th
# save of this run starts, while Orbax still writes).
DRIVER = """
import os, signal, sys
import numpy as np, jax
from lla.training import loop, checkpoint
from tests.training.test_loop import small_config
workdir, fault, out = sys.argv[1:4]
kind, _, count = fault.partition(":")
if kind in ("kill_before_step", "sigterm_before_step"):
    batches = loop.data.batches
    sig = signal.SIGKILL if kind == "kill_before_step" else signal.SIGTERM
    def faulty(*args, **kwargs):
        for index, batch in enumerate(batches(*args, **kwargs)):
            if index == int(count) - 1 - kwargs["start_step"]:
                os.kill(os.getpid(), sig)
            yield batch
    loop.data.batches = faulty
elif kind == "kill_mid_save":
    save, saves = checkpoint.Checkpointer.save, []
    def faulty_save(self, *args):
        save(self, *args)
        saves.append(1)
        if len(saves) == int(count):
            os.kill(os.getpid(), signal.SIGKILL)
    checkpoint.Checkpointer.save = faulty_save
try:
    state = loop.train(small_config(total_steps=STEPS, checkpoint_every=2), workdir)
except loop.Preempted as stop:
    print("preempted:", stop, flush=True)
    sys.exit(143)
np.savez(out, *[np.asarray(x) for x in jax.tree.leaves(state.params)])
""".replace("STEPS", str(STEPS))


def drive(workdir, fault="none", out=None, timeout=600):
    out = out or pathlib.Path(workdir).with_suffix(".npz")
    return subprocess.run([sys.executable, "-c", DRIVER, str(workdir), fault, str(out)],
                          cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """Parameters after STEPS steps of a run nobody interrupted (a subprocess, like the
    faulty runs)."""
    workdir = tmp_path_factory.mktemp("uninterrupted") / "run"
    run = drive(workdir)
    assert run.returncode == 0, run.stderr[-3000:]
    return np.load(workdir.with_suffix(".npz"))


def assert_same_params(path, expected):
    got = np.load(path)
    assert got.files == expected.files
    for name in expected.files:
        np.testing.assert_array_equal(got[name], expected[name])


def steps_logged(workdir) -> list[int]:
    lines = (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["step"] for line in lines if "loss" in json.loads(line)]


def test_killed_three_times_once_mid_save_resumes_exactly(tmp_path, uninterrupted):
    """Killed before a random step, then while writing its first checkpoint, then before
    another random step; the seed is in the failure message."""
    seed = random.randrange(10**6)
    rng = random.Random(seed)
    first_kill, last_kill = rng.randint(2, 5), rng.randint(6, STEPS)
    workdir = tmp_path / "run"
    first = drive(workdir, f"kill_before_step:{first_kill}")
    assert first.returncode == -signal.SIGKILL, (seed, first.stderr[-2000:])
    second = drive(workdir, "kill_mid_save:1")  # dies writing the next checkpoint
    assert second.returncode == -signal.SIGKILL, (seed, second.stderr[-2000:])
    third = drive(workdir, f"kill_before_step:{last_kill}")
    assert third.returncode in (-signal.SIGKILL, 0), (seed, third.stderr[-2000:])
    last = drive(workdir)
    assert last.returncode == 0, (seed, last.stderr[-3000:])
    assert_same_params(workdir.with_suffix(".npz"), uninterrupted)
    assert steps_logged(workdir) == list(range(1, STEPS + 1)), seed  # no duplicates, in order
    starts = [entry["start_step"] for entry in workdirs.history(workdir)]
    assert starts[0] == 0 and starts == sorted(starts) and len(starts) == 4, (seed, starts)


def test_sigterm_saves_at_the_step_boundary_and_resumes_exactly(tmp_path, uninterrupted):
    workdir = tmp_path / "run"
    stopped = drive(workdir, "sigterm_before_step:5")
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    assert "SIGTERM: saved checkpoint 5" in stopped.stdout
    assert 5 in [int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]
    resumed = drive(workdir)
    assert resumed.returncode == 0 and "resumed from" in resumed.stdout
    assert_same_params(workdir.with_suffix(".npz"), uninterrupted)


def test_the_command_line_saves_on_sigterm_and_exits_143(tmp_path):
    """A real signal from outside, to `python -m experiments.train`."""
    workdir = tmp_path / "cli"
    process = subprocess.Popen(
        [sys.executable, "-m", "experiments.train", "--config=configs/llsa_pixel.py",
         f"--workdir={workdir}", "--config.total_steps=100000", "--config.eval_every=0",
         "--config.checkpoint_every=100000", "--config.batch_size=2"],
        cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"), stdout=subprocess.PIPE,
        stderr=(tmp_path / "stderr.txt").open("w"), text=True)
    metrics = workdir / "metrics.jsonl"
    deadline = time.time() + 300
    while not (metrics.exists() and metrics.read_text().strip()) and time.time() < deadline:
        time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    stdout, _ = process.communicate(timeout=300)
    assert process.returncode == 143, (tmp_path / "stderr.txt").read_text()[-3000:]
    assert "received SIGTERM" in stdout and "saved checkpoint" in stdout
    assert [p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A workdir trained to step 6 in this process (checkpoints 2, 4, 6), and the parameters
    an uninterrupted run has after STEPS steps."""
    workdir = tmp_path_factory.mktemp("trained") / "run"
    loop.train(small_config(total_steps=6, checkpoint_every=2), workdir)
    full = loop.train(small_config(total_steps=STEPS, checkpoint_every=2),
                      tmp_path_factory.mktemp("full") / "run")
    return workdir, [np.asarray(x) for x in jax.tree.leaves(full.params)]


def damage(checkpoint: pathlib.Path, kind: str) -> None:
    state = checkpoint / "state"
    if kind == "truncated data file":
        for file in (state / "ocdbt.process_0" / "d").iterdir():
            file.write_bytes(file.read_bytes()[:10])
    elif kind == "missing _METADATA":
        (state / "_METADATA").unlink()
    else:
        (state / "manifest.ocdbt").write_bytes(b"")


@pytest.mark.parametrize("kind", ["truncated data file", "missing _METADATA",
                                  "emptied manifest"])
def test_a_damaged_latest_checkpoint_falls_back_and_is_kept(tmp_path, trained, kind, capfd):
    source, expected = trained
    workdir = tmp_path / "run"
    shutil.copytree(source, workdir)
    damage(workdir / "checkpoints" / "6", kind)
    with pytest.warns(UserWarning, match=r"checkpoint 6 .*moved it to .*damaged_checkpoints/6 "
                                         r".*restoring checkpoint 4 instead"):
        state = loop.train(small_config(total_steps=STEPS, checkpoint_every=2), workdir)
    for got, want in zip(jax.tree.leaves(state.params), expected, strict=True):
        np.testing.assert_array_equal(np.asarray(got), want)
    assert (workdir / "damaged_checkpoints" / "6" / "state").is_dir()  # kept, not deleted
    assert len(capfd.readouterr().err) < 5000  # a summary, not the storage error log


def test_explicit_restore_step_and_restart(tmp_path, trained):
    source, _ = trained
    workdir = tmp_path / "run"
    shutil.copytree(source, workdir)
    state = loop.train(small_config(total_steps=6, checkpoint_every=2), workdir,
                       restore_step=4)
    assert int(state.step) == 6
    again = loop.train(small_config(total_steps=6, checkpoint_every=2), workdir)  # complete
    for a, b in zip(jax.tree.leaves(again.params), jax.tree.leaves(state.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert list((workdir / "previous").glob("*/checkpoints/6"))  # the later one, set aside
    (dropped,) = (workdir / "previous").glob("*/metrics.jsonl")  # and its metrics rows
    assert [json.loads(line)["step"] for line in dropped.read_text().splitlines()] == [5, 6]
    assert steps_logged(workdir) == list(range(1, 7))
    with pytest.raises(CheckpointError, match=r"no checkpoint 3 .*checkpoints: \[2, 4, 6\]"):
        loop.train(small_config(total_steps=6, checkpoint_every=2), workdir, restore_step=3)
    state = loop.train(small_config(total_steps=2, checkpoint_every=2), workdir, restart=True)
    assert int(state.step) == 2
    assert len(list((workdir / "previous").iterdir())) == 2  # earlier runs kept
    assert steps_logged(workdir) == [1, 2]


def test_a_changed_setup_is_refused_unless_allowed(tmp_path, trained):
    source, _ = trained
    workdir = tmp_path / "run"
    shutil.copytree(source, workdir)
    changed = small_config(total_steps=STEPS)
    changed.model.attention_kwargs.topk = 1
    changed.data.kwargs.resolution = 64
    with pytest.raises(loop.ConfigChangedError) as refusal:
        loop.train(changed, workdir)
    message = str(refusal.value)
    assert "data.kwargs.resolution: 32 -> 64" in message
    assert "model.attention_kwargs.topk: 2 -> 1" in message
    assert "--restart" in message and "--allow_config_change" in message
    bigger = small_config(total_steps=STEPS)
    bigger.model.preset = "S"
    with pytest.raises(CheckpointMismatchError, match=r"checkpoint 6 holds another model's "
                                                       r"state \(\d+ arrays differ; first"):
        loop.train(bigger, workdir, allow_config_change=True)
    assert (workdir / "checkpoints" / "6").is_dir()  # a mismatch is not damage
    fewer = small_config(total_steps=STEPS)
    fewer.model.attention_kwargs.topk = 1  # same parameters, another setup: allowed
    assert int(loop.train(fewer, workdir, allow_config_change=True).step) == STEPS
    history = workdirs.history(workdir)
    assert history[-1]["start_step"] == 6
    assert history[-1]["config"]["model"]["attention_kwargs"]["topk"] == 1
    assert workdirs.config_at(workdir, 5)["model"]["attention_kwargs"]["topk"] == 2
    longer = small_config(total_steps=STEPS + 1)  # total_steps is not structural
    longer.model.attention_kwargs.topk = 1
    assert int(loop.train(longer, workdir).step) == STEPS + 1


HOLD_LOCK = """
import sys, time
from lla.training.workdir import Lock
lock = Lock(sys.argv[1]).acquire()  # kept: the flock lives with the open file
print("holding", flush=True)
time.sleep(600)
"""


def test_a_second_trainer_is_turned_away_and_a_stale_lock_taken_over(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(workdir)], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        start = time.perf_counter()
        with pytest.raises(workdirs.WorkdirLockedError, match=rf"in use by another trainer: "
                                                              rf"pid {holder.pid} on "):
            loop.train(small_config(total_steps=1), workdir)
        assert time.perf_counter() - start < 60  # turned away before training
        assert not (workdir / "checkpoints").exists()
    finally:
        holder.kill()
        holder.wait()
    # The dead holder's lock file is still there, but no process holds the lock.
    assert json.loads((workdir / ".lock").read_text())["pid"] == holder.pid
    with pytest.warns(UserWarning, match=f"taking over the lock .* of pid {holder.pid}"):
        assert int(loop.train(small_config(total_steps=1), workdir).step) == 1
    assert not (workdir / ".lock").exists()  # released at the end
    # A restarted container: same host, same pid as the lock's writer, but it holds nothing.
    (workdir / ".lock").write_text(json.dumps(
        {"host": socket.gethostname(), "pid": os.getpid(), "started": "before the restart"}))
    with pytest.warns(UserWarning, match="taking over the lock"):
        assert int(loop.train(small_config(total_steps=2), workdir).step) == 2


def test_unreadable_history_or_metrics_lines_do_not_block_a_resume(tmp_path, trained):
    source, _ = trained
    workdir = tmp_path / "run"
    shutil.copytree(source, workdir)
    for name in ("metrics.jsonl", "config_history.jsonl"):
        with (workdir / name).open("a") as file:
            file.write('{"step": 7, "lo')  # a write cut short
    with pytest.warns(UserWarning, match="skipped 1 unreadable line"):
        state = loop.train(small_config(total_steps=7, checkpoint_every=2), workdir)
    assert int(state.step) == 7 and steps_logged(workdir) == list(range(1, 8))


def test_when_no_checkpoint_loads_nothing_moves_and_the_reasons_are_listed(tmp_path, trained):
    source, _ = trained
    workdir = tmp_path / "run"
    shutil.copytree(source, workdir)
    for step in (2, 4, 6):
        damage(workdir / "checkpoints" / str(step), "emptied manifest")
    with pytest.raises(CheckpointError, match=r"no checkpoint .* can be restored \(checkpoint 6"
                                              r".*checkpoint 2 .*Nothing was moved"):
        loop.train(small_config(total_steps=STEPS, checkpoint_every=2), workdir)
    assert sorted(p.name for p in (workdir / "checkpoints").glob("[0-9]*")) == ["2", "4", "6"]
    with pytest.raises(loop.ConfigError, match="give one of them"):
        loop.train(small_config(total_steps=STEPS), workdir, restart=True, restore_step=2)


def test_learning_rate_schedule_and_data_paths_may_change_on_resume(tmp_path, trained):
    source, _ = trained
    workdir = tmp_path / "run"
    shutil.copytree(source, workdir)
    config = small_config(total_steps=7, checkpoint_every=2)
    config.optimizer.warmup_steps = 0  # was 20: same optimizer-state structure
    config.optimizer.learning_rate = 3e-4
    config.model.attention_kwargs.implementation = "xla"  # movable: same computation
    assert int(loop.train(config, workdir).step) == 7


def test_a_non_finite_loss_stops_before_saving_or_is_skipped(tmp_path):
    config = small_config(total_steps=6, checkpoint_every=2)
    config.optimizer.learning_rate = 1e30  # the step after the first update diverges
    with pytest.raises(loop.NonFiniteLossError, match=r"non-finite at step \d.*stopped "
                                                      r"without saving it") as stop:
        loop.train(config, tmp_path / "stop")
    bad = int(re.search(r"non-finite at step (\d+)", str(stop.value)).group(1))
    saved = [int(p.name) for p in (tmp_path / "stop" / "checkpoints").glob("[0-9]*")]
    assert all(step < bad for step in saved), (bad, saved)
    config.nonfinite = "skip"
    state = loop.train(config, tmp_path / "skip")
    assert int(state.step) == 6
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params))
    rows = [json.loads(line) for line in (tmp_path / "skip" / "metrics.jsonl").open()]
    assert sum(row.get("skipped_updates", 0) for row in rows) >= 1


@pytest.mark.parametrize(("override", "message"), [
    ("--config.batch_size=0", "config.batch_size must be an int >= 1; got 0"),
    ("--config.total_steps=-1", "config.total_steps must be an int >= 1; got -1"),
    ("--config.data.name=image_folder", "image_folder needs a path"),
    ("--config.model.attention=lsa", "no attention op 'lsa'; registered: asa, asa_gt, dense,"),
])
def test_the_command_line_refuses_bad_configs_before_making_the_workdir(tmp_path, override,
                                                                         message):
    workdir = tmp_path / "never"
    run = subprocess.run([sys.executable, "-m", "experiments.train",
                          "--config=configs/llsa_pixel.py", f"--workdir={workdir}", override],
                         cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stderr[-2000:]
    assert message in run.stderr and "Traceback" not in run.stderr
    assert not workdir.exists()
