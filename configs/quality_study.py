r"""The image-quality study (LLSA's Table 1a on our data): the pixel DiT-S of
`configs/llsa_pixel.py` trained with one recipe and six attention variants, scored by FID/KID.

One run per variant, equal steps and batch; each run ends with its FID/KID (2,000 EMA
samples, 20 sampler steps, against 2,000 real images), then the table and plot:
    bash scripts/fetch_openmoji.sh && bash scripts/fetch_fid_weights.sh      # once
    bash scripts/run_quality_study.sh -j 3 [-a res=128] [VARIANT ...]
which trains three runs at a time, retries (resuming) a run that fails, skips finished
ones when called again, and then runs, for each variant v,
    python -m experiments.train --config=configs/quality_study.py:variant=$v \
        --workdir=workdirs/study/openmoji64_$v
and the table:
    python -m experiments.quality_study --workdirs='workdirs/study/openmoji64_*' \
        --name=quality_study_openmoji64 --device=<the GPU's device kind>
Cost on one H200 (three runs at a time, 64², 1,200 steps): about 11 minutes for dense,
llsa and llsa_topk together, in-run FID included (its 2,000 samples take about 2.5 minutes
of each), and 8.5 minutes for the other three; llsa, llsa_topk and llsa_enrich together took
10.5 minutes on 2026-12-03 (training 7.3, FID 3.2).
Measured (`experiments/results/nvidia_h200/quality_study_openmoji64.json`, 64², FID of
2,000 samples): dense 137.9, topk 173.6, llsa_topk 190.6, llsa_enrich 183.6, llsa 153.0,
neighborhood 121.4 (topk alone on the GPU: 4 minutes for training and 1 for its FID).
128²: DiT-S at batch 16 trains at 21.7 images/s with dense and 79.5 with llsa on one H200
(`dit_s_128_train_throughput_study.json`), so res=128,batch=16,steps=600,fid=1000 costs
an estimated 14 minutes alone for dense (7.4 of training, about 6.4 for its FID at 64²'s
ratio of sampling to training cost) and 4 for each LLSA variant. Measured at 128² (round 1,
`quality_study_openmoji128.json`: trained with fid=0, then `experiments.evaluate
--count=1000`): dense and llsa side by side took 10.8 and 5.0 minutes to train, and 6.7 and
3.6 minutes for their FID; dense FID 327.6, llsa 305.4, both far from converged. A third
run beside them ran out of memory (at 128² batch 16 a run holds up to about 70 GiB: run at
most two at a time, `-j 2`).
(`python -m experiments.evaluate --workdir=... --count=N` scores a run again, e.g. with
more samples or `--memorisation`.)

Variants (Table 1a's rows; every sparse one keeps K = 8 blocks of 16 tokens, as the paper's
ablation does):
  dense         dense attention (cuDNN on GPU), the quality reference
  topk          single-level top-K: `topk_block`, block 16, K 8 ("Top-K, L=1")
  llsa_topk     LLSA's hierarchical selection only: `llsa` with enrich_levels=0 and
                reweight=False ("Top-K, L=2" at 64², where llsa has L = 2 levels)
  llsa_enrich   + enrichment: the coarse levels join the softmax, unweighted
                (enrich_levels=L, reweight=False)
  llsa          + reweighting: full LLSA (the coarse tokens weighted by their count)
  neighborhood  a 13 x 13 pixel window (`neighborhood`'s default)

Arguments, `configs/quality_study.py:key=value,...`:
  variant=<one of the above>   (default llsa)
  data=openmoji|fashion_mnist  (default openmoji; 4,495 colour emoji, all of them trained on
                               and all of them FID's reference)
  res=32|64|128                image side; N = res² pixel tokens (32: a pre-training run)
  batch=32, steps=1200         the recipe's batch and training steps (every variant of one
                               study must share them; the table records both per row)
  fid=2000                     samples (and real images) of the final FID/KID; 0: none
  init=<workdir>               fine-tune from that run's EMA weights (`config.init_from`),
                               as LLSA trains FFHQ-128 from a dense FFHQ-32 model; the
                               workdirs are then <data><res>ft_<variant>, and the table
                               compares only runs from one pre-training workdir name
Fine-tuned 128² study (one machine: checkpoints do not travel between GPU sessions, so each
session re-trains the short 32² run, same seed; how closely two such runs agree is not yet
measured):
    bash scripts/run_quality_study.sh -o ROOT -a res=32,batch=64,steps=1200,fid=0 dense
    bash scripts/run_quality_study.sh -j 2 -o ROOT \
        -a res=128,batch=16,steps=600,init=ROOT/openmoji32_dense dense llsa llsa_topk
Recipe, the same for every variant: DiT-S, bf16, batch 32, AdamW lr 3e-4 with 100 warm-up
steps, EMA as llsa_pixel, 1,200 steps at 64² and 128² (`batch=`, `steps=` to change),
checkpoints every 200 steps, one evaluation at the end (sample grid, FID and KID in the
run's metrics: `objective.fid_count`). The recipe is the one the
Fashion-MNIST 64² runs of llsa_pixel's docstring used, where both llsa and dense drew
recognisable garments after 1,200 steps.
"""

from __future__ import annotations

import ml_collections

from configs import common, llsa_pixel

DEFAULTS = {"variant": "llsa", "data": "openmoji", "res": 64, "batch": 32, "steps": 1200,
            "fid": 2000, "init": ""}
# variant -> (op, keyword arguments over the op's defaults)
VARIANTS = {
    "dense": ("dense", {}),
    "topk": ("topk_block", {"block_size": 16, "topk": 8}),
    "llsa_topk": ("llsa", {"enrich_levels": 0, "reweight": False}),
    "llsa_enrich": ("llsa", {"reweight": False}),
    "llsa": ("llsa", {}),
    "neighborhood": ("neighborhood", {}),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    options = common.parse(arg, DEFAULTS)
    common.choose("variant", options["variant"], VARIANTS)
    common.choose("data", options["data"], ("openmoji", "fashion_mnist"))
    common.choose("res", options["res"], (32, 64, 128))
    for key in ("batch", "steps"):
        if options[key] < 1:
            raise ValueError(f"{key}={options[key]}: must be at least 1")
    if options["fid"] < 0 or options["fid"] == 1:
        raise ValueError(f"fid={options['fid']}: use 0 (no FID) or at least 2 samples "
                         f"(FID needs a covariance)")
    op, kwargs = VARIANTS[options["variant"]]
    config = llsa_pixel.get_config(
        f"res={options['res']},data={options['data']},model=S,attention={op}")
    # llsa_pixel gives res=128 LLSA Table 2's K for topk_block; the ablation keeps K = 8.
    config.model.attention_kwargs = ml_collections.ConfigDict(
        {**common.attention(op)[1], **kwargs})
    config.model.dtype = "bfloat16"
    config.batch_size = options["batch"]
    config.total_steps = options["steps"]
    config.optimizer.learning_rate = 3e-4
    config.optimizer.warmup_steps = 100
    config.log_every = 50
    config.checkpoint_every = 200
    # follows --config.total_steps; a derived reference, so that --config.eval_every=N
    # replaces it instead of setting total_steps to N
    config.eval_every = config.get_ref("total_steps") + 0
    config.objective.fid_count = options["fid"]
    config.objective.fid_batch_size = 200
    # init=<workdir>: fine-tune from that run's EMA weights; the table compares only runs
    # started from workdirs of one name (its `pretrained` column)
    config.init_from = options["init"]
    config.study = ml_collections.ConfigDict({"variant": options["variant"]})
    return config
