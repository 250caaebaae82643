"""The quality study's table pieces (no command-line flags, so tests and notebooks can import
them beside other tools): a row per run workdir, the acceptance checks, the plot.
`experiments.quality_study` is the command line that writes them."""

from __future__ import annotations

import json
import pathlib
import re
import statistics

from PIL import Image, ImageDraw

LAST_LOSSES = 5
EVAL_NAME = re.compile(r"fid_(\d+)_n(\d+)_s\d+_g[^_]+\.json")  # EMA-weight evaluations
COLOURS = {"dense": (90, 90, 90), "topk": (214, 39, 40), "llsa_topk": (255, 127, 14),
           "llsa_enrich": (148, 103, 189), "llsa": (31, 119, 180),
           "neighborhood": (44, 160, 44)}


def newest_evaluation(workdir: pathlib.Path) -> dict | None:
    """The EMA evaluation record of the latest step (the largest count there), or None."""
    found = [(int(m[1]), int(m[2]), path) for path in (workdir / "eval").glob("fid_*.json")
             if (m := EVAL_NAME.fullmatch(path.name))]
    return json.loads(max(found)[2].read_text()) if found else None


def logged_evaluation(logged: list[dict], config: dict) -> dict | None:
    """The last FID the training run logged itself (`objective.fid_count`), in the fields of
    an evaluation record, or None."""
    scored = [row for row in logged if "samples/fid" in row]
    if not scored:
        return None
    objective = config["objective"]
    last = scored[-1]
    return {"fid": last["samples/fid"], "kid_mean": last["samples/kid_mean"],
            "kid_std": last["samples/kid_std"], "count": objective["fid_count"],
            "reference_count": objective["fid_count"], "steps": objective["sample_steps"],
            "device": None, "jax": None, "step": last["step"]}


def run_row(workdir: pathlib.Path) -> dict:
    """One table row of a study workdir: variant, op and kwargs, the name of the workdir it
    was fine-tuned from (`pretrained`, `config.init_from`; None), loss (mean of the last
    LAST_LOSSES logged), median steps/s and images/s, the last sample grid, and the scores of
    its newest evaluation record (latest step, then most samples) or else of its own logged
    FID."""
    config = json.loads((workdir / "config.json").read_text())
    if "study" not in config:
        raise ValueError(f"{workdir} is not a quality-study run (its config.json has no "
                         f"'study' field; train it with configs/quality_study.py)")
    logged = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()
              if line.strip()]
    losses = [row["loss"] for row in logged if "loss" in row]
    rates = [row["steps_per_s"] for row in logged if "steps_per_s" in row]
    steps = max((row["step"] for row in logged if "loss" in row), default=0)
    row = {"variant": config["study"]["variant"], "op": config["model"]["attention"],
           "attention_kwargs": config["model"]["attention_kwargs"],
           "workdir": str(workdir), "dataset": config["data"]["name"],
           "resolution": config["data"]["kwargs"]["resolution"],
           "pretrained": pathlib.PurePath(config.get("init_from") or "").name or None,
           "batch_size": config["batch_size"], "trained_steps": steps,
           "total_steps": config["total_steps"],
           "loss_last": statistics.fmean(losses[-LAST_LOSSES:]) if losses else None,
           "steps_per_s": statistics.median(rates) if rates else None}
    row["images_per_s"] = row["steps_per_s"] * config["batch_size"] if rates else None
    grids = sorted((workdir / "samples").glob("step_*.png"))
    row["samples"] = str(grids[-1]) if grids else None
    evaluation = newest_evaluation(workdir) or logged_evaluation(logged, config)
    if evaluation is not None:
        row.update({key: evaluation[key] for key in ("fid", "kid_mean", "kid_std", "count",
                                                     "reference_count", "device", "jax")})
        row.update(evaluated_step=evaluation["step"], sampler_steps=evaluation["steps"])
        if "memorisation" in evaluation:
            row["memorisation"] = {key: value for key, value in
                                   evaluation["memorisation"].items()
                                   if key not in ("suspicious", "per_sample", "grid")}
    return row


def checks(rows: dict[str, dict]) -> dict:
    """The study's acceptance checks over the rows that have an FID (None where a row is
    missing)."""
    fid = {variant: row.get("fid") for variant, row in rows.items()}
    have = lambda *names: all(fid.get(n) is not None for n in names)  # noqa: E731
    column = ("llsa_topk", "llsa_enrich", "llsa")
    result = {"llsa_fid_within_10_percent_of_dense":
              fid["llsa"] <= 1.1 * fid["dense"] if have("llsa", "dense") else None}
    if have(*column):
        result["selection_only_worst_of_l2_column"] = fid["llsa_topk"] > max(
            fid["llsa_enrich"], fid["llsa"])
        result["full_llsa_best_of_l2_column"] = fid["llsa"] < min(fid["llsa_topk"],
                                                                  fid["llsa_enrich"])
    if have("topk", *column):
        result["single_level_topk_worst_of_the_four"] = fid["topk"] > max(
            fid[name] for name in column)
    return result


def plot(rows: dict[str, dict], title: str) -> Image.Image:
    """FID bars (one per variant, KID and images/s as text) with each run's last sample
    grid at the row's end."""
    scored = {variant: row for variant, row in rows.items() if row.get("fid") is not None}
    thumb, bar_left, bar_width, line = 96, 130, 430, 110
    image = Image.new("RGB", (bar_left + bar_width + 200 + thumb,
                              60 + line * max(len(scored), 1)), "white")
    draw = ImageDraw.Draw(image)
    draw.text((10, 12), title, fill="black")
    top = max((row["fid"] for row in scored.values()), default=1.0)
    for index, (variant, row) in enumerate(scored.items()):
        y = 50 + line * index
        length = bar_width * row["fid"] / top
        draw.rectangle([bar_left, y + 30, bar_left + length, y + 62],
                       fill=COLOURS.get(variant, (0, 0, 0)))
        draw.text((10, y + 40), variant, fill="black")
        draw.text((bar_left + length + 8, y + 32), f"FID {row['fid']:.2f}", fill="black")
        kid = f"KID {row['kid_mean'] * 1e3:.2f}e-3 ± {row['kid_std'] * 1e3:.2f}e-3"
        rate = f"{row['images_per_s']:.0f} img/s" if row.get("images_per_s") else ""
        draw.text((bar_left + length + 8, y + 48), f"{kid}  {rate}", fill=(80, 80, 80))
        if row.get("samples") and pathlib.Path(row["samples"]).is_file():
            grid = Image.open(row["samples"]).convert("RGB")
            grid.thumbnail((thumb, thumb))
            image.paste(grid, (image.width - thumb - 8, y + 4))
    return image
