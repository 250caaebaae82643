r"""Times the published LLSA Triton kernels (github.com/SingleZombie/LLSA, under PyTorch) at
the shapes of `experiments.benchmarking.SHAPES`, for issue 13's side-by-side figures: lla's
op is timed by `experiments.bench_attention` in another process on the same device.

    python -m experiments.bench_published_llsa --published_src=<LLSA checkout>/src \
        --published_commit=7f021df --shapes=s16k,dit256,b2h4,h64,dit512 \
        --check=/tmp/published_llsa_check.npz --name=published_llsa
    python -m experiments.bench_published_llsa --compare=/tmp/published_llsa_check.npz \
        --name=published_llsa        # the gate, in a JAX process (no torch needed)

No published code is copied here: its kernel package is imported from --published_src at
run time (its licence is non-commercial). Its layout is [B, H, N, D]; the call is the one of
its `test_kernel.py` benchmark: mean-pool q, k and v level by level (window B), then its
autograd Function for L = 2 (or 1) with top-K at every level, token weights B and B². Inputs
are standard-normal bf16 on the GPU; forward+backward is that call plus `backward` of a
random cotangent. Each figure is the median of `triton.testing.do_bench` (warm-up included).

--check writes one call at `published_llsa.CHECK_SHAPE` to an npz: q, k, v and the output,
and the published pooled keys and values and picks. --compare loads it and adds
`published_llsa.gate` to the results JSON: the output against lla's float32 attention over
the published pooling and picks (the kernels' arithmetic; bound `published_llsa.GATE_BOUND`),
and, reported beside it, against lla's whole reference with the share of picks both make
(the published pooling sums in bf16, which flips a few near-tied picks).
Results: `<results_dir>/<device>/<name>.json`, rows of shape, fwd_s, fwd_bwd_s.
"""

from __future__ import annotations

import datetime
import json
import pathlib
import sys

from absl import app, flags

from experiments.benchmarking import device_slug, parse_shape
from experiments.published_llsa import (
    CHECK_SHAPE,
    gate,
    published_call,
    published_picks,
    published_pyramids,
    time_one,
)

flags.DEFINE_string("published_src", None, "the published repository's src/ folder (holds "
                    "llsa/kernel/)")
flags.DEFINE_string("published_commit", "", "its commit, stored with the results")
flags.DEFINE_list("shapes", ["s16k", "dit256", "b2h4", "h64", "dit512"], "SHAPES names or "
                  "BxNxHxD")
flags.DEFINE_integer("levels", 2, "1 or 2 (the published kernels' two variants)")
flags.DEFINE_integer("topk", 8, "K at every level")
flags.DEFINE_integer("block_size", 16, "B")
flags.DEFINE_string("check", None, "write the gate's call to this npz")
flags.DEFINE_string("compare", None, "gate: compare this npz against lla's reference")
flags.DEFINE_string("results_dir", "experiments/results", "results root; <device>/ is added")
flags.DEFINE_string("name", "published_llsa", "results file name")
FLAGS = flags.FLAGS


def time_published(shapes) -> tuple[list[dict], dict]:
    """(rows, environment) for the published kernels at `shapes` ([B, N, H, D] each)."""
    import importlib

    import torch
    import triton

    sys.path.insert(0, str(pathlib.Path(FLAGS.published_src).resolve()))
    kernel = importlib.import_module("llsa.kernel")
    for module in ("triton.mean_pool", "triton.topk", "torch_op.flash_sparse_attention_res_1",
                   "torch_op.flash_sparse_attention_res_2"):
        importlib.import_module(f"llsa.kernel.{module}")
    call = published_call(kernel, FLAGS.levels, FLAGS.topk, FLAGS.block_size)
    rows = []
    for shape in shapes:
        fwd_ms, fwd_bwd_ms = time_one(call, shape, torch, triton)
        rows.append({"shape": list(shape), "fwd_s": fwd_ms / 1e3, "fwd_bwd_s": fwd_bwd_ms / 1e3,
                     "peak_bytes": torch.cuda.max_memory_allocated()})
        print(f"published L={FLAGS.levels} {'x'.join(map(str, shape))}: fwd {fwd_ms:.3f} ms, "
              f"fwd+bwd {fwd_bwd_ms:.3f} ms")
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    environment = {"device_kind": torch.cuda.get_device_name(), "torch": torch.__version__,
                   "triton": triton.__version__}
    if FLAGS.check:
        import numpy as np
        batch, tokens, heads, dim = CHECK_SHAPE
        generator = torch.Generator(device="cuda").manual_seed(1)
        q, k, v = (torch.randn(batch, heads, tokens, dim, generator=generator, device="cuda",
                               dtype=torch.bfloat16) for _ in range(3))
        as_numpy = lambda x: x.float().transpose(1, 2).cpu().numpy()  # noqa: E731
        q_pyramid, k_pyramid, v_pyramid = published_pyramids(kernel, q, k, v, FLAGS.levels,
                                                             FLAGS.block_size)
        picks = published_picks(kernel, q_pyramid, k_pyramid, FLAGS.levels, FLAGS.topk,
                                FLAGS.block_size)
        np.savez(FLAGS.check, q=as_numpy(q), k=as_numpy(k), v=as_numpy(v),
                 out=as_numpy(call(q, k, v)),
                 **{f"k{level + 1}": as_numpy(x) for level, x in enumerate(k_pyramid)},
                 **{f"v{level + 1}": as_numpy(x) for level, x in enumerate(v_pyramid)},
                 **{f"p{level}": x.cpu().numpy() for level, x in picks.items()})
        print(f"wrote {FLAGS.check}")
    return rows, environment


def main(argv) -> None:
    del argv
    results = pathlib.Path(FLAGS.results_dir)
    if FLAGS.compare:
        checked = gate(FLAGS.compare, FLAGS.levels, FLAGS.topk, FLAGS.block_size)
        paths = sorted(results.glob(f"*/{FLAGS.name}.json"))
        if len(paths) != 1:
            raise app.UsageError(f"--compare adds the gate to one {FLAGS.name}.json under "
                                 f"{results}; found {len(paths)}")
        record = json.loads(paths[0].read_text())
        record["gate"] = checked
        paths[0].write_text(json.dumps(record, indent=1) + "\n")
        print(f"gate {checked}; wrote {paths[0]}")
        return
    if not FLAGS.published_src:
        raise app.UsageError("--published_src is required: the published repository's src/ "
                             "folder (or --compare=NPZ for the gate)")
    rows, environment = time_published([parse_shape(name) for name in FLAGS.shapes])
    record = {**environment, "date": datetime.date.today().isoformat(),
              "published": "github.com/SingleZombie/LLSA", "commit": FLAGS.published_commit,
              "levels": FLAGS.levels, "topk": FLAGS.topk, "block_size": FLAGS.block_size,
              "dtype": "bfloat16", "timing": "triton.testing.do_bench median",
              "command": " ".join(sys.argv), "rows": rows}
    folder = results / device_slug(environment["device_kind"])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{FLAGS.name}.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {folder / f'{FLAGS.name}.json'}")


if __name__ == "__main__":
    app.run(main)
