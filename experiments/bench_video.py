r"""Video generation speed: seconds per generated frame as the horizon grows, per model family.

    python -m experiments.bench_video --models=convssm:moving_mnist,video_transformer:S \
        --attentions=dense,neighborhood --context=10 --horizons=10,50,100 --batch_size=8

Each --models entry is `family:preset` of a video family (`lla.models`, the contract of
`generate(context, horizon)`); a video_transformer entry runs once per op of --attentions,
with the op's registered `default_kwargs` updated by its entry in --attention_kwargs (JSON keyed
by op, e.g. '{"neighborhood": {"kernel_size": [3, 7, 7]}}'); an op that cannot be causal over
frames (`token_order.frame_causal_arguments` raises) is skipped with the reason. ConvS5
(convssm) takes no attention. Models have random weights (`init`; zero-initialised parameters,
such as the transformer's head, get N(0, 0.02²) instead, so that the model does not predict
zeros and the gate compares real frames), resolution 64, 1 channel, `frames` = --context, and
compute in --dtype; the context is uniform noise in [-1, 1], [batch_size, context, 64, 64, 1].

Per model and horizon H (ascending): `generate` jitted with H static is compiled (compile_s:
lowering plus XLA compilation), then --samples calls are timed one by one
(`benchmarking.median_seconds`, block_until_ready; its calibration call warms up).
seconds_per_frame = median / H (one generated frame of the whole batch), frames_per_s =
batch_size / seconds_per_frame, ratio_vs_convssm = seconds_per_frame / that of the first
convssm entry at the same H (> 1: slower than ConvS5; null without a convssm entry).

Correctness gate, before any timing, at the smallest horizon, on the compiled program that is
then timed: the contract's exactness property, g = generate(context, H) against
`apply(concat(context, g[:, :-1]))[:, Tc - 1:]`. Its max |difference| must be within
GATE_BOUND[--dtype]: 1e-4 in float32 (the two forms differ by rounding only: the scan against
the recurrent step in ConvS5, nothing in the transformer); 0.1 in bfloat16 (frames lie in about
[-1, 1] and bf16 keeps 8 significant bits, ~4e-3 per rounding, which the recurrent and the
parallel form accumulate differently across the layers). Beyond it the script stops with a
non-zero exit, naming the model. Rows go to `<results_dir>/<device>/<name>.json` (device kind,
jax version, the command, flag values, rows, skipped entries), rewritten after every timed
horizon, so a run stopped by a time limit keeps all it finished.

Notes: the transformer has no KV cache. Each generated frame reruns the forward over a buffer
of Tc + H - 1 frames, so its per-frame cost grows with the horizon (quadratically in the
frames for dense attention, linearly for a fixed neighbourhood); ConvS5's recurrent step makes
its per-frame cost independent of the horizon, so its seconds_per_frame should stay flat.
"""

from __future__ import annotations

import datetime
import json
import sys
import time
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

import lla.attention as attention
from experiments.benchmarking import median_seconds, write_report
from lla import models
from lla.attention import token_order

flags.DEFINE_list("models", ["convssm:moving_mnist", "video_transformer:S"],
                  "video models family:preset")
flags.DEFINE_list("attentions", ["dense", "neighborhood"],
                  "attention ops of the video_transformer entries")
flags.DEFINE_string("attention_kwargs", "{}",
                    "JSON {op: {key: value}} updating the ops' default_kwargs")
flags.DEFINE_integer("context", 10, "context frames Tc")
flags.DEFINE_list("horizons", ["10", "50", "100"], "frames to generate H")
flags.DEFINE_integer("batch_size", 8, "videos generated together")
flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"], "compute dtype")
flags.DEFINE_integer("samples", 5, "timed generate calls per horizon (median)")
flags.DEFINE_string("name", "video_generation", "results file name")
flags.DEFINE_string("results_dir", "experiments/results", "results root; <device>/ is added")
FLAGS = flags.FLAGS

RESOLUTION, CHANNELS = 64, 1
GATE_BOUND = {"float32": 1e-4, "bfloat16": 0.1}  # max |generated - forward| (see docstring)
TRANSFORMER = "video_transformer"


