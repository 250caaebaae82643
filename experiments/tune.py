r"""Sweeps the tuning config of one attention implementation on one shape.

    python -m experiments.tune --op=neighborhood:pallas_gpu/spatial_shape=256x256/kernel_size=13 \
        --shape=dit256 --variants="q_tile=8x16,kv_tile=8x8;num_stages=1"
    python -m experiments.tune --op=llsa:pallas_gpu/levels=2 --shape=dit256 \
        --variants="query_blocks=2,fine_chunk=2;coarse_splits=16"

--op is an entry as in `experiments.bench_attention` (`name:implementation/key=value...`),
whose flags --dtype, --samples, --warmup, --sample_seconds, --name (default
`tune_<op>_<implementation>`) and --results_dir apply here too (its --ops, --shapes,
--baseline and --modes do not);
the implementation must have tuning knobs (`registry.Tunable`). Each variant sets fields of
its config (`lla.attention.tuning`; values as in --op, `AxB` for tuples), separated by ',',
variants by ';'. For the heuristic default and then each variant: the resolved config (as
dispatch saw it), the relative errors of its output and gradients against the default's
(the first variant that ran) on the same inputs, and the median times of forward and
forward+backward (`benchmarking.median_seconds`).
A variant that fails to compile or run (e.g. too much shared memory) is reported with its
error instead. Writes `<results_dir>/<device>/<name>.json`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from absl import app, flags

import lla.attention as attention
from experiments import bench_attention  # noqa: F401 - its timing and output flags
from experiments import benchmarking as bench

FLAGS = flags.FLAGS
flags.DEFINE_string("op", None, "entry name:implementation[/key=value...]")
flags.DEFINE_string("shape", "dit256", "named shape or BxNxHxD")
flags.DEFINE_string("variants", "", "config overrides key=value,... separated by ';'")
flags.DEFINE_float("bound", 1e-2, "largest relative error of a variant against the default")


def parse_variants(text: str) -> list[dict]:
    return [bench.parse_assignments(chunk.split(","), chunk)
            for chunk in filter(None, (c.strip() for c in text.split(";")))]


def run_variant(entry: bench.Entry, overrides: dict, qkv, cotangent, timing):
    """(report row, (out, dq, dk, dv) or None) of `entry` with `overrides` applied."""
    forward = entry.function()
    row = {"overrides": {k: list(v) if isinstance(v, tuple) else v for k, v in overrides.items()}}
    try:  # report bad values and compile failures (e.g. shared memory) per variant
        with attention.tuning(entry.op, entry.implementation, **overrides):
            with attention.dispatch_log() as log:
                jax.eval_shape(forward, *qkv)
            row["config"] = dataclasses.asdict(log[-1].config)
            forward_fn = jax.jit(forward)
            backward_fn = jax.jit(bench.vjp_function(forward))
            outputs = (forward_fn(*qkv), *backward_fn(*qkv, cotangent))
            # Timed inside the block: the overrides are part of the jit cache key.
            row["fwd_s"] = bench.median_seconds(forward_fn, qkv, **timing)
            row["fwd_bwd_s"] = bench.median_seconds(backward_fn, (*qkv, cotangent), **timing)
    except Exception as error:
        row["error"] = str(error).splitlines()[0][:300]
        outputs = None
    return row, outputs


def main(argv) -> None:
    del argv
    if not FLAGS.op:
        raise app.UsageError("--op is required, e.g. --op=llsa:pallas_gpu/levels=2")
    entry = bench.Entry.parse(FLAGS.op)
    impl = attention.get(entry.op).implementations.get(entry.implementation)
    if impl is None or impl.tunable is None:
        tunable = [i.name for i in attention.get(entry.op).implementations.values()
                   if i.tunable]
        raise app.UsageError(f"--op needs an implementation with tuning knobs: "
                             f"{entry.op}:{'|'.join(tunable)}")
    shape = bench.parse_shape(FLAGS.shape)
    qkv, cotangent = bench.inputs(shape, jnp.dtype(FLAGS.dtype))
    timing = dict(samples=FLAGS.samples, warmup=FLAGS.warmup,
                  sample_seconds=FLAGS.sample_seconds)
    rows, reference = [], None
    for overrides in [{}, *parse_variants(FLAGS.variants)]:
        row, outputs = run_variant(entry, overrides, qkv, cotangent, timing)
        if outputs is not None:
            reference = reference or outputs  # the default's, unless it failed
            row["errors_vs_default"] = {
                name: bench.relative_error(got, want)
                for name, got, want in zip(("out", "dq", "dk", "dv"), outputs, reference,
                                           strict=True)}
            row["passed"] = all(e < FLAGS.bound for e in row["errors_vs_default"].values())
        rows.append(row)
        print(row, flush=True)
    report = {"device_kind": jax.devices()[0].device_kind, "jax_version": jax.__version__,
              "entry": str(entry), "shape": list(shape), "dtype": FLAGS.dtype,
              "bound": FLAGS.bound, "variants": rows}
    bench.write_report(report, FLAGS.results_dir,
                       FLAGS.name or f"tune_{entry.op}_{entry.implementation}")


if __name__ == "__main__":
    app.run(main)
