r"""Moving-MNIST next-frame prediction: ConvS5 (ConvSSM) or a video transformer by attention.

Default (CPU-sized; 2 min 39 s measured on 2 CPU cores, jax 0.11.2):
    python -m experiments.train --config=configs/convssm_moving_mnist.py --workdir=/tmp/mm
  20-frame 64 x 64 clips of two bouncing procedural digits (embedded, no files), ConvS5-tiny
  (2 blocks, 16 x 16 latent), batch 8, 300 steps, teacher-forced MSE (0.114 at step 60,
  0.097 at step 300); every 150 steps the
  EMA weights condition on 10 frames of 64 fixed held-out clips and generate 10: test/mse,
  test/psnr, test/ssim (per-pixel, [0, 1] scale), per-frame curves
  (<workdir>/per_frame/step_*.txt) and prediction strips (<workdir>/strips/step_*.png:
  truth above, context and prediction below).

Full size (one GPU): `:digits=mnist` (fetch once: `bash scripts/fetch_mnist.sh`), the
paper's Moving-MNIST ConvS5 (8 blocks, d_model 128, P 128) or the transformer's S preset,
bf16, batch 16, evaluated on 256 clips of the fixed 1,000-clip test split. Measured on one
H200 (jax 0.11.2, bf16, experiments/results/nvidia_h200/):
  training step at batch 16 (alone on the GPU): ConvS5 26.7 ms
  (moving_mnist_convssm_train_throughput.json), the transformer S with
  `attention=neighborhood` 60.5 ms, with dense (block-causal cuDNN) 141.5 ms
  (moving_mnist_transformer_train_throughput.json);
  test metrics after 1,000 steps (`--config.total_steps=1000 --config.eval_every=500`;
  moving_mnist_1000_steps/summary.json), MSE / SSIM / PSNR over the 10 generated frames:
  ConvS5 0.0248 / 0.773 / 16.9, neighborhood 0.0253 / 0.762 / 16.6, dense 0.0290 / 0.703
  / 15.9;
  generation per frame (batch 8, 10 context frames, bf16), horizon 10 / 25 / 50 / 100
  (moving_mnist_video_generation_horizons.json): ConvS5 1.43 / 1.57 / 1.25 / 1.35 ms, flat;
  neighborhood transformer 9.97 / 16.6 / 28.8 / 51.9 ms (7.0x / 10.6x / 23x / 38x ConvS5);
  dense transformer 20.9 / - / 160.4 / - ms (moving_mnist_video_generation.json): 146x
  ConvS5 at horizon 50 (not timed at 100: the benchmark's time limit ran out).
Several runs on one GPU need `XLA_PYTHON_CLIENT_MEM_FRACTION` (e.g. 0.3 each): by default the
first takes 75 % of the memory and the others fail ("BlasLt is unavailable").

Variants, `configs/convssm_moving_mnist.py:key=value,...`:
  model=convssm|video_transformer   the family; presets tiny (CPU) / moving_mnist or S
  preset=<name>                     override the family's preset
  attention=dense|neighborhood|...  the transformer's op: any op that can attend causally
                                    over time on a 3-D (frames, h, w) token grid
                                    (`lla.attention.token_order.frame_causal_ops`);
                                    neighborhood uses a (5, 7, 7) window (5 frames back)
  digits=procedural|mnist           digit glyphs: embedded procedural, or MNIST files
  frames=20, context=10, horizon=10 clip length, conditioning frames, generated frames;
                                    a long-horizon run, memory allowing:
                                    frames=1000,context=900,horizon=100
Any field can be overridden: `--config.total_steps=1000 --config.batch_size=4`.
"""

from __future__ import annotations

import ml_collections

from configs import common
from lla import models

DEFAULTS = {"model": "convssm", "preset": None, "attention": "dense", "digits": "procedural",
            "frames": 20, "context": 10, "horizon": 10}
FULL_PRESETS = {"convssm": "moving_mnist", "video_transformer": "S"}
NEIGHBORHOOD_WINDOW = (5, 7, 7)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    options = common.parse(arg, DEFAULTS)
    common.choose("model", options["model"], FULL_PRESETS)
    common.choose("digits", options["digits"], ("procedural", "mnist"))
    full_size = options["digits"] == "mnist"
    family = options["model"]
    preset = options["preset"] or (FULL_PRESETS[family] if full_size else "tiny")
    common.choose("preset", preset, models.get(family).PRESETS)
    if options["context"] + options["horizon"] > options["frames"]:
        raise ValueError(f"context={options['context']} + horizon={options['horizon']} "
                         f"exceed frames={options['frames']}; lengthen the clips")

    config = ml_collections.ConfigDict()
    config.seed = 0
    config.total_steps = 4000 if full_size else 300
    config.batch_size = 16 if full_size else 8
    config.log_every = 50 if full_size else 20
    config.checkpoint_every = 500 if full_size else 150
    config.eval_every = 500 if full_size else 150
    config.keep_checkpoints = 3
    config.distributed = False
    config.nonfinite = "stop"
    config.init_from = ""  # a training workdir to fine-tune from (its EMA weights)

    data = {"digits": options["digits"], "frames": options["frames"]}
    if full_size:
        data["directory"] = "data/mnist"
    config.data = ml_collections.ConfigDict(dict(
        name="moving_mnist", kwargs={**data, "split": "train"}))
    config.eval_data = ml_collections.ConfigDict(dict(
        name="moving_mnist", kwargs={**data, "split": "test"}))

    config.objective = ml_collections.ConfigDict(dict(
        name="frame_prediction", context_frames=options["context"],
        horizon=options["horizon"], eval_count=256 if full_size else 64,
        eval_batch_size=32 if full_size else 16, strip_count=4))

    config.model = ml_collections.ConfigDict(dict(
        name=family, preset=preset, dtype="bfloat16" if full_size else "float32"))
    if family == "video_transformer":
        attention, attention_kwargs = common.attention(options["attention"])
        if attention == "neighborhood":
            attention_kwargs["kernel_size"] = NEIGHBORHOOD_WINDOW
        config.model.attention = attention
        config.model.attention_kwargs = attention_kwargs

    config.optimizer = ml_collections.ConfigDict(dict(
        learning_rate=5e-4 if full_size else 2e-3, weight_decay=0.01, clip_norm=1.0,
        warmup_steps=200 if full_size else 20))
    if full_size:  # cosine decay (ConvS5's schedule) to 0 at the last step
        config.optimizer.decay_steps = config.get_ref("total_steps")
    config.ema = ml_collections.ConfigDict(dict(max_decay=0.999, inv_gamma=1.0, power=0.75))
    config.mesh = common.mesh()
    return config
