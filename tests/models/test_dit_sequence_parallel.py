"""The DiT with its token axis sharded over a "sequence" mesh axis (`sequence_axis`,
`lla.attention.parallel`): output and parameter gradients equal the single-device DiT, for
dense (ring) and LLSA, on 2 and 4 forced host devices (in a subprocess, since the host
device count is fixed when JAX starts); the switch and the errors, traced in-process under
abstract meshes."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import AbstractMesh, AxisType

from lla.models.dit import PRESETS, DiT

ROOT = pathlib.Path(__file__).resolve().parents[2]
TOLERANCE = 1e-5  # f32 relative error
RESOLUTION, BATCH = 16, 2  # N = 256 pixel tokens
TINY = {**PRESETS["tiny"], "depth": 1}  # one block: the compiles dominate the run time
ATTENTION = {"dense": None, "llsa": {"block_size": 4, "topk": 2}}  # LLSA: 3 levels, span 64
MESHES = {"data2_sequence2": (2, 2), "sequence4": (1, 4)}  # (data, sequence)


def sharded_cases() -> dict[str, dict]:
    """For each attention and mesh: the relative errors of the velocity and of the parameter
    gradients (a random cotangent) against the unsharded DiT, and what the sharded program's
    HLO holds (run in a process with >= 4 devices)."""
    import numpy as np
    from jax.sharding import Mesh

    jax.config.update("jax_default_matmul_precision", "highest")
    rng = np.random.default_rng(0)  # numpy draws: no JAX op compiled per leaf shape
    images = rng.standard_normal((BATCH, RESOLUTION, RESOLUTION, 3), np.float32)
    timesteps = np.array([3.0, 700.0], np.float32)
    cotangent = rng.standard_normal(images.shape, np.float32)
    results = {}
    for attention, kwargs in ATTENTION.items():
        model = DiT(resolution=RESOLUTION, attention=attention, attention_kwargs=kwargs,
                    **TINY)
        params = jax.jit(model.init)(jax.random.key(1), images, timesteps)
        # random non-zero parameters (a fresh adaLN-Zero DiT outputs zeros)
        params = jax.tree.map(
            lambda x: np.asarray(x) + 0.05 * rng.standard_normal(x.shape, np.float32), params)

        def forward_and_grads(params, model=model, images=images, timesteps=timesteps,
                              cotangent=cotangent):
            out, vjp = jax.vjp(lambda p: model.apply(p, images, timesteps), params)
            return out, vjp(cotangent)[0]

        want = jax.jit(forward_and_grads)(params)
        for name, (data, sequence) in MESHES.items():
            devices = np.array(jax.devices()[:data * sequence]).reshape(data, 1, sequence)
            mesh = Mesh(devices, ("data", "fsdp", "sequence"),
                        axis_types=(AxisType.Auto,) * 3)
            with jax.set_mesh(mesh):
                compiled = jax.jit(forward_and_grads).lower(params).compile()
                got = compiled(params)
            hlo = compiled.as_text()
            out_errors = [_relative(got[0], want[0])]
            grad_errors = [_relative(a, b) for a, b in zip(jax.tree.leaves(got[1]),
                                                           jax.tree.leaves(want[1]),
                                                           strict=True)]
            tokens, hidden = RESOLUTION ** 2, 4 * model.width
            results[f"{attention}_{name}"] = {
                "out": max(out_errors), "grads": max(grad_errors),
                "ring": "collective-permute" in hlo, "all_gather": "all-gather" in hlo,
                # the MLP's hidden activations: each device's rows and tokens, never all
                "local_mlp": f"f32[{BATCH // data},{tokens // sequence},{hidden}]" in hlo,
                "global_mlp": f"f32[{BATCH},{tokens},{hidden}]" in hlo}
    return results


def _relative(a, b) -> float:
    """‖a − b‖ / ‖b‖ in float64 numpy (no JAX op to compile per shape)."""
    import numpy as np

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def sharded():
    """`sharded_cases()` in a fresh process with 4 forced host devices."""
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=4")
    script = ("import json; from tests.models.test_dit_sequence_parallel import "
              "sharded_cases; print(json.dumps(sharded_cases()))")
    run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("attention", sorted(ATTENTION))
@pytest.mark.parametrize("mesh", sorted(MESHES))
def test_sharded_dit_equals_the_single_device_dit(sharded, attention, mesh):
    case = sharded[f"{attention}_{mesh}"]
    assert case["out"] < TOLERANCE and case["grads"] < TOLERANCE, case
    # The sequence-parallel path ran (not a replicated fallback) and kept tokens local.
    assert case["ring"] if attention == "dense" else case["all_gather"], case
    assert case["local_mlp"] and not case["global_mlp"], case


def abstract_mesh(**sizes: int) -> AbstractMesh:
    """An Auto-axes mesh of the given axis sizes, without devices (for tracing)."""
    return AbstractMesh(tuple(sizes.values()), tuple(sizes),
                        axis_types=(AxisType.Auto,) * len(sizes))


def traced_init(model: DiT, mesh: AbstractMesh, **kwargs) -> str:
    """The jaxpr of `model.init` on zero images (and `kwargs`), traced under `mesh`."""
    images = jnp.zeros((BATCH, model.resolution, model.resolution, model.channels))
    with jax.sharding.use_abstract_mesh(mesh):
        return str(jax.make_jaxpr(
            lambda: model.init(jax.random.key(0), images, jnp.zeros((BATCH,)), **kwargs))())


def test_tokens_are_sharded_only_under_a_mesh_with_the_sequence_axis():
    model = DiT(resolution=8, **PRESETS["tiny"])
    assert model.sequence_axis == "sequence"
    sharded = traced_init(model, abstract_mesh(data=2, fsdp=1, sequence=2))
    assert "shard_map" in sharded and "sharding_constraint" in sharded
    for plain in (traced_init(model, abstract_mesh(data=2, fsdp=1, sequence=1)),
                  traced_init(model, abstract_mesh(data=2)),
                  traced_init(model.clone(sequence_axis=None),
                              abstract_mesh(data=1, sequence=2))):
        assert "shard_map" not in plain and "sharding_constraint" not in plain


def test_the_dense_branch_of_the_alignment_is_the_ring_when_tokens_are_sharded():
    """SSA alignment (`full_mode`) next to non-causal LLSA, which has no `ppermute` of its
    own: the dense branch must not gather the whole sequence on every device."""
    model = DiT(resolution=16, attention="llsa", attention_kwargs=ATTENTION["llsa"],
                **PRESETS["tiny"])
    mesh = abstract_mesh(sequence=4)
    assert "ppermute" not in traced_init(model, mesh)
    assert "ppermute" in traced_init(model, mesh, full_mode=jnp.bool_(True))


def test_ops_without_a_sequence_parallel_form_are_refused():
    model = DiT(resolution=8, attention="topk_block",
                attention_kwargs={"block_size": 4, "topk": 3}, **PRESETS["tiny"])
    with pytest.raises(ValueError, match=r"'topk_block' has no sequence-parallel form .* "
                                         r"ops with one: dense, llsa"):
        traced_init(model, abstract_mesh(sequence=2))


def test_token_counts_that_do_not_split_are_refused_with_sizes_that_do():
    with pytest.raises(ValueError, match=r"N = 36 tokens do not split evenly over the 8 "
                                         r"devices of mesh axis 'sequence'; use a sequence "
                                         r"size that divides N \(2, 3, 4, 6, 9, 12, 18, 36\)"):
        traced_init(DiT(resolution=6, **PRESETS["tiny"]), abstract_mesh(sequence=8))
    llsa = DiT(resolution=16, attention="llsa", attention_kwargs=ATTENTION["llsa"],
               **PRESETS["tiny"])
    with pytest.raises(ValueError, match=r"n = 32 tokens, not a multiple of "
                                         r"block_size\*\*levels = 64; use N a multiple of 512"):
        traced_init(llsa, abstract_mesh(sequence=8))


def test_unsupported_arguments_and_explicit_meshes_are_refused():
    pallas = DiT(resolution=16, attention="llsa", **PRESETS["tiny"],
                 attention_kwargs={**ATTENTION["llsa"], "implementation": "pallas_gpu"})
    with pytest.raises(ValueError, match=r"runs the XLA reference; "
                                         r"implementation='pallas_gpu' is not available"):
        traced_init(pallas, abstract_mesh(sequence=2))
    xla = pallas.clone(attention_kwargs={**ATTENTION["llsa"], "implementation": "xla"})
    assert "shard_map" in traced_init(xla, abstract_mesh(sequence=2))
    explicit = AbstractMesh((2,), ("sequence",), axis_types=(AxisType.Explicit,))
    with pytest.raises(ValueError, match=r"has Explicit axes .* it needs Auto axes"):
        traced_init(DiT(resolution=8, **PRESETS["tiny"]), explicit)
