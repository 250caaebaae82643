"""The quality-study config: one recipe, six attention variants (LLSA Table 1a's rows)."""

from __future__ import annotations

import pytest

from configs import quality_study


def test_variants_are_table_1a_rows_with_k_8_blocks_of_16():
    kwargs = {v: (quality_study.get_config(f"variant={v}").model.attention,
                  dict(quality_study.get_config(f"variant={v}").model.attention_kwargs))
              for v in quality_study.VARIANTS}
    assert kwargs == {
        "dense": ("dense", {}),
        "topk": ("topk_block", {"block_size": 16, "topk": 8}),
        "llsa_topk": ("llsa", {"block_size": 16, "topk": 8, "enrich_levels": 0,
                               "reweight": False}),
        "llsa_enrich": ("llsa", {"block_size": 16, "topk": 8, "reweight": False}),
        "llsa": ("llsa", {"block_size": 16, "topk": 8}),
        "neighborhood": ("neighborhood", {"kernel_size": 13}),
    }
    # res=128 would give topk_block LLSA Table 2's K = 20 in llsa_pixel; the ablation keeps 8
    assert quality_study.get_config("variant=topk,res=128").model.attention_kwargs.topk == 8


def test_every_variant_shares_one_recipe():
    configs = [quality_study.get_config(f"variant={v}") for v in quality_study.VARIANTS]
    recipe = {(c.model.preset, c.model.dtype, c.batch_size, c.total_steps,
               c.optimizer.learning_rate, c.optimizer.warmup_steps, c.data.name,
               c.data.kwargs.resolution) for c in configs}
    assert recipe == {("S", "bfloat16", 32, 1200, 3e-4, 100, "openmoji", 64)}
    config = quality_study.get_config()
    assert config.objective.fid_count == 2000 and config.eval_every == 1200
    config.total_steps = 3000  # as --config.total_steps=3000 does: the one evaluation moves
    assert config.copy_and_resolve_references().eval_every == 3000
    config.eval_every = 0  # as --config.eval_every=0 does: no evaluation, steps unchanged
    assert (config.total_steps, config.eval_every) == (3000, 0)
    fashion = quality_study.get_config("variant=dense,data=fashion_mnist,res=128")
    assert (fashion.data.name, fashion.data.kwargs.resolution) == ("fashion_mnist", 128)
    smaller = quality_study.get_config("variant=llsa,res=128,batch=16,steps=900,fid=1000")
    assert (smaller.batch_size, smaller.total_steps, smaller.eval_every) == (16, 900, 900)
    assert smaller.objective.fid_count == 1000
    assert smaller.init_from == ""
    tuned = quality_study.get_config("variant=llsa,res=128,init=/root/study/pretrain32")
    assert tuned.init_from == "/root/study/pretrain32"


@pytest.mark.parametrize(("arg", "message"), [
    ("variant=full", "variant=full: choose one of dense, topk, llsa_topk"),
    ("res=256", "res=256: choose one of 32, 64, 128"),
    ("data=procedural", "data=procedural: choose one of openmoji, fashion_mnist"),
    ("batch=0", "batch=0: must be at least 1"),
    ("fid=1", r"fid=1: use 0 \(no FID\) or at least 2"),
])
def test_bad_arguments_name_the_choices(arg, message):
    with pytest.raises(ValueError, match=message):
        quality_study.get_config(arg)
