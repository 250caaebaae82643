r"""The quality study's table, checks and plot, from its runs' workdirs
(`configs/quality_study.py` says how to train and evaluate them).

    python -m experiments.quality_study --workdirs='workdirs/study/openmoji64_*' \
        --name=quality_study_openmoji64 [--note='three runs shared the GPU']

Per workdir (one variant each): the variant, op and keyword arguments (config.json), the
training loss (mean of the last 5 logged values), the median logged steps/s and images/s,
and the scores of its newest FID evaluation (`experiments.evaluate`: the latest step, then
the most samples; else the last FID the run logged itself, `objective.fid_count`): FID, KID,
the memorisation summary where there is one. Writes
`<results_dir>/<device>/<name>.json` (rows in the config's variant order, FID and KID
relative to dense, the paper's checks) and `<name>.png` (FID bars with KID and images/s,
the final sample grid of each run beside its bar), and copies each run's final grid as
`<name>_<variant>.png`.

The runs must share one recipe (data, resolution, start, batch and steps: a fine-tuned
run's start is the name of the workdir it started from, `init=`); runs of several
rounds of it can make one table. The checks are the study's acceptance (issue 16): LLSA's
FID within 10 % of dense, and LLSA Table 1a's ordering over its L = 2 column (selection
only worst, full LLSA best of `llsa_topk`, `llsa_enrich`, `llsa`), with single-level `topk`
above all three.
"""

from __future__ import annotations

import glob
import json
import pathlib

from absl import app, flags
from PIL import Image

from configs.quality_study import VARIANTS
from experiments.benchmarking import device_slug
from experiments.study_table import checks, plot, run_row

flags.DEFINE_list("workdirs", None, "workdirs or glob patterns of the study's runs")
flags.DEFINE_string("name", "quality_study", "results file name")
flags.DEFINE_string("results_dir", "experiments/results", "results root; <device>/ is added")
flags.DEFINE_string("device", None, "device kind the runs trained on, e.g. 'NVIDIA H200' "
                    "(default: their evaluation records'; needed when only the training "
                    "runs' own FID is there)")
flags.DEFINE_string("note", "", "a sentence stored with the table (how the runs were made)")
# --workdirs is checked in main, not marked required (as in experiments.evaluate): tests
# import this module into processes that parse the global flags for other tools.
FLAGS = flags.FLAGS
RECIPE = ("dataset", "resolution", "pretrained", "batch_size", "total_steps")  # one study

def main(argv) -> None:
    del argv
    if not FLAGS.workdirs:
        raise app.UsageError("--workdirs is required: the study's training workdirs")
    paths = sorted({pathlib.Path(p) for pattern in FLAGS.workdirs
                    for p in (glob.glob(pattern) or [pattern])})
    missing = [str(p) for p in paths if not (p / "config.json").is_file()]
    if missing:
        raise app.UsageError(f"not training workdirs (no config.json): {', '.join(missing)}")
    try:
        found = [run_row(p) for p in paths]
    except ValueError as error:
        raise app.UsageError(str(error)) from None
    order = list(VARIANTS)
    rows = {row["variant"]: row for row in sorted(found, key=lambda r: order.index(r["variant"]))}
    if len(rows) < len(found):
        raise app.UsageError("two workdirs train the same variant; pass one per variant")
    recipes = {tuple(row[key] for key in RECIPE) for row in rows.values()}
    if len(recipes) > 1:
        raise app.UsageError(f"the runs do not share one recipe ({', '.join(RECIPE)}): "
                             f"{sorted(map(str, recipes))}; a study compares equal steps and "
                             f"batch from the same start")
    dense = rows.get("dense", {})
    for row in rows.values():
        for key in ("fid", "kid_mean"):
            if row.get(key) is not None and dense.get(key):
                row[f"{key}_vs_dense"] = row[key] / dense[key]
    devices = {row["device"] for row in rows.values() if row.get("device")}
    if len(devices) > 1 and not FLAGS.device:
        raise app.UsageError(f"the runs were evaluated on different devices: {devices}")
    if FLAGS.device:
        devices = {FLAGS.device}
    if not devices:
        raise app.UsageError("no evaluation record names the device; pass --device "
                             "(e.g. --device='NVIDIA H200')")
    device = devices.pop()
    report = {"name": FLAGS.name, "device": device, "note": FLAGS.note,
              "checks": checks({v: rows.get(v, {}) for v in order}), "rows": list(rows.values())}
    folder = pathlib.Path(FLAGS.results_dir) / device_slug(device)
    folder.mkdir(parents=True, exist_ok=True)
    for variant, row in rows.items():
        if row.get("samples"):
            copy = folder / f"{FLAGS.name}_{variant}.png"
            Image.open(row["samples"]).save(copy)
            row["samples"] = copy.name
    sample = next(iter(rows.values()))
    title = (f"{FLAGS.name}: {sample['dataset']} {sample['resolution']}px, "
             f"{sample['trained_steps']} steps x batch {sample['batch_size']}")
    plot({v: {**r, "samples": folder / r["samples"] if r.get("samples") else None}
          for v, r in rows.items()}, title).save(folder / f"{FLAGS.name}.png")
    path = folder / f"{FLAGS.name}.json"
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {path} and {folder / (FLAGS.name + '.png')}")
    for row in rows.values():
        print(f"  {row['variant']:13s} FID {row.get('fid')}  KID {row.get('kid_mean')}  "
              f"img/s {row.get('images_per_s')}")
    print("  checks:", json.dumps(report["checks"]))


if __name__ == "__main__":
    app.run(main)