def parse_models(entries: list[str]) -> list[tuple[str, str]]:
    """['family:preset', ...] -> [(family, preset), ...], checked against `lla.models`."""
    parsed = []
    for entry in entries:
        family, sep, preset = entry.partition(":")
        if not sep:
            raise app.UsageError(f"--models: expected family:preset, got {entry!r}")
        if preset not in models.get(family).PRESETS:
            raise app.UsageError(f"--models: {family} has no preset {preset!r}; presets: "
                                 f"{', '.join(models.get(family).PRESETS)}")
        parsed.append((family, preset))
    return parsed


def as_static(value):
    """JSON lists as tuples (hashable, as static attention arguments must be)."""
    if isinstance(value, list):
        return tuple(as_static(item) for item in value)
    if isinstance(value, dict):
        return {key: as_static(item) for key, item in value.items()}
    return value


def attention_arguments(names: list[str], text: str) -> dict[str, dict]:
    """{op: default_kwargs updated by the op's entry of the --attention_kwargs JSON}."""
    overrides = as_static(json.loads(text))
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise app.UsageError(f"--attention_kwargs names {unknown}, not in --attentions "
                             f"{names}; it maps op name -> keyword arguments")
    return {name: {**attention.get(name).default_kwargs, **overrides.get(name, {})}
            for name in names}


def variants(family: str, preset: str, arguments: dict[str, dict], skipped: list[dict]
             ) -> list[tuple[str | None, dict | None]]:
    """The (attention, attention_kwargs) runs of one --models entry; ops that cannot be
    causal over frames are appended to `skipped` with the reason (and printed)."""
    if family != TRANSFORMER:
        return [(None, None)]
    grid = RESOLUTION // models.get(family).PRESETS[preset]["patch_size"]
    runs = []
    for name, kwargs in arguments.items():
        try:
            token_order.frame_causal_arguments(name, (FLAGS.context, grid, grid))
        except ValueError as error:
            print(f"skip {family}:{preset} attention={name}: {error}", flush=True)
            skipped.append({"model": family, "preset": preset, "attention": name,
                            "reason": str(error)})
            continue
        runs.append((name, kwargs))
    return runs


def build(family: str, preset: str, attention_name: str | None, kwargs: dict | None):
    """The model at resolution 64, 1 channel, `frames` = --context, in --dtype."""
    fields = dict(resolution=RESOLUTION, channels=CHANNELS, frames=FLAGS.context,
                  dtype=jnp.dtype(FLAGS.dtype))
    if attention_name is not None:
        fields.update(attention=attention_name, attention_kwargs=kwargs)
    return models.build(family, preset, **fields)


def random_params(model, clip_shape: tuple[int, ...]):
    """`model.init` weights on zeros of `clip_shape`, with every all-zero parameter replaced
    by N(0, 0.02²) noise."""
    params = jax.jit(model.init)(jax.random.key(1), jnp.zeros(clip_shape))
    rng = np.random.default_rng(2)  # host-side: no compile per parameter
    return jax.tree.map(lambda leaf: leaf if np.any(leaf) else jnp.asarray(
        0.02 * rng.standard_normal(leaf.shape), leaf.dtype), params)


def compile_generate(model, params, context: jax.Array, horizon: int):
    """(compiled `(params, context) -> generate(context, horizon)`, seconds to compile)."""
    start = time.perf_counter()
    compiled = jax.jit(lambda p, c: model.apply(p, c, horizon, method=model.generate)).lower(
        params, context).compile()
    return compiled, time.perf_counter() - start


def gate(model, params, context: jax.Array, generated: jax.Array, label: str) -> dict:
    """The exactness property: max |g - apply(concat(context, g[:, :-1]))[:, Tc - 1:]|.

    Raises:
      AssertionError: the difference exceeds GATE_BOUND[--dtype].
    """
    clip = jnp.concatenate([context, generated[:, :-1]], axis=1)
    forward = jax.jit(model.apply)(params, clip)[:, context.shape[1] - 1:]
    error = float(jnp.max(jnp.abs(forward - generated)))
    bound = GATE_BOUND[FLAGS.dtype]
    if not error <= bound:
        raise AssertionError(
            f"{label}: generate(context, {generated.shape[1]}) differs from the forward over "
            f"concat(context, generated[:, :-1]) by max |difference| {error:.3g} > {bound} "
            f"({FLAGS.dtype}); generation is not the model's own autoregressive prediction")
    return {"horizon": int(generated.shape[1]), "max_abs_difference": error, "bound": bound,
            "passed": True}


