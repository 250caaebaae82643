"""Metric writers: one JSON object per line (`metrics.jsonl`) and TensorBoard event files."""

from __future__ import annotations

import json
import pathlib

from tensorboardX import SummaryWriter


class MetricWriter:
    """Writes scalar metrics of a step to `<workdir>/metrics.jsonl` and TensorBoard events
    under `<workdir>/tensorboard` (only on process 0 of a multi-host run)."""

    def __init__(self, workdir: str | pathlib.Path, *, enabled: bool = True):
        self.enabled = enabled
        if not enabled:
            return
        workdir = pathlib.Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        self._jsonl = (workdir / "metrics.jsonl").open("a")
        self._tensorboard = SummaryWriter(str(workdir / "tensorboard"))

    def write(self, step: int, metrics: dict[str, float]) -> None:
        """Appends {step, **metrics} to metrics.jsonl and the scalars to TensorBoard."""
        if not self.enabled:
            return
        self._jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
        self._jsonl.flush()
        for name, value in metrics.items():
            self._tensorboard.add_scalar(name, value, step)
        self._tensorboard.flush()

    def write_image(self, step: int, name: str, image) -> None:
        """image: uint8 [H, W, C]."""
        if self.enabled:
            self._tensorboard.add_image(name, image, step, dataformats="HWC")
            self._tensorboard.flush()

    def close(self) -> None:
        """Closes both writers."""
        if self.enabled:
            self._jsonl.close()
            self._tensorboard.close()
