"""What a training run keeps in its workdir besides checkpoints: the lock that keeps a second
trainer out, the history of the configs the run was started with, and metrics rows that a
resume must not duplicate.

    <workdir>/.lock                  {"host", "pid", "started"} of the trainer holding it
    <workdir>/config.json            the config of the latest start
    <workdir>/config_history.jsonl   one {"start_step", "time", "config"} per start
    <workdir>/metrics.jsonl          one {"step", ...} per logged step, steps increasing
    <workdir>/previous/<time>/       what `--restart` moved aside (never deleted)
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import socket
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

LOCK = ".lock"
CONFIG = "config.json"
HISTORY = "config_history.jsonl"
METRICS = "metrics.jsonl"
RUN_OUTPUTS = ("checkpoints", "damaged_checkpoints", METRICS, "tensorboard", "samples", CONFIG,
               HISTORY, "config.resumed.json")


def utc_now() -> str:
    """The current UTC time as 2026-12-01T20:00:00Z."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class WorkdirLockedError(RuntimeError):
    """Another live trainer holds the workdir."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class Lock:
    """An exclusive lock on a workdir for this process (`<workdir>/.lock`).

    A second trainer fails at once with `WorkdirLockedError` naming the holder. A lock left by a
    process that no longer runs on this host is taken over with a warning; a lock held from
    another host is never taken (its process cannot be checked from here).
    """

    def __init__(self, workdir: str | os.PathLike):
        self.path = pathlib.Path(workdir) / LOCK
        self.holder = {"host": socket.gethostname(), "pid": os.getpid(), "started": utc_now()}
        self.held = False

    def acquire(self) -> Lock:
        """Takes the lock (or a stale one); raises WorkdirLockedError if a trainer holds it."""
        text = json.dumps(self.holder)
        try:
            descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            self._take_over_if_stale(text)
        else:
            with os.fdopen(descriptor, "w") as file:
                file.write(text)
        self.held = True
        return self

    def _take_over_if_stale(self, text: str) -> None:
        try:
            holder = json.loads(self.path.read_text() or "{}")
        except (OSError, json.JSONDecodeError):
            holder = {}
        host, pid = holder.get("host"), holder.get("pid")
        if host == self.holder["host"] and isinstance(pid, int) and _alive(pid):
            raise WorkdirLockedError(
                f"{self.path.parent} is in use by another trainer: pid {pid} on {host}, "
                f"started {holder.get('started')}. Wait for it to finish, stop it, or train "
                f"in another --workdir.")
        if host not in (None, self.holder["host"]):
            raise WorkdirLockedError(
                f"{self.path.parent} is locked by pid {pid} on host {host} (started "
                f"{holder.get('started')}), which cannot be checked from here. If that "
                f"trainer is gone, delete {self.path}; otherwise use another --workdir.")
        warnings.warn(f"taking over the stale lock {self.path} of pid {pid} on {host} "
                      f"(started {holder.get('started')}; that process is gone)", stacklevel=3)
        temporary = self.path.with_name(f"{LOCK}.{os.getpid()}")
        temporary.write_text(text)
        os.replace(temporary, self.path)

    def release(self) -> None:
        """Removes the lock file if this process holds it."""
        if self.held:
            try:
                if json.loads(self.path.read_text()).get("pid") == os.getpid():
                    self.path.unlink()
            except (OSError, json.JSONDecodeError):
                pass
            self.held = False


def previous_folder(workdir: str | os.PathLike) -> pathlib.Path:
    """A new, empty `<workdir>/previous/<time>[-n]/` for outputs set aside."""
    base = pathlib.Path(workdir) / "previous" / utc_now().replace(":", "")
    target, count = base, 1
    while target.exists():
        target, count = base.with_name(f"{base.name}-{count}"), count + 1
    target.mkdir(parents=True)
    return target


def move_aside(workdir: str | os.PathLike) -> pathlib.Path | None:
    """Moves the outputs of earlier runs into a `previous_folder` (for a fresh start in the
    same workdir); returns that folder, or None when there was nothing to move."""
    workdir = pathlib.Path(workdir)
    present = [name for name in RUN_OUTPUTS if (workdir / name).exists()]
    if not present:
        return None
    target = previous_folder(workdir)
    for name in present:
        os.replace(workdir / name, target / name)
    return target


# ---- config history ---------------------------------------------------------------------------

def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def history(workdir: str | os.PathLike) -> list[dict[str, Any]]:
    """The recorded starts, oldest first; a workdir of an older version (config.json only)
    reads as one start at step 0."""
    workdir = pathlib.Path(workdir)
    path = workdir / HISTORY
    if path.exists():
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if (workdir / CONFIG).exists():
        return [{"start_step": 0, "time": None,
                 "config": json.loads((workdir / CONFIG).read_text())}]
    return []


def config_at(workdir: str | os.PathLike, step: int) -> dict[str, Any]:
    """The config in force at `step`: that of the latest start at or before it."""
    starts = [entry for entry in history(workdir) if entry["start_step"] <= step]
    if not starts:
        raise FileNotFoundError(f"{workdir} holds no config (no {HISTORY} or {CONFIG})")
    return starts[-1]["config"]


def changed_keys(old: Mapping[str, Any], new: Mapping[str, Any],
                 prefixes: Iterable[str]) -> list[str]:
    """Dotted keys under `prefixes` (e.g. "model", "objective.name") whose values differ,
    each as "key: old -> new"."""
    old, new = flatten(old), flatten(new)
    prefixes = tuple(prefixes)

    def watched(key: str) -> bool:
        return any(key == p or key.startswith(p + ".") for p in prefixes)

    missing = object()
    return [f"{key}: {old.get(key, missing)!r} -> {new.get(key, missing)!r}".replace(
                repr(missing), "(absent)")
            for key in sorted(set(old) | set(new))
            if watched(key) and old.get(key, missing) != new.get(key, missing)]


def record_start(workdir: str | os.PathLike, step: int, config: Mapping[str, Any]) -> None:
    """Appends a start to the history and writes `config.json` (atomically)."""
    workdir = pathlib.Path(workdir)
    with (workdir / HISTORY).open("a") as file:
        file.write(json.dumps({"start_step": step, "time": utc_now(), "config": config},
                              sort_keys=True) + "\n")
    temporary = workdir / f"{CONFIG}.tmp"
    temporary.write_text(json.dumps(config, indent=1, sort_keys=True) + "\n")
    os.replace(temporary, workdir / CONFIG)


# ---- metrics ----------------------------------------------------------------------------------

def truncate_metrics(workdir: str | os.PathLike, step: int) -> int:
    """Drops the rows of `metrics.jsonl` past `step` (written after the checkpoint a resume
    starts from), atomically; returns how many were dropped."""
    path = pathlib.Path(workdir) / METRICS
    if not path.exists():
        return 0
    lines = path.read_text().splitlines()
    kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
    if len(kept) != len(lines):
        temporary = path.with_suffix(".tmp")
        temporary.write_text("".join(line + "\n" for line in kept))
        os.replace(temporary, path)
    return len(lines) - len(kept)