def measure(family: str, preset: str, attention_name: str | None, kwargs: dict | None,
            horizons: list[int], context: jax.Array) -> Iterator[dict]:
    """One row per horizon (ascending) for one model, each as soon as it is timed; the gate
    runs at the first."""
    label = f"{family}:{preset}" + (f" attention={attention_name}" if attention_name else "")
    model = build(family, preset, attention_name, kwargs)
    # The gate's clip, Tc + H - 1 frames: a neighbourhood's time kernel may exceed Tc alone.
    _, frames, *frame_shape = context.shape
    params = random_params(model, (1, frames + horizons[0] - 1, *frame_shape))
    checked = None
    for horizon in horizons:
        print(f"{label}: compiling generate for horizon {horizon} ...", flush=True)
        compiled, compile_s = compile_generate(model, params, context, horizon)
        if checked is None:
            print(f"{label}: correctness gate at horizon {horizon} ...", flush=True)
            checked = gate(model, params, context, compiled(params, context), label)
        median = median_seconds(compiled, (params, context), samples=FLAGS.samples, warmup=0,
                                sample_seconds=0.0)
        yield {"model": family, "preset": preset, "attention": attention_name,
               "attention_kwargs": kwargs, "horizon": horizon, "compile_s": compile_s,
               "seconds_per_frame": median / horizon,
               "frames_per_s": FLAGS.batch_size * horizon / median,
               "ratio_vs_convssm": None, "gate": checked}


def main(argv) -> int:
    del argv
    entries = parse_models(FLAGS.models)
    horizons = sorted({int(h) for h in FLAGS.horizons})
    if not horizons or horizons[0] < 1 or FLAGS.context < 1:
        raise app.UsageError("--horizons and --context must be positive ints")
    arguments = attention_arguments(FLAGS.attentions, FLAGS.attention_kwargs)
    device = jax.devices()[0]
    print(f"device: {device.device_kind} ({device.platform}), jax {jax.__version__}, "
          f"dtype {FLAGS.dtype}, batch {FLAGS.batch_size}, context {FLAGS.context}", flush=True)
    context = jax.random.uniform(jax.random.key(0), (FLAGS.batch_size, FLAGS.context,
                                                     RESOLUTION, RESOLUTION, CHANNELS),
                                 minval=-1.0, maxval=1.0)
    reference = next((entry for entry in entries if entry[0] == "convssm"), None)
    rows, skipped, convssm = [], [], {}  # convssm: horizon -> the reference's seconds/frame
    flag_values = {flag.name: flag.value
                   for flag in FLAGS.get_key_flags_for_module(sys.modules[__name__])}

    def save():  # after every row: a time limit loses only the horizon it cut
        for row in rows:
            if row["horizon"] in convssm:
                row["ratio_vs_convssm"] = row["seconds_per_frame"] / convssm[row["horizon"]]
        write_report({"device_kind": device.device_kind, "platform": device.platform,
                      "jax_version": jax.__version__,
                      "date": datetime.datetime.now(datetime.UTC).isoformat(
                          timespec="seconds"),
                      "command": " ".join(sys.argv), "args": flag_values,
                      "resolution": RESOLUTION, "channels": CHANNELS, "rows": rows,
                      "skipped": skipped}, FLAGS.results_dir, FLAGS.name)

    for family, preset in entries:
        for attention_name, kwargs in variants(family, preset, arguments, skipped):
            for row in measure(family, preset, attention_name, kwargs, horizons, context):
                if (family, preset) == reference:
                    convssm.setdefault(row["horizon"], row["seconds_per_frame"])
                rows.append(row)
                ratio = (f", x{row['seconds_per_frame'] / convssm[row['horizon']]:.2f} vs "
                         f"ConvS5" if row["horizon"] in convssm else "")
                print(f"{family}:{preset} {attention_name or '-'} H={row['horizon']:4d}: "
                      f"{1e3 * row['seconds_per_frame']:9.3f} ms/frame, "
                      f"{row['frames_per_s']:9.1f} frames/s{ratio} (compile "
                      f"{row['compile_s']:.1f} s, gate max |diff| "
                      f"{row['gate']['max_abs_difference']:.3g})", flush=True)
                save()
    save()
    return 0


if __name__ == "__main__":
    app.run(main)
