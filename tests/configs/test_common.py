"""The shared config-argument parser and the llsa_pixel config built on it."""

from __future__ import annotations

import pytest

from configs import common, llsa_pixel
from lla.training.experiment import Experiment


def test_parse_converts_to_the_defaults_types():
    defaults = {"res": 32, "attention": "llsa", "scale": 1.0, "flag": False, "model": None}
    assert common.parse(None, defaults) == defaults
    assert common.parse("res=64, flag=true,model=S,scale=0.5", defaults) == {
        "res": 64, "attention": "llsa", "scale": 0.5, "flag": True, "model": "S"}


@pytest.mark.parametrize(("arg", "message"), [
    ("res", "expected key=value"),
    ("size=64", "unknown config argument 'size'; known: res, flag"),
    ("res=big", "res='big': expected a int"),
    ("flag=maybe", "flag='maybe': expected a bool"),
])
def test_parse_errors_say_what_would_work(arg, message):
    with pytest.raises(ValueError, match=message):
        common.parse(arg, {"res": 32, "flag": False})


def test_attention_takes_the_registered_defaults():
    assert common.attention("llsa") == ("llsa", {"block_size": 16, "topk": 8})
    with pytest.raises(ValueError, match="attention=flash: choose one of asa, asa_gt, dense, "):
        common.attention("flash")


def test_llsa_pixel_variants():
    config = llsa_pixel.get_config("res=256,attention=neighborhood")
    assert config.model.preset == "S" and config.data.kwargs.resolution == 256
    assert dict(config.model.attention_kwargs) == {"kernel_size": 13}
    assert llsa_pixel.get_config().model.preset == "tiny"
    for res, topk in ((128, 20), (256, 32)):  # LLSA's Table 2 baselines
        for name in ("topk_block", "vsa"):
            kwargs = llsa_pixel.get_config(f"res={res},attention={name}").model.attention_kwargs
            assert dict(kwargs) == {"block_size": 16, "topk": topk}
        kwargs = llsa_pixel.get_config(f"res={res},attention=sla").model.attention_kwargs
        assert kwargs.block_size == 16 and int(kwargs.critical * res ** 2 / 16) == topk
    big = llsa_pixel.get_config("res=1024")  # a million tokens: batch 1, rematerialised
    assert (big.batch_size, big.model.remat, big.model.preset) == (1, True, "S")
    assert not llsa_pixel.get_config("res=512").model.remat
    with pytest.raises(ValueError, match="res=48: choose one of 32, 64"):
        llsa_pixel.get_config("res=48")
    with pytest.raises(ValueError, match="model=XL: choose one of tiny, S, B"):
        llsa_pixel.get_config("model=XL")


def test_llsa_pixel_alignment_variant_sets_the_objectives_ssa_fields():
    assert llsa_pixel.get_config().objective.alignment_weight == 0.0  # off by default
    objective = Experiment.from_config(llsa_pixel.get_config("alignment=10")).objective
    assert (objective.alignment_weight, objective.alignment_full_probability) == (10.0, 0.5)
    assert objective.alignment.enabled
    with pytest.raises(ValueError, match="attention=dense is dense already"):
        llsa_pixel.get_config("attention=dense,alignment=10")
    with pytest.raises(ValueError, match=r"alignment=-1\.0: use 0"):
        llsa_pixel.get_config("alignment=-1")
