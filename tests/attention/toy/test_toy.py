"""The toy op registered by `tests/attention/toy/__init__.py` joins everything with no other
edit: dispatch, the shared op suite, `experiments/bench_attention.py` on CPU, the DiT."""

from __future__ import annotations

import json

import jax.numpy as jnp
import pytest
from absl.testing import flagsaver

import lla.attention as attention
from experiments import bench_attention
from tests.attention.op_test_base import AttentionOpTestBase, random_qkv
from tests.attention.toy import reference
from tests.models.test_dit import run_inside_the_dit


class TestToy(AttentionOpTestBase):
    op_name = "toy"
    shapes = ((2, 77, 77, 3, 3, 24), (1, 130, 130, 2, 2, 32), (1, 64, 96, 4, 4, 16))
    boundary_shape = (1, 33, 33, 2, 2, 8)  # no chunks or tiles to cross

    def reference(self, q, k, v, **kwargs):
        return reference(q, k, v, causal=kwargs.get("causal", False), scale=q.shape[-1] ** -0.5)


def test_dispatch_picks_by_dtype_and_explains_refusals():
    q, k, v = random_qkv((1, 16, 16, 2, 2, 8))
    with attention.dispatch_log() as log:
        attention.get("toy")(q, k, v)
        attention.get("toy")(q.astype(jnp.bfloat16), k.astype(jnp.bfloat16),
                             v.astype(jnp.bfloat16))
    assert [d.implementation for d in log] == ["fast", "xla"]
    with pytest.raises(attention.NoImplementationError, match="fast: needs float32, got "
                                                              "bfloat16"):
        attention.get("toy")(q.astype(jnp.bfloat16), k.astype(jnp.bfloat16),
                             v.astype(jnp.bfloat16), implementation="fast")


def test_bench_attention_times_it_on_cpu(tmp_path):
    if not bench_attention.FLAGS.is_parsed():
        bench_attention.FLAGS(["bench_attention"])
    with flagsaver.flagsaver(ops="toy,toy:xla", shapes=["1x64x2x16"], dtype="float32",
                             samples=2, warmup=1, sample_seconds=0.0,
                             results_dir=str(tmp_path), name="toy"):
        assert bench_attention.main([]) == 0
    rows = json.loads((tmp_path / "cpu" / "toy.json").read_text())["rows"]
    assert [row["entry"] for row in rows] == ["toy", "toy:xla"]
    assert all(row["gate"]["passed"] and row["fwd_bwd_s"] > 0 for row in rows)
    assert rows[0]["speedup_fwd_vs_xla"] > 0


def test_runs_inside_the_dit():
    run_inside_the_dit("toy")
