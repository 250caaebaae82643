r"""Times the parts of the LLSA "pallas_gpu" path and sweeps kernel tilings on one shape.

    python -m experiments.tune_llsa --shapes=dit256,h64 \
        --variants="query_blocks=2,fine_chunk=2;num_warps=8"

For each shape it times, with the benchmark's timer: the XLA pooling + selection
(`llsa_pallas.prepare`), then for the default `gpu.Config` and each variant (fields of
`gpu.Config` as key=value, separated by ',', variants by ';') the forward kernel and the
kernels' forward+backward; every variant's output must match the default's first. Writes
`<results_dir>/<device>/<name>.json`.
"""

from __future__ import annotations

import ast
import dataclasses

import jax
import jax.numpy as jnp
from absl import app, flags

from experiments import benchmarking as bench
from lla.attention import llsa_hierarchy as hierarchy
from lla.attention.llsa_pallas import attend, prepare
from lla.pallas_kernels.llsa import gpu, selection

FLAGS = flags.FLAGS
flags.DEFINE_list("shapes", ["dit256"], "named shapes or BxNxHxD")
flags.DEFINE_string("variants", "query_blocks=2,fine_chunk=2;query_blocks=4,fine_chunk=1",
                    "Config overrides: key=value,... separated by ';'")
flags.DEFINE_integer("block_size", 16, "B")
flags.DEFINE_integer("topk", 8, "K")
flags.DEFINE_integer("levels", 2, "L")
flags.DEFINE_integer("samples", 10, "timed samples (median reported)")
flags.DEFINE_bool("interpret", False, "run the kernels in interpret mode (CPU smoke runs)")
flags.DEFINE_string("name", "tune_llsa", "results file name")
flags.DEFINE_string("results_dir", "experiments/results", "results root; <device>/ is added")


def parse_variants(text: str) -> list[dict]:
    variants = []
    for chunk in filter(None, (c.strip() for c in text.split(";"))):
        pairs = (pair.split("=", 1) for pair in chunk.split(","))
        variants.append({key.strip(): ast.literal_eval(value) for key, value in pairs})
    return variants


def tune_shape(shape, variants, static, timing) -> dict:
    batch, tokens, heads, head_dim = shape
    (q, k, v), cotangent = bench.inputs(shape, jnp.bfloat16)
    config_args = dict(**static, heads=heads, kv_heads=heads, tokens=tokens, head_dim=head_dim,
                       interpret=FLAGS.interpret)
    default = gpu.make_config(**config_args)
    prepare_fn = jax.jit(lambda q, k, v: prepare(q, k, v, default))
    inputs = (q, *prepare_fn(q, k, v))
    report = {"shape": list(shape), "prepare_s": bench.median_seconds(prepare_fn, (q, k, v),
                                                                      **timing)}
    size, levels = static["block_size"], static["levels"]
    pool_fn = jax.jit(lambda x: hierarchy.pyramid(x, size, levels)[1:])
    report["pool_one_input_s"] = bench.median_seconds(pool_fn, (q,), **timing)
    q_pooled, k_pooled = [None, *pool_fn(q)], [None, *pool_fn(k)]
    coarsest_fn = jax.jit(lambda a, b: hierarchy.select_coarsest(a, b, static["topk"]))
    report["select_coarsest_s"] = bench.median_seconds(
        coarsest_fn, (q_pooled[levels], k_pooled[levels]), **timing)
    children_fn = jax.jit(lambda qs, ks, top: [selection.select_children(
        qs[level], ks[level].reshape(batch, -1, size, heads, head_dim), top, default)
        for level in range(levels - 1, 0, -1)])
    top_picks = inputs[3][-1]
    report["select_children_kernels_s"] = bench.median_seconds(
        children_fn, (q_pooled, k_pooled, top_picks), **timing)
    expected = jax.jit(lambda *x: attend(*x, default))(*inputs)
    rows = []
    for overrides in [{}, *variants]:
        config = gpu.make_config(**config_args, **overrides)
        forward = jax.jit(lambda *x, config=config: attend(*x, config))
        error = bench.relative_error(forward(*inputs), expected)
        row = {"overrides": overrides, "config": dataclasses.asdict(config), "error": error}
        if error < 1e-2:
            row["forward_kernel_s"] = bench.median_seconds(forward, inputs, **timing)
            backward = jax.jit(lambda *x, config=config: jax.vjp(
                lambda *y: attend(*y, x[3], config), *x[:3])[1](x[4]))
            row["fwd_bwd_kernels_s"] = bench.median_seconds(backward, (*inputs, cotangent),
                                                            **timing)
        rows.append(row)
        print(f"{shape} {overrides}: error {error:.1e} "
              f"fwd {row.get('forward_kernel_s', float('nan')) * 1e3:.3f} ms "
              f"fwd+bwd {row.get('fwd_bwd_kernels_s', float('nan')) * 1e3:.3f} ms", flush=True)
    print(f"{shape} prepare (pool + select): {report['prepare_s'] * 1e3:.3f} ms; pool one "
          f"input {report['pool_one_input_s'] * 1e3:.3f} ms; coarsest select "
          f"{report['select_coarsest_s'] * 1e3:.3f} ms; children select kernels "
          f"{report['select_children_kernels_s'] * 1e3:.3f} ms", flush=True)
    return {**report, "variants": rows}


def main(argv) -> None:
    del argv
    static = dict(block_size=FLAGS.block_size, topk=FLAGS.topk, levels=FLAGS.levels)
    timing = dict(samples=FLAGS.samples, warmup=2, sample_seconds=0.02)
    variants = parse_variants(FLAGS.variants)
    report = {"device_kind": jax.devices()[0].device_kind, "jax_version": jax.__version__,
              "static": static, "dtype": "bfloat16",
              "shapes": [tune_shape(bench.parse_shape(name), variants, static, timing)
                         for name in FLAGS.shapes]}
    bench.write_report(report, FLAGS.results_dir, FLAGS.name)


if __name__ == "__main__":
    app.run(main)
