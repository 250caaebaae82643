"""Experiments built from configs: older config layouts are upgraded, clashing fields are
named."""

from __future__ import annotations

import json
import pathlib

import ml_collections
import pytest

from configs import llsa_pixel
from lla.training.experiment import Experiment, upgrade_config

ROOT = pathlib.Path(__file__).resolve().parents[2]
OLD_CONFIG = ROOT / "experiments/results/nvidia_h200/fashion_mnist_64/llsa/config.json"


def test_configs_saved_before_the_generic_loop_are_upgraded():
    old = ml_collections.ConfigDict(json.loads(OLD_CONFIG.read_text()))
    new = upgrade_config(old)
    assert dict(new.data.kwargs) == {"directory": "data/fashion-mnist", "resolution": 64}
    assert new.objective.to_dict() == {
        "name": "flow_matching", "noise_scale": 0.0, "class_conditional": False,
        "sample_count": 16, "sample_steps": 20, "guidance_scale": 1.0}
    assert new.model.name == "dit" and new.model.preset == "S"
    assert "class_conditional" not in new.model and new.eval_every == old.sample_every
    assert set(new) == (set(old) - {"resolution", "noise_scale", "sampling", "sample_every"}
                        | {"objective", "eval_every"})
    current = llsa_pixel.get_config()
    assert upgrade_config(current) is current


def test_model_fields_the_objective_takes_from_the_data_are_refused():
    config = llsa_pixel.get_config()
    config.model.resolution = 64
    with pytest.raises(ValueError, match=r"config.model sets \['resolution'\], which the "
                                         r"objective takes from the data"):
        Experiment.from_config(config)
