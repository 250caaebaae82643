r"""Pixel-space DiT trained with flow matching, log-linear sparse attention by default.

Default (CPU-sized, the README's main job; 4 min 50 s measured on 2 CPU cores):
    python -m experiments.train --config=configs/llsa_pixel.py
  32 x 32 embedded procedural shapes, DiT-tiny, LLSA (block 16, top-8, 1 level over 1,024
  pixel tokens), batch 16, 300 steps at ~1.2 steps/s: the loss falls from about 1.2 (step
  10) to about 0.13 (step 300); sample grids at steps 150 and 300 go to
  workdirs/llsa_pixel/samples/ (gradient backgrounds with blobs; samples/valid_fraction about
  0.4 at step 300, where real images score 1.0 and noise 0.0). Running the command again
  resumes (and returns at once when the run is complete); raise --config.total_steps to
  continue training.

Variants, `configs/llsa_pixel.py:key=value,...`:
  res=32|64|128|256|512|1024 image side (N = res^2 pixel tokens); res >= 128 selects the
                             full-size recipe: DiT-S, batch 16, 100k steps, lr 1e-4, bf16;
                             res=1024 (1,048,576 tokens) trains with batch 1 and the
                             blocks rematerialised (model.remat) to fit one GPU
  attention=llsa|dense|neighborhood|<op>
                             any registered op (`lla.attention.names()`) with its
                             `default_kwargs` (llsa: block 16, top-8; neighborhood: 13 x 13;
                             topk_block: block 16, top-32; vsa: tile 64, top-32; sla:
                             block 64, 20 % critical; at res=128 and 256 all three take
                             block 16 and LLSA Table 2's K, 20 and 32 (sla: K of the
                             res^2 / 16 key blocks critical), as LLSA ran its baselines)
  data=procedural|fashion_mnist|openmoji|image_folder|tfds:<name>
                             fashion_mnist reads data/fashion-mnist (scripts/
                             fetch_fashion_mnist.sh); openmoji reads data/openmoji at res
                             64|128|256 (scripts/fetch_openmoji.sh); image_folder reads
                             --config.data.kwargs.path
  model=tiny|S|B             DiT preset
  alignment=<α>              SSA alignment training (`lla.objectives.alignment`): every
                             layer also runs dense attention, each step runs full or sparse
                             with p = 0.5, loss + α · SmoothL1 alignment (SSA: α = 10);
                             sampling stays sparse; logs task_loss, alignment/loss and
                             alignment/full_mode. 0 (default) is off. E.g.
    python -m experiments.train --config=configs/llsa_pixel.py:alignment=10 \
        --workdir=workdirs/llsa_pixel_ssa

Measured (experiments/results/nvidia_h200/, jax 0.11.2):
  :res=64,data=fashion_mnist,model=S,attention=llsa|dense with --config.model.dtype=bfloat16
  --config.optimizer.learning_rate=3e-4 --config.optimizer.warmup_steps=100
  --config.total_steps=1200 --config.batch_size=32 on one H200: loss 1.50 -> 0.078 (llsa)
  and 0.075 (dense), mean of the last 10 logged values; 9.8 vs 6.8 steps/s; samples are
  recognisable garments for both (fashion_mnist_64/).
  :res=256,model=S: training throughput, batch 2, one H200 (experiments.bench_train):
  llsa (default 3 levels) 15.5 img/s vs dense cuDNN 1.56 img/s, 9.96x; with attention=<op>
  (dit_s_256_train_throughput_block_sparse.json, docs/block_sparse.md): llsa 15.4,
  topk_block 6.0 (6.7 with the selection kernel), vsa 5.4, sla 3.5, asa_gt 1.3, dense 1.5.
  :res=1024,model=S: one training step, batch 1, bf16, remat, one H200: 1.53 s, process
  peak 31.5 GiB, first step (compilation) 49 s (dit_s_1024_train_step.json).
  Not measured: full-length runs of the res >= 128 variants (no converged loss or FID to
  expect yet), res=512, model=B, the image_folder and tfds sources on real data.
Any field can be overridden: `--config.total_steps=1000 --config.batch_size=32`.
FID/KID (after `bash scripts/fetch_fid_weights.sh`): of a checkpoint with
`python -m experiments.evaluate --workdir=DIR --count=10000`, or at every evaluation with
`--config.objective.fid_count=10000` (0, the default, is off).
"""

from __future__ import annotations

import ml_collections

from configs import common
from lla import models

DEFAULTS = {"res": 32, "attention": "llsa", "data": "procedural", "model": None,
            "alignment": 0.0}
# LLSA's Table 2 runs its block-sparse baselines with blocks of 16 and larger K than LLSA's 8.
TOPK_BASELINES = ("topk_block", "vsa")
TOPK_BASELINE = {128: 20, 256: 32}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    options = common.parse(arg, DEFAULTS)
    resolution = options["res"]
    common.choose("res", resolution, (32, 64, 128, 256, 512, 1024))
    full_size = resolution >= 128
    preset = options["model"] or ("S" if full_size else "tiny")
    common.choose("model", preset, models.get("dit").PRESETS)
    attention, attention_kwargs = common.attention(options["attention"])
    if attention in TOPK_BASELINES and resolution in TOPK_BASELINE:
        attention_kwargs.update(block_size=16, topk=TOPK_BASELINE[resolution])
    if attention == "sla" and resolution in TOPK_BASELINE:  # K of the res^2 / 16 blocks
        attention_kwargs.update(block_size=16,
                                critical=TOPK_BASELINE[resolution] / (resolution ** 2 // 16))

    config = ml_collections.ConfigDict()
    config.seed = 0
    config.total_steps = 100_000 if full_size else 300
    config.batch_size = 1 if resolution >= 1024 else 16
    config.log_every = 50 if full_size else 10
    config.checkpoint_every = 2000 if full_size else 100
    config.eval_every = 5000 if full_size else 150  # sample grids
    config.keep_checkpoints = 3
    config.distributed = False
    config.nonfinite = "stop"  # or "skip": what a NaN / inf loss or gradient does
    config.init_from = ""  # a training workdir to fine-tune from (its EMA weights)

    config.data = ml_collections.ConfigDict()
    config.data.name = options["data"]
    config.data.kwargs = ml_collections.ConfigDict({"resolution": resolution})
    if config.data.name == "fashion_mnist":
        config.data.kwargs.directory = "data/fashion-mnist"
    elif config.data.name == "openmoji":
        config.data.kwargs.directory = "data/openmoji"
    elif config.data.name == "image_folder":
        config.data.kwargs.path = ""

    config.objective = ml_collections.ConfigDict(dict(
        name="flow_matching",
        noise_scale=0.0,  # 0: the resolution rule, max(1, res / 64)
        class_conditional=False,
        sample_count=16, sample_steps=20, guidance_scale=1.0,
        fid_count=0, fid_batch_size=64,  # FID/KID of fid_count samples at each evaluation
        **common.alignment(options["alignment"], attention)))

    config.model = ml_collections.ConfigDict(dict(
        name="dit", preset=preset, patch_size=1, attention=attention,
        attention_kwargs=attention_kwargs, dtype="bfloat16" if full_size else "float32",
        label_dropout=0.1, remat=resolution >= 1024))

    config.optimizer = ml_collections.ConfigDict(dict(
        learning_rate=1e-4 if full_size else 1e-3, weight_decay=0.01, clip_norm=1.0,
        warmup_steps=0 if full_size else 20))
    config.ema = ml_collections.ConfigDict(dict(max_decay=0.9999, inv_gamma=1.0, power=0.75))
    config.mesh = common.mesh()
    return config
