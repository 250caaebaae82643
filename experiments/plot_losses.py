r"""Draws the training-loss curves of several runs into one PNG (no plotting library needed).

    python -m experiments.plot_losses --runs=llsa:workdirs/a,dense:workdirs/b --out=loss.png
    python -m experiments.plot_losses --runs=... --metric=test/accuracy --smoothing=0

Each run is `label:path`, where path is a workdir or a metrics.jsonl file. Curves are the
logged values of --metric (default the training loss) smoothed with an exponential moving
average (--smoothing), on a linear step axis and a logarithmic value axis (linear when
the values lie within a factor 3).
"""

from __future__ import annotations

import json
import math
import pathlib

from absl import app, flags
from PIL import Image, ImageDraw

flags.DEFINE_list("runs", None, "label:path pairs (workdir or metrics.jsonl)")
flags.DEFINE_string("out", "loss_curves.png", "output PNG")
flags.DEFINE_string("metric", "loss", "the metrics.jsonl key to plot, e.g. test/accuracy")
flags.DEFINE_float("smoothing", 0.8, "EMA factor in [0, 1) applied to the logged losses")
flags.DEFINE_string("title", "training loss", "plot title")
flags.mark_flags_as_required(["runs"])
FLAGS = flags.FLAGS

COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14),
           (90, 90, 90)]
WIDTH, HEIGHT, MARGIN = 900, 560, 70


def read_losses(path: pathlib.Path, metric: str = "loss") -> list[tuple[int, float]]:
    """(step, value of `metric`) of every line of a metrics.jsonl (or a workdir holding one)
    that logs it."""
    if path.is_dir():
        path = path / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [(row["step"], row[metric]) for row in rows if metric in row]


def smooth(values: list[float], factor: float) -> list[float]:
    out, average = [], values[0]
    for value in values:
        average = factor * average + (1 - factor) * value
        out.append(average)
    return out


def plot(curves: dict[str, list[tuple[int, float]]], title: str) -> Image.Image:
    """White canvas with axes, ticks, one polyline per curve and a legend."""
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    steps = [s for curve in curves.values() for s, _ in curve]
    losses = [v for curve in curves.values() for _, v in curve]
    x_max = max(steps)
    # A logarithmic axis in quarter decades; values within a factor 3 (accuracies, nats per
    # byte late in training) get a linear one instead, with 6 ticks.
    logarithmic = max(losses) > 3 * min(losses)
    scale = math.log10 if logarithmic else float
    if logarithmic:
        y_low = math.floor(scale(min(losses)) * 4) / 4
        y_high = math.ceil(scale(max(losses)) * 4) / 4
        ticks = [y_low + i / 4 for i in range(round((y_high - y_low) * 4) + 1)]
    else:
        spread = (max(losses) - min(losses)) or abs(max(losses)) or 1.0
        y_low, y_high = min(losses) - 0.05 * spread, max(losses) + 0.05 * spread
        ticks = [y_low + (y_high - y_low) * i / 5 for i in range(6)]

    def to_pixel(step, loss):
        x = MARGIN + (WIDTH - 2 * MARGIN) * step / x_max
        y = HEIGHT - MARGIN - (HEIGHT - 2 * MARGIN) * (scale(loss) - y_low) / (
            y_high - y_low)
        return x, y

    draw.rectangle([MARGIN, MARGIN, WIDTH - MARGIN, HEIGHT - MARGIN], outline="black")
    for i in range(6):
        step = x_max * i / 5
        x = MARGIN + (WIDTH - 2 * MARGIN) * step / x_max
        draw.line([x, HEIGHT - MARGIN, x, HEIGHT - MARGIN + 5], fill="black")
        draw.text((x - 12, HEIGHT - MARGIN + 8), f"{step:.0f}", fill="black")
    for tick in ticks:
        value = 10 ** tick if logarithmic else tick
        _, y = to_pixel(0, value)
        draw.line([MARGIN - 5, y, WIDTH - MARGIN, y], fill=(225, 225, 225))
        draw.text((8, y - 6), f"{value:.4g}", fill="black")
    for index, (label, curve) in enumerate(curves.items()):
        colour = COLOURS[index % len(COLOURS)]
        values = smooth([v for _, v in curve], FLAGS.smoothing)
        draw.line([to_pixel(s, v) for (s, _), v in zip(curve, values, strict=True)],
                  fill=colour, width=2)
        draw.line([WIDTH - MARGIN - 160, MARGIN + 20 + 18 * index,
                   WIDTH - MARGIN - 130, MARGIN + 20 + 18 * index], fill=colour, width=3)
        draw.text((WIDTH - MARGIN - 122, MARGIN + 14 + 18 * index), label, fill="black")
    draw.text((WIDTH / 2 - 60, 20), title, fill="black")
    draw.text((WIDTH / 2 - 20, HEIGHT - 30), "step", fill="black")
    return image


def main(argv) -> None:
    del argv
    curves = {}
    for run in FLAGS.runs:
        label, _, path = run.partition(":")
        curves[label] = read_losses(pathlib.Path(path), FLAGS.metric)
        if not curves[label]:
            raise app.UsageError(f"{path} logs no {FLAGS.metric!r}")
    plot(curves, FLAGS.title).save(FLAGS.out)
    print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
    app.run(main)
