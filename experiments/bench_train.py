r"""Training throughput of any model family with several attention ops, same process, same
batch.

    python -m experiments.bench_train --config=configs/llsa_pixel.py:res=256,model=S \
        --attentions=llsa,dense --batch_size=2 --steps=10

For each attention (with the config's own kwargs for its op, and the op's registered
`default_kwargs` for the others): builds the experiment (any model family and objective)
from the config, runs warm-up steps, then times --steps jitted train steps on a fixed batch
(block_until_ready). Reports examples/s, tokens/s, the speed-up over the last attention
listed (the baseline, "dense" by default), for models that count their FLOPs
(`train_flops_per_example`) the model-FLOP utilisation against the device's dense bf16 peak,
the process's device-memory high-water mark after each attention (a running maximum, not per
attention), and writes `<results_dir>/<device>/<name>.json`. With --profile_steps=N it also
traces N steps and reports where the device time goes: per op category, forward/backward,
model scope and kernel (`experiments/profiling.py`).

    python -m experiments.bench_train --config=configs/lm_shakespeare.py:model=gpt2_small,\
context=2048,vocab=50304 --attentions=dense --batch_size=16 --config.model.dtype=bfloat16 \
        --config.data.kwargs.document_masking=False --profile_steps=3
"""

from __future__ import annotations

import time

import jax
from absl import app, flags, logging
from ml_collections import config_flags

import lla.attention
from experiments.benchmarking import CEILINGS, write_report
from experiments.profiling import compile_for_profile, format_summary, profile_steps
from lla import data
from lla.training import sharding
from lla.training.experiment import Experiment

config_flags.DEFINE_config_file("config", None, "training config (file.py:arg)")
flags.DEFINE_list("attentions", ["llsa", "dense"], "attention ops; the last is the baseline "
                  "(models without attention, e.g. ConvS5, take one entry: none)")
flags.DEFINE_integer("batch_size", 2, "global batch size")
flags.DEFINE_integer("steps", 10, "timed steps")
flags.DEFINE_integer("warmup", 2, "untimed steps after compilation")
flags.DEFINE_string("name", "train_throughput", "results file name")
flags.DEFINE_string("results_dir", "experiments/results", "results root; <device>/ is added")
flags.DEFINE_integer("profile_steps", 0, "also trace this many steps with the JAX profiler "
                     "and report where the device time goes (experiments/profiling.py)")
flags.DEFINE_float("peak_tflops", 0.0, "the device's peak dense TFLOP/s for model-FLOP "
                   "utilisation (0: benchmarking.CEILINGS by device kind)")
flags.mark_flags_as_required(["config"])
FLAGS = flags.FLAGS

def measure(config, attention: str) -> dict:
    config = config.copy_and_resolve_references()
    if "attention" not in config.model:  # a family without attention (ConvS5)
        attention = "none"
    elif attention != config.model.attention:
        config.model.attention = attention
        config.model.attention_kwargs = dict(lla.attention.get(attention).default_kwargs)
    config.batch_size = FLAGS.batch_size
    mesh = sharding.data_mesh()
    experiment = Experiment.from_config(config)
    state = experiment.initial_state(mesh)
    step = jax.jit(experiment.train_step(seed=0), donate_argnums=0)
    batch = sharding.global_batch(
        next(data.batches(experiment.source, batch_size=FLAGS.batch_size, seed=0)), mesh)
    start = time.perf_counter()
    state, metrics = jax.block_until_ready(step(state, batch))
    compile_s = time.perf_counter() - start
    for _ in range(FLAGS.warmup):
        state, metrics = step(state, batch)
    jax.block_until_ready(state)
    start = time.perf_counter()
    for _ in range(FLAGS.steps):
        state, metrics = step(state, batch)
    jax.block_until_ready(state)
    seconds = (time.perf_counter() - start) / FLAGS.steps
    tokens = experiment.tokens_per_step()
    stats = jax.devices()[0].memory_stats() or {}
    row = {"attention": attention,
           "attention_kwargs": dict(config.model.get("attention_kwargs") or {}),
           "step_s": seconds, "examples_per_s": FLAGS.batch_size / seconds,
           "tokens_per_s": tokens / seconds, "first_step_s": compile_s,
           "final_loss": float(metrics["loss"]),
           "process_peak_bytes": stats.get("peak_bytes_in_use")}
    flops = getattr(experiment.model, "train_flops_per_example", None)
    if flops is not None:
        row["model_flops_per_step"] = FLAGS.batch_size * flops(
            experiment.model.tokens_per_example)
        row["model_tflops_per_s"] = row["model_flops_per_step"] / seconds / 1e12
        ceilings = CEILINGS.get(jax.devices()[0].device_kind)
        peak = FLAGS.peak_tflops or (ceilings.tflops if ceilings else None)
        row["peak_tflops"] = peak
        row["mfu"] = row["model_tflops_per_s"] / peak if peak else None
    if FLAGS.profile_steps:
        profiled = compile_for_profile(step, state, batch)

        def run_step():
            nonlocal state
            state, _ = profiled(state, batch)
            return state
        run_step()  # warm-up: the trace holds only the profiled steps
        row["profile"] = profile_steps(run_step, FLAGS.profile_steps,
                                       hlo_text=profiled.as_text())
        print(f"{attention}: {format_summary(row['profile'])}", flush=True)
    return row


def main(argv) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)
    config = FLAGS.config
    rows = []
    for attention in FLAGS.attentions:
        rows.append(measure(config, attention))
        print(f"{attention:>8}: {rows[-1]['step_s'] * 1e3:9.1f} ms/step, "
              f"{rows[-1]['examples_per_s']:8.3f} examples/s, "
              f"{rows[-1]['tokens_per_s']:.4g} tok/s",
              flush=True)
    baseline = rows[-1]
    for row in rows:
        row["speedup_vs_" + baseline["attention"]] = baseline["step_s"] / row["step_s"]
    report = {"device_kind": jax.devices()[0].device_kind, "jax_version": jax.__version__,
              "device_count": jax.device_count(), "batch_size": FLAGS.batch_size,
              "data": config.data.to_dict(), "model": config.model.name,
              "preset": config.model.preset,
              "dtype": config.model.dtype, "rows": rows}
    write_report(report, FLAGS.results_dir, FLAGS.name)
    for row in rows[:-1]:
        print(f"{row['attention']} vs {baseline['attention']}: "
              f"x{row['speedup_vs_' + baseline['attention']]:.2f}")


if __name__ == "__main__":
    app.run(main)
