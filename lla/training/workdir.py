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

import contextlib
import datetime
import fcntl
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
KEPT_BY_RESTART = (LOCK, "previous")  # everything else is an earlier run's output


def utc_now() -> str:
    """The current UTC time as 2026-12-01T20:00:00Z."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class WorkdirLockedError(RuntimeError):
    """Another live trainer holds the workdir."""


class Lock:
    """An exclusive lock on a workdir for this process: an `fcntl.flock` on `<workdir>/.lock`,
    held for the whole run, and the holder's host, pid and start time written into the file
    for the message a second trainer gets.

    The kernel releases a flock when its process dies (kill -9 included), so a lock left by
    a dead trainer is free: it is taken over with a warning naming the old holder. Local
    filesystems and NFSv4 honour flock; on a filesystem that does not, two hosts could both
    take it.
    """

    def __init__(self, workdir: str | os.PathLike):
        self.path = pathlib.Path(workdir) / LOCK
        self.holder = {"host": socket.gethostname(), "pid": os.getpid(), "started": utc_now()}
        self._file = None

    @property
    def held(self) -> bool:
        return self._file is not None

    def acquire(self) -> Lock:
        """Takes the lock; raises WorkdirLockedError, naming the holder, if a live trainer
        holds it."""
        while True:
            file = open(self.path, "a+")  # noqa: SIM115 - held until release()
            try:
                fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self._read(file)
                file.close()
                raise WorkdirLockedError(
                    f"{self.path.parent} is in use by another trainer: pid "
                    f"{holder.get('pid')} on {holder.get('host')}, started "
                    f"{holder.get('started')}. Wait for it to finish, stop it, or train in "
                    f"another --workdir.") from None
            try:  # the file may have been removed (released) between open and flock
                if os.fstat(file.fileno()).st_ino == os.stat(self.path).st_ino:
                    break
            except FileNotFoundError:
                pass
            file.close()
        previous = self._read(file)
        if previous:
            warnings.warn(f"taking over the lock {self.path} of pid {previous.get('pid')} on "
                          f"{previous.get('host')} (started {previous.get('started')}): no "
                          f"process holds it any more", stacklevel=3)
        file.seek(0)
        file.truncate()
        file.write(json.dumps(self.holder))
        file.flush()
        self._file = file
        return self

    @staticmethod
    def _read(file) -> dict:
        file.seek(0)
        try:
            return json.loads(file.read() or "{}")
        except json.JSONDecodeError:
            return {}

    def release(self) -> None:
        """Removes the lock file and releases the lock, if this process holds it."""
        if self._file is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


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
    present = sorted(p.name for p in workdir.iterdir() if p.name not in KEPT_BY_RESTART)
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


def read_jsonl(path: pathlib.Path, needed: str) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file that parse and hold `needed`; a partial last line (a
    write cut short by kill -9 or a full disk) is skipped with a warning."""
    rows, bad = [], 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(row, dict) and needed in row:
            rows.append(row)
        else:
            bad += 1
    if bad:
        warnings.warn(f"{path}: skipped {bad} unreadable line(s) (a write cut short?)",
                      stacklevel=3)
    return rows


def history(workdir: str | os.PathLike) -> list[dict[str, Any]]:
    """The recorded starts, oldest first; a workdir of an older version (config.json only)
    reads as one start at step 0."""
    workdir = pathlib.Path(workdir)
    path = workdir / HISTORY
    if path.exists():
        return read_jsonl(path, "start_step")
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


def changed_keys(old: Mapping[str, Any], new: Mapping[str, Any], prefixes: Iterable[str],
                 ignored: Iterable[str] = ()) -> list[str]:
    """Dotted keys under `prefixes` (e.g. "model", "objective.name"), other than `ignored`,
    whose values differ, each as "key: old -> new". A key only one side has (a field added or
    removed between versions) does not count: its default stands in for it."""
    old, new = flatten(old), flatten(new)
    prefixes, ignored = tuple(prefixes), set(ignored)

    def watched(key: str) -> bool:
        return key not in ignored and any(key == p or key.startswith(p + ".")
                                          for p in prefixes)

    return [f"{key}: {old[key]!r} -> {new[key]!r}" for key in sorted(set(old) & set(new))
            if watched(key) and old[key] != new[key]]


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

def truncate_metrics(workdir: str | os.PathLike, step: int,
                     keep_dropped: pathlib.Path | None = None) -> int:
    """Drops the rows of `metrics.jsonl` past `step` (logged after the checkpoint a resume
    starts from) and unreadable ones, atomically; with `keep_dropped`, the rows past `step`
    are written there first. Returns how many rows were dropped."""
    path = pathlib.Path(workdir) / METRICS
    if not path.exists():
        return 0
    rows = read_jsonl(path, "step")
    kept = [row for row in rows if row["step"] <= step]
    dropped = [row for row in rows if row["step"] > step]
    if keep_dropped is not None and dropped:
        keep_dropped.write_text("".join(json.dumps(row) + "\n" for row in dropped))
    count = len([line for line in path.read_text().splitlines() if line.strip()]) - len(kept)
    if count:
        temporary = path.with_suffix(".tmp")
        temporary.write_text("".join(json.dumps(row) + "\n" for row in kept))
        os.replace(temporary, path)
    return count
