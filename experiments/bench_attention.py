r"""Times registered attention ops against dense cuDNN attention in the same process.

    python -m experiments.bench_attention --ops=dense:xla --shapes=s16k --name=dense_16k
    python -m experiments.bench_attention \
        --ops=llsa:pallas_gpu/levels=2/topk=8,llsa --shapes=dit256,dit512 --name=llsa

Each entry of --ops is `name[:implementation][/key=value...]` (keyword arguments of the op;
values are Python literals, and `AxBxC` is the tuple (A, B, C), e.g.
`neighborhood:pallas_gpu/spatial_shape=16x64x64/kernel_size=3x7x7`).
For every shape, each entry first passes a correctness gate — its output and, when the
backward is timed, its gradients against the op's own "xla" reference computed in float32 on
the same inputs — and only then is timed: forward and forward+backward (a VJP with a random
cotangent), median over --samples after warm-up, each sample --inner back-to-back calls ended
by block_until_ready. Ratios are baseline time / op time (> 1: faster than the baseline);
an entry whose op also runs as "xla" with the same arguments in the same run gets its ratio
over that reference too (`speedup_<mode>_vs_xla`). Ops that say how many keys a query sees
(`lla.attention.kept_keys`) get their density (keys per query / Nk), the ideal speed-up over
dense attention (Nk / keys) and half of it, the block-sparse issue's speed bar, and their
place against the device's limits (`benchmarking.attention_roofline`: model FLOPs and
compulsory bytes per call, achieved TFLOP/s and TB/s, fractions of the datasheet ceilings).

The baseline is --baseline (dense cuDNN); where it cannot run (CPU, float32) the first
baseline implementation that can is used and named in the output. Results go to
`<results_dir>/<device>/<name>.json` with the device, jax version, shapes, dtype, median
times, ratios, gate errors and XLA's compiled buffer sizes. Shapes: see SHAPES or `BxNxHxD`.
"""

from __future__ import annotations

import datetime
import sys

import jax
import jax.numpy as jnp
from absl import app, flags

import lla.attention as attention
from experiments import profiling
from experiments.benchmarking import (
    CEILINGS,
    SHAPES,
    Entry,
    attention_roofline,
    inputs,
    median_seconds,
    parse_shape,
    relative_error,
    vjp_function,
    worst_chunk_error,
    write_report,
)

GATE_BOUND = {"float32": 1e-4, "bfloat16": 3e-2, "float16": 1e-2}
# The worst run of CHUNK_TOKENS consecutive tokens may be off by at most CHUNK_BOUND: a
# correct bf16 kernel sits near 0.003 in every chunk, a wrong query block near 0.1.
CHUNK_TOKENS = 64
CHUNK_BOUND = {"float32": 1e-3, "bfloat16": 5e-2, "float16": 2e-2}

FLAGS = flags.FLAGS
flags.DEFINE_string("ops", "dense", "entries name[:implementation][/key=value...], comma separated")
flags.DEFINE_list("shapes", ["s16k"], f"named shapes {sorted(SHAPES)} or BxNxHxD")
flags.DEFINE_string("baseline", "dense:cudnn,dense:xla",
                    "baseline entries, the first that runs is used; 'none' for no baseline")
flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float16", "float32"], "input dtype")
flags.DEFINE_list("modes", ["fwd", "fwd_bwd"], "what to time: fwd, fwd_bwd")
flags.DEFINE_integer("samples", 20, "timed samples per measurement (the median is reported)")
flags.DEFINE_integer("warmup", 3, "untimed calls before sampling")
flags.DEFINE_float("sample_seconds", 0.02, "target length of one sample (sets --inner)")
flags.DEFINE_integer("profile_calls", 0, "also trace this many calls of each timed entry "
                     "with the JAX profiler: device time per kernel (experiments.profiling)")
flags.DEFINE_string("name", None, "results file name (default: from ops and dtype)")
flags.DEFINE_string("results_dir", "experiments/results", "results root; <device>/ is added")


