r"""Decoding speed of the LM: one token with the KV cache vs recomputing the full forward.

    python -m experiments.bench_decode --preset=S --contexts=1024,8192 --batch_size=8

For each context n: an LM (`lla.models.lm`, random weights, byte vocabulary unless --vocab)
whose cache holds n - 1 tokens; "cached" times one jitted decode step (the new token attends
to the n - 1 cached keys, `kv_lengths`), "recompute" one jitted forward over all n tokens
(what decoding without a cache costs per token). Correctness gate first: the decode step's
logits equal the last row of the full forward (max abs difference reported, bound per
dtype). Reports tokens/s of both and the ratio, writes
`<results_dir>/<device>/<name>.json`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from experiments.benchmarking import median_seconds, write_report
from lla import models
from lla.models import lm_decoding

flags.DEFINE_string("preset", "S", "LM preset")
flags.DEFINE_list("contexts", ["1024", "8192"], "context lengths n")
flags.DEFINE_integer("batch_size", 8, "sequences decoded together")
flags.DEFINE_integer("vocab", 256, "vocabulary size")
flags.DEFINE_string("dtype", "bfloat16", "compute dtype")
flags.DEFINE_string("attention", "dense", "attention op (must declare decode)")
flags.DEFINE_integer("samples", 20, "timed batches per measurement (median)")
flags.DEFINE_string("name", "lm_decode", "results file name")
flags.DEFINE_string("results_dir", "experiments/results", "results root; <device>/ is added")
FLAGS = flags.FLAGS
GATE = {"float32": 1e-4, "bfloat16": 0.15, "float16": 0.05}  # max |logit difference|


def measure(context: int) -> dict:
    model = models.build("lm", FLAGS.preset, vocab_size=FLAGS.vocab, context=context,
                         attention=FLAGS.attention, dtype=jnp.dtype(FLAGS.dtype))
    tokens = jax.random.randint(jax.random.key(0), (FLAGS.batch_size, context), 0, 256)
    params = jax.jit(model.init)(jax.random.key(1), tokens[:1])
    forward = jax.jit(model.apply)
    _, cache = jax.jit(lambda p, t: lm_decoding.prefill(model, p, t, context))(
        params, tokens[:, :-1])
    step = lm_decoding.make_decode_step(model)
    decoded, _ = step(params, cache, tokens[:, -1])
    full = forward(params, tokens)[:, -1]
    error = float(jnp.max(jnp.abs(decoded - full)))
    if not error <= GATE[FLAGS.dtype]:
        raise AssertionError(f"context {context}: cached decode differs from the full "
                             f"forward by {error} > {GATE[FLAGS.dtype]}")
    timing = dict(samples=FLAGS.samples, warmup=3, sample_seconds=0.05)
    cached_s = median_seconds(step, (params, cache, tokens[:, -1]), **timing)
    recompute_s = median_seconds(forward, (params, tokens), **timing)
    return {"context": context, "max_abs_logit_difference": error,
            "cached_step_s": cached_s, "recompute_step_s": recompute_s,
            "cached_tokens_per_s": FLAGS.batch_size / cached_s,
            "recompute_tokens_per_s": FLAGS.batch_size / recompute_s,
            "speedup_cached_vs_recompute": recompute_s / cached_s,
            "params": int(sum(np.size(x) for x in jax.tree.leaves(params)))}


def main(argv) -> None:
    del argv
    rows = []
    for context in map(int, FLAGS.contexts):
        rows.append(measure(context))
        row = rows[-1]
        print(f"n={context:6d}: cached {row['cached_tokens_per_s']:10.1f} tok/s, "
              f"recompute {row['recompute_tokens_per_s']:9.1f} tok/s, "
              f"x{row['speedup_cached_vs_recompute']:.1f} (gate: max |dlogit| "
              f"{row['max_abs_logit_difference']:.3g})", flush=True)
    write_report({"device_kind": jax.devices()[0].device_kind, "jax_version": jax.__version__,
                  "preset": FLAGS.preset, "batch_size": FLAGS.batch_size, "vocab": FLAGS.vocab,
                  "dtype": FLAGS.dtype, "attention": FLAGS.attention, "rows": rows},
                 FLAGS.results_dir, FLAGS.name)


if __name__ == "__main__":
    app.run(main)
