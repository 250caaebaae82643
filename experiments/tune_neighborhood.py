r"""Times the neighbourhood-attention GPU kernels one by one for tile and launch variants.

    python -m experiments.tune_neighborhood --shape=dit256 --spatial_shape=256,256 \
        --kernel_size=31,31 --variants="q_tile=8x16,kv_tile=8x8;q_tile=16x16,num_stages=1"

For the default plan (`tiling.make_plan`) and each variant (q_tile / kv_tile as AxB, and
Triton launch fields num_warps / num_stages, separated by ',', variants by ';') it times the
forward, dQ and dK/dV kernels on tiled bf16 inputs, after checking the variant's forward
output against the default's. A kernel that fails to compile (e.g. too much shared memory)
is reported with its error instead of a time. Writes `<results_dir>/<device>/<name>.json`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from absl import app, flags

from experiments import benchmarking as bench
from lla.pallas_kernels.neighborhood import gpu
from lla.pallas_kernels.neighborhood.tiling import make_plan

FLAGS = flags.FLAGS
flags.DEFINE_string("shape", "dit256", "named shape or BxNxHxD")
flags.DEFINE_list("spatial_shape", ["256", "256"], "grid, product N")
flags.DEFINE_list("kernel_size", ["13", "13"], "per axis")
flags.DEFINE_list("dilation", None, "per axis (default 1)")
flags.DEFINE_list("causal", None, "per axis, 0/1 (default 0)")
flags.DEFINE_string("variants", "", "overrides key=value,... separated by ';'")
flags.DEFINE_integer("samples", 10, "timed samples (median reported)")
flags.DEFINE_string("name", "tune_neighborhood", "results file name")
flags.DEFINE_string("results_dir", "experiments/results", "results root; <device>/ is added")


def parse_variants(text: str) -> list[dict]:
    variants = []
    for chunk in filter(None, (c.strip() for c in text.split(";"))):
        variant = {}
        for pair in chunk.split(","):
            key, value = (x.strip() for x in pair.split("=", 1))
            variant[key] = (tuple(int(n) for n in value.split("x")) if key.endswith("tile")
                            else int(value))
        variants.append(variant)
    return variants


def time_kernels(plan, launch, q, k, v, cotangent, timing) -> dict:
    """Seconds of each kernel (or its error), and the forward output for the check."""
    row, out = {}, None
    qt, kt, vt = (plan.to_tiles(x, t) for x, t in ((q, plan.q_tile), (k, plan.kv_tile),
                                                    (v, plan.kv_tile)))
    d_out = plan.to_tiles(cotangent, plan.q_tile)
    try:
        forward = jax.jit(lambda *x: gpu.forward(*x, plan, launch=launch))
        out, lse = forward(qt, kt, vt)
        row["forward_s"] = bench.median_seconds(forward, (qt, kt, vt), **timing)
        delta = jnp.einsum("bgnhd,bgnhd->bhgn", out.astype(jnp.float32),
                           d_out.astype(jnp.float32))
        args = (qt, kt, vt, d_out, lse, delta)
        for name, kernel in (("dq", gpu.backward_dq), ("dkv", gpu.backward_dkv)):
            fn = jax.jit(lambda *x, kernel=kernel: kernel(*x, plan, launch=launch))
            row[f"{name}_s"] = bench.median_seconds(fn, args, **timing)
    except Exception as error:  # report compile failures (e.g. shared memory) per variant
        row["error"] = str(error).splitlines()[0][:300]
    return row, None if out is None else plan.from_tiles(out, plan.q_tile)


def main(argv) -> None:
    del argv
    shape = bench.parse_shape(FLAGS.shape)
    spatial = tuple(int(n) for n in FLAGS.spatial_shape)
    rank = len(spatial)
    geometry = dict(
        spatial_shape=spatial, kernel_size=tuple(int(n) for n in FLAGS.kernel_size),
        dilation=tuple(int(n) for n in FLAGS.dilation or [1] * rank),
        causal=tuple(bool(int(n)) for n in FLAGS.causal or [0] * rank))
    (q, k, v), cotangent = bench.inputs(shape, jnp.bfloat16)
    timing = dict(samples=FLAGS.samples, warmup=2, sample_seconds=0.02)
    rows, expected = [], None
    for overrides in [{}, *parse_variants(FLAGS.variants)]:
        tiles = {key: overrides[key] for key in ("q_tile", "kv_tile") if key in overrides}
        launch = {key: value for key, value in overrides.items() if key not in tiles}
        plan = make_plan(**geometry, heads=shape[2], kv_heads=shape[2], head_dim=shape[3],
                         **tiles)
        row, out = time_kernels(plan, launch, q, k, v, cotangent, timing)
        row.update(overrides=str(overrides), q_tile=plan.q_tile, kv_tile=plan.kv_tile,
                   kv_tiles_per_query_tile=float(plan.kv_lists().counts[..., 1].mean()))
        if out is not None:
            expected = out if expected is None else expected
            row["error_vs_first"] = bench.relative_error(out, expected)
        rows.append(row)
        print(row, flush=True)
    report = {"device_kind": jax.devices()[0].device_kind, "jax_version": jax.__version__,
              "shape": list(shape), "geometry": {k: list(v) for k, v in geometry.items()},
              "launch_default": gpu.LAUNCH, "dtype": "bfloat16", "variants": rows}
    bench.write_report(report, FLAGS.results_dir, FLAGS.name)


if __name__ == "__main__":
    app.run(main)
