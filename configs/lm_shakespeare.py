r"""Byte-level decoder-only language model, next-token prediction, causal attention by name.

Default (CPU-sized; 2 min 43 s measured on 2 CPU cores shared with other jobs):
    python -m experiments.train --config=configs/lm_shakespeare.py --workdir=workdirs/lm
  the embedded procedural play corpus (400 scenes, 1.8 MB, no files), LM-tiny, context 256,
  batch 16, 400 steps, dense causal attention: the loss falls from 3.59 (step 20) to 0.33;
  validation 0.454 nats/byte at step 200, 0.324 at step 400; two generated samples every
  eval_every steps (<workdir>/samples/step_*.txt) are well-formed speeches. Then
    python -m experiments.generate --workdir=workdirs/lm --prompt="ROMILDA:"

Variants, `configs/lm_shakespeare.py:key=value,...`:
  data=procedural|shakespeare  shakespeare reads data/shakespeare (fetch once with
                               `bash scripts/fetch_shakespeare.sh`) and selects the full
                               recipe: LM-S, context 1024, batch 32, 2k steps (~14 epochs), bf16,
                               cosine decay
  attention=dense|<op>         any registered op that declares `causal`
  model=tiny|S|gpt2_small      LM preset
  context=<int>                sequence length (a power of two with dd=true)
  vocab=<int>                  a model vocabulary above 256 (still trained on bytes), e.g.
                               vocab=50304 for GPT-2 small's 124 M parameters in benchmarks
  dd=true                      Dataset Decomposition: documents cut into power-of-two
                               chunks from 2^(log2(context) - 3) (CPU) or 2^6 up to
                               `context`, variable batch x length at constant tokens per step,
                               the Grow-P2 curriculum over 8 cycles (`lla.data.text`)
  alignment=<α>                SSA alignment training with a causal sparse op
                               (`lla.objectives.alignment`): every block also runs dense
                               causal attention, each step runs full or sparse with p = 0.5,
                               loss + α · SmoothL1 alignment (SSA: α = 10); evaluation and
                               sampling stay sparse. 0 (default) is off. E.g.
    python -m experiments.train --workdir=workdirs/lm_ssa \
        --config=configs/lm_shakespeare.py:attention=llsa,alignment=10

Measured on one H200 (jax 0.11.2, experiments/results/nvidia_h200/lm_shakespeare/):
  :data=shakespeare --config.data.kwargs.document_masking=False (concat-and-chunk), LM-S,
  context 1024, batch 32, bf16, four runs sharing the GPU, cut at ~1,000 of 1,500 steps by a
  time limit: validation nats/byte at steps 500 / 1000: dense 1.334 / 1.266, neighborhood
  (causal sliding window, --config.model.attention_kwargs.kernel_size=256) 1.325 / 1.263;
  samples at step 1000 are play-like speeches with invented words.
  Training throughput, same config, batch 32, one process (experiments.bench_train,
  lm_s_shakespeare_train_throughput.json, concatenate-and-chunk): dense cuDNN 36.2 ms/step
  (905k tokens/s), neighborhood k256 58.8 ms/step (558k tokens/s, x0.62 of dense: a
  256-token causal window at 1,024 tokens saves too little to beat cuDNN).
  gpt2_small (123.6 M parameters with vocab=50304), context 2048, batch 16, bf16, dense cuDNN,
  concatenate-and-chunk (`--config.data.kwargs.document_masking=False`; with segment ids
  dense falls back from cuDNN to the XLA reference, 558 ms/step): 83.7 ms/step, 392k
  tokens/s, 335 TFLOP/s of model FLOPs = 33.8 % MFU of the 989 TFLOP/s bf16 peak
  (lm_gpt2_small_mfu.json; below the 45 % aim). Profile (`--profile_steps=3`,
  lm_gpt2_small_mfu_profile.json): 79.2 ms of device time per step, 56.4 backward /
  22.8 forward; cuBLAS matmuls ~33 ms, cuDNN attention 13.1 ms, the embedding gradient's
  scatter-add 13.8 ms (its 32k gradient rows all land on the 256 byte rows of the 50,304-row
  table), the f32 logits and cross-entropy ~7 ms.
Any field can be overridden, e.g. `--config.total_steps=2000`.
"""

