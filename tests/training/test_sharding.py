"""The ("data", "fsdp") mesh and FSDP: the rule, its errors, FSDP training equal to one device,
and checkpoints written on 8 devices (fsdp = 4) resumed on 1 and on 4 (forced host devices,
in subprocesses)."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from lla.training import loop, sharding
from tests.training.test_loop import small_config

ROOT = pathlib.Path(__file__).resolve().parents[2]
STEPS = 4

# argv: workdir, params.npz, config.mesh as JSON ("null": none), restore step ("": newest).
RUN = """
import json, sys, numpy as np, jax
from tests.training.test_loop import small_config
from lla.training import loop
workdir, out, mesh, restore = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
config = small_config(total_steps=STEPS, checkpoint_every=2, batch_size=8)
if mesh is not None:
    config.mesh = mesh
state = loop.train(config, workdir, restore_step=int(restore) if restore else None)
params = jax.tree.leaves(state.params)
np.savez(out, *[np.asarray(x) for x in params])
big = max(params, key=lambda x: x.size)
spec_of = {}
for leaf in params:
    spec_of.setdefault(leaf.shape, leaf.sharding.spec)
moments = [leaf for leaf in jax.tree.leaves(state.opt_state) if leaf.ndim]
print("RESULT", json.dumps({
    "devices": jax.device_count(), "shape": big.shape, "spec": list(big.sharding.spec),
    "shards": sorted({tuple(s.data.shape) for s in big.addressable_shards}),
    "moments_follow": all(m.sharding.spec == spec_of[m.shape] for m in moments),
    "ema_follows": all(e.sharding.spec == p.sharding.spec for e, p in
                       zip(jax.tree.leaves(state.ema_params), params))}))
""".replace("STEPS", str(STEPS))


def run(workdir, devices: int, mesh=None, restore: int | None = None) -> dict:
    """Trains in a subprocess on `devices` forced host devices; its report, final parameters
    and logged losses."""
    out = pathlib.Path(workdir).with_suffix(".npz")
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    done = subprocess.run([sys.executable, "-c", RUN, str(workdir), str(out), json.dumps(mesh),
                           "" if restore is None else str(restore)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))
    rows = [json.loads(row) for row in
            (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]
    return {**json.loads(line.removeprefix("RESULT ")), "params": np.load(out),
            "losses": {row["step"]: row["loss"] for row in rows if "loss" in row}}


def assert_close(got: dict, expected: dict, steps) -> None:
    for step in steps:
        np.testing.assert_allclose(got["losses"][step], expected["losses"][step], rtol=1e-5)
    assert got["params"].files == expected["params"].files
    for name in expected["params"].files:
        np.testing.assert_allclose(got["params"][name], expected["params"][name],
                                   rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """An uninterrupted run on one device."""
    return run(tmp_path_factory.mktemp("single") / "run", 1)


@pytest.fixture(scope="module")
def fsdp(tmp_path_factory):
    """An uninterrupted run on 8 devices, data 2 x fsdp 4 (checkpoints at steps 2 and 4)."""
    workdir = tmp_path_factory.mktemp("fsdp") / "run"
    return {**run(workdir, 8, {"data": 2, "fsdp": 4}), "workdir": workdir}


def test_leaf_spec_splits_the_largest_divisible_dimension_of_large_leaves():
    assert sharding.leaf_spec((64, 384), 4, 1) == P(None, "fsdp")
    assert sharding.leaf_spec((384, 384), 4, 1) == P("fsdp", None)  # the first of equals
    assert sharding.leaf_spec((3, 3, 6, 8), 4, 1) == P(None, None, None, "fsdp")
    assert sharding.leaf_spec((3, 5), 4, 1) == P()  # nothing divides
    assert sharding.leaf_spec((64,), 4, 65) == P()  # below the threshold
    assert sharding.leaf_spec((), 4, 0) == P()
    assert sharding.leaf_spec((64, 384), 1, 1) == P()


def test_mesh_sizes_defaults_and_errors():
    assert sharding.mesh_shape({"data": -1, "fsdp": 4}, 8) == (2, 4)
    assert sharding.mesh_shape({"fsdp": -1}, 8) == (1, 8)
    assert sharding.mesh_fields(None) == {"data": -1, "fsdp": 1,
                                          "min_shard_size": sharding.MIN_SHARD_SIZE}
    with pytest.raises(ValueError, match="needs 6 devices; there are 8"):
        sharding.mesh_shape({"data": 2, "fsdp": 3}, 8)
    with pytest.raises(ValueError, match="cannot be split into groups of 3"):
        sharding.mesh_shape({"data": -1, "fsdp": 3}, 8)
    with pytest.raises(ValueError, match="only one axis may be -1"):
        sharding.mesh_shape({"data": -1, "fsdp": -1}, 8)
    with pytest.raises(ValueError, match="unknown fields \\['model'\\]"):
        sharding.mesh_fields({"mesh": {"model": 2}})
    with pytest.raises(ValueError, match=r"config\.mesh\.fsdp must be an int >= 1"):
        sharding.mesh_fields({"mesh": {"fsdp": 0}})


def test_a_mesh_or_batch_that_does_not_fit_is_a_config_error(tmp_path):
    config = small_config()
    config.mesh = {"data": 1, "fsdp": 2 * jax.device_count()}
    with pytest.raises(loop.ConfigError, match="devices; there are"):
        loop.train(config, tmp_path / "mesh")
    with pytest.raises(ValueError, match="batch_size 6 must be a multiple of the 4 devices"):
        sharding.check_batch_size(6, jax.sharding.AbstractMesh((2, 2), sharding.AXES))
    assert not (tmp_path / "mesh").exists()


def test_fsdp_on_eight_devices_trains_like_one_device(single, fsdp):
    assert (single["devices"], fsdp["devices"]) == (1, 8)
    assert_close(fsdp, single, range(1, STEPS + 1))
    rows, columns = fsdp["shape"]
    assert "fsdp" in fsdp["spec"] and single["spec"] == []
    split = fsdp["spec"].index("fsdp")
    assert fsdp["shards"] == [[rows // 4, columns] if split == 0 else [rows, columns // 4]]
    assert fsdp["moments_follow"] and fsdp["ema_follows"]


@pytest.mark.parametrize(("devices", "mesh"), [(1, None), (4, {"data": 2, "fsdp": 2})])
def test_a_checkpoint_of_eight_devices_resumes_on_another_mesh(tmp_path, single, fsdp,
                                                               devices, mesh):
    workdir = tmp_path / "run"
    shutil.copytree(fsdp["workdir"], workdir)
    resumed = run(workdir, devices, mesh, restore=2)
    assert resumed["devices"] == devices
    assert sorted(resumed["losses"]) == list(range(1, STEPS + 1))
    assert_close(resumed, fsdp, range(1, STEPS + 1))
    assert_close(resumed, single, range(1, STEPS + 1))
