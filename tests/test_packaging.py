"""`pip install .` gives a working library outside the repository: the wheel holds every
subpackage and py.typed, declares the supported dependency ranges, and an op and a layer run
from a fresh virtual environment (dependencies borrowed from this one, so no download)."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import venv

ROOT = pathlib.Path(__file__).resolve().parents[1]
SMOKE = """
import importlib.metadata, pathlib, sys
import jax, jax.numpy as jnp
import lla, lla.attention as attention
import lla.interop, lla.objectives, lla.training.loop
from lla.layers import Attention
from lla.models import DiT
assert pathlib.Path(lla.__file__).parents[1] != pathlib.Path(sys.argv[1]), lla.__file__
assert (pathlib.Path(lla.__file__).parent / "py.typed").exists()
assert importlib.metadata.version("lla") == lla.__version__
requires = importlib.metadata.requires("lla")
assert any(r.startswith("jax<0.12,>=0.11.2") or r.startswith("jax>=0.11.2,<0.12")
           for r in requires), requires
q = jnp.ones((1, 64, 2, 16))
print("op", attention.llsa(q, q, q, block_size=4, topk=2).shape)
x = jnp.ones((1, 8, 8, 32))
layer = Attention(num_heads=2, op="neighborhood", op_kwargs={"kernel_size": 3})
print("layer", layer.apply(layer.init(jax.random.key(0), x), x).shape)
model = DiT(resolution=8, depth=1, width=32, num_heads=2, attention="neighborhood",
            attention_kwargs={"kernel_size": 3})
images = jnp.zeros((1, 8, 8, 3))
print("model", model.apply(model.init(jax.random.key(0), images, jnp.ones(1)), images,
                           jnp.ones(1)).shape)
"""


def pip(python, *arguments):
    run = subprocess.run([python, "-m", "pip", "--disable-pip-version-check", *arguments],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]


def test_pip_install_gives_a_working_library_outside_the_repository(tmp_path):
    """The wheel is built here (setuptools is pinned in the lock), then installed into a new
    environment with pip, as `pip install .` does."""
    source = tmp_path / "source"  # a clean copy: no stale build/ of the checkout
    shutil.copytree(ROOT, source, ignore=lambda folder, names: [
        name for name in names if name == "__pycache__" or name.endswith(".egg-info")
        or (pathlib.Path(folder) == ROOT and name not in ("lla", "pyproject.toml", "README.md",
                                                           "LICENSE"))])
    pip(sys.executable, "wheel", "--quiet", "--no-deps", "--no-build-isolation",
        "--wheel-dir", str(tmp_path / "dist"), str(source))
    (wheel,) = (tmp_path / "dist").glob("lla-*.whl")
    environment = tmp_path / "venv"
    venv.create(environment, with_pip=True)
    python = environment / "bin" / "python"
    pip(python, "install", "--quiet", "--no-deps", str(wheel))
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], capture_output=True, text=True).stdout.strip()
    # The dependencies come from this environment, after the installed lla.
    (pathlib.Path(site) / "zz_dependencies.pth").write_text(sysconfig.get_paths()["purelib"])
    run = subprocess.run([python, "-c", SMOKE, str(ROOT)], cwd=tmp_path,
                         env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ""},
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "op (1, 64, 2, 16)" in run.stdout and "layer (1, 8, 8, 32)" in run.stdout
    assert "model (1, 8, 8, 3)" in run.stdout