def gate(entry: Entry, qkv, cotangent, backward: bool, dtype: str) -> dict:
    """Relative errors of the entry (output, and gradients if `backward`) against the op's
    "xla" reference evaluated in float32 on the same inputs, over the whole slice and over
    its worst run of `CHUNK_TOKENS` tokens, and whether a second run gives the same bits.

    The entry runs on the full inputs; the reference (memory-hungry for sparse ops at long
    lengths) runs on batch 0 and kv head 0 with its query heads, which attention computes
    independently of the other heads, and is compared with that slice of the entry's results.
    A whole-slice error hides a few wrong query blocks (three bad blocks of 1,024 at 10 %
    read as 0.006), so the gate also bounds the worst chunk. Pallas kernels promise the same
    bits on every run (no atomics), so for them a rerun that differs fails the gate.
    """
    group = qkv[0].shape[2] // qkv[1].shape[2]
    slices = ((slice(0, 1), slice(None), slice(0, group)),
              (slice(0, 1), slice(None), slice(0, 1)), (slice(0, 1), slice(None), slice(0, 1)))
    part = tuple(x[s].astype(jnp.float32) for x, s in zip(qkv, slices, strict=True))
    reference = entry.function(reference=True)
    forward = jax.jit(entry.function())
    with jax.default_matmul_precision("highest"):
        expected = jax.jit(reference)(*part)
        got = [forward(*qkv)]
        rerun = [forward(*qkv)]
        pairs = {"fwd": (got[0][slices[0]], expected)}
        if backward:
            pullback = jax.jit(vjp_function(entry.function()))
            want = jax.jit(vjp_function(reference))(
                *part, cotangent[slices[0]].astype(jnp.float32))
            grads = pullback(*qkv, cotangent)
            got += list(grads)
            rerun += list(pullback(*qkv, cotangent))
            pairs.update({f"d{n}": (g[s], w)
                          for n, g, w, s in zip("qkv", grads, want, slices, strict=True)})
        errors = {name: relative_error(*pair) for name, pair in pairs.items()}
        worst = {name: worst_chunk_error(*pair, CHUNK_TOKENS) for name, pair in pairs.items()}
    identical = all(bool(jnp.array_equal(a, b)) for a, b in zip(got, rerun, strict=True))
    bound = GATE_BOUND[dtype]
    must_repeat = (entry.implementation or "").startswith("pallas")
    return {"errors": errors, "worst_chunk_errors": worst, "chunk_tokens": CHUNK_TOKENS,
            "bound": bound, "chunk_bound": CHUNK_BOUND[dtype], "slice": "batch 0, kv head 0",
            "bit_identical_rerun": identical,
            "passed": (all(e < bound for e in errors.values())
                       and all(e < CHUNK_BOUND[dtype] for e in worst.values())
                       and (identical or not must_repeat))}


def peak_bytes() -> int | None:
    """The device's peak allocated bytes so far in this process (None where unknown)."""
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def compiled_bytes(fn, args) -> int:
    """XLA's temp + output buffer bytes for the compiled `fn(*args)` (no run needed)."""
    memory = jax.jit(fn).lower(*args).compile().memory_analysis()
    return int(memory.temp_size_in_bytes + memory.output_size_in_bytes)


def kernel_profile(fn, args, calls: int) -> dict:
    """Where the device time of one call of the jitted `fn(*args)` goes, kernel by kernel
    (`profiling.profile_steps` over `calls` calls)."""
    compiled = profiling.compile_for_profile(jax.jit(fn), *args)
    jax.block_until_ready(compiled(*args))  # warm-up: the trace holds only the calls
    summary = profiling.profile_steps(lambda: compiled(*args), calls, top=12,
                                      hlo_text=compiled.as_text())
    return {key: summary[key] for key in ("device_ms_per_step", "kernels_per_step",
                                          "by_category", "top_kernels", "command_buffers")}


def measure(entry: Entry, qkv, cotangent, modes, timing, profile_calls=0) -> dict:
    forward = entry.function()
    calls = {"fwd": (forward, qkv), "fwd_bwd": (vjp_function(forward), (*qkv, cotangent))}
    result = {"entry": str(entry)}
    for mode in modes:
        fn, args = calls[mode]
        result[f"{mode}_s"] = median_seconds(jax.jit(fn), args, **timing)
        if profile_calls:
            result.setdefault("profile", {})[mode] = kernel_profile(fn, args, profile_calls)
    if "fwd_bwd" in modes:
        result["fwd_bwd_compiled_bytes"] = compiled_bytes(*calls["fwd_bwd"])
    result["process_peak_bytes"] = peak_bytes()
    return result


def sparsity(entry: Entry, qkv) -> dict:
    """How much of dense attention the entry computes on these inputs: the mean keys per
    query (`lla.attention.kept_keys`), density = keys / Nk, the ideal speed-up over dense
    Nk / keys and the issue's bar, half of it; {} where the op does not say."""
    q, k, v = qkv
    keys = attention.kept_keys(entry.op, q, k, v, **entry.call_kwargs())
    if keys is None:
        return {}
    ideal = k.shape[1] / keys
    return {"keys_per_query": keys, "density": 1 / ideal, "ideal_speedup": ideal,
            "speedup_bar": ideal / 2}


def pick_baseline(candidates: list[Entry], qkv) -> Entry:
    reasons = []
    for entry in candidates:
        try:
            jax.eval_shape(entry.function(), *qkv)
            return entry
        except attention.NoImplementationError as error:
            reasons.append(str(error))
    raise RuntimeError("no baseline can run: " + " | ".join(reasons))


