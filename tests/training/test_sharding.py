"""The ("data", "fsdp", "sequence") mesh, FSDP and sequence parallelism: the rule, its errors,
FSDP training equal to one device, checkpoints written on 8 devices (fsdp = 4) resumed on 1
and on 4, and the driver with the DiT's tokens sharded (sequence = 2) training and sampling
like one device (forced host devices, in subprocesses); the experiment's model traced under
its mesh (in process)."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from PIL import Image

from lla.objectives import Evaluation
from lla.training import loop, sharding
from lla.training.experiment import Experiment
from tests.training.test_loop import small_config

ROOT = pathlib.Path(__file__).resolve().parents[2]
STEPS = 4
SEQUENCE_STEPS = 3

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


# The driver (`loop.train`, as `experiments.train` runs it) on the tiny LLSA DiT of
# `small_config` (32 x 32 pixel tokens, depth 1) for SEQUENCE_STEPS steps, the last with a
# sample grid; then the compiled step `Experiment.sharded_train_step` gives the loop, built
# outside any `jax.set_mesh`. argv: workdir, out.npz, config.mesh as JSON.
SEQUENCE_RUN = """
import json, sys, numpy as np, jax
from tests.training.test_loop import small_config
from lla import data
from lla.training import loop, sharding
from lla.training.experiment import Experiment
workdir, out, mesh = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
config = small_config(total_steps=STEPS, eval_every=STEPS, checkpoint_every=100)
config.model.depth = 1
config.mesh = mesh
state = loop.train(config, workdir)
np.savez(out, *[np.asarray(x) for x in jax.tree.leaves(state.params)])
experiment = Experiment.from_config(config)
mesh = sharding.make_mesh(config)
batch = sharding.global_batch(next(data.batches(experiment.source, batch_size=4, seed=0)), mesh)
hlo = experiment.sharded_train_step(mesh, state).lower(state, batch).compile().as_text()
rows, tokens = 4 // mesh.shape["data"], 1024 // mesh.shape["sequence"]
print("RESULT", json.dumps({
    "devices": jax.device_count(), "all_gather": "all-gather" in hlo,
    # the MLP's hidden activations [rows, tokens, 256]: each device's, or all the tokens
    "local_mlp": f"f32[{rows},{tokens},256]" in hlo,
    "all_tokens_mlp": f"f32[{rows},1024,256]" in hlo}))
