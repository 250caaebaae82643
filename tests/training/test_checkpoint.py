"""Checkpoints: keep-N retention past N saves, and each kept step restores its own values."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lla.training.checkpoint import Checkpointer


def test_keeps_the_newest_n_and_restores_each_kept_step(tmp_path):
    checkpointer = Checkpointer(tmp_path, keep=2)
    like = {"w": jnp.zeros(3), "step": jnp.zeros((), jnp.int32)}
    for step in range(1, 6):
        checkpointer.save(step, {"w": jnp.full(3, float(step)),
                                 "step": jnp.asarray(step, jnp.int32)}, {"data_step": step})
        checkpointer.wait()
    kept = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert kept == [4, 5]
    assert checkpointer.latest_step() == 5
    like = jax.tree.map(lambda x: jax.device_put(x), like)
    for step in kept:
        state, meta = checkpointer.restore(step, like)
        np.testing.assert_array_equal(state["w"], np.full(3, float(step)))
        assert int(state["step"]) == step and meta == {"data_step": step}
    checkpointer.close()