from __future__ import annotations

import math

import ml_collections

import lla.attention
from configs import common
from lla import models

DEFAULTS = {"data": "procedural", "attention": "dense", "model": None, "context": 0,
            "dd": False, "vocab": 256, "alignment": 0.0}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    options = common.parse(arg, DEFAULTS)
    common.choose("data", options["data"], ("procedural", "shakespeare"))
    full_size = options["data"] == "shakespeare"
    preset = options["model"] or ("S" if full_size else "tiny")
    common.choose("model", preset, models.get("lm").PRESETS)
    causal = [name for name in lla.attention.names() if lla.attention.get(name).capabilities.causal]
    common.choose("attention", options["attention"], causal)
    attention, attention_kwargs = common.attention(options["attention"])
    context = options["context"] or (1024 if full_size else 256)
    if context < 2:
        raise ValueError(f"context={context}: use at least 2")
    decomposition = None
    if options["dd"]:
        hi = int(math.log2(context))
        if 2 ** hi != context:
            raise ValueError(f"dd=true needs a power-of-two context; got {context} (use "
                             f"{2 ** hi} or {2 ** (hi + 1)})")
        decomposition = (6, hi) if full_size else (max(0, hi - 3), hi)

    config = ml_collections.ConfigDict()
    config.seed = 0
    config.total_steps = 2000 if full_size else 400
    config.batch_size = 32 if full_size else 16
    config.log_every = 50 if full_size else 20
    config.checkpoint_every = 500 if full_size else 200
    config.eval_every = 500 if full_size else 200
    config.keep_checkpoints = 3
    config.distributed = False
    config.nonfinite = "stop"
    config.init_from = ""  # a training workdir to fine-tune from (its EMA weights)

    def source(split: str) -> ml_collections.ConfigDict:
        kwargs = {"split": split, "sequence_length": context, "document_masking": True}
        if full_size:
            kwargs["directory"] = "data/shakespeare"
        name = "shakespeare" if full_size else "procedural_text"
        return ml_collections.ConfigDict({"name": name, "kwargs": kwargs})

    config.data = source("train")
    config.data.kwargs.decomposition = decomposition
    if options["vocab"] != 256:
        if full_size:
            raise ValueError("vocab=<int> is for benchmarks on the procedural corpus; "
                             "Shakespeare is read as bytes (vocab 256)")
        config.data.kwargs.vocab_size = options["vocab"]
    config.eval_data = source("validation")

    config.objective = ml_collections.ConfigDict(dict(
        name="next_token", eval_windows=256 if full_size else 64, eval_batch_size=8,
        sample_count=2, sample_length=400 if full_size else 200, sample_prompt="\n",
        temperature=0.8, top_k=0, top_p=0.95,
        **common.alignment(options["alignment"], attention)))

    config.model = ml_collections.ConfigDict(dict(
        name="lm", preset=preset, attention=attention, attention_kwargs=attention_kwargs,
        dtype="bfloat16" if full_size else "float32"))

    config.optimizer = ml_collections.ConfigDict(dict(
        learning_rate=1e-3 if full_size else 3e-3, weight_decay=0.1, clip_norm=1.0,
        warmup_steps=200 if full_size else 20))
    if full_size:  # cosine decay to 10 % at the last step (follows --config.total_steps)
        config.optimizer.decay_steps = config.get_ref("total_steps")
        config.optimizer.end_fraction = 0.1
    config.ema = ml_collections.ConfigDict(dict(max_decay=0.999, inv_gamma=1.0, power=0.75))
    config.mesh = common.mesh()
    return config