""".replace("STEPS", str(SEQUENCE_STEPS))


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
    assert sharding.mesh_shape({"data": -1, "fsdp": 4}, 8) == (2, 4, 1)
    assert sharding.mesh_shape({"fsdp": -1}, 8) == (1, 8, 1)
    assert sharding.mesh_shape({"data": -1, "sequence": 4}, 8) == (2, 1, 4)
    assert sharding.mesh_fields(None) == {"data": -1, "fsdp": 1, "sequence": 1,
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
    with pytest.raises(ValueError, match=r"config\.mesh\.sequence must be an int >= 1"):
        sharding.mesh_fields({"mesh": {"sequence": 1.5}})
    with pytest.raises(ValueError, match=r"\{'data': 2, 'fsdp': 1, 'sequence': 3\} needs 6"):
        sharding.mesh_shape({"data": 2, "sequence": 3}, 8)


def test_a_mesh_or_batch_that_does_not_fit_is_a_config_error(tmp_path):
    config = small_config()
    config.mesh = {"data": 1, "fsdp": 2 * jax.device_count()}
    with pytest.raises(loop.ConfigError, match="devices; there are"):
        loop.train(config, tmp_path / "mesh")
    with pytest.raises(ValueError, match=r"batch_size 6 must be a multiple of the 4 devices "
                                         r"\(data 2 x fsdp 2\); the batch is split over "
                                         r"data x fsdp"):
        sharding.check_batch_size(6, jax.sharding.AbstractMesh((2, 2, 2), sharding.AXES))
    sharding.check_batch_size(2, jax.sharding.AbstractMesh((2, 1, 4), sharding.AXES))
    assert not (tmp_path / "mesh").exists()


def test_the_batch_is_split_over_data_and_fsdp_and_replicated_over_sequence():
    mesh = jax.sharding.AbstractMesh((2, 1, 4), sharding.AXES)
    assert sharding.batch_sharding(mesh).spec == P(("data", "fsdp"))
    assert sharding.make_mesh().axis_names == sharding.AXES
    assert set(sharding.make_mesh().axis_types) == {jax.sharding.AxisType.Auto}


def test_the_driver_with_the_tokens_sharded_trains_and_samples_like_one_device(tmp_path):
    """`loop.train` on data 2 x sequence 2 (4 devices) and on one device, 3 steps of the tiny
    LLSA DiT: the same losses and parameters (so the gradients of the replicated parameters
    are summed over "sequence" too) and the same sample grid; the step the driver compiles
    holds LLSA's all-gathers and runs each device's MLP on its 2 rows x 512 of the 1,024
    tokens (the model traced under the mesh, not the tokens replicated)."""
    meshes = {"single": (1, {"data": 1}), "sequence": (4, {"data": 2, "sequence": 2})}
    running = {}
    for name, (devices, mesh) in meshes.items():  # the two processes run side by side
        running[name] = subprocess.Popen(
            [sys.executable, "-c", SEQUENCE_RUN, str(tmp_path / name),
             str(tmp_path / f"{name}.npz"), json.dumps(mesh)], cwd=ROOT,
            env=dict(os.environ, JAX_PLATFORMS="cpu",
                     XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    runs = {}
    for name, process in running.items():
        stdout, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr[-3000:]
        report = json.loads(next(line for line in stdout.splitlines()
                                 if line.startswith("RESULT ")).removeprefix("RESULT "))
        rows = [json.loads(row) for row in
                (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        grid = tmp_path / name / "samples" / f"step_{SEQUENCE_STEPS:07d}.png"
        runs[name] = {**report, "params": np.load(tmp_path / f"{name}.npz"),
                      "losses": {row["step"]: row["loss"] for row in rows if "loss" in row},
                      "scored": any("samples/valid_fraction" in row for row in rows),
                      "grid": np.asarray(Image.open(grid), np.int32)}
    single, sequence = runs["single"], runs["sequence"]
    assert (single["devices"], sequence["devices"]) == (1, 4)
    assert sorted(sequence["losses"]) == list(range(1, SEQUENCE_STEPS + 1))
    assert_close(sequence, single, range(1, SEQUENCE_STEPS + 1))
    assert sequence["all_gather"] and sequence["local_mlp"], sequence
    assert not sequence["all_tokens_mlp"], sequence
    assert single["all_tokens_mlp"] and not single["all_gather"], single  # the probes see
    assert sequence["scored"] and single["scored"]
    assert sequence["grid"].shape == single["grid"].shape
    assert np.abs(sequence["grid"] - single["grid"]).max() <= 1  # uint8 rounding at most


class MeshRecorder:
    """A stand-in objective (parameters {"w": f32 [4]}, loss sum(w²), an empty evaluation)
    that notes the axis sizes of the mesh in context (`get_abstract_mesh`) whenever it is
    traced or run: in `init`, `loss` and `evaluate`."""

    def __init__(self):
        self.seen = []

    def _note(self, what: str) -> None:
        self.seen.append((what, dict(jax.sharding.get_abstract_mesh().shape)))

    def init(self, model, key):
        self._note("init")
        return {"w": jnp.ones((4,))}

    def loss(self, model, params, batch, key):
        self._note("loss")
        return jnp.sum(jnp.square(params["w"])), {}

    def evaluator(self, model, source, eval_source=None):
        def evaluate(params, key):
            self._note("evaluate")
            return Evaluation({"w": float(jnp.sum(params["w"]))})

        return evaluate


def test_the_experiment_traces_init_step_and_evaluation_under_its_mesh():
    """`initial_state` (its shapes and its values), the step of `sharded_train_step` and the
    evaluation of `evaluator` run under the mesh they are given, though called outside any
    `jax.set_mesh`, and leave no mesh set."""
    experiment = dataclasses.replace(Experiment.from_config(small_config()),
                                     objective=MeshRecorder())
    mesh = sharding.make_mesh()
    state = experiment.initial_state(mesh)
    step = experiment.sharded_train_step(mesh, state)
    state, metrics = step(state, {"image": np.zeros((len(mesh.devices.flat), 2), np.float32)})
    evaluation = experiment.evaluator(mesh)(state.ema_params, jax.random.key(1))
    assert float(metrics["loss"]) == 4.0 and set(evaluation.scalars) == {"w"}
    sizes = dict(mesh.shape)
    assert experiment.objective.seen == [("init", sizes), ("init", sizes), ("loss", sizes),
                                         ("evaluate", sizes)]
    assert jax.sharding.get_abstract_mesh().empty


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