def run(entries, shapes, baselines, dtype, modes, timing, profile_calls=0) -> dict:
    rows = []
    for shape_name in shapes:
        shape = parse_shape(shape_name)
        qkv, cotangent = inputs(shape, jnp.dtype(dtype))
        base = None
        if baselines:
            baseline = pick_baseline(baselines, qkv)
            base_gate = gate(baseline, qkv, cotangent, "fwd_bwd" in modes, dtype)
            if not base_gate["passed"]:
                raise RuntimeError(f"baseline {baseline} fails its gate: {base_gate}")
            base = {**measure(baseline, qkv, cotangent, modes, timing), "gate": base_gate}
        for entry in entries:
            row = {"shape_name": shape_name, "shape": list(shape), "baseline": base,
                   "gate": gate(entry, qkv, cotangent, "fwd_bwd" in modes, dtype),
                   **sparsity(entry, qkv)}
            if row["gate"]["passed"]:
                row.update(measure(entry, qkv, cotangent, modes, timing, profile_calls))
                if "keys_per_query" in row:
                    row["roofline"] = attention_roofline(
                        qkv[0].shape, qkv[1].shape, row["keys_per_query"],
                        qkv[0].dtype.itemsize, {mode: row[f"{mode}_s"] for mode in modes},
                        CEILINGS.get(jax.devices()[0].device_kind))
                for mode in modes if base else ():
                    row[f"speedup_{mode}"] = base[f"{mode}_s"] / row[f"{mode}_s"]
            else:
                row["entry"] = str(entry)
            rows.append(row)
            print_row(row, modes)
        _add_reference_ratios(rows[-len(entries):], entries, modes)
    return {"rows": rows}


def _add_reference_ratios(rows, entries, modes) -> None:
    """speedup_<mode>_vs_xla for entries whose op's "xla" entry (same kwargs) also ran."""
    timed = {(e.op, e.implementation, e.kwargs): row
             for e, row in zip(entries, rows, strict=True) if row["gate"]["passed"]}
    for entry, row in zip(entries, rows, strict=True):
        reference = timed.get((entry.op, "xla", entry.kwargs))
        if entry.implementation == "xla" or reference is None or not row["gate"]["passed"]:
            continue
        for mode in modes:
            row[f"speedup_{mode}_vs_xla"] = reference[f"{mode}_s"] / row[f"{mode}_s"]
            print(f"  {entry}: {mode} x{row[f'speedup_{mode}_vs_xla']:.2f} vs xla", flush=True)


def print_row(row, modes) -> None:
    shape = "x".join(map(str, row["shape"]))
    text = f"{row['entry']:<40} {shape:<18} "
    if not row["gate"]["passed"]:
        print(text + f"GATE FAILED {row['gate']['errors']}, worst chunks "
              f"{row['gate']['worst_chunk_errors']}, bit-identical rerun "
              f"{row['gate']['bit_identical_rerun']}", flush=True)
        return
    base = row["baseline"]
    for mode in modes:
        text += f"{mode} {row[f'{mode}_s'] * 1e3:9.3f} ms "
        if base:
            text += (f"(base {base[f'{mode}_s'] * 1e3:9.3f}, x{row[f'speedup_{mode}']:6.2f})  ")
    if row["process_peak_bytes"]:
        text += f"peak {row['process_peak_bytes'] / 2**30:.2f} GiB "
    if "density" in row:
        text += f"density {row['density']:.4f} (ideal x{row['ideal_speedup']:.1f}) "
        for mode, place in row.get("roofline", {}).items():
            text += f"{mode} {place['tflops_per_s']:.0f} TFLOP/s {place['tb_per_s']:.2f} TB/s "
    print(text + (f"vs {base['entry']}" if base else ""), flush=True)


def main(argv) -> int:
    del argv
    entries = [Entry.parse(text) for text in FLAGS.ops.split(",") if text.strip()]
    baselines = ([] if FLAGS.baseline == "none"
                 else [Entry.parse(text) for text in FLAGS.baseline.split(",")])
    unknown_modes = set(FLAGS.modes) - {"fwd", "fwd_bwd"}
    if unknown_modes:
        raise app.UsageError(f"--modes: unknown {sorted(unknown_modes)}; use fwd, fwd_bwd")
    timing = dict(samples=FLAGS.samples, warmup=FLAGS.warmup,
                  sample_seconds=FLAGS.sample_seconds)
    device = jax.devices()[0]
    print(f"device: {device.device_kind} ({device.platform}), jax {jax.__version__}, "
          f"dtype {FLAGS.dtype}", flush=True)
    report = {
        "device_kind": device.device_kind,
        "platform": device.platform,
        "jax_version": jax.__version__,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "dtype": FLAGS.dtype,
        "timing": timing,
        **run(entries, FLAGS.shapes, baselines, FLAGS.dtype, FLAGS.modes, timing,
              FLAGS.profile_calls),
    }
    name = FLAGS.name or "_".join(sorted({e.op for e in entries})) + f"_{FLAGS.dtype}"
    write_report(report, FLAGS.results_dir, name)
    return 0 if all(row["gate"]["passed"] for row in report["rows"]) else 1


if __name__ == "__main__":
    app.run(main)
